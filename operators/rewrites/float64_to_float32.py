"""float64_to_float32: float64 tensors -> float32 (msit "TypeCast" for doubles).

310 / 310P have no float64 kernels. Initializers, Constant values, Cast(to=DOUBLE), dtype
attributes (ConstantOfShape, RandomNormal, EyeLike, …) and float64 graph inputs / outputs become
float32. **Graph inputs / outputs of type double change to float.** Values beyond float32's range
become ±inf (reported).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .base import RewriteContext, Rule, register_rule

D, F = TensorProto.DOUBLE, TensorProto.FLOAT


def _tensor_to_f32(t: onnx.TensorProto) -> tuple[onnx.TensorProto, int]:
    v = numpy_helper.to_array(t)
    with np.errstate(over="ignore"):
        w = v.astype(np.float32)
    overflow = int(np.sum(np.isinf(w) & np.isfinite(v)))
    return numpy_helper.from_array(w, t.name), overflow


@register_rule
class Float64ToFloat32(Rule):
    name = "float64_to_float32"
    summary = "float64 initializers / Constants / Casts / graph inputs -> float32."
    fixes = ("float64",)
    when = "needed"
    order = 55

    def candidates(self, ctx: RewriteContext):
        return [ctx.g]

    def label(self, cand) -> str:
        return "graph"

    def needed(self, ctx: RewriteContext, g) -> str | None:
        if "float64" in ctx.target.unsupported_dtypes:
            return None
        return f"{ctx.target.name} takes float64"

    def check(self, ctx: RewriteContext, g) -> str | None:
        if any(t.data_type == D for t in ctx.g.initializer):
            return None
        if any(v.type.tensor_type.elem_type == D for v in list(ctx.g.input) + list(ctx.g.output)):
            return None
        for n in ctx.g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == D:
                    return None
                if a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT and a.i == D:
                    return None
        return "no float64 tensor"

    def rewrite(self, ctx: RewriteContext, g) -> str:
        overflow = 0
        changed = 0
        for k, t in enumerate(list(ctx.g.initializer)):
            if t.data_type == D and t.data_location != TensorProto.EXTERNAL:
                new, o = _tensor_to_f32(t)
                ctx.g.initializer[k].CopyFrom(new)
                overflow += o
                changed += 1
        io = []
        for v in list(ctx.g.input) + list(ctx.g.output):
            if v.type.tensor_type.elem_type == D:
                v.type.tensor_type.elem_type = F
                io.append(v.name)
        for n in ctx.g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == D:
                    new, o = _tensor_to_f32(a.t)
                    a.t.CopyFrom(new)
                    overflow += o
                    changed += 1
                elif a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT and a.i == D:
                    a.i = F
                    changed += 1
        for vi in list(ctx.g.value_info):
            if vi.type.tensor_type.elem_type == D:
                ctx.g.value_info.remove(vi)
        ctx.invalidate(types=True)
        note = f"{changed} tensors / attributes to float32"
        if io:
            note += f"; graph inputs/outputs now float32: {', '.join(io)}"
        if overflow:
            note += f"; {overflow} values overflowed to inf"
        return note
