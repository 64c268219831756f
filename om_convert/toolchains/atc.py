"""The ATC toolchain (Huawei CANN): keep_dtype files, `atc/<graph>.sh`, and `atc` where found.

For every graph: `atc/keep_dtype_<graph>.cfg` (the export's fp32 islands plus --keep-dtype; none
for a plain ONNX file without --keep-dtype), the `AtcOptions` (`--framework=5`, `--input_format=ND`,
the graph's `--input_shape` and `--dynamic_dims` gears, `--precision_mode`), validated the way ATC
validates, written as `atc/<graph>.sh` with paths relative to the output directory; with `atc`
on PATH (or under `$ASCEND_TOOLKIT_HOME`) it runs and writes `<graph>.om` (`om_convert.atc.run_atc`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ascend_adapt.errors import ConfigError, UnsupportedError

from . import TOOLCHAINS, BuildResult, Toolchain


def atc_options(model: Path, output: Path, target, precision_mode: str, keep_file: Path | None,
                input_shape: Mapping[str, Sequence[int]], dynamic_dims: Sequence[Sequence[int]] | None = None,
                log: str = "error"):
    """The `AtcOptions` of one ONNX graph as `convert` builds it."""
    from ascend_adapt.om_convert.atc import AtcOptions

    kw: dict[str, Any] = dict(framework=5, model=str(model), output=str(output), soc_version=target.soc_version,
                              input_format="ND", input_shape={k: tuple(v) for k, v in input_shape.items()},
                              precision_mode=precision_mode, log=log)
    if keep_file is not None and precision_mode != "must_keep_origin_dtype":
        kw["keep_dtype"] = str(keep_file)
    if dynamic_dims:
        kw["dynamic_dims"] = tuple(tuple(int(x) for x in g) for g in dynamic_dims)
    return AtcOptions(**kw)


class AtcToolchain(Toolchain):
    name = "atc"
    label = "ATC"
    default_precision_mode = "force_fp16"  # ATC's inference default (reference sheet §1.1)
    inputs = ("hf", "onnx")
    multi_chip = True
    keep_dtype = True
    script_glob = "atc/*.sh"
    host = "a CANN host"

    def precision_mode(self, given: str | None, target) -> str:
        from ascend_adapt.sim.settings import MAGICMIND_MODES, normalize_precision_mode

        if given in MAGICMIND_MODES:
            raise ConfigError(f"precision mode '{given}' is a MagicMind (Cambricon) mode; {target.name} builds "
                              "with ATC", f"use one of: {', '.join(target.precision_modes)}")
        return normalize_precision_mode(given or self.default_precision_mode)

    def compile(self, report, out: Path, jobs: dict, target, precision_mode: str, use_tool: str,
                on_line=None) -> BuildResult:
        from ascend_adapt.operators.rewrites import write_keep_dtype

        options = {}
        for name, job in jobs.items():
            keep_file = None
            if job.keep_dtype is not None:
                keep_file = out / "atc" / f"keep_dtype_{name}.cfg"
                keep_file.parent.mkdir(exist_ok=True)
                write_keep_dtype(keep_file, job.keep_dtype)
            options[name] = atc_options(job.onnx, out / name, target, precision_mode, keep_file, job.input_shape,
                                        job.dynamic_dims)
        oms, info = self._build(out, options, use_tool, on_line)
        return BuildResult(oms, options, info)

    def _build(self, out: Path, options: Mapping[str, Any], use_tool: str, on_line) -> tuple[dict, dict]:
        """Validate and write every atc script; run ATC when asked / available.
        Returns ({graph: .om path}, the report's info)."""
        from ascend_adapt.om_convert.atc import find_atc, run_atc, validate, write_atc_script
        from ascend_adapt.om_convert.atc.driver import script_options

        atc_dir = out / "atc"
        atc_dir.mkdir(exist_ok=True)
        atc = find_atc() if use_tool != "never" else None
        if use_tool == "always" and atc is None:
            raise UnsupportedError("--atc always: no 'atc' found on PATH or under $ASCEND_TOOLKIT_HOME",
                                   "source CANN's set_env.sh first, or drop --atc always to build the simulator "
                                   "artifact")
        commands, oms = {}, {}
        for name, opts in options.items():
            validate(opts)
            write_atc_script(opts, atc_dir / f"{name}.sh")
            commands[name] = script_options(opts, out).to_command()  # paths relative to OUT
        if atc is not None:
            for name, opts in options.items():
                res = run_atc(opts, log_path=atc_dir / f"{name}.log", on_line=on_line, atc=atc, script=False)
                oms[name] = Path(res.om_path)
        return oms, self.info(found=atc, commands=commands, scripts={n: f"atc/{n}.sh" for n in options},
                              ran=atc is not None)


TOOLCHAINS.register("atc", AtcToolchain())
