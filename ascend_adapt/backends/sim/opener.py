"""What the "sim" backend opens: an `.omsim` artifact (a directory with the simulator's
manifest.json), a bare `.onnx` graph given a target, and its part of a convert output."""

from __future__ import annotations

import json
from pathlib import Path

from ascend_adapt.backends import Artifact, GraphHandle
from ascend_adapt.errors import ConfigError


def _is_artifact(p: Path) -> bool:
    from .artifact import FORMAT, MANIFEST, SUFFIX

    if not (p.is_dir() and (p / MANIFEST).is_file()):
        return False
    if p.suffix == SUFFIX:
        return True
    try:
        return json.loads((p / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, json.JSONDecodeError):
        return False


def recognize(path: Path) -> Artifact | None:
    if _is_artifact(path):
        return Artifact("sim", path, "lm", "simulator artifact")
    return None


def locate(out: Path, manifest: dict, level: str, graph: str | None):
    """The convert output's `.omsim` (both levels)."""
    return out / manifest["omsim"], graph


def default_graph(names: list[str], graph: str | None) -> str | None:
    """The graph a run picks: the one named, else prefill, else the first of several (None: the
    artifact's only graph, whatever its name)."""
    if graph is None and "prefill" in names:
        return "prefill"
    if graph is None and len(names) > 1:
        return names[0]
    return graph


def open_graph(path, graph: str | None = None, *, target: str | None = None, precision_mode: str | None = None,
               keep_dtype=None, dump: bool = False, cost: bool = True, threads: int | None = None,
               **_other) -> GraphHandle:
    """`SimRunner` on one graph of an `.omsim` (settings from its manifest), or on a bare .onnx
    graph with `target` (and the other settings) given.

    Raises:
        ConfigError: a bare graph without a target; a real `.om`; a path that is neither.
    """
    from .artifact import is_omsim, read_omsim
    from .runner import SimRunner

    p = Path(path)
    if p.suffix == ".onnx" and p.is_file() and not is_omsim(p):
        if not target:
            raise ConfigError(f"the simulator on the bare graph '{p}' needs a target",
                              "pass --target Ascend310P3 (an .omsim names its own)")
        model_path = p
    else:
        art = read_omsim(p)  # names a real .om / a non-artifact precisely
        graph = default_graph(art.graph_names, graph)
        model_path = art.graph_path(graph)
    runner = SimRunner(str(p), target=target, precision_mode=precision_mode, keep_dtype=keep_dtype, dump=dump,
                       graph=graph, cost=cost, threads=threads)
    return GraphHandle(runner, Path(model_path), graph, "simulator settings", simulated=True)
