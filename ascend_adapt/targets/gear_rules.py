"""ATC's gear rules and per-chip limits: the one definition.

ATC binds every `-1` of `--input_shape` to a list of profiles ("gears") given with
`--dynamic_dims`, `--dynamic_batch_size` or `--dynamic_image_size`, and refuses what breaks its
rules with its own error codes. `om_convert.atc.validate` (on `AtcOptions`), the simulator's
acceptance check (`ascend_adapt.sim.acceptance`), `analyze`, `convert` and the gear planner
(`om_convert.atc.gears.plan_gears`) all apply the rules and limits defined here.

The limits are target data, not code:

- a `--soc_version` that is the `soc_version` or an alias of a target profile whose `gears` figure
  is not null (`{"min": 2, "max": 100}`; null where the toolchain has no gears, as MagicMind) takes
  the profile's `gears` and `allows_shape_ranges` figures;
- any other `--soc_version` takes the first rule of `data/_atc_soc_rules.json` that names it or a
  prefix of it (Ascend950*: 256 gears; Ascend310B*: no shape ranges), each with its source;
- then the shared ATC fragment `data/_atc_common.json` (2-100 gears, shape ranges allowed).

The rules yield `GearViolation`s: ATC's error code, the values of its message template (the
wording lives in ATC's error-code table, `om_convert/atc/data/ge_error_codes.json`), the flag at
fault and what to do. Each caller turns them into its own error type with ATC's wording:
`AtcValidationError.from_code(v.code, *v.args, ...)` in `validate()`, a `Problem` in the simulator.

    >>> soc_limits("Ascend950PR").gear_max, soc_limits("Ascend310B4").allows_shape_ranges
    (256, False)
    >>> [v.code for v in gear_violations({"x": (1, -1)}, "dynamic_dims", [(16,)])]
    ['E10035']
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, Mapping, NamedTuple, Sequence

from ..errors import ConfigError

GEAR_FLAGS = ("dynamic_batch_size", "dynamic_image_size", "dynamic_dims")
PLAN_HINT = "plan gears with ascend_adapt.om_convert.atc.plan_gears (2-100 sorted unique values)"


class GearViolation(NamedTuple):
    """One broken gear rule.

    Attributes:
        code: ATC's error code ("E10035").
        args: the values of the code's message template, in order.
        flag: the ATC flag at fault, without dashes.
        hint: what to do.
    """

    code: str
    args: tuple
    flag: str
    hint: str


@dataclass(frozen=True)
class SocLimits:
    """ATC's limits for one --soc_version.

    Attributes:
        gear_min / gear_max: profiles a gear option takes.
        allows_shape_ranges: whether ATC builds dynamic-shape models (ranges, -1 without gears).
        source: where the limits come from (a target profile, a soc rule, or the ATC fragment).
    """

    gear_min: int
    gear_max: int
    allows_shape_ranges: bool
    source: str


# ---------------------------------------------------------------------------------- limits
def _data_file(name: str) -> dict:
    from . import DATA_DIR

    path = DATA_DIR / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read ATC limits file '{path}': {exc}", "restore the file from the package") from exc


def _gears_pair(value, where: str) -> tuple[int, int]:
    if not (isinstance(value, dict) and isinstance(value.get("min"), int) and isinstance(value.get("max"), int)):
        raise ConfigError(f"{where}: gears must be {{\"min\": 2, \"max\": 100}}", "fix the data file")
    return value["min"], value["max"]


@lru_cache(maxsize=1)
def _common() -> SocLimits:
    data = _data_file("_atc_common.json")
    lo, hi = _gears_pair(data["gears"]["value"], "_atc_common.json")
    return SocLimits(lo, hi, True, f"_atc_common.json: {data['gears']['source']}")


@lru_cache(maxsize=1)
def _rules() -> tuple[dict, ...]:
    rules = _data_file("_atc_soc_rules.json").get("rules")
    if not isinstance(rules, list):
        raise ConfigError("_atc_soc_rules.json: 'rules' must be a list", "fix the data file")
    known = {"soc", "soc_prefix", "gears", "allows_shape_ranges", "source", "confidence", "note"}
    for r in rules:
        if not (("soc" in r) ^ ("soc_prefix" in r)) or not r.get("source") or r.get("confidence") not in ("V", "S", "M"):
            raise ConfigError(f"_atc_soc_rules.json: rule {r!r} needs one of soc / soc_prefix, a source and "
                              "a confidence V, S or M", "fix the data file")
        if set(r) - known:
            raise ConfigError(f"_atc_soc_rules.json: rule {r!r} has unknown keys {sorted(set(r) - known)}",
                              f"use only {sorted(known)}")
    return tuple(rules)


def _profile_for(soc: str):
    """The target profile with gear limits (its `gears` figure is not null: its toolchain has
    gears) whose soc_version or alias is `soc` (None when there is none)."""
    from . import TARGETS

    for _, t in TARGETS.items():
        if t.gear_min is not None and t.gear_max is not None and (t.soc_version == soc or soc in t.aliases):
            return t
    return None


def soc_limits(soc_version: str | None) -> SocLimits:
    """ATC's gear and shape-range limits for `soc_version` (see the module docstring for the order)."""
    base = _common()
    soc = soc_version or ""
    if soc:
        t = _profile_for(soc)
        if t is not None:
            return SocLimits(t.gear_min, t.gear_max, t.allows_shape_ranges, f"target profile {t.name}")
        for r in _rules():
            if r.get("soc") == soc or (r.get("soc_prefix") and soc.startswith(r["soc_prefix"])):
                lo, hi = (_gears_pair(r["gears"], "_atc_soc_rules.json") if "gears" in r
                          else (base.gear_min, base.gear_max))
                return SocLimits(lo, hi, bool(r.get("allows_shape_ranges", base.allows_shape_ranges)),
                                 f"_atc_soc_rules.json: {r['source']}")
    return base


def min_gears_for(soc_version: str | None) -> int:
    """The fewest profiles a gear option takes on `soc_version` (2)."""
    return soc_limits(soc_version).gear_min


def max_gears_for(soc_version: str | None) -> int:
    """ATC's gear limit on `soc_version`: 100 profiles, 256 on Atlas 350 / Ascend 950."""
    return soc_limits(soc_version).gear_max


def supports_shape_range(soc_version: str | None) -> bool:
    """False on Ascend310 and Ascend310B* (Atlas 200/300/500, 200I/500 A2): no dynamic-shape models."""
    return soc_limits(soc_version).allows_shape_ranges


# ---------------------------------------------------------------------------------- rules
def _is_range(d) -> bool:
    """A `lo~hi` dim: a DimRange (a NamedTuple) in AtcOptions, a (lo, hi) tuple in the simulator's settings."""
    return isinstance(d, tuple)


def _shape_text(shapes: Mapping[str, Sequence]) -> str:
    """The --input_shape string of {name: dims} (no ranges here: they are refused before)."""
    return ";".join(f"{name}:{','.join(str(d) for d in dims)}" for name, dims in shapes.items())


def _v(code: str, flag: str, *args, hint: str) -> GearViolation:
    return GearViolation(code, args, flag, hint)


def gear_violations(input_shape, flag: str, gears, *, soc_version: str | None = None,
                    input_format: str | None = "ND", insert_op_conf: str | None = None,
                    min_gears: int | None = None, max_gears: int | None = None,
                    check_format: bool = True) -> Iterator[GearViolation]:
    """ATC's rules for one gear option, as a pure function of the values, in ATC's order.

    Args:
        input_shape: --input_shape {input: dims}; a dim is an int (-1 = gear-bound) or a
            `lo~hi` range (DimRange, or a (lo, hi) tuple).
        flag: "dynamic_dims", "dynamic_batch_size" or "dynamic_image_size".
        gears: the profiles: one tuple per gear (dynamic_batch_size: ints or 1-tuples).
        soc_version: the target chip, for the gear limits (`soc_limits`).
        input_format: --input_format (dynamic_dims needs ND; dynamic_image_size NCHW / NHWC).
        insert_op_conf: the AIPP config, if any (not combinable with dynamic_dims).
        min_gears / max_gears: override the limits (a target profile's `gears` figure).
        check_format: apply the --input_format rules (off where the format is not recorded, as in
            the simulator's settings).
    """
    shapes = input_shape
    gears = tuple((g,) if not isinstance(g, (tuple, list)) else tuple(g) for g in gears)
    if not shapes:
        yield _v("E10004", "input_shape", "input_shape",
                 hint=f"--{flag} needs --input_shape with -1 on the gear-bound dims")
        return
    ranges = any(_is_range(d) for dims in shapes.values() for d in dims)
    n_dyn = sum(1 for dims in shapes.values() for d in dims if not _is_range(d) and d == -1)
    if ranges or n_dyn == 0:
        yield _v("E10040", "input_shape", hint=(
            f"with --{flag}, write -1 (not a range) in --input_shape for each gear-bound dim; "
            "without gears, drop the gear option"))
        return
    yield from _count_rules(gears, flag, soc_version, min_gears, max_gears)
    counts = sorted({len(g) for g in gears})
    yield from _value_rules(gears, flag, counts)
    if flag == "dynamic_batch_size":
        yield from _batch_shapes(shapes)
    elif flag == "dynamic_image_size":
        if check_format:  # which dims are H and W depends on the format
            yield from _image_shapes(shapes, input_format)
    else:
        yield from _dims_shapes(shapes, gears, counts, n_dyn, input_format if check_format else "ND",
                                insert_op_conf)


def _count_rules(gears, flag: str, soc_version, min_gears, max_gears) -> Iterator[GearViolation]:
    """E10035 / E10036: fewer / more profiles than the chip takes."""
    lo = min_gears_for(soc_version) if min_gears is None else min_gears
    limit = max_gears_for(soc_version) if max_gears is None else max_gears
    if len(gears) < lo:
        yield _v("E10035", flag, len(gears), lo, hint=(
            "give at least 2 profiles; for a single size use a static --input_shape instead"))
    elif len(gears) > limit:
        yield _v("E10036", flag, len(gears), limit, hint=(
            f"{PLAN_HINT}; each profile is compiled as a separate static graph"))


def _value_rules(gears, flag: str, counts: list[int]) -> Iterator[GearViolation]:
    """E10037 / E10038 / E10039: value counts differ, a value ≤ 0, a repeated profile."""
    if len(counts) > 1:
        yield _v("E10037", flag, counts[0], counts[-1], hint=(
            "every profile gives one value per -1 in --input_shape, in the same order"))
    for g in gears:
        bad = [v for v in g if v <= 0]
        if bad:
            yield _v("E10038", flag, bad[0], hint="gear values are positive integers")
            break
    if len(set(gears)) != len(gears):
        yield _v("E10039", flag, hint=f"remove the repeated profiles; {PLAN_HINT}")


def _batch_shapes(shapes) -> Iterator[GearViolation]:
    found = False
    for name, dims in shapes.items():
        if -1 not in dims:
            continue
        if not dims:
            yield _v("E10012", "dynamic_batch_size", hint="scalar inputs cannot take batch gears")
            return
        text = f"{name}:{','.join(str(d) for d in dims)}"
        if dims[0] != -1 or dims.count(-1) > 1:
            idx = next(i for i, d in enumerate(dims) if d == -1 and i > 0)
            yield _v("E10018", "input_shape", dims[idx], text, hint=(
                "with --dynamic_batch_size only N (the first dim) may be -1; use --dynamic_dims for other dims"))
            return
        found = True
    if not found:
        yield _v("E10031", "input_shape", hint="write -1 as the batch dim of the batched inputs")


def _image_shapes(shapes, input_format: str | None) -> Iterator[GearViolation]:
    if input_format not in ("NCHW", "NHWC"):
        yield _v("E10003", "input_format", input_format, "input_format", "This format is not supported.",
                 hint="--dynamic_image_size needs --input_format=NCHW or NHWC")
        return
    hw = (2, 3) if input_format == "NCHW" else (1, 2)
    for dims in shapes.values():
        if -1 not in dims:
            continue
        ok = len(dims) == 4 and all(dims[i] == -1 for i in hw) and dims.count(-1) == 2
        if not ok:
            yield _v("E10019", "input_shape", hint="write -1 for H and W only, e.g. data:1,3,-1,-1 with NCHW")
            return


def _dims_shapes(shapes, gears, counts: list[int], n_dyn: int, input_format: str | None,
                 insert_op_conf: str | None) -> Iterator[GearViolation]:
    if input_format != "ND":
        yield _v("E10001", "input_format", input_format or "", "--input_format",
                 "input_format must be ND when set dynamic_dims", hint="add --input_format=ND")
    per_gear = counts[0] if len(counts) == 1 else None
    if per_gear is not None and per_gear != n_dyn:
        hint = (f"--input_shape {_shape_text(shapes)} has {n_dyn} -1 dims, so every "
                f"--dynamic_dims profile needs {n_dyn} values (one per -1, in order); "
                "prefill_gear_shapes() builds both strings together")
        if n_dyn > per_gear:
            yield _v("E10045", "dynamic_dims", hint=hint)
        else:
            yield _v("E10003", "dynamic_dims", ";".join(",".join(str(v) for v in g) for g in gears), "dynamic_dims",
                     "Each setting needs to be consistent with the number of -1 in the input shape.", hint=hint)
    if insert_op_conf is not None:
        yield _v("E10047", "insert_op_conf", "dynamic_dims", "insert_op_conf", hint=(
            "AIPP cannot be combined with --dynamic_dims: drop AIPP (preprocess on the host) "
            "or use --dynamic_batch_size / --dynamic_image_size"))
