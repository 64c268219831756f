"""layernorm_to_primitives: LayerNormalization -> ReduceMean/Sub/Pow/Add/Sqrt/Div/Mul/Add.

ATC registers LayerNormalization for opsets 17-18 only, and CANN <= 6.0 parses opsets 9-13, so
older toolchains (or a downconverted model) need the primitive form older exporters emitted:

    mean = ReduceMean(x, axes); d = x - mean; var = ReduceMean(d^2, axes)
    y = d / Sqrt(var + epsilon) * scale (+ bias)

`axes` are the dims from `axis` to the last. With `stash_type=1` and a float16 input, statistics
are computed in float32 (Cast in and out), as the op specifies. Graphs that read the optional
Mean / InvStdDev outputs get them too (InvStdDev = 1 / Sqrt(var + eps)).
"""

from __future__ import annotations

import numpy as np
import onnx

from .base import NodeRule, RewriteContext, register_rule
from ._graph import attrs_of, np_dtype


def reduce_mean(ctx: RewriteContext, x: str, axes: list[int], name: str) -> list[onnx.NodeProto]:
    """ReduceMean(keepdims=1) over `axes`, with axes as attribute (opset < 18) or input (>= 18)."""
    if ctx.opset() >= 18:
        ax = ctx.add_initializer(f"{name}_axes", np.array(axes, dtype=np.int64))
        return [ctx.node("ReduceMean", [x, ax], name=name, keepdims=1)]
    return [ctx.node("ReduceMean", [x], name=name, axes=axes, keepdims=1)]


@register_rule
class LayerNormToPrimitives(NodeRule):
    name = "layernorm_to_primitives"
    summary = "LayerNormalization -> ReduceMean/Sub/Pow/Add/Sqrt/Div/Mul/Add (CANN < 7 or opset < 17)."
    op_type = "LayerNormalization"
    op_types = ("LayerNormalization",)
    when = "needed"
    order = 40

    def check(self, ctx: RewriteContext, node: onnx.NodeProto) -> str | None:
        axis = int(attrs_of(node).get("axis", -1))
        shape = ctx.shape(node.input[0])
        if axis >= 0 and shape is None:
            return f"axis={axis} needs the input rank, which shape inference did not give"
        if ctx.dtype(node.input[0]) == 0:
            return "input dtype unknown"
        return None

    def rewrite(self, ctx: RewriteContext, node: onnx.NodeProto) -> None:
        a = attrs_of(node)
        axis, eps, stash = int(a.get("axis", -1)), float(a.get("epsilon", 1e-5)), int(a.get("stash_type", 1))
        x = node.input[0]
        scale = node.input[1]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        shape = ctx.shape(x)
        rank = len(shape) if shape is not None else None
        axes = list(range(axis, 0)) if axis < 0 else [k - rank for k in range(axis, rank)]
        base = node.name or "layernorm"
        in_dt = ctx.dtype(x)
        nodes: list[onnx.NodeProto] = []
        cdt = in_dt
        if stash == 1 and in_dt in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
            c = ctx.node("Cast", [x], name=f"{base}_to_f32", to=onnx.TensorProto.FLOAT)
            nodes.append(c)
            x, cdt = c.output[0], onnx.TensorProto.FLOAT
        dt = np_dtype(cdt)
        mean = reduce_mean(ctx, x, axes, f"{base}_mean")
        d = ctx.node("Sub", [x, mean[-1].output[0]], name=f"{base}_center")
        two = ctx.add_initializer(f"{base}_two", np.array(2.0, dtype=dt))
        sq = ctx.node("Pow", [d.output[0], two], name=f"{base}_sq")
        var = reduce_mean(ctx, sq.output[0], axes, f"{base}_var")
        e = ctx.add_initializer(f"{base}_eps", np.array(eps, dtype=dt))
        ve = ctx.node("Add", [var[-1].output[0], e], name=f"{base}_var_eps")
        std = ctx.node("Sqrt", [ve.output[0]], name=f"{base}_std")
        norm = ctx.node("Div", [d.output[0], std.output[0]], name=f"{base}_norm")
        nodes += mean + [d, sq] + var + [ve, std, norm]
        y = norm.output[0]
        if cdt != in_dt:
            back = ctx.node("Cast", [y], name=f"{base}_to_in", to=in_dt)
            nodes.append(back)
            y = back.output[0]
        out_y = node.output[0]
        mul = ctx.node("Mul", [y, scale], [out_y] if bias is None else 1, name=f"{base}_scale")
        nodes.append(mul)
        if bias is not None:
            nodes.append(ctx.node("Add", [mul.output[0], bias], [out_y], name=f"{base}_bias"))
        if len(node.output) > 1 and node.output[1]:
            nodes.append(ctx.node("Identity", [mean[-1].output[0]], [node.output[1]], name=f"{base}_mean_out"))
        if len(node.output) > 2 and node.output[2]:
            nodes.append(ctx.node("Reciprocal", [std.output[0]], [node.output[2]], name=f"{base}_invstd"))
        ctx.insert(nodes, before=node)
        ctx.remove([node])
