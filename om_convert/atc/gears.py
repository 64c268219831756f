"""Gear planning for dynamic sequence lengths under ATC's limits.

ATC has no dynamic sequence length for the 310 family: a dim marked -1 in --input_shape must be
bound to a list of profiles ("gears", 2–100, 256 on Ascend950: the chip's limits come from the
target data through `ascend_adapt.targets.gear_rules`) and ATC compiles one static graph
per gear into the OM. At run time the host pads a prompt up to the smallest gear that holds it
and calls `aclmdlSetInputDynamicDims`. So the planner's job is: few gears (each one costs compile
time and OM size), little padding, and the largest gear covering `max_len`.

Example:
    >>> plan_gears(1, 1000)
    [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    >>> plan = prefill_gear_shapes({"input_ids": [1, "seq"], "attention_mask": [1, "seq+1024"]},
    ...                            [128, 256])
    >>> plan.input_shape_str, plan.dynamic_dims_str
    ('input_ids:1,-1;attention_mask:1,-1', '128,1152;256,1280')
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

from ascend_adapt.errors import ConfigError

from .errors import AtcValidationError
from ascend_adapt.targets.gear_rules import gear_violations, max_gears_for, min_gears_for

from .options import AtcOptions, format_input_shape

STRATEGIES = ("pow2", "linear", "explicit")
# what to do when prefill gears break ATC's count / duplicate rules (prefill_gear_shapes)
_PREFILL_HINTS = {"E10035": "plan at least two gears with plan_gears()",
                  "E10036": "plan fewer gears with plan_gears(max_gears=...)",
                  "E10039": "remove repeated gears"}


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"gear planner: {name}={value!r} is not a positive integer",
                          f"pass {name} as an integer >= 1")
    return value


def _thin(gears: list[int], max_gears: int) -> list[int]:
    """Keep `max_gears` values: the last one (it covers max_len) and evenly spaced others."""
    if len(gears) <= max_gears:
        return gears
    rest, last = gears[:-1], gears[-1]
    keep = max_gears - 1
    idx = sorted({round(i * (len(rest) - 1) / max(keep - 1, 1)) for i in range(keep)})
    return [rest[i] for i in idx] + [last]


def _round_up(value: int, align: int, cap: int) -> int:
    return min(cap, ((value + align - 1) // align) * align)


def plan_gears(
    min_len: int | None,
    max_len: int | None,
    max_gears: int = 100,
    strategy: str = "pow2",
    *,
    gears: Sequence[int] | None = None,
    step: int | None = None,
    align: int = 1,
    soc_version: str | None = None,
) -> list[int]:
    """Plan prefill sequence-length gears.

    Strategies:
        pow2: the powers of two in [min_len, max_len), then max_len. Padding waste is below 2x
            and the gear count grows with log2(max_len); thinned evenly if over `max_gears`.
        linear: min_len, min_len+step, ... then max_len; `step` defaults to the smallest one that
            keeps the count within `max_gears`. Less padding, more gears.
        explicit: the `gears` given, sorted and de-duplicated, checked against ATC's limits and
            required to cover `max_len` when it is given.

    Args:
        min_len: the shortest prompt to serve (>= 1).
        max_len: the longest prompt; the last gear equals it (for explicit: at least it).
        max_gears: at most this many gears (2..100, up to 256 when soc_version is Ascend950*).
        strategy: "pow2", "linear" or "explicit".
        gears: the explicit gear list.
        step: the linear step.
        align: round gears up to a multiple of this (e.g. 16 for Cube-friendly tiles); the last
            gear stays max_len.
        soc_version: the target, for its gear limit.

    Returns:
        A sorted list of unique gear values, 2 <= len <= max_gears, the last >= max_len.

    Raises:
        AtcValidationError: E10035 / E10036 / E10038 when no plan within ATC's limits exists.
        ConfigError: invalid planner arguments.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"gear planner: unknown strategy {strategy!r}", f"use one of {', '.join(STRATEGIES)}")
    least = _check_max_gears(max_gears, soc_version)
    align = _positive_int("align", align)
    if strategy == "explicit":
        plan = _explicit_plan(gears, max_len)
    else:
        plan = _range_plan(min_len, max_len, max_gears, strategy, step, align, least)
    if len(plan) < least:
        raise AtcValidationError.from_code("E10035", len(plan), least, flag="dynamic_dims",
                                           hint="give at least two gears, or use a static shape")
    if len(plan) > max_gears:
        raise AtcValidationError.from_code(
            "E10036", len(plan), max_gears, flag="dynamic_dims",
            hint="use a larger step, strategy='pow2', or fewer explicit gears")
    return plan


def _check_max_gears(max_gears, soc_version: str | None) -> int:
    """Refuse a `max_gears` outside the chip's limits; return the chip's minimum gear count."""
    least, limit = min_gears_for(soc_version), max_gears_for(soc_version)
    if isinstance(max_gears, bool) or not isinstance(max_gears, int) or not least <= max_gears <= limit:
        raise ConfigError(
            f"gear planner: max_gears={max_gears!r} is outside ATC's limits {least}..{limit}"
            + (f" for {soc_version}" if soc_version else ""),
            f"pass max_gears between {least} and {limit}")
    return least


def _explicit_plan(gears: Sequence[int] | None, max_len: int | None) -> list[int]:
    """The explicit gears, sorted and de-duplicated; positive, the last covering `max_len`."""
    if gears is None:
        raise ConfigError("gear planner: strategy 'explicit' needs gears=[...]", "pass gears=[128, 256, ...]")
    values = [int(g) for g in gears]
    bad = [g for g in values if g <= 0]
    if bad:
        raise AtcValidationError.from_code("E10038", bad[0], flag="dynamic_dims",
                                           hint="gear values are positive integers")
    plan = sorted(set(values))
    if max_len is not None and plan and plan[-1] < _positive_int("max_len", max_len):
        raise ConfigError(
            f"gear planner: the largest gear {plan[-1]} does not cover max_len={max_len}",
            f"add a gear >= {max_len}, or lower max_len")
    return plan


def _range_plan(min_len, max_len, max_gears: int, strategy: str, step: int | None, align: int,
                least: int) -> list[int]:
    """The pow2 or linear gears from min_len to max_len, rounded up to `align` (pow2: thinned)."""
    lo = _positive_int("min_len", min_len)
    hi = _positive_int("max_len", max_len)
    if hi < lo:
        raise ConfigError(f"gear planner: max_len={hi} is below min_len={lo}", "swap them")
    if hi == lo:
        raise AtcValidationError.from_code(
            "E10035", 1, least, flag="dynamic_dims",
            hint=f"min_len == max_len ({lo}): no gears are needed, use a static --input_shape")
    if strategy == "pow2":
        plan = _pow2_gears(lo, hi, least)
    else:
        if step is None:
            step = max(1, math.ceil((hi - lo) / (max_gears - 1)))
            step = math.ceil(step / align) * align
        step = _positive_int("step", step)
        plan = list(range(lo, hi, step)) + [hi]
    plan = sorted({_round_up(g, align, hi) for g in plan})
    return _thin(plan, max_gears) if strategy == "pow2" else plan


def _pow2_gears(lo: int, hi: int, least: int) -> list[int]:
    """The powers of two in [lo, hi), then hi (lo first when that leaves fewer than `least`)."""
    p = 1
    plan = []
    while p < hi:
        if p >= lo:
            plan.append(p)
        p *= 2
    plan.append(hi)
    if len(plan) < least:
        plan.insert(0, lo)
    return plan


# ---------------------------------------------------------------------------------------------
# gears -> --input_shape / --dynamic_dims for an LLM prefill graph

_EXPR = re.compile(
    r"^\s*(?:(?P<mul1>\d+)\s*\*\s*)?(?P<name>[A-Za-z_]\w*)(?:\s*\*\s*(?P<mul2>\d+))?"
    r"(?:\s*(?P<op>[+-])\s*(?P<add>\d+))?\s*$"
)


def _seq_expr(text: str, seq: str):
    """Parse "seq", "seq+K", "seq-K", "K*seq", "seq*K" (and "K*seq+C") into (mul, add)."""
    m = _EXPR.match(text)
    if not m or m.group("name") != seq:
        raise ConfigError(
            f"prefill gears: dim {text!r} is not an expression of {seq!r}",
            f"write dims as integers or as {seq}, {seq}+K, {seq}-K or K*{seq}")
    mul = int(m.group("mul1") or 1) * int(m.group("mul2") or 1)
    add = int(m.group("add") or 0) * (-1 if m.group("op") == "-" else 1)
    return mul, add


class GearShapes(NamedTuple):
    """--input_shape with -1 on every seq-dependent dim, and the matching --dynamic_dims.

    Attributes:
        input_shape: {input name: dims} with -1 where the sequence length goes.
        dynamic_dims: one profile per gear, one value per -1 in input order.
        gears: the sequence-length gears the profiles were made from.
    """

    input_shape: dict
    dynamic_dims: tuple
    gears: tuple

    @property
    def input_shape_str(self) -> str:
        return format_input_shape(self.input_shape)

    @property
    def dynamic_dims_str(self) -> str:
        return ";".join(",".join(str(v) for v in g) for g in self.dynamic_dims)

    def apply(self, options: AtcOptions) -> AtcOptions:
        """A copy of `options` with input_format=ND, these shapes and gears (other gear flags cleared)."""
        return options.replace(input_format="ND", input_shape=self.input_shape,
                               dynamic_dims=self.dynamic_dims, dynamic_batch_size=None,
                               dynamic_image_size=None, input_shape_range=None)


def prefill_gear_shapes(
    shapes: Mapping[str, Sequence[int | str]],
    gears: Sequence[int],
    seq: str = "seq",
    *,
    soc_version: str | None = None,
) -> GearShapes:
    """Turn sequence-length gears into --input_shape (-1) and --dynamic_dims for all inputs.

    Every dim that depends on the sequence length is written as a string expression of `seq`
    ("seq", "seq+1024" for a mask over prompt + static KV cache, "2*seq"); fixed dims are ints.
    Each gear g becomes one --dynamic_dims profile holding every such dim evaluated at g, in the
    order the dims appear in `shapes` (ATC's order for -1 values).

    Args:
        shapes: {input name: dims}, e.g.
            {"input_ids": [1, "seq"], "position_ids": [1, "seq"],
             "attention_mask": [1, "seq+1024"], "past_key_values": [32, 2, 1, 32, 1024, 128]}.
        gears: sequence lengths (from `plan_gears`).
        seq: the symbol used for the sequence length.
        soc_version: the target, for its gear limit.

    Returns:
        GearShapes; `.apply(options)` puts them on AtcOptions.

    Raises:
        ConfigError: no dim depends on `seq`, a dim is -1 already, or a dim evaluates to <= 0.
        AtcValidationError: the gears break ATC's limits (E10035 / E10036 / E10039).
    """
    gears = tuple(int(g) for g in gears)
    # ATC's count and duplicate rules (the core's one definition), with the planner's advice
    for v in gear_violations({seq: (-1,)}, "dynamic_dims", [(g,) for g in gears], soc_version=soc_version):
        if v.code in _PREFILL_HINTS:
            raise AtcValidationError.from_code(v.code, *v.args, flag=v.flag, hint=_PREFILL_HINTS[v.code])
    input_shape: dict[str, tuple[int, ...]] = {}
    exprs: list[tuple[str, int, int]] = []
    for name, dims in shapes.items():
        out = []
        for d in dims:
            if isinstance(d, str) and not d.strip().lstrip("-").isdigit():
                mul, add = _seq_expr(d, seq)
                exprs.append((f"{name}:{d}", mul, add))
                out.append(-1)
            else:
                v = int(d)
                if v <= 0:
                    raise ConfigError(
                        f"prefill gears: input {name!r} has dim {v}; fixed dims must be positive",
                        f"write the sequence dim as {seq!r} instead of -1")
                out.append(v)
        input_shape[name] = tuple(out)
    if not exprs:
        raise ConfigError(f"prefill gears: no input dim depends on {seq!r}",
                          f"write the sequence dims as {seq!r} (e.g. input_ids: [1, {seq!r}])")
    profiles = []
    for g in gears:
        values = []
        for where, mul, add in exprs:
            v = mul * g + add
            if v <= 0:
                raise ConfigError(f"prefill gears: {where} is {v} at gear {g}", "raise the smallest gear")
            values.append(v)
        profiles.append(tuple(values))
    return GearShapes(input_shape, tuple(profiles), gears)


# ---------------------------------------------------------------------------------------------
# compile cost


@dataclass(frozen=True)
class CompileCostEstimate:
    """What a gear plan costs at ATC time.

    Attributes:
        gear_count: number of gears (static graphs compiled).
        seconds: estimated ATC wall time in seconds.
        om_bytes: estimated OM size in bytes (weights once + one graph/task section per gear).
        assumption: the model behind the numbers, to print beside them.
    """

    gear_count: int
    seconds: float
    om_bytes: int
    assumption: str


COMPILE_COST_ASSUMPTION = (
    "ATC builds one static graph per gear: time = fixed_seconds (parse, weight handling, graph "
    "fusion) + seconds_per_gear x gears (op selection, tiling, kernel compile and task generation "
    "per shape). The op compile cache shares kernels between gears only partly, so this linear "
    "estimate is on the high side. Weights are stored once; each gear adds its own graph/task "
    "section. The default per-gear and fixed times are placeholders [M], not measurements: time one "
    "single-gear build on your host and pass seconds_per_gear / fixed_seconds."
)


def estimate_compile_cost(
    gears: Sequence[int],
    *,
    seconds_per_gear: float = 60.0,
    fixed_seconds: float = 30.0,
    weight_bytes: int = 0,
    bytes_per_gear: int = 0,
) -> CompileCostEstimate:
    """Estimate ATC time and OM size for a gear plan (cost scales with the gear count).

    Args:
        gears: the planned gears (only their count matters in this model).
        seconds_per_gear: compile time of one static graph, seconds.
        fixed_seconds: time independent of the gear count, seconds.
        weight_bytes: bytes of weights stored in the OM (0 with --external_weight).
        bytes_per_gear: graph + task bytes one gear adds to the OM.

    Returns:
        CompileCostEstimate with the assumption text.
    """
    n = len(gears) if gears else 1
    return CompileCostEstimate(
        gear_count=n,
        seconds=float(fixed_seconds) + float(seconds_per_gear) * n,
        om_bytes=int(weight_bytes) + int(bytes_per_gear) * n,
        assumption=COMPILE_COST_ASSUMPTION,
    )
