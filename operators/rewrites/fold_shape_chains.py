"""fold_shape_chains: fold Shape / Size / Range / ConstantOfShape / Gather-on-shape chains to constants.

With static graph inputs (fixed by `fix_input_shapes` where needed) `Shape(x)` is a constant, and
so is everything computed only from constants: the Shape→Gather→Unsqueeze→Concat chains, the
ConstantOfShape→Mul→Equal→Where chains that torch's exporter emits for `expand`, and causal masks
built with Range / LessOrEqual. ATC folds some of these itself, but int64 shape arithmetic and
"unknown" intermediate shapes stay behind and then look dynamic. Each folded node becomes an
initializer with the node's output name.

Nodes are evaluated one at a time with `onnx.reference` at the model's opsets. Limits: outputs
over `MAX_ELEMENTS` and nodes reading large tensors (weights) are not folded; random ops and nodes
with subgraphs never are. Only leftover Shape / Size / Range / ConstantOfShape nodes are reported
as misses, with the reason.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .base import SKIP, RewriteContext, Rule, register_rule

MAX_ELEMENTS = 1 << 20
_NEVER = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
          "Bernoulli", "Constant", "If", "Loop", "Scan", "Dropout"}
_REPORTED = {"Shape", "Size", "Range", "ConstantOfShape"}


def _numpy_kernel(node: onnx.NodeProto, vals: list[np.ndarray]) -> list[np.ndarray] | None:
    """numpy forms of ops onnx.reference gets wrong or slow on small shape tensors."""
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    if node.op_type == "GatherElements":
        data, idx = vals
        axis = int(a.get("axis", 0))
        idx = np.where(idx < 0, idx + data.shape[axis], idx)
        return [np.take_along_axis(data, idx.astype(np.int64), axis=axis)]
    return None


def eval_node(model: onnx.ModelProto, node: onnx.NodeProto, values: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Evaluate one node on constant inputs (numpy for a few ops, else onnx.reference at `model`'s opsets)."""
    from onnx.reference import ReferenceEvaluator

    if node.domain in ("", "ai.onnx"):
        out = _numpy_kernel(node, [values[i] for i in node.input if i])
        if out is not None:
            return out

    ins = [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(values[i].dtype), None)
           for i in dict.fromkeys(x for x in node.input if x)]
    outs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o]
    g = helper.make_graph([node], "fold", ins, outs)
    m = helper.make_model(g, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return [np.asarray(v) for v in ReferenceEvaluator(m).run(None, {i.name: values[i.name] for i in ins})]


@register_rule
class FoldShapeChains(Rule):
    name = "fold_shape_chains"
    summary = "Fold Shape/Range/ConstantOfShape/Gather-on-shape chains to constants (static inputs)."
    op_types = ("Shape", "Size", "Range", "ConstantOfShape")
    fixes = ("dynamic_intermediate",)
    order = 10

    def __init__(self):
        self._out: dict[str, list[np.ndarray]] = {}

    def apply(self, ctx: RewriteContext):
        total = None
        for _ in range(4):  # inferred shapes sharpen as chains fold; a few passes reach the fixpoint
            self._out.clear()
            res = super().apply(ctx)
            if total is None:
                total = res
            else:
                total.fired += res.fired
                total.removed_nodes += res.removed_nodes
                total.seconds += res.seconds
                total.misses = res.misses
            if not res.fired:
                break
        self._out.clear()
        return total

    def candidates(self, ctx: RewriteContext):
        return [n for n in ctx.g.node if n.domain in ("", "ai.onnx") and n.op_type not in _NEVER]

    def check(self, ctx: RewriteContext, node: onnx.NodeProto) -> str | None:
        def miss(why: str) -> str:
            return why if node.op_type in _REPORTED else SKIP

        if any(ctx.is_graph_output(o) for o in node.output):
            return miss("its output is a graph output")
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return SKIP
        if node.op_type in ("Shape", "Size"):
            shape = ctx.static_shape(node.input[0])
            if shape is None:
                s = ctx.shape(node.input[0])
                dims = "unknown rank" if s is None else [d if isinstance(d, int) else (d or "?") for d in s]
                return f"input shape not static: {dims} (pass input_shapes to fix the graph inputs)"
            arr = np.array(shape, dtype=np.int64)
            if node.op_type == "Size":
                self._out[node.name] = [np.array(int(np.prod(arr)), dtype=np.int64)]
            else:
                a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
                self._out[node.name] = [arr[a.get("start", 0):a.get("end", None)]]
            return None
        vals: dict[str, np.ndarray] = {}
        for i in node.input:
            if not i:
                continue
            v = ctx.const_value(i)
            if v is None:
                return miss(f"input '{i}' is not constant")
            if v.size > MAX_ELEMENTS:
                return miss(f"input '{i}' has {v.size} elements (large tensors are not folded)")
            vals[i] = v
        shape = ctx.static_shape(node.output[0]) if node.output else None
        if shape is not None and int(np.prod(shape)) > MAX_ELEMENTS:
            return miss(f"output has {int(np.prod(shape))} elements (over {MAX_ELEMENTS})")
        try:
            outs = eval_node(ctx.model, node, vals)
        except Exception as exc:  # the reference runtime lacks a few ops; leave those alone
            return miss(f"cannot evaluate: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        if any(o.size > MAX_ELEMENTS for o in outs):
            return miss(f"output has over {MAX_ELEMENTS} elements")
        self._out[node.name] = outs
        return None

    def rewrite(self, ctx: RewriteContext, node: onnx.NodeProto) -> None:
        outs = self._out.pop(node.name)
        ctx.remove([node])
        for name, val in zip([o for o in node.output if o], outs):
            ctx.add_initializer(name, val, exact=True)
