"""The ATC toolchain (Huawei CANN): keep_dtype files, `atc/<graph>.sh`, and `atc` where found.

The work is the compile step `convert` always did (`convert._atc_options` / `convert._compile`);
this module is its seat in the toolchain registry.
"""

from __future__ import annotations

from pathlib import Path

from ascend_adapt.errors import ConfigError

from . import TOOLCHAINS, BuildResult


class AtcToolchain:
    name = "atc"
    label = "ATC"
    default_precision_mode = "force_fp16"  # ATC's inference default (reference sheet §1.1)

    def precision_mode(self, given: str | None, target) -> str:
        from ascend_adapt.sim.settings import MAGICMIND_MODES, normalize_precision_mode

        if given in MAGICMIND_MODES:
            raise ConfigError(f"precision mode '{given}' is a MagicMind (Cambricon) mode; {target.name} builds "
                              "with ATC", f"use one of: {', '.join(target.precision_modes)}")
        return normalize_precision_mode(given or self.default_precision_mode)

    def compile_llm(self, report, out: Path, graphs: dict, manifest: dict, target, precision_mode: str,
                    keep_dtype: list, use_tool: str, on_line=None) -> BuildResult:
        from ascend_adapt.om_convert.convert import _atc_options, _compile
        from ascend_adapt.om_convert.split import input_shapes_of
        from ascend_adapt.operators.rewrites import write_keep_dtype

        options = {}
        for kind, path in graphs.items():
            keep = list(manifest.get("keep_dtype", {}).get(kind, [])) + list(keep_dtype)
            keep_file = out / "atc" / f"keep_dtype_{kind}.cfg"
            keep_file.parent.mkdir(exist_ok=True)
            write_keep_dtype(keep_file, keep)
            shapes, dims = input_shapes_of(manifest, kind, target.soc_version)
            options[kind] = _atc_options(path, out / kind, target, precision_mode, keep_file, shapes, dims)
        oms = _compile(report, out, graphs, options, use_tool, on_line)
        return BuildResult(oms, options, dict(report.atc))


TOOLCHAINS.register("atc", AtcToolchain())
