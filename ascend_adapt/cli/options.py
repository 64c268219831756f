"""Click parameter types shared by several commands (kept here, light: no numpy, no torch)."""

from __future__ import annotations

import math

import click


class SmoothAlphaType(click.ParamType):
    """The CLI's `--smooth-alpha`: `auto` (the default, searched per input group) or a number in
    [0, 1]; anything else is refused by click naming the option and the accepted forms."""

    name = "auto|0..1"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, float) or value == "auto":
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        try:
            a = float(text)
        except ValueError:
            a = math.nan
        if not 0.0 <= a <= 1.0:  # NaN fails too
            self.fail(f"{value!r}: expected 'auto' (α searched per input group, the default) or a number "
                      "in [0, 1] (one α for every Linear, e.g. 0.5)", param, ctx)
        return a


SMOOTH_ALPHA = SmoothAlphaType()
