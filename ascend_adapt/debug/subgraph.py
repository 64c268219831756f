"""Cut a subgraph out of an ONNX model by node set (our own `onnx.utils.Extractor`).

`GraphIndex(model)` indexes a model's nodes in topological order once; `extract(keep)` builds a
standalone model from any set of node indices:

- graph inputs = tensors the kept nodes read that no kept node produces and that are not
  initializers (original graph inputs, or intermediate tensors produced by dropped nodes);
- initializers = the ones the kept nodes read (others are dropped);
- graph outputs = tensors kept nodes produce that a dropped node reads or that were graph outputs
  (when none, every output of the last kept node);
- types and shapes of new inputs/outputs come from ONNX shape inference on the original model,
  else from one onnxruntime probe run (only when inference left a tensor untyped).

Nodes inside If/Loop/Scan bodies that read outer-scope tensors count as reads of the parent node.
`fold_constants` turns `Constant` nodes into initializers first, so they never count as nodes
to reduce.
"""

from __future__ import annotations

import copy
import math
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ascend_adapt.errors import ConfigError


def _subgraph_reads(g: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads from its enclosing scope."""
    produced = {i.name for i in g.input} | {t.name for t in g.initializer}
    reads: set[str] = set()
    for n in g.node:
        for name in node_reads(n):
            if name not in produced:
                reads.add(name)
        produced.update(o for o in n.output if o)
    return reads


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor a node reads: its inputs plus outer-scope names its subgraphs use."""
    names = [i for i in node.input if i]
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            names += sorted(_subgraph_reads(a.g))
        elif a.type == onnx.AttributeProto.GRAPHS:
            for g in a.graphs:
                names += sorted(_subgraph_reads(g))
    return list(dict.fromkeys(names))


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with top-level `Constant` nodes turned into initializers."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = []
    for n in m.graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.attribute) == 1:
            a = n.attribute[0]
            arr = None
            if a.name == "value":
                t = onnx.TensorProto()
                t.CopyFrom(a.t)
                t.name = n.output[0]
                m.graph.initializer.append(t)
                continue
            if a.name == "value_float":
                arr = np.array(a.f, dtype=np.float32)
            elif a.name == "value_floats":
                arr = np.array(list(a.floats), dtype=np.float32)
            elif a.name == "value_int":
                arr = np.array(a.i, dtype=np.int64)
            elif a.name == "value_ints":
                arr = np.array(list(a.ints), dtype=np.int64)
            if arr is not None:
                m.graph.initializer.append(numpy_helper.from_array(arr, n.output[0]))
                continue
        keep.append(n)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return m


def topological_order(nodes: Sequence[onnx.NodeProto], available: Iterable[str]) -> list[int]:
    """Indices of `nodes` in a topological order (stable: file order where it is one already)."""
    have = set(available)
    producers: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                producers[o] = i
    deps = []
    for n in nodes:
        deps.append({producers[r] for r in node_reads(n) if r in producers and r not in have})
    order: list[int] = []
    done: set[int] = set()
    pending = list(range(len(nodes)))
    while pending:
        progressed = False
        rest = []
        for i in pending:
            if deps[i] <= done:
                order.append(i)
                done.add(i)
                progressed = True
            else:
                rest.append(i)
        if not progressed:
            raise ConfigError(f"the graph has a cycle or reads undefined tensors around node "
                              f"'{nodes[rest[0]].name or nodes[rest[0]].op_type}'",
                              "check the model with onnx.checker.check_model")
        pending = rest
    return order


class GraphIndex:
    """A model's top-level nodes in topological order, with producers, consumers and types.

    Args:
        model: the model (with its weights; they are copied into extracted subgraphs).
        fold: fold Constant nodes into initializers first.

    Attributes:
        model: the (folded, topologically sorted) model.
        nodes: its nodes; indices used by `extract` refer to this list.
    """

    def __init__(self, model: onnx.ModelProto, *, fold: bool = True):
        m = fold_constants(model) if fold else copy.deepcopy(model)
        g = m.graph
        inits = {t.name for t in g.initializer}
        avail = inits | {i.name for i in g.input}
        order = topological_order(list(g.node), avail)
        nodes = [g.node[i] for i in order]
        sorted_nodes = [copy.deepcopy(n) for n in nodes]
        del g.node[:]
        g.node.extend(sorted_nodes)
        self.model = m
        self.nodes = list(g.node)
        self.initializers = {t.name: t for t in g.initializer}
        self.graph_input_names = [i.name for i in g.input if i.name not in self.initializers]
        self.graph_output_names = [o.name for o in g.output]
        self.reads = [node_reads(n) for n in self.nodes]
        self.producer: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            for o in n.output:
                if o:
                    self.producer[o] = i
        self.consumers: dict[str, list[int]] = {}
        for i, rs in enumerate(self.reads):
            for r in rs:
                self.consumers.setdefault(r, []).append(i)
        self._types: dict[str, onnx.TypeProto] = {}
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                self._types[vi.name] = vi.type
        self._probed_types: dict[str, onnx.TypeProto] = {}
        self._probed = False
        self._infer_types()

    def __len__(self) -> int:
        return len(self.nodes)

    def label(self, i: int) -> str:
        n = self.nodes[i]
        return f"{n.name or '?'} ({n.op_type})"

    # ---------------------------------------------------------------- types
    def _infer_types(self) -> None:
        light = onnx.ModelProto()
        light.CopyFrom(self.model)
        # shape inference needs no weight values: keep dims and dtypes (and small tensors such
        # as axes / shapes, whose values it reads)
        for t in light.graph.initializer:
            if math.prod(t.dims) <= 64:
                continue
            t.ClearField("raw_data")
            for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
                t.ClearField(f)
            t.ClearField("external_data")
            t.data_location = TensorProto.DEFAULT
        try:
            inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False)
        except Exception:  # noqa: BLE001 - inference is best effort; the probe fills gaps
            return
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type and vi.name not in self._types:
                self._types[vi.name] = vi.type

    def _probe(self) -> None:
        """Run the model once in onnxruntime (random inputs) to type every tensor."""
        if self._probed:
            return
        self._probed = True
        import onnxruntime as ort

        from ascend_adapt.sim.graph import expose_all_outputs

        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        expose_all_outputs(m)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        try:
            sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
            feeds = random_feeds({i.name: i for i in self.model.graph.input
                                  if i.name not in self.initializers})
            names = [o.name for o in sess.get_outputs()]
            for name, val in zip(names, sess.run(names, feeds)):
                if isinstance(val, np.ndarray):
                    self._probed_types[name] = helper.make_tensor_type_proto(
                        helper.np_dtype_to_tensor_dtype(val.dtype), list(val.shape))
        except Exception:  # noqa: BLE001 - a model ORT cannot run keeps untyped tensors
            pass

    def _static_inputs(self) -> bool:
        for i in self.model.graph.input:
            if i.name in self.initializers:
                continue
            tt = i.type.tensor_type
            if not tt.HasField("shape") or not all(d.HasField("dim_value") for d in tt.shape.dim):
                return False
        return True

    def value_info(self, name: str) -> onnx.ValueInfoProto:
        """A ValueInfo for tensor `name`.

        The type comes from shape inference; one onnxruntime probe run fills tensors that
        inference left untyped, and those it left without a shape when every graph input is
        static (then the probed shape is the shape). Last resort: float32 of unknown shape.
        """
        t = self._types.get(name)
        if t is None or not t.tensor_type.HasField("shape"):
            self._probe()
            p = self._probed_types.get(name)
            if p is not None and (t is None or self._static_inputs()):
                t = p
        vi = onnx.ValueInfoProto(name=name)
        vi.type.CopyFrom(t if t is not None else helper.make_tensor_type_proto(TensorProto.FLOAT, None))
        return vi

    # ---------------------------------------------------------------- extraction
    def boundary(self, keep: Iterable[int]) -> tuple[list[str], list[str], list[str]]:
        """(inputs, initializers, outputs) of the subgraph made of node indices `keep`."""
        ks = sorted(set(keep))
        kset = set(ks)
        produced = {o for i in ks for o in self.nodes[i].output if o}
        inputs: list[str] = []
        inits: list[str] = []
        for i in ks:
            for r in self.reads[i]:
                if r in produced:
                    continue
                if r in self.initializers:
                    if r not in inits:
                        inits.append(r)
                elif r not in inputs:
                    inputs.append(r)
        outputs: list[str] = []
        gout = set(self.graph_output_names)
        for i in ks:
            for o in self.nodes[i].output:
                if not o:
                    continue
                if o in gout or any(c not in kset for c in self.consumers.get(o, ())):
                    outputs.append(o)
        if not outputs and ks:
            outputs = [o for o in self.nodes[ks[-1]].output if o]
        return inputs, inits, outputs

    def extract(self, keep: Iterable[int], name: str | None = None) -> onnx.ModelProto:
        """A standalone model made of the nodes at indices `keep` (see the module docstring)."""
        ks = sorted(set(keep))
        if not ks:
            raise ConfigError("cannot extract an empty subgraph", "keep at least one node")
        inputs, inits, outputs = self.boundary(ks)
        g = helper.make_graph(
            [copy.deepcopy(self.nodes[i]) for i in ks], name or f"{self.model.graph.name or 'graph'}_sub",
            [self.value_info(n) for n in inputs], [self.value_info(n) for n in outputs],
            initializer=[self.initializers[n] for n in inits])
        m = helper.make_model(g, opset_imports=list(self.model.opset_import),
                              producer_name="ascend-adapt debug reduce")
        m.ir_version = self.model.ir_version
        m.functions.extend(self.model.functions)
        inner = {o for i in ks for o in self.nodes[i].output if o} - set(outputs)
        for vi in self.model.graph.value_info:
            if vi.name in inner:
                m.graph.value_info.append(vi)
        return m


def random_feeds(inputs: Mapping[str, onnx.ValueInfoProto], seed: int = 0,
                 dims: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random arrays for graph inputs (symbolic dims take `dims[param]`, else 1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, vi in inputs.items():
        tt = vi.type.tensor_type
        shape = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                shape.append(d.dim_value)
            else:
                shape.append(int((dims or {}).get(d.dim_param, 1)))
        dt = helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else np.dtype(np.float32)
        if np.issubdtype(dt, np.floating):
            out[name] = rng.standard_normal(shape).astype(dt)
        elif dt == np.bool_:
            out[name] = np.ones(shape, dtype=bool)
        else:
            out[name] = rng.integers(0, 4, size=shape).astype(dt)
    return out
