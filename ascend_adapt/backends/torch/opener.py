"""What the "torch" backend opens: an HF checkpoint directory (config.json, or a Meta-style
params.json); in a convert output, the source checkpoint recorded in convert.json."""

from __future__ import annotations

from pathlib import Path

from ascend_adapt.backends import Artifact


def recognize(path: Path, backend: str = "torch") -> Artifact | None:
    if path.is_dir() and ((path / "config.json").is_file() or (path / "params.json").is_file()):
        return Artifact(backend, path, "lm", "checkpoint directory")
    return None


def locate(out: Path, manifest: dict, level: str, graph: str | None):
    """The source checkpoint a convert output was made from."""
    return Path(manifest["source"]), graph
