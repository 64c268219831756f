"""The MagicMind toolchain (Cambricon MLU): a build script per graph and a torch_mlu run script.

MagicMind is gated (Neuware), so the compile step writes what a Cambricon host runs:

- `magicmind/build_<graph>.py`: MagicMind's Python API as Cambricon's own samples use it
  (github Cambricon/magicmind_cloud, `buildin/python_common/framework_parser.py` and
  `model_process.py`, commits f4f48d98 / 184af9b2): `Network()`, `Parser(ModelKind.kOnnx).parse(net,
  onnx)`, input dims on `net.get_input(i).set_dimension(Dims(...))`, a `BuilderConfig` with
  `mlu_archs` and JSON strings — `{"precision_config": {"precision_mode": ...}}`,
  `{"graph_shape_mutable": true}` and `{"dim_range": {...}}` for the prefill gears' range —, then
  `Builder().build_model(name, net, config)` and `model.serialize_to_file(path)`;
- `magicmind/run_torch_mlu.py`: the Hugging Face model through torch_mlu on `mlu:0`, in the
  precision mode's dtype (`ascend_adapt.port.torch_npu.render_run_script`).

Where `magicmind` imports (a Cambricon host) and `use_tool` is not "never", the build scripts run.
Precision modes: force_float32 and force_float16 are simulated; the qint* modes need MagicMind's
Calibrator and are refused with that reason.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from ascend_adapt.errors import ConfigError, UnsupportedError
from ascend_adapt.fsutil import run_child

from . import TOOLCHAINS, BuildResult, Toolchain

_BUILD = '''#!/usr/bin/env python3
"""Build {graph}.mm for {soc} ({arch}) from ../export/{onnx_name} with MagicMind,
precision_config.precision_mode = {mode} (written by ascend-adapt convert).

Run on a Cambricon host with Neuware and MagicMind installed:  python magicmind/build_{graph}.py
The ONNX keeps its weights in ../export/weights.bin (ONNX external data): keep the export
directory beside this one.
"""

import json
import sys
from pathlib import Path

from magicmind.python.runtime import Builder, BuilderConfig, Dims, ModelKind, Network
from magicmind.python.runtime.parser import Parser

HERE = Path(__file__).resolve().parent
ONNX = HERE.parent / "export" / {onnx_name!r}
OUT = HERE / "{graph}.mm"
ARCHS = {archs!r}
# input dims in graph-input order; -1 = the prefill length, ranged by DIM_RANGE (the gears {gears})
INPUT_DIMS = {input_dims}
CONFIG = {config}


def main():
    net = Network()
    status = Parser(ModelKind.kOnnx).parse(net, str(ONNX))
    if not status.ok():
        sys.exit("MagicMind could not parse " + str(ONNX) + ": " + str(status))
    if net.get_input_count() != len(INPUT_DIMS):
        sys.exit("the parsed network has " + str(net.get_input_count()) + " inputs, expected " + str(len(INPUT_DIMS)))
    for i, (name, dims) in enumerate(INPUT_DIMS):
        if not net.get_input(i).set_dimension(Dims(dims)).ok():
            sys.exit("cannot set the dims of input " + str(i) + " (" + name + ") to " + str(dims))
    config = BuilderConfig()
    config.mlu_archs = ARCHS
    for part in CONFIG:
        if not config.parse_from_string(json.dumps(part)).ok():
            sys.exit("BuilderConfig refused " + json.dumps(part))
    model = Builder().build_model("{graph}", net, config)
    if model is None:
        sys.exit("MagicMind build_model failed for {graph}")
    model.serialize_to_file(str(OUT))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
'''


def _dim_config(shapes: dict, dynamic_dims) -> tuple[list, dict | None]:
    """INPUT_DIMS (name, dims with -1) and the `dim_range` of the -1 dims over the gear profiles."""
    input_dims = [(name, [int(d) for d in dims]) for name, dims in shapes.items()]
    if not dynamic_dims:
        return input_dims, None
    # a profile holds the value of every -1, inputs in order (ATC --dynamic_dims order)
    slots = [(i, j) for i, (_, dims) in enumerate(input_dims) for j, d in enumerate(dims) if d == -1]
    rng = {}
    for k, (i, j) in enumerate(slots):
        vals = [int(p[k]) for p in dynamic_dims]
        lo_hi = rng.setdefault(str(i), {"min": list(input_dims[i][1]), "max": list(input_dims[i][1])})
        lo_hi["min"][j], lo_hi["max"][j] = min(vals), max(vals)
    return input_dims, rng


class MagicMindToolchain(Toolchain):
    name = "magicmind"
    label = "MagicMind"
    default_precision_mode = "force_float16"
    inputs = ("hf",)  # the run script is the HF model through torch_mlu: an HF checkpoint only
    multi_chip = False
    keep_dtype = False
    script_glob = "magicmind/build_*.py"
    host = "a Cambricon host"

    def precision_mode(self, given: str | None, target) -> str:
        from ascend_adapt.sim.settings import MAGICMIND_MODES, normalize_precision_mode

        mode = given or self.default_precision_mode
        if mode == "force_fp16":  # ATC's spelling of the same policy
            mode = "force_float16"
        if mode not in MAGICMIND_MODES or mode not in target.precision_modes:
            raise ConfigError(f"precision mode '{given}' is not a MagicMind precision_config mode of {target.name}",
                              f"use one of: {', '.join(target.precision_modes)}")
        return normalize_precision_mode(mode)

    def compile(self, report, out: Path, jobs: dict, target, precision_mode: str, use_tool: str,
                on_line=None) -> BuildResult:
        found = importlib.util.find_spec("magicmind") is not None
        if use_tool == "always" and not found:
            raise UnsupportedError(f"--atc always: MagicMind (the 'magicmind' Python package) is not importable for "
                                   f"{target.name}", "run on a Cambricon host with Neuware and MagicMind, or drop "
                                   "--atc always to build the simulator artifact and the scripts")
        mm_dir = out / "magicmind"
        mm_dir.mkdir(exist_ok=True)
        scripts = {}
        for graph, job in jobs.items():
            input_dims, rng = _dim_config(job.input_shape, job.dynamic_dims)
            config = [{"precision_config": {"precision_mode": precision_mode}},
                      {"graph_shape_mutable": rng is not None}]
            if rng:
                config.append({"dim_range": rng})
            text = _BUILD.format(graph=graph, soc=target.name, arch=target.soc_version, onnx_name=Path(job.onnx).name,
                                 mode=precision_mode, archs=[target.soc_version], gears=job.gears,
                                 input_dims=json.dumps(input_dims), config=json.dumps(config, indent=1))
            (mm_dir / f"build_{graph}.py").write_text(text)
            scripts[graph] = f"magicmind/build_{graph}.py"
        run = self._run_script(report, target, precision_mode)
        (mm_dir / "run_torch_mlu.py").write_text(run)
        built = {}
        ran = False
        if found and use_tool != "never":
            for graph in jobs:
                res = run_child([sys.executable, str(mm_dir / f"build_{graph}.py")], text=True)
                for line in (res.stdout + res.stderr).splitlines():
                    if on_line:
                        on_line(line)
                if res.returncode != 0:
                    raise UnsupportedError(f"MagicMind build of {graph} failed: {res.stderr.strip()[-500:]}",
                                           f"see {scripts[graph]}; check the graph with `ascend-adapt analyze`")
                built[graph] = mm_dir / f"{graph}.mm"
            ran = True
        info = self.info(found=found, ran=ran, scripts=scripts, commands={g: f"python {s}" for g, s in scripts.items()},
                         run_script="magicmind/run_torch_mlu.py",
                         precision_config={"precision_mode": precision_mode})
        return BuildResult(built, None, info)

    @staticmethod
    def _run_script(report, target, precision_mode: str) -> str:
        from ascend_adapt.coverage import load_releases
        from ascend_adapt.port.torch_npu import render_run_script

        dtype = "float32" if precision_mode == "force_float32" else "float16"
        return render_run_script("torch_mlu", Path(report.source).resolve(), target.soc_version, dtype,
                                 f"MagicMind precision_mode {precision_mode} on {target.name}",
                                 load_releases("torch_mlu"), report_name=None,
                                 written_by="ascend-adapt convert --soc " + target.name)


TOOLCHAINS.register("magicmind", MagicMindToolchain())
