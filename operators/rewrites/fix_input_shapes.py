"""fix_input_shapes: pin dynamic graph-input dims to the static shapes the caller gives.

Ascend310 / 310B take no shape ranges, and ATC's static models need every dim known. Given
`input_shapes={"input_ids": (1, 128)}`, each named / -1 / unknown dim of that input becomes the
given size; a static dim that disagrees is a miss (the model was exported for another shape).
"""

from __future__ import annotations

import onnx

from .base import RewriteContext, Rule, register_rule


@register_rule
class FixInputShapes(Rule):
    name = "fix_input_shapes"
    summary = "Set the static shapes given in input_shapes on dynamic graph inputs."
    fixes = ("dynamic_input",)
    order = 0

    def candidates(self, ctx: RewriteContext):
        return [i for i in ctx.g.input if i.name in ctx.input_shapes and ctx.initializer(i.name) is None]

    def check(self, ctx: RewriteContext, vi: onnx.ValueInfoProto) -> str | None:
        want = ctx.input_shapes[vi.name]
        dims = vi.type.tensor_type.shape.dim
        if not vi.type.tensor_type.HasField("shape"):
            return None
        if len(dims) != len(want):
            return f"rank {len(dims)} in the model, {len(want)} given"
        for k, (d, w) in enumerate(zip(dims, want)):
            if w <= 0:
                return f"dim {k}: size {w} is not a static size"
            if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != w:
                return f"dim {k} is fixed to {d.dim_value} in the model, {w} given"
        if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            return "already static"
        return None

    def rewrite(self, ctx: RewriteContext, vi: onnx.ValueInfoProto) -> None:
        shape = vi.type.tensor_type.shape
        want = ctx.input_shapes[vi.name]
        del shape.dim[:]
        for w in want:
            shape.dim.add().dim_value = int(w)
        ctx.invalidate(types=True)
