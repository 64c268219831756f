"""Toolchain registry: how `convert` compiles the built graphs for a target's vendor compiler.

A target names its toolchain (`target.toolchain` in `ascend_adapt/targets/data/*.json`):

| name        | module       | compile step                                                            |
|-------------|--------------|-------------------------------------------------------------------------|
| `atc`       | `atc.py`     | Huawei ATC: `atc/<graph>.sh` always, `<graph>.om` where `atc` is found   |
| `magicmind` | `magicmind.py` | Cambricon MagicMind: `magicmind/build_<graph>.py` (ONNX parser +       |
|             |              | BuilderConfig with the mode's `precision_config`) and `magicmind/run_torch_mlu.py`; runs the build where `magicmind` imports |

Every toolchain produces the same simulator artifact (`model.omsim`) through the simulator, which
accepts and computes with the target's precision mode. A toolchain is an object with:

- `name`, `label` ("ATC", "MagicMind");
- `default_precision_mode`: the mode `convert` uses when none is given;
- `precision_mode(given, target) -> str`: the canonical mode (the simulator's vocabulary,
  `ascend_adapt.sim.settings`), or a `ConfigError` naming the target's modes;
- `compile_llm(report, out, graphs, manifest, target, precision_mode, keep_dtype, use_tool, on_line)`
  -> `BuildResult`.

Adding a toolchain: a module here that registers an instance in `TOOLCHAINS`, listed in
`BUILTIN_TOOLCHAIN_MODULES`.
"""

from __future__ import annotations

import dataclasses
import importlib
from ascend_adapt.registry import Registry

BUILTIN_TOOLCHAIN_MODULES = ("ascend_adapt.om_convert.toolchains.atc", "ascend_adapt.om_convert.toolchains.magicmind")


@dataclasses.dataclass
class BuildResult:
    """What a toolchain's compile step produced.

    Attributes:
        built: {graph: compiled model file} (empty where the vendor tool is absent).
        atc_options: {graph: AtcOptions} for ATC (the simulator takes its settings and the exact
            commands from them); None for other toolchains (the simulator takes the precision
            mode and the export's shapes).
        info: written to the convert report (tool found, scripts, commands, ran).
    """

    built: dict
    atc_options: dict | None
    info: dict


def _load() -> None:
    for mod in BUILTIN_TOOLCHAIN_MODULES:
        importlib.import_module(mod)


TOOLCHAINS: Registry = Registry("toolchain", loader=_load)


def get_toolchain(target):
    """The toolchain object of a `Target` (by `target.toolchain`)."""
    return TOOLCHAINS.get(target.toolchain)


__all__ = ["TOOLCHAINS", "BuildResult", "get_toolchain"]
