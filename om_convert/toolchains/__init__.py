"""Toolchain registry: how `convert` compiles graphs for a target's vendor compiler.

A target names its toolchain (`target.toolchain` in `ascend_adapt/targets/data/*.json`):

| name        | module         | compile step                                                          |
|-------------|----------------|-----------------------------------------------------------------------|
| `atc`       | `atc.py`       | Huawei ATC: `atc/<graph>.sh` always, `<graph>.om` where `atc` is found |
| `magicmind` | `magicmind.py` | Cambricon MagicMind: `magicmind/build_<graph>.py` (ONNX parser +      |
|             |                | BuilderConfig with the mode's `precision_config`) and                 |
|             |                | `magicmind/run_torch_mlu.py`; runs the build where `magicmind` imports |

Every compile step of `convert` — the graphs built from an HF checkpoint and a plain ONNX file
alike — goes through `get_toolchain(target).compile(...)`. Every toolchain gets the same
simulator artifact (`model.omsim`), which accepts and computes with the target's precision mode.

A toolchain is a `Toolchain` subclass instance registered in `TOOLCHAINS` under its `name`; it
answers everything `convert` and its report need, so no caller tests a toolchain by name:

- `name`, `label` ("ATC", "MagicMind"), `script_glob` (where its build scripts go, for the report)
  and `default_precision_mode`;
- capabilities: `inputs` (which `convert` inputs it compiles: "hf" = the graphs built from a
  checkpoint, "onnx" = a user's ONNX file), `multi_chip` (`--chips N`), `keep_dtype` (takes
  the user's `--keep-dtype` list); `check_request` refuses anything else before a byte is written;
- `precision_mode(given, target) -> str`: the canonical mode (the simulator's vocabulary,
  `ascend_adapt.sim.settings`), or a `ConfigError` naming the target's modes;
- `compile(report, out, jobs, target, precision_mode, use_tool, on_line) -> BuildResult`, with
  `jobs` = {graph name: `CompileJob`};
- `summary(build, omsim) -> str`: the compile step's line in the report.

Adding a toolchain (docs/adding_a_toolchain.md): one module (or package) defining the subclass
and ending in `TOOLCHAINS.register(...)`, plus ONE registration line: its module path in
`BUILTIN_TOOLCHAIN_MODULES` (in this repository), or an entry point in the group
`ascend_adapt.toolchains` (an installed package; the entry point's name is the toolchain's name,
loaded when a target first asks for it). Then a target file with `"toolchain": "<name>"`.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

from ascend_adapt.errors import ConfigError, RegistryError, UnsupportedError
from ascend_adapt.registry import Registry

BUILTIN_TOOLCHAIN_MODULES = ("ascend_adapt.om_convert.toolchains.atc", "ascend_adapt.om_convert.toolchains.magicmind")
ENTRY_POINT_GROUP = "ascend_adapt.toolchains"
INPUT_KINDS = {"hf": "an HF checkpoint", "onnx": "a plain ONNX file"}


@dataclasses.dataclass
class BuildResult:
    """What a toolchain's compile step produced.

    Attributes:
        built: {graph: compiled model file} (empty where the vendor tool is absent).
        atc_options: {graph: AtcOptions} where the toolchain produced ATC options (the simulator
            then takes its settings and the exact commands from them); None for the others (the
            simulator takes the precision mode and the graphs' shapes).
        info: written to the convert report as "atc" (toolchain, label, tool found, scripts,
            commands, ran).
    """

    built: dict
    atc_options: dict | None
    info: dict


@dataclasses.dataclass(frozen=True)
class CompileJob:
    """One graph for a toolchain to compile.

    Attributes:
        onnx: the .onnx file (its external data beside it).
        input_shape: {input name: dims} in graph-input order; -1 marks a gear / shape-range dim.
        dynamic_dims: the gear profiles (one value per -1, inputs in order, as ATC's
            --dynamic_dims), or None for a static graph.
        keep_dtype: ops kept in fp32 (node names / OpType::<Type>): the export's fp32 islands plus
            the user's --keep-dtype; None = no list at all (a plain ONNX file without --keep-dtype).
        gears: the gears as the user gave them (a step graph's step lengths, an ONNX file's
            --gears profiles), for scripts and messages; None without gears.
    """

    onnx: Path
    input_shape: dict
    dynamic_dims: list | None = None
    keep_dtype: list | None = None
    gears: list | None = None


class Toolchain:
    """Base class of a toolchain: capability checks and the report wording from the attributes."""

    name: str = ""
    label: str = ""
    default_precision_mode: str = ""
    inputs: tuple = ("hf", "onnx")
    multi_chip: bool = False
    keep_dtype: bool = False
    script_glob: str = ""
    host: str = "a host with the vendor toolchain"  # where the written scripts run

    def precision_mode(self, given: str | None, target) -> str:
        raise NotImplementedError

    def compile(self, report, out: Path, jobs: dict, target, precision_mode: str, use_tool: str,
                on_line=None) -> BuildResult:
        raise NotImplementedError

    def check_request(self, target, *, kind: str, chips: int = 1, keep_dtype=None) -> None:
        """Refuse (UnsupportedError naming the target, the toolchain and what to do) a convert
        this toolchain cannot compile; called before anything is written."""
        who = f"{target.name} builds with {self.label} (toolchain '{self.name}')"
        if kind not in self.inputs:
            takes = " or ".join(INPUT_KINDS[k] for k in self.inputs)
            todo = ("convert the HF checkpoint directory instead" if "hf" in self.inputs else
                    "export the model to ONNX first (`ascend-adapt export`) and convert the .onnx file")
            raise UnsupportedError(f"{who}: convert compiles {takes} for it, not {INPUT_KINDS[kind]}",
                                   f"{todo}, or pick a target whose toolchain takes {INPUT_KINDS[kind]}")
        if chips != 1 and not self.multi_chip:
            raise UnsupportedError(f"{who}: it builds one chip; --chips {chips} is not supported for it",
                                   "drop --chips (or pick an ATC target, whose toolchain splits the layers)")
        if keep_dtype and not self.keep_dtype:
            raise UnsupportedError(f"--keep-dtype names ATC's keep_dtype list; {self.label} has no such option "
                                   f"here ({who})", f"drop --keep-dtype for {target.name}")

    def summary(self, build: BuildResult, omsim: str) -> str:
        """The compile step's line in the report."""
        if build.built:
            return f"{self.label} built {', '.join(Path(p).name for p in build.built.values())}"
        wrote = " and ".join(x for x in (self.script_glob, build.info.get("run_script")) if x)
        return f"no {self.label} here: wrote {omsim} (simulated)" + (f" and {wrote} to run on {self.host}" if wrote else "")

    def info(self, **fields) -> dict:
        """The report's "atc" entry: toolchain name, label and where the scripts are, plus `fields`."""
        return {"toolchain": self.name, "label": self.label, "script_glob": self.script_glob, **fields}

    def __repr__(self) -> str:
        return f"<toolchain {self.name} ({self.label})>"


def _entry_points(name: str | None = None) -> list:
    from importlib.metadata import entry_points

    eps = entry_points(group=ENTRY_POINT_GROUP)
    return [ep for ep in eps if name is None or ep.name == name]


def _load_entry_point(ep) -> None:
    """Import an entry point: a module that registers its toolchain, or `module:object` (a
    Toolchain instance, registered under the entry point's name unless it registered itself)."""
    try:
        obj = ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken plugin must be named, not hidden
        raise ConfigError(f"toolchain entry point '{ep.name} = {ep.value}' (group {ENTRY_POINT_GROUP}) failed to "
                          f"load: {type(exc).__name__}: {exc}", "fix or uninstall the package that declares it") from exc
    if isinstance(obj, Toolchain) and ep.name not in TOOLCHAINS:
        TOOLCHAINS.register(ep.name, obj)


def _load() -> None:
    for mod in BUILTIN_TOOLCHAIN_MODULES:
        importlib.import_module(mod)
    for ep in _entry_points():
        _load_entry_point(ep)


TOOLCHAINS: Registry = Registry("toolchain", loader=_load)


def get_toolchain(target) -> Toolchain:
    """The toolchain object of a `Target` (by `target.toolchain`).

    A name not registered yet is looked up among the installed entry points (group
    `ascend_adapt.toolchains`) first, so a package installed after the first lookup is found.
    """
    name = target.toolchain
    if name not in TOOLCHAINS:
        for ep in _entry_points(name):
            _load_entry_point(ep)
    try:
        return TOOLCHAINS.get(name)
    except RegistryError as exc:
        raise RegistryError(f"target {target.name} names toolchain '{name}', which is not registered",
                            f"{exc.hint}; install the package that provides it (entry point group "
                            f"{ENTRY_POINT_GROUP}) or import its module first (docs/adding_a_toolchain.md)") from None


__all__ = ["TOOLCHAINS", "BuildResult", "CompileJob", "Toolchain", "get_toolchain", "BUILTIN_TOOLCHAIN_MODULES",
           "ENTRY_POINT_GROUP"]
