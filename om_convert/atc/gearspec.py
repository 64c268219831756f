"""The one parser for gear and shape text: `--gears`, ATC's `--dynamic_dims` and `--input_shape`.

Every command that takes gears (`convert`, `export`), the typed ATC options (`AtcOptions`), the
simulator's settings and `analyze --input-shape` parse their text here, so one string means one
thing everywhere and a bad one is refused with the same message.

Grammar (ATC's, `hicann/ge:api/atc/atc_flags.cc`, reference sheet §1.1):

- gears / `--dynamic_dims`: profiles separated by `;`, the values of one profile by `,`; one
  value per `-1` of `--input_shape`, in input order. `"1,8;4,8"` is two profiles of two values.
  One trailing `;` is ignored, as ATC does. Values are positive integers.
- prefill gears of a checkpoint (`convert DIR --gears`, `export --gears`): every gear is ONE
  prefill length, so `"16;32;64"` and `"16,32,64"` both mean the three lengths 16, 32, 64
  (the comma form is how `--dynamic_batch_size` lists its values and how people write a list).
  A string that mixes both separators (`"16,32;64"`) is ambiguous and refused.
- `--input_shape`: inputs separated by `;`, name and dims by the LAST `:` (names may contain
  `:`), dims by `,`; a dim is an integer (-1 = gear-bound / dynamic) or a range `lo~hi`;
  `"x:"` is a scalar input.

Example:
    >>> parse_gears("1,8;4,8")
    ((1, 8), (4, 8))
    >>> parse_prefill_gears("16,32,64"), parse_prefill_gears("16;32;64")
    ([16, 32, 64], [16, 32, 64])
    >>> parse_input_shape("input_ids:1,-1;x:0:1,3;step:")
    {'input_ids': (1, -1), 'x:0': (1, 3), 'step': ()}
"""

from __future__ import annotations

import re
from typing import Mapping, NamedTuple, Sequence, Union

from ascend_adapt.errors import ConfigError

from .errors import AtcValidationError

GEARS_SYNTAX = ('profiles separated by ";", the values of a profile by "," (one value per -1 of '
                '--input-shape), positive integers, no repeated profile: e.g. "16;32;64" or "1,8;4,8"')
PREFILL_GEARS_SYNTAX = ('prefill lengths (positive integers, each once) separated by ";" or by ",", '
                        'not both: e.g. "16;32;64" (decode gear 1 is added for you)')

_DIGITS = re.compile(r"[0-9]+")


class GearSyntaxError(ConfigError):
    """Gear or shape text that does not parse.

    Attributes:
        option: the option, e.g. "--gears".
        text: the whole value given.
        token: the offending piece of it ("" when the whole value is at fault).
        reason: why, in a few words.
    """

    def __init__(self, option: str, text: str, token: str, reason: str, hint: str):
        where = f": '{token}' {reason}" if token else f" {reason}"
        super().__init__(f"{option} '{text}'{where}", hint)
        self.option, self.text, self.token, self.reason = option, text, token, reason


# ---------------------------------------------------------------------------------------------
# gears / --dynamic_dims


def _positive(token: str, option: str, text: str, hint: str, *, allow_zero: bool = False) -> int:
    """One gear value: ASCII digits only (no sign, no decimal point), > 0 unless `allow_zero`."""
    t = token.strip()
    if not t:
        raise GearSyntaxError(option, text, "", "has an empty value (two separators in a row, or a "
                              "separator at the start or end)", hint)
    if not _DIGITS.fullmatch(t):
        raise GearSyntaxError(option, text, t, "is not a positive integer", hint)
    v = int(t)
    if v == 0 and not allow_zero:
        raise GearSyntaxError(option, text, t, "is not a positive integer (gear values are >= 1)", hint)
    return v


def split_profiles(text: str, option: str = "--dynamic_dims", *, strict: bool = True,
                   hint: str | None = None) -> tuple[tuple[int, ...], ...]:
    """Split gear text into profiles of integers (the grammar; `parse_gears` adds the rules).

    Args:
        text: e.g. "16,16;32,32". One trailing ";" is ignored.
        option: the option name used in messages.
        strict: refuse 0 as well (False keeps ATC's own order: its parser takes any digits and
            `validate()` reports 0 with E10038).
        hint: the `fix:` line (default: the gear syntax).

    Raises:
        GearSyntaxError: an empty value, or a value that is not made of digits (or is 0 when
            `strict`), quoting the bad token.
    """
    hint = hint or f"write {option} as {GEARS_SYNTAX}"
    body = str(text).strip()
    if body.endswith(";"):
        body = body[:-1]
    if not body.strip():
        raise GearSyntaxError(option, str(text), "", "is empty", hint)
    return tuple(tuple(_positive(v, option, str(text), hint, allow_zero=not strict) for v in profile.split(","))
                 for profile in body.split(";"))


def _profile_text(profile: Sequence[int]) -> str:
    return ",".join(str(v) for v in profile)


def parse_gears(text: str, *, option: str = "--gears", values_per_gear: int | None = None
                ) -> tuple[tuple[int, ...], ...]:
    """Parse gears for a graph with dynamic dims (`convert MODEL.onnx --gears`, `--dynamic_dims`).

    Args:
        text: profiles, e.g. "1;4;8" (one dynamic dim) or "1,8;4,8" (two).
        option: the option name used in messages.
        values_per_gear: the number of -1 dims in --input-shape, when known: every profile must
            give exactly that many values.

    Returns:
        One tuple per gear, in the order given.

    Raises:
        GearSyntaxError: a value that is not a positive integer, profiles of different lengths,
            a repeated profile, or a profile length other than `values_per_gear` (with "did you
            mean" when the text is one comma list that would fit as separate gears).
    """
    gears = split_profiles(text, option)
    hint = f"write {option} as {GEARS_SYNTAX}"
    if values_per_gear is not None:
        for g in gears:
            if len(g) != values_per_gear:
                mean = ""
                if values_per_gear == 1 and len(gears) == 1:
                    mean = f"; did you mean {';'.join(str(v) for v in g)} ({len(g)} gears)?"
                raise GearSyntaxError(
                    option, str(text), _profile_text(g),
                    f"has {len(g)} values, but each gear needs {values_per_gear} (one per -1 in "
                    f"--input-shape){mean}", hint)
    counts = {len(g) for g in gears}
    if len(counts) > 1:
        first = gears[0]
        odd = next(g for g in gears if len(g) != len(first))
        raise GearSyntaxError(option, str(text), _profile_text(odd),
                              f"has {len(odd)} values, but '{_profile_text(first)}' has {len(first)}: "
                              "every gear gives one value per -1 in --input-shape", hint)
    seen: set[tuple[int, ...]] = set()
    for g in gears:
        if g in seen:
            raise GearSyntaxError(option, str(text), _profile_text(g), "is given twice (each gear once)", hint)
        seen.add(g)
    return gears


def parse_prefill_gears(text: str, *, option: str = "--gears") -> list[int]:
    """Parse the prefill lengths of a checkpoint's gear build (`convert DIR --gears`, `export --gears`).

    Every gear of an LLM step graph is one length, so "16;32;64" and "16,32,64" both give
    [16, 32, 64]; "16,32;64" mixes the separators and is refused (did you mean "16;32;64"?).

    Args:
        text: the option's value.
        option: the option name used in messages.

    Returns:
        The lengths in the order given (the builder sorts them and adds the decode gear 1).

    Raises:
        GearSyntaxError: mixed separators, an empty value, a value that is not a positive
            integer, or a length given twice — quoting the bad token.
    """
    hint = f"write {option} as {PREFILL_GEARS_SYNTAX}"
    raw = str(text)
    body = raw.strip()
    if body.endswith(";") or body.endswith(","):
        body = body[:-1]
    if not body.strip():
        raise GearSyntaxError(option, raw, "", "is empty", hint)
    if ";" in body and "," in body:
        tokens = [t.strip() for t in re.split(r"[;,]", body)]
        mean = ";".join(tokens) if all(_DIGITS.fullmatch(t) for t in tokens) else None
        raise GearSyntaxError(
            option, raw, "", "mixes ';' and ','; for a checkpoint every gear is ONE prefill length",
            (f"did you mean {mean}? " if mean else "") + hint)
    sep = "," if "," in body else ";"
    values = [_positive(t, option, raw, hint) for t in body.split(sep)]
    seen: set[int] = set()
    for v in values:
        if v in seen:
            raise GearSyntaxError(option, raw, str(v), "is given twice (each prefill length once)", hint)
        seen.add(v)
    return values


def format_gears(gears: Sequence[Sequence[int]]) -> str:
    """The text of profiles (inverse of `split_profiles`): "16,16;32,32"."""
    return ";".join(_profile_text(g) for g in gears)


# ---------------------------------------------------------------------------------------------
# --input_shape


class DimRange(NamedTuple):
    """A dynamic dimension range `lo~hi` in --input_shape (a dynamic-shape model, not gears)."""

    lo: int
    hi: int

    def __str__(self) -> str:
        return f"{self.lo}~{self.hi}"


Dim = Union[int, DimRange]

_INPUT_SHAPE_SAMPLE = '"input_name1:n1,c1,h1,w1"'


def _shape_error(value: str, reason: str, sample: str = _INPUT_SHAPE_SAMPLE) -> AtcValidationError:
    return AtcValidationError.from_code(
        "E10002", value, reason, sample, flag="input_shape",
        hint='write --input_shape as "name1:d1,d2;name2:d1,d2" with integers, -1 or lo~hi ranges',
    )


def parse_dim(text: str, whole: str | None = None) -> Dim:
    """One --input_shape dim: an integer (-1 = dynamic) or a range "lo~hi".

    Raises:
        AtcValidationError: E10002 (ATC's wording), quoting `whole` (default: `text`).
    """
    whole = text if whole is None else whole
    t = str(text).strip()
    if "." in t:
        raise _shape_error(whole, "The float number is unsupported", '"input_name1:1,3,224,224"')
    if "~" in t:
        lo, _, hi = t.partition("~")
        return DimRange(_parse_int(lo, whole), _parse_int(hi, whole))
    return _parse_int(t, whole)


def _parse_int(text: str, whole: str) -> int:
    t = text.strip()
    digits = t[1:] if t.startswith("-") else t
    if not _DIGITS.fullmatch(digits):
        raise _shape_error(whole, "It is not a digit", '"input_name1:1,3,224,224"')
    return int(t)


def parse_input_shape(text: str) -> dict[str, tuple[Dim, ...]]:
    """Parse an --input_shape string into {input name: dims}.

    ATC's syntax: inputs separated by `;`, name and dims separated by the last `:` (names may
    contain `:`, e.g. TensorFlow's `x:0`), dims by `,`. A dim is an integer (-1 = dynamic) or a
    range `lo~hi`. `"x:"` declares a scalar input (empty dims). A trailing `;` is ignored.

    Args:
        text: e.g. "input_ids:1,-1;past:2,1,32,1024,128;step:".

    Returns:
        An insertion-ordered dict, e.g. {"input_ids": (1, -1), ..., "step": ()}.

    Raises:
        AtcValidationError: E10002 when the string is malformed (ATC's wording and reason).
    """
    shapes: dict[str, tuple[Dim, ...]] = {}
    for item in str(text).strip().rstrip(";").split(";"):
        if ":" not in item:
            raise _shape_error(item, "The shape must contain two parts: name and value")
        name, _, dims = item.rpartition(":")
        name = name.strip()
        if not name:
            raise _shape_error(item, "The input name is empty")
        if name in shapes:
            raise _shape_error(item, f"Input {name} is given twice")
        shapes[name] = tuple(parse_dim(d, item) for d in dims.split(",")) if dims.strip() else ()
    return shapes


def format_input_shape(shapes: Mapping[str, Sequence[Dim]]) -> str:
    """The --input_shape string for {name: dims} (inverse of `parse_input_shape`)."""
    return ";".join(f"{name}:{','.join(str(d) for d in dims)}" for name, dims in shapes.items())


def count_dynamic_dims(shapes: Mapping[str, Sequence[Dim]]) -> int:
    """Number of -1 dims over all inputs (the values each --dynamic_dims gear must give)."""
    return sum(1 for dims in shapes.values() for d in dims if d == -1)
