"""trilu_to_const: replace Trilu by a constant (constant input) or a Where with a constant mask.

Trilu exists from opset 14 only (CANN 6.0 parses up to 13) and an older ATC plugin rejected its
`k` input. Causal masks are usually `Trilu(constant)`: the result is folded to an initializer.
With a non-constant input whose last two dims are static, Trilu becomes
`Where(mask, x, 0)` with `mask` a constant bool [rows, cols] initializer (Where broadcasts it).
`k` must be constant.
"""

from __future__ import annotations

import numpy as np
import onnx

from .base import NodeRule, RewriteContext, register_rule
from ._graph import attrs_of, np_dtype


def trilu_mask(rows: int, cols: int, k: int, upper: bool) -> np.ndarray:
    """The bool mask Trilu keeps: [rows, cols], True where the element survives."""
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    return (c - r >= k) if upper else (c - r <= k)


@register_rule
class TriluToConst(NodeRule):
    name = "trilu_to_const"
    summary = "Trilu with constant input -> initializer; with static last-2 dims -> Where(constant mask, x, 0)."
    op_type = "Trilu"
    op_types = ("Trilu",)
    order = 30

    def _k(self, ctx: RewriteContext, node: onnx.NodeProto):
        if len(node.input) < 2 or not node.input[1]:
            return 0
        v = ctx.const_value(node.input[1])
        return None if v is None else int(np.asarray(v).reshape(-1)[0])

    def check(self, ctx: RewriteContext, node: onnx.NodeProto) -> str | None:
        if self._k(ctx, node) is None:
            return f"k input '{node.input[1]}' is not constant"
        if ctx.const_value(node.input[0]) is not None:
            return None
        shape = ctx.shape(node.input[0])
        if shape is None or len(shape) < 2 or not all(isinstance(d, int) and d > 0 for d in shape[-2:]):
            return f"input is not constant and its last two dims are not static ({shape})"
        if ctx.dtype(node.input[0]) == 0:
            return "input dtype unknown"
        return None

    def rewrite(self, ctx: RewriteContext, node: onnx.NodeProto) -> None:
        k = self._k(ctx, node)
        upper = bool(attrs_of(node).get("upper", 1))
        x = ctx.const_value(node.input[0])
        if x is not None:
            out = np.triu(x, k) if upper else np.tril(x, k)
            ctx.remove([node])
            ctx.add_initializer(node.output[0], out.astype(x.dtype), exact=True)
            return
        rows, cols = ctx.shape(node.input[0])[-2:]
        mask = ctx.add_initializer(f"{node.name or 'trilu'}_mask", trilu_mask(rows, cols, k, upper))
        zero = ctx.add_initializer(f"{node.name or 'trilu'}_zero",
                                   np.zeros((), dtype=np_dtype(ctx.dtype(node.input[0]))))
        where = ctx.node("Where", [mask, node.input[0], zero], [node.output[0]], name=f"{node.name or 'trilu'}_where")
        ctx.insert([where], before=node)
        ctx.remove([node])
