"""int64_to_int32: int64 index chains (ids, positions, Gather indices) -> int32.

The msit-surgeon "TypeCast" idea: many NPU kernels take int32 indices and int64 arithmetic often
falls back to AI CPU. Seeds, converted to int32:

- int64 graph inputs (input_ids, position_ids, attention_mask, …) that feed computation, not only
  shape arguments. **The model's input dtype changes to int32**; values must fit in int32.
- `Cast(to=INT64)` nodes whose result feeds computation: `to` becomes INT32.
- int64 constants read as Gather / GatherElements indices (their values are checked to fit).

From each seed the int32 type flows through ops that take any integer type for a shared type
parameter (Add, Mul, Where, Concat, Unsqueeze, Reshape data, Gather data, Range, …); their other
operands of that type follow (constants are converted if they fit, other values get a Cast).
Gather indices take int32 as they are. Where a converted value reaches an argument ONNX requires
as int64 (Reshape / Expand shapes, axes, Slice starts, TopK k, …), a graph output, or an op not in
the tables, a `Cast(to=INT64)` is inserted at that boundary.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from .base import RewriteContext, Rule, register_rule

I32 = np.iinfo(np.int32)
# op -> (input slots sharing the integer type parameter, outputs of that type); None = all inputs
_POLY: dict[str, tuple[tuple[int, ...] | None, tuple[int, ...]]] = {
    **{op: (None, (0,)) for op in ("Add", "Sub", "Mul", "Div", "Mod", "Max", "Min", "Sum", "Concat", "Range",
                                   "Clip")},
    **{op: ((0,), (0,)) for op in ("Neg", "Abs", "Identity", "Sign", "Unsqueeze", "Squeeze", "Reshape", "Flatten",
                                   "Expand", "Transpose", "Slice", "Tile", "Gather", "GatherElements", "CumSum",
                                   "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd")},
    **{op: (None, ()) for op in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")},
    "Where": ((1, 2), (0,)),
    "Pad": ((0, 2), (0,)),
    "ScatterElements": ((0, 2), (0,)),
    "Split": ((0,), ()),  # outputs: all, handled below
}
# (op, input slot) that accept int32 as well as int64 and do not pass the type on
_INDEX_OK = {("Gather", 1), ("GatherElements", 1), ("ScatterElements", 1), ("Cast", 0), ("OneHot", 0),
             ("OneHot", 1), ("CumSum", 1)}


def _fits(v: np.ndarray) -> bool:
    return v.size == 0 or (int(v.min()) >= I32.min and int(v.max()) <= I32.max)


class _Converter:
    """One propagation pass over the graph from a set of seeds."""

    def __init__(self, ctx: RewriteContext):
        self.ctx = ctx
        self.converted: set[str] = set()
        self.done_nodes: set[str] = set()
        self.back_casts: dict[str, str] = {}
        self.fwd_casts: dict[str, str] = {}
        self.const32: dict[str, str] = {}
        self.boundary = 0

    def is64(self, name: str) -> bool:
        return self.ctx.dtype(name) == TensorProto.INT64 and name not in self.converted

    def cast_back(self, name: str) -> str:
        if name not in self.back_casts:
            n = self.ctx.node("Cast", [name], name=f"{name}_to_i64", to=TensorProto.INT64)
            self.ctx.insert([n], before=self._first_consumer(name))
            self.back_casts[name] = n.output[0]
            self.boundary += 1
        return self.back_casts[name]

    def cast_fwd(self, name: str, before: onnx.NodeProto) -> str:
        if name not in self.fwd_casts:
            n = self.ctx.node("Cast", [name], name=f"{name}_to_i32", to=TensorProto.INT32)
            self.ctx.insert([n], before=before)
            self.fwd_casts[name] = n.output[0]
            self.boundary += 1
        return self.fwd_casts[name]

    def const_to32(self, name: str) -> str | None:
        if name in self.const32:
            return self.const32[name]
        v = self.ctx.const_value(name)
        if v is None or not _fits(v):
            return None
        self.const32[name] = self.ctx.add_initializer(f"{name}_i32", v.astype(np.int32))
        return self.const32[name]

    def _first_consumer(self, name: str) -> onnx.NodeProto | None:
        cons = self.ctx.consumers(name)
        order = {n.name: k for k, n in enumerate(self.ctx.g.node)}
        return min(cons, key=lambda n: order.get(n.name, 0)) if cons else None

    def mark(self, name: str) -> None:
        """`name` now carries int32: fix graph outputs and stale value_info, queue its readers."""
        ctx = self.ctx
        self.converted.add(name)
        for vi in list(ctx.g.value_info):
            if vi.name == name:
                ctx.g.value_info.remove(vi)
        if ctx.is_graph_output(name):
            new = ctx.fresh(f"{name}_i32")
            prod = ctx.producer(name)
            if prod is not None:
                for k, o in enumerate(prod.output):
                    if o == name:
                        prod.output[k] = new
            for c in ctx.consumers(name):
                for k, i in enumerate(c.input):
                    if i == name:
                        c.input[k] = new
            ctx.g.node.append(ctx.node("Cast", [new], [name], name=f"{name}_out_i64", to=TensorProto.INT64))
            ctx.invalidate()
            self.boundary += 1
            self.converted.add(new)
            name = new
        self.queue.append(name)

    def run(self, seeds: list[str]) -> None:
        self.queue: list[str] = []
        for s in seeds:
            self.mark(s)
        while self.queue:
            v = self.queue.pop()
            for node in self.ctx.consumers(v):
                for slot, i in enumerate(node.input):
                    if i == v:
                        self.visit(node, slot, v)

    def visit(self, node: onnx.NodeProto, slot: int, v: str) -> None:
        ctx = self.ctx
        if (node.op_type, slot) in _INDEX_OK and (node.domain or "") == "":
            return
        poly = _POLY.get(node.op_type) if (node.domain or "") == "" else None
        slots = None
        if poly is not None:
            slots = tuple(range(len(node.input))) if poly[0] is None else poly[0]
        if poly is None or slot not in slots:
            node.input[slot] = self.cast_back(v)
            ctx.invalidate()
            return
        if node.name in self.done_nodes:
            return
        # every other operand of the shared type must become int32 too
        plan: dict[int, str] = {}
        for s in slots:
            if s >= len(node.input) or not node.input[s] or node.input[s] in self.converted:
                continue
            name = node.input[s]
            dt = ctx.dtype(name)
            if dt == 0:  # unknown type: do not guess, keep this op in int64
                node.input[slot] = self.cast_back(v)
                ctx.invalidate()
                return
            if dt != TensorProto.INT64:
                continue
            c32 = self.const_to32(name) if ctx.const_value(name) is not None else None
            if ctx.const_value(name) is not None and c32 is None:
                node.input[slot] = self.cast_back(v)  # a constant that does not fit: stay int64 here
                ctx.invalidate()
                return
            plan[s] = c32 or self.cast_fwd(name, node)
        for s, name in plan.items():
            node.input[s] = name
        self.done_nodes.add(node.name)
        ctx.invalidate()
        outs = range(len(node.output)) if node.op_type == "Split" else poly[1]
        for k in outs:
            if k < len(node.output) and node.output[k]:
                self.mark(node.output[k])


@register_rule
class Int64ToInt32(Rule):
    name = "int64_to_int32"
    summary = "int64 ids/positions and Gather/Range/Cast index chains -> int32 (casts at int64-only arguments)."
    fixes = ("int64",)
    order = 50

    def candidates(self, ctx: RewriteContext):
        # one candidate: the whole graph; seeds are collected in check()
        return [ctx.g]

    def label(self, cand) -> str:
        return "graph"

    def _computes(self, ctx: RewriteContext, name: str) -> bool:
        for c in ctx.consumers(name):
            for slot, i in enumerate(c.input):
                if i != name or (c.domain or "") != "":
                    continue
                if (c.op_type, slot) in _INDEX_OK:
                    return True
                poly = _POLY.get(c.op_type)
                if poly and (poly[0] is None or slot in poly[0]):
                    return True
        return False

    def check(self, ctx: RewriteContext, g) -> str | None:
        seeds: list[tuple[str, str]] = []
        for i in ctx.g.input:
            if ctx.initializer(i.name) is None and i.type.tensor_type.elem_type == TensorProto.INT64:
                if self._computes(ctx, i.name):
                    seeds.append(("input", i.name))
        for n in ctx.g.node:
            if n.op_type == "Cast" and (n.domain or "") == "" and n.output and self._computes(ctx, n.output[0]):
                to = [a.i for a in n.attribute if a.name == "to"]
                if to == [TensorProto.INT64]:
                    seeds.append(("cast", n.output[0]))
            if n.op_type in ("Gather", "GatherElements") and len(n.input) > 1:
                v = ctx.const_value(n.input[1])
                if v is not None and v.dtype == np.int64:
                    seeds.append(("gather_const", n.input[1]))
        if not seeds:
            return "no int64 graph input, Cast(to=INT64) or constant Gather index feeds computation"
        self._seeds = seeds
        return None

    def rewrite(self, ctx: RewriteContext, g) -> str:
        conv = _Converter(ctx)
        start: list[str] = []
        inputs, casts, consts = [], 0, 0
        for kind, name in self._seeds:
            if kind == "input":
                vi = ctx.graph_input(name)
                vi.type.tensor_type.elem_type = TensorProto.INT32
                start.append(name)
                inputs.append(name)
            elif kind == "cast":
                prod = ctx.producer(name)
                for a in prod.attribute:
                    if a.name == "to":
                        a.i = TensorProto.INT32
                start.append(name)
                casts += 1
            else:
                v = ctx.const_value(name)
                if not _fits(v):
                    continue
                new = conv.const_to32(name)
                for c in ctx.consumers(name):
                    if c.op_type in ("Gather", "GatherElements") and c.input[1] == name:
                        c.input[1] = new
                consts += 1
        ctx.invalidate()
        conv.run(start)
        parts = []
        if inputs:
            parts.append(f"graph inputs now int32: {', '.join(inputs)} (feed int32; values must fit)")
        if casts:
            parts.append(f"{casts} Cast(to=INT64) now cast to INT32")
        if consts:
            parts.append(f"{consts} constant Gather indices now int32")
        parts.append(f"{conv.boundary} boundary Cast(s) inserted")
        return "; ".join(parts)
