"""What the "mindspore" backend recognizes: a port directory (it holds ascend_adapt_port.json)."""

from __future__ import annotations

from pathlib import Path

from ascend_adapt.backends import Artifact

PORT_MANIFEST = "ascend_adapt_port.json"


def recognize(path: Path) -> Artifact | None:
    if path.is_dir() and (path / PORT_MANIFEST).is_file():
        return Artifact("mindspore", path, "lm", "MindSpore port directory")
    return None
