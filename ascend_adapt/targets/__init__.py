"""Hardware targets as data files.

Every `*.json` in `ascend_adapt/targets/data/` (names starting with `_` are shared fragments that
other files `extends`) describes one target: vendor, soc_version, compute peaks, memory, precision
modes, ONNX opset range per toolchain version, gear limits, and an op table with restrictions. Each
figure carries a source and a confidence mark (V / S / M). Adding a target is adding a file; see
`docs/targets.md`.

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

DATA_DIR = Path(__file__).resolve().parent / "data"

__all__ = [
    "TARGETS", "Target", "Fact", "Verdict", "OpSpec", "OpTable", "Restriction", "CONFIDENCE",
    "load_target", "list_targets", "load_target_file", "register_target_file", "dtype_name",
    "parse_version", "DATA_DIR",
]


def load_target_file(path: str | os.PathLike) -> Target:
    """Load a target profile from a JSON file (its `extends` and op table are looked up beside it,
    then in the built-in data directory). The target is not registered."""
    p = Path(path)
    dirs = [p.parent, DATA_DIR] if p.parent.resolve() != DATA_DIR else [DATA_DIR]
    return target_from_dict(read_profile(p, dirs), str(p), dirs)


def _scan() -> None:
    for p in sorted(DATA_DIR.glob("*.json")):
        if p.name.startswith("_"):
            continue
        t = load_target_file(p)
        if t.name != p.stem:
            raise ConfigError(f"target file '{p}' declares name '{t.name}'", f"rename the file to {t.name}.json")
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
