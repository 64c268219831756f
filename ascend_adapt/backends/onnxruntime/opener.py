"""What the "onnxruntime" backend opens: an `.onnx` file (graph level) or an export directory
(export.json: LM level; at graph level its prefill / step graph)."""

from __future__ import annotations

from pathlib import Path

from ascend_adapt.backends import Artifact, GraphHandle


def recognize(path: Path) -> Artifact | None:
    if path.is_file() and path.suffix == ".onnx":
        return Artifact("onnxruntime", path, "graph", "ONNX graph")
    if path.is_dir() and (path / "export.json").is_file():
        return Artifact("onnxruntime", path, "lm", "ONNX export directory")
    return None


def _export_graph(export: Path, graph: str | None) -> tuple[Path, str]:
    g = graph or ("prefill" if (export / "prefill.onnx").is_file() else "step")  # a gear build: step.onnx
    return export / f"{g}.onnx", g


def locate(out: Path, manifest: dict, level: str, graph: str | None):
    """A convert output's export directory (LM level) or one of its graphs (graph level); a
    convert of a bare ONNX file: that model."""
    if manifest.get("export"):
        exp = out / manifest["export"]
        return (exp, graph) if level == "lm" else _export_graph(exp, graph)
    if level == "lm":
        return out, graph
    return out / manifest["model"], graph


def open_graph(path, graph: str | None = None, *, dump: bool = False, optimize: bool = True,
               threads: int | None = None, **_other) -> GraphHandle:
    """`OrtRunner` on an .onnx file (or the prefill / step graph of an export directory)."""
    from .runner import OrtRunner

    p = Path(path)
    if p.is_dir() and (p / "export.json").is_file():
        p, graph = _export_graph(p, graph)
    return GraphHandle(OrtRunner(str(p), dump=dump, optimize=optimize, threads=threads), p, graph,
                       "fp32 (onnxruntime)")
