"""What the "acl" backend opens: an `.om` file (graph level), a converted model's directory (LM
level), and the OMs of a convert output (under the strict fake without ATC: its stand-in OMs)."""

from __future__ import annotations

import os
from pathlib import Path

from ascend_adapt.backends import Artifact, GraphHandle
from ascend_adapt.errors import ConfigError


def recognize(path: Path) -> Artifact | None:
    if path.is_file() and path.suffix == ".om":
        return Artifact("acl", path, "graph", "OM file")
    return None


def locate(out: Path, manifest: dict, level: str, graph: str | None):
    """LM level: the convert output itself (the backend finds its OMs); graph level: the OM of
    `graph` (default: the first built)."""
    if level == "lm":
        return out, graph
    oms = manifest.get("om") or {}
    if not oms and os.environ.get("ASCEND_ADAPT_ACL", "").strip().lower() == "fake":
        from ascend_adapt.testing.fake_acl import stand_in_om  # the strict fake's stand-in OMs

        g = graph or ("prefill" if stand_in_om(out, "prefill") else "step")
        if stand_in_om(out, g) is not None:
            return stand_in_om(out, g), g
    if not oms:
        raise ConfigError(f"{out}: no .om was built here (ATC was absent)",
                          f"run the scripts in {out / 'atc'} on a CANN host, then run there")
    g = graph or next(iter(oms))
    return out / oms[g], g


def open_graph(path, graph: str | None = None, **_other) -> GraphHandle:
    """`AclRunner` on one `.om` (a card returns outputs only: no per-layer tensors)."""
    from .runner import AclRunner

    return GraphHandle(AclRunner(str(path)), Path(path), graph, "as compiled (card)", layerwise=False)
