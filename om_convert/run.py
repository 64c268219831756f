"""`ascend-adapt run`: one inference of a converted artifact, with an output summary."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
import os
from typing import Mapping, Sequence

import numpy as np

from ascend_adapt.errors import ConfigError


@dataclass
class RunResult:
    artifact: str
    runner: str
    graph: str | None
    inputs: dict[str, tuple]
    outputs: dict[str, np.ndarray]
    simulated_ms: float | None = None
    wall_ms: float | None = None
    saved: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        lines = [f"run {self.artifact}" + (f" [{self.graph}]" if self.graph else "") + f" on {self.runner}"]
        for name, (dtype, shape) in self.inputs.items():
            lines.append(f"  input  {name:<18} {dtype} {list(shape)}")
        for name, a in self.outputs.items():
            a = np.asarray(a)
            if a.dtype.kind == "f":
                bad = int((~np.isfinite(a)).sum())
                fin = a[np.isfinite(a)]
                rng = f"min {fin.min():.4g} max {fin.max():.4g} mean {fin.mean():.4g}" if fin.size else "no finite values"
                lines.append(f"  output {name:<18} {a.dtype} {list(a.shape)}  {rng}"
                             + (f"  NON-FINITE: {bad}" if bad else ""))
            else:
                lines.append(f"  output {name:<18} {a.dtype} {list(a.shape)}")
        if self.simulated_ms is not None:
            lines.append(f"  simulated device time {self.simulated_ms:.3f} ms (estimate, not measured on hardware)")
        if self.wall_ms is not None:
            lines.append(f"  host wall time {self.wall_ms:.1f} ms")
        if self.saved:
            lines.append(f"  saved {len(self.saved)} outputs to {Path(self.saved[0]).parent}")
        return "\n".join(lines)


def _resolve(path: Path, backend: str, graph: str | None):
    """(thing to load, graph name) for a convert dir (the backend's part of it), or a path one
    of the graph backends recognizes (.omsim, .om, .onnx)."""
    from ascend_adapt.backends import convert_output_path, detect

    if (path / "convert.json").is_file():
        return convert_output_path(path, backend, "graph", graph)
    if detect(path) is not None and detect(path).backend in _graph_backends():
        return path, graph
    raise ConfigError(f"{path}: not a convert output, .omsim, .om or .onnx",
                      "pass the directory written by `ascend-adapt convert`")


def _graph_backends() -> list[str]:
    from ascend_adapt.backends import names

    return names(level="graph")


def parse_input_args(items: Sequence[str] | None) -> dict[str, str]:
    """`--input NAME=FILE.npy` values (repeatable) → {name: file}.

    Raises:
        ConfigError: an item without "=", with an empty name or file, or a name given twice.
    """
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, file = str(item).partition("=")
        name, file = name.strip(), file.strip()
        if not sep or not name or not file:
            raise ConfigError(f"--input '{item}': expected NAME=FILE.npy",
                              "write e.g. --input input_ids=ids.npy (one --input per graph input; "
                              "inputs left out get random values)")
        if name in out:
            raise ConfigError(f"--input {name} is given twice ({out[name]} and {file})", "give each input once")
        out[name] = file
    return out


_INDEX_PRESERVING = ("Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten")


def index_input_limits(onnx_path: str | os.PathLike) -> dict[str, tuple[str, int]]:
    """Graph inputs used as row indices of an initializer table (token ids → embedding rows).

    Follows each integer graph input through index-preserving ops (Cast, Reshape, …) to the
    `indices` of a Gather on axis 0 whose `data` is an initializer (possibly through a Cast /
    Identity, as fp16 weights are); reads shapes only, never the external weight data.

    Returns:
        {input name: (table name, rows)}: valid ids are 0 ≤ id < rows (ONNX Gather would wrap a
        negative id to the end of the table, and a row past the end is an error on the card).
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    g = model.graph
    inits = {i.name: tuple(i.dims) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def table(name: str) -> str | None:
        seen = 0
        while name not in inits and name in producer and producer[name].op_type in ("Cast", "Identity") and seen < 8:
            name, seen = producer[name].input[0], seen + 1
        return name if name in inits else None

    out: dict[str, tuple[str, int]] = {}
    int_types = {onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
                 onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64}
    for inp in g.input:
        if inp.name in inits or inp.type.tensor_type.elem_type not in int_types:
            continue
        frontier, visited = [inp.name], set()
        while frontier:
            t = frontier.pop()
            if t in visited:
                continue
            visited.add(t)
            for n in consumers.get(t, ()):
                if n.op_type == "Gather" and len(n.input) > 1 and n.input[1] == t:
                    axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
                    tab = table(n.input[0])
                    if axis == 0 and tab is not None and inits[tab]:
                        rows = int(inits[tab][0])
                        if inp.name not in out or rows < out[inp.name][1]:
                            out[inp.name] = (tab, rows)
                elif n.op_type in _INDEX_PRESERVING and n.input and n.input[0] == t:
                    frontier.extend(n.output)
    return out


def _check_shape(name: str, file: str, a: np.ndarray, shape) -> None:
    if shape is None:
        return
    ok = len(a.shape) == len(shape) and all(not isinstance(d, int) or d < 0 or d == x for d, x in zip(shape, a.shape))
    if not ok:
        want = "[" + ", ".join(str(d) if isinstance(d, int) and d >= 0 else (str(d) if d else "?") for d in shape) + "]"
        raise ConfigError(f"--input {name}={file}: shape {list(a.shape)}, the graph input '{name}' takes {want}",
                          "save an array of that shape (named or ? dims are dynamic: any size, or one of the "
                          "gears of a gear build)")


def _load_input(name: str, file: str, dtype, shape) -> np.ndarray:
    p = Path(file)
    if not p.is_file():
        raise ConfigError(f"--input {name}={file}: no such file", "pass the path of a .npy file (numpy.save)")
    try:
        a = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ConfigError(f"--input {name}={file}: not a readable .npy array ({exc})",
                          "write the array with numpy.save(path, array)") from None
    if not isinstance(a, np.ndarray):  # an .npz archive
        if hasattr(a, "close"):
            a.close()
        raise ConfigError(f"--input {name}={file}: an .npz archive, not one array",
                          "save each input as its own .npy file (numpy.save)")
    if dtype is not None and a.dtype != np.dtype(dtype):
        want = np.dtype(dtype).name
        raise ConfigError(f"--input {name}={file}: dtype {a.dtype}, the graph input '{name}' takes {want}",
                          f"save it as {want}: numpy.save(path, array.astype(numpy.{want}))")
    _check_shape(name, file, a, shape)
    return a


def _check_ids(name: str, file: str, a: np.ndarray, limit: tuple[str, int]) -> None:
    table, rows = limit
    if a.size == 0:
        return
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= rows:
        bad = lo if lo < 0 else hi
        raise ConfigError(f"--input {name}={file}: id {bad} is outside [0, {rows}) — '{name}' indexes the "
                          f"{rows} rows of '{table}' (the vocabulary)",
                          f"token ids must lie in 0..{rows - 1}; negative ids are not wrapped")


def _feeds(meta: Mapping[str, tuple], given: Mapping[str, str], seed: int,
           limits: Mapping[str, tuple[str, int]] | None = None,
           gear_shapes: Sequence[Mapping[str, tuple[int, ...]]] | None = None) -> dict[str, np.ndarray]:
    """Feeds from `--input` files (checked: file, dtype, shape, id range) plus random values for
    the rest (dynamic dims: in a gear build, the first gear that agrees with the given inputs;
    else 1)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, file in given.items():
        if name not in meta:
            raise ConfigError(f"--input {name}: the model has no input '{name}'", f"inputs: {', '.join(meta)}")
        dtype, shape = meta[name]
        a = _load_input(name, file, dtype, shape)
        if limits and name in limits:
            _check_ids(name, file, a, limits[name])
        feeds[name] = a
    gear = None
    if gear_shapes:
        gear = next((g for g in gear_shapes if all(tuple(feeds[n].shape) == tuple(d) for n, d in g.items()
                                                   if n in feeds)), gear_shapes[0])
    for name, (dtype, shape) in meta.items():
        if name in feeds:
            continue
        if gear and name in gear:
            shape = gear[name]
        shape = tuple(int(d) if isinstance(d, int) and d > 0 else 1 for d in shape)
        dt = np.dtype(dtype)
        feeds[name] = (np.zeros(shape, dt) if dt.kind in "iub" else rng.standard_normal(shape).astype(dt))
    return feeds


def _onnx_of(path: Path, model_path: Path, graph: str | None) -> Path | None:
    """The ONNX graph behind what is run (for the id ranges), when there is one: the graph file
    itself, else (an .om) the export's graph of that name in the convert output."""
    if model_path.suffix == ".onnx":
        return model_path
    manifest = path / "convert.json"
    if manifest.is_file() and graph:
        info = json.loads(manifest.read_text())
        for cand in ((path / info["export"] / f"{graph}.onnx") if info.get("export") else None,
                     (path / info["model"]) if info.get("model") else None):
            if cand is not None and cand.is_file():
                return cand
    return None


def run_artifact(path, *, inputs: Mapping[str, str] | None = None, graph: str | None = None, backend: str = "sim",
                 precision_mode: str | None = None, save: str | None = None, seed: int = 0) -> RunResult:
    """Run one inference of a converted artifact and return its outputs.

    Args:
        path: a convert output directory, an .omsim, an .om or an .onnx file.
        inputs: {graph input name: .npy file}; each is checked before the run: the file exists
            and holds one array, its dtype and shape match the graph input, and token ids (an
            integer input that indexes a table, e.g. input_ids → the embedding) lie in
            [0, rows). Inputs left out get random values (the first gear's shape in a gear build).
        graph: which graph of a multi-graph artifact (default: prefill, or the only one).
        backend: a backend with a graph level (`ascend_adapt.backends.names(level="graph")`: sim,
            onnxruntime / ort, acl, and any registered one).
        precision_mode: override the artifact's precision mode (simulator).
        save: directory to write every output into as NAME.npy.
        seed: seed of the random inputs.

    Raises:
        ConfigError: an input that fails one of the checks above (naming the input, the file and
            what the graph takes).
    """
    import time

    from ascend_adapt.backends import BACKENDS

    be = BACKENDS.get(backend)
    target, graph = _resolve(Path(path), be.name, graph)
    handle = be.open_graph(target, graph, precision_mode=precision_mode)
    runner, graph = handle.runner, handle.graph
    limits = {}
    try:
        onnx_path = _onnx_of(Path(path), handle.model_path, graph)
    except Exception:  # noqa: BLE001 - no graph file: skip the id check, the runner reports the rest
        onnx_path = None
    if onnx_path is not None and onnx_path.is_file():
        limits = index_input_limits(onnx_path)
    with runner:
        meta = runner.get_input_metadata()
        gear_shapes = None
        settings = getattr(runner, "settings", None)
        if settings is not None and getattr(settings, "gears", None) is not None:
            gear_shapes = settings.gear_shapes()  # random feeds of a gear build take one of its gears
        feeds = _feeds(meta, inputs or {}, seed, limits, gear_shapes)
        t = time.perf_counter()
        out = runner.infer(feeds)
        wall = (time.perf_counter() - t) * 1e3
        sim_ms = getattr(runner, "last_simulated_time_ms", None)
    saved = []
    if save:
        d = Path(save)
        d.mkdir(parents=True, exist_ok=True)
        for k, v in out.items():
            f = d / f"{k.replace('/', '_')}.npy"
            np.save(f, v)
            saved.append(str(f))
    return RunResult(str(path), runner.name, graph, {k: (str(np.asarray(v).dtype), np.asarray(v).shape)
                                                      for k, v in feeds.items()}, out, sim_ms, wall, saved)
