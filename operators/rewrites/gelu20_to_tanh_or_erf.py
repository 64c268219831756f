"""gelu20_to_tanh_or_erf: Gelu (ONNX opset 20) -> primitive ops ATC parses.

ATC registers no parser for Gelu-20 (E19010). The exact form (`approximate="none"`) becomes
``0.5 * x * (1 + Erf(x / sqrt(2)))``; the tanh form (`approximate="tanh"`) becomes
``0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))``. Constants take the input's dtype.
The model stays at opset 20 until `opset_downconvert` lowers it.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from .base import NodeRule, RewriteContext, register_rule
from ._graph import attrs_of, np_dtype


@register_rule
class Gelu20ToTanhOrErf(NodeRule):
    name = "gelu20_to_tanh_or_erf"
    summary = "Gelu (opset 20) -> Erf form or Tanh form of primitive ops."
    op_type = "Gelu"
    op_types = ("Gelu",)
    when = "needed"
    order = 40

    def check(self, ctx: RewriteContext, node: onnx.NodeProto) -> str | None:
        approx = attrs_of(node).get("approximate", "none")
        if approx not in ("none", "tanh"):
            return f"unknown approximate='{approx}'"
        if ctx.dtype(node.input[0]) == 0:
            return "input dtype unknown (run shape inference / give input types)"
        return None

    def rewrite(self, ctx: RewriteContext, node: onnx.NodeProto) -> None:
        x, y = node.input[0], node.output[0]
        dt = np_dtype(ctx.dtype(x))
        base = node.name or "gelu"

        def const(tag: str, v: float) -> str:
            return ctx.add_initializer(f"{base}_{tag}", np.array(v, dtype=dt))

        nodes = []
        if attrs_of(node).get("approximate", "none") == "tanh":
            x3 = ctx.node("Mul", [x, x], name=f"{base}_sq")
            x3b = ctx.node("Mul", [x3.output[0], x], name=f"{base}_cube")
            inner = ctx.node("Mul", [x3b.output[0], const("c", 0.044715)], name=f"{base}_cx3")
            s = ctx.node("Add", [x, inner.output[0]], name=f"{base}_sum")
            sc = ctx.node("Mul", [s.output[0], const("k", math.sqrt(2.0 / math.pi))], name=f"{base}_scale")
            t = ctx.node("Tanh", [sc.output[0]], name=f"{base}_tanh")
            nodes += [x3, x3b, inner, s, sc, t]
            core = t.output[0]
        else:
            d = ctx.node("Div", [x, const("sqrt2", math.sqrt(2.0))], name=f"{base}_div")
            e = ctx.node("Erf", [d.output[0]], name=f"{base}_erf")
            nodes += [d, e]
            core = e.output[0]
        one = ctx.node("Add", [core, const("one", 1.0)], name=f"{base}_add1")
        half = ctx.node("Mul", [x, const("half", 0.5)], name=f"{base}_half")
        out = ctx.node("Mul", [half.output[0], one.output[0]], [y], name=f"{base}_out")
        ctx.insert(nodes + [one, half, out], before=node)
        ctx.remove([node])
