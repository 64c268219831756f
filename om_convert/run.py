"""`ascend-adapt run`: one inference of a converted artifact, with an output summary."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

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
    """(thing to load, graph name) for a convert dir, .omsim, .om or .onnx."""
    from ascend_adapt.om_convert.artifact import is_omsim

    manifest = path / "convert.json"
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        if backend == "sim":
            return path / info["omsim"], graph
        if backend == "acl":
            oms = info.get("om") or {}
            if not oms:
                raise ConfigError(f"{path}: no .om was built here (ATC was absent)",
                                  f"run the scripts in {path / 'atc'} on a CANN host, then run there")
            g = graph or next(iter(oms))
            return path / oms[g], g
        if info.get("export"):
            g = graph or "prefill"
            return path / info["export"] / f"{g}.onnx", g
        return path / info["model"], graph
    if is_omsim(path) or path.suffix in (".onnx", ".om"):
        return path, graph
    raise ConfigError(f"{path}: not a convert output, .omsim, .om or .onnx",
                      "pass the directory written by `ascend-adapt convert`")


def _feeds(meta: Mapping[str, tuple], given: Mapping[str, str], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, file in given.items():
        if name not in meta:
            raise ConfigError(f"--input {name}: the model has no input '{name}'", f"inputs: {', '.join(meta)}")
        try:
            feeds[name] = np.load(file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--input {name}={file}: cannot read a .npy array ({exc})") from None
    for name, (dtype, shape) in meta.items():
        if name in feeds:
            continue
        shape = tuple(int(d) if isinstance(d, int) and d > 0 else 1 for d in shape)
        dt = np.dtype(dtype)
        feeds[name] = (np.zeros(shape, dt) if dt.kind in "iub" else rng.standard_normal(shape).astype(dt))
    return feeds


def run_artifact(path, *, inputs: Mapping[str, str] | None = None, graph: str | None = None, backend: str = "sim",
                 precision_mode: str | None = None, save: str | None = None, seed: int = 0) -> RunResult:
    """Run one inference of a converted artifact and return its outputs."""
    import time

    from ascend_adapt.runtime.runners import OrtRunner, SimRunner

    target, graph = _resolve(Path(path), backend, graph)
    if backend == "sim":
        from ascend_adapt.om_convert.artifact import read_omsim

        names = read_omsim(target).graph_names
        if graph is None and len(names) > 1:
            graph = "prefill" if "prefill" in names else names[0]
        runner = SimRunner(target, graph=graph, precision_mode=precision_mode)
    elif backend == "acl":
        from ascend_adapt.runtime.acl_backend import AclRunner

        runner = AclRunner(target)
    else:
        runner = OrtRunner(target)
    with runner:
        meta = runner.get_input_metadata()
        feeds = _feeds(meta, inputs or {}, seed)
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
