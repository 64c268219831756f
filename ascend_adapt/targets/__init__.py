"""Hardware targets as data files.

Every `*.json` in `ascend_adapt/targets/data/` (names starting with `_` are shared fragments that
other files `extends`) describes one target: vendor, soc_version, compute peaks, memory, precision
modes, ONNX opset range per toolchain version, gear limits, and an op table with restrictions. Each
figure carries a source and a confidence mark (V / S / M), and a target file may list the
published decode figures measured on it (`published_decode`, which `estimate` fits and checks
on). Adding a target is adding a file, here or in a directory named by the environment variable
`ASCEND_ADAPT_TARGETS_PATH` (`os.pathsep`-separated; see `docs/targets.md`).

`resolve_target(name_or_target)` is the one way a function taking `str | Target` gets a Target.
ATC's gear rules and per-chip limits are in `gear_rules`.

    >>> from ascend_adapt.targets import load_target
    >>> t = load_target("Ascend310P3")
    >>> t.max_opset("6.0"), t.op_support("LayerNormalization", 17).supported
    (13, True)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ..errors import ConfigError, RegistryError
from ..registry import Registry
from .profile import (CONFIDENCE, Fact, OpSpec, OpTable, Restriction, Target, Verdict, dtype_name,
                      parse_version, read_profile, target_from_dict)
from .published import PublishedFigure

DATA_DIR = Path(__file__).resolve().parent / "data"
PATH_ENV = "ASCEND_ADAPT_TARGETS_PATH"

__all__ = [
    "TARGETS", "Target", "Fact", "Verdict", "OpSpec", "OpTable", "Restriction", "CONFIDENCE",
    "load_target", "list_targets", "load_target_file", "register_target_file", "dtype_name",
    "parse_version", "DATA_DIR", "PATH_ENV", "resolve_target", "target_dirs", "published_figures",
    "PublishedFigure",
]


def load_target_file(path: str | os.PathLike) -> Target:
    """Load a target profile from a JSON file (its `extends` and op table are looked up beside it,
    then in the built-in data directory). The target is not registered."""
    p = Path(path)
    dirs = [p.parent, DATA_DIR] if p.parent.resolve() != DATA_DIR else [DATA_DIR]
    return target_from_dict(read_profile(p, dirs), str(p), dirs)


def target_dirs() -> list[Path]:
    """The directories scanned for target files: the built-in data directory, then each directory
    of `$ASCEND_ADAPT_TARGETS_PATH` (read when the registry is first used)."""
    extra = [Path(d) for d in os.environ.get(PATH_ENV, "").split(os.pathsep) if d.strip()]
    for d in extra:
        if not d.is_dir():
            raise ConfigError(f"{PATH_ENV} names '{d}', which is not a directory",
                              f"set {PATH_ENV} to directories holding target JSON files, separated by "
                              f"'{os.pathsep}'")
    return [DATA_DIR, *extra]


def _scan() -> None:
    for d in target_dirs():
        for p in sorted(d.glob("*.json")):
            if p.name.startswith("_"):
                continue
            t = load_target_file(p)
            if t.name != p.stem:
                raise ConfigError(f"target file '{p}' declares name '{t.name}'", f"rename the file to {t.name}.json")
            if t.name in TARGETS:
                raise ConfigError(f"target file '{p}' redefines target '{t.name}' "
                                  f"(already in {TARGETS.get(t.name).source_file})",
                                  "rename the target, or remove one of the two files")
            TARGETS.register(t.name, t)


TARGETS: Registry[Target] = Registry("target", loader=_scan)


def register_target_file(path: str | os.PathLike, *, override: bool = False) -> Target:
    """Load a profile JSON from anywhere and register it under its name."""
    t = load_target_file(path)
    TARGETS.register(t.name, t, override=override)
    return t


def list_targets() -> list[str]:
    """Names of the registered targets, sorted."""
    return TARGETS.names()


def load_target(name: str | os.PathLike) -> Target:
    """Return a target by registry name, soc_version alias (case-insensitive) or path to a JSON file.

    An alias names a real ATC soc_version that shares the profile (e.g. "Ascend910B3" shares
    "Ascend910B"): the target returned keeps that exact soc_version (spelled as in the profile's
    `aliases`), so `--soc_version` on the ATC command is the chip the user named; the profile's
    figures and name stay the shared ones.

    Args:
        name: "Ascend310P3", "ascend310p3", an alias such as "Ascend910B3", or "./my_target.json".

    Raises:
        RegistryError: unknown name (the message lists the known ones).
    """
    s = str(name)
    if s.endswith(".json") or os.sep in s:
        return load_target_file(s)
    if s in TARGETS:
        return TARGETS.get(s)
    low = s.lower()
    for n, t in TARGETS.items():
        if n.lower() == low:
            return t
        alias = next((a for a in t.aliases if a.lower() == low), None)
        if alias is not None:
            return t if alias == t.soc_version else dataclasses.replace(t, soc_version=alias)
    try:
        return TARGETS.get(s)
    except RegistryError as exc:
        raise RegistryError(exc.message, f"{exc.hint}, or a path to a target JSON file") from None


def resolve_target(target: "str | os.PathLike | Target") -> Target:
    """A Target as given, or the one `load_target` finds for a name / alias / JSON path.

    The one helper for functions that take `str | Target`.

    Raises:
        RegistryError: unknown name (the message names it and lists the known ones).
        ConfigError: neither a name, a path nor a Target.
    """
    if isinstance(target, Target):
        return target
    if isinstance(target, (str, os.PathLike)):
        return load_target(target)
    raise ConfigError(f"expected a target name or a Target, got {type(target).__name__} {target!r}",
                      f"pass one of {', '.join(list_targets())}, a target JSON path, or load_target(name)")


def published_figures() -> tuple[PublishedFigure, ...]:
    """Every published decode figure of the registered targets (`published_decode`), by target name.

    Raises:
        ConfigError: two figures share a key (keys name figures across all targets).
    """
    figs = tuple(f for name in list_targets() for f in TARGETS.get(name).published)
    seen: dict[str, str] = {}
    for f in figs:
        if f.key in seen:
            raise ConfigError(f"published figure key '{f.key}' is used by {seen[f.key]} and {f.target}",
                              "give each published_decode entry its own key")
        seen[f.key] = f.target
    return figs
