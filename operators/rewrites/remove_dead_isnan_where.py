"""remove_dead_isnan_where: drop IsNaN / Where guards that can never change a value.

torch's SDPA export guards the attention probabilities with
``Where(IsNaN(Softmax(scores + mask)), 0, Softmax(...))`` for fully masked rows. When the additive
mask is built only from finite constants (HF masks use `finfo.min`, not -inf), no row of the
softmax input can be all -inf, so the softmax has no NaN for finite scores and the guard is dead:
the Where is replaced by the Softmax output and the IsNaN goes with it.

Also: a Where whose condition is a constant that is all True / all False is replaced by the branch
it always picks (when that branch already has the output's shape).

Assumption (stated in the report): activations are finite, i.e. the scores operand (produced by
MatMul / Gemm / Einsum / Mul / Div) holds no inf; a NaN produced upstream would pass through
unchanged instead of being zeroed.
"""

from __future__ import annotations

import numpy as np
import onnx

from .base import RewriteContext, NodeRule, register_rule

# ops that keep finite float values finite (Add / Sub / Mul are left out: finfo.min + finfo.min
# overflows to -inf, which is exactly how a fully masked row appears)
_PASS = {"Where", "Expand", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Slice", "Identity", "Concat",
         "Transpose", "Gather", "Tile", "Flatten", "Neg", "Min", "Max", "ConstantOfShape", "Trilu", "CastLike"}
# producers taken as attention scores (finite for finite activations: the stated assumption)
_SCORES = {"MatMul", "Gemm", "Einsum", "Mul", "Div"}
_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def finite_origin(ctx: RewriteContext, name: str, depth: int = 0) -> str | None:
    """None when float value `name` is provably finite, else the reason it is not.

    Provably finite: a finite constant, or the output of an op in `_PASS` (select, reshape,
    broadcast, cast, add of finite values, …) whose float inputs are all provably finite; bool and
    int inputs (conditions, indices, shapes, ids) are free, since they only pick between finite
    values.
    """
    if depth > 64:
        return f"'{name}': chain too deep to prove"
    v = ctx.const_value(name)
    if v is not None:
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            return f"constant '{name}' holds inf/NaN"
        return None
    if ctx.graph_input(name) is not None:
        if ctx.dtype(name) in _FLOAT or ctx.dtype(name) == 0:
            return f"mask input '{name}' is a float graph input (its values are not known)"
        return None
    node = ctx.producer(name)
    if node is None:
        return f"'{name}' has no producer"
    if node.op_type not in _PASS:
        return f"'{name}' comes from {node.op_type}, which is not followed"
    if node.op_type == "ConstantOfShape" and node.attribute:
        val = onnx.numpy_helper.to_array(node.attribute[0].t)
        if val.dtype.kind == "f" and not np.all(np.isfinite(val)):
            return f"ConstantOfShape '{node.name}' fills inf/NaN"
        return None
    for k, i in enumerate(node.input):
        if not i or (node.op_type == "Where" and k == 0):
            continue
        dt = ctx.dtype(i)
        if dt != 0 and dt not in _FLOAT:
            continue  # bool / int: selects, indexes or shapes, never inf
        why = finite_origin(ctx, i, depth + 1)
        if why:
            return why
    return None


@register_rule
class RemoveDeadIsNaNWhere(NodeRule):
    name = "remove_dead_isnan_where"
    summary = "Remove IsNaN/Where guards on Softmax outputs of finite masks, and Where with a constant condition."
    op_type = "Where"
    op_types = ("IsNaN", "Where")
    order = 20

    def check(self, ctx: RewriteContext, node: onnx.NodeProto) -> str | None:
        cond, x, y = node.input[0], node.input[1], node.input[2]
        c = ctx.const_value(cond)
        if c is not None:
            if not (np.all(c) or not np.any(c)):
                return "constant condition mixes True and False"
            keep = x if np.all(c) else y
            out_shape, keep_shape = ctx.static_shape(node.output[0]), ctx.static_shape(keep)
            if out_shape is None or keep_shape != out_shape:
                return f"the selected branch has shape {keep_shape}, the output {out_shape} (would need an Expand)"
            if ctx.dtype(keep) != ctx.dtype(node.output[0]):
                return "the selected branch has another dtype"
            return None
        isnan = ctx.producer(cond)
        if isnan is None or isnan.op_type != "IsNaN":
            return "condition is neither constant nor IsNaN(...)"
        src = isnan.input[0]
        if y != src:
            return "the else-branch is not the IsNaN input (not a NaN guard)"
        sm = ctx.producer(src)
        if sm is None or sm.op_type not in ("Softmax", "LogSoftmax"):
            return f"IsNaN input comes from {sm.op_type if sm else 'a graph input'}, not Softmax"
        scores = ctx.producer(sm.input[0])
        if scores is not None and scores.op_type in ("Add", "Sub"):
            # the mask operand must be provably finite; the other one must be attention scores
            reasons = {i: finite_origin(ctx, i) for i in scores.input}
            if all(reasons.values()):
                return f"softmax input mask not provably finite: {list(reasons.values())[-1]}"
            for i, why in reasons.items():
                p = ctx.producer(i)
                if why and (p is None or p.op_type not in _SCORES):
                    return f"softmax input operand '{i}' is neither scores nor a provably finite mask: {why}"
        elif scores is not None and scores.op_type not in _SCORES and scores.op_type != "Where":
            why = finite_origin(ctx, sm.input[0])
            if why:
                return f"softmax input not provably finite: {why}"
        elif scores is not None and scores.op_type == "Where":
            why = finite_origin(ctx, scores.input[1]) and finite_origin(ctx, scores.input[2])
            if why:
                return f"softmax input not provably finite: {why}"
        return None

    def rewrite(self, ctx: RewriteContext, node: onnx.NodeProto) -> str | None:
        c = ctx.const_value(node.input[0])
        if c is not None:
            keep = node.input[1] if np.all(c) else node.input[2]
            note = None
        else:
            keep = node.input[2]
            note = "assumes finite activations: an upstream NaN now reaches the output instead of 0"
        ctx.remove([node])
        ctx.replace_uses(node.output[0], keep)
        return note
