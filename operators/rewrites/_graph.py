"""A small editing view over an ONNX model's main graph, shared by the rewrite rules.

It keeps producer / consumer maps, reads constants (initializers and Constant nodes, never
external data), runs shape inference on a weightless copy (so a 7B graph with its weights in
memory does not hit protobuf's 2 GB limit), and on `commit()` removes dead nodes and unused
initializers and restores a topological order.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

STRIP_BYTES = 1 << 16  # initializers larger than this are stripped from analysis copies


def is_external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


def skeleton(model: onnx.ModelProto, strip_bytes: int = STRIP_BYTES, *, empty: bool = False) -> onnx.ModelProto:
    """A copy of `model` whose large initializers carry dims and dtype but no data.

    Stripped tensors are marked external (location "__stripped__") so nothing reads their values;
    with `empty`, stripped and external tensors become empty tensors of the same dtype instead (for
    `onnx.checker`, which wants external files to exist). The copy is built field by field: the
    weights of `model` are never duplicated in memory.
    """
    out = onnx.ModelProto()
    for f in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(out, f, getattr(model, f))
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    out.metadata_props.extend(model.metadata_props)
    g, src = out.graph, model.graph
    g.name = src.name
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    g.sparse_initializer.extend(src.sparse_initializer)
    for t in src.initializer:
        if not is_external(t) and len(t.raw_data) <= strip_bytes:
            g.initializer.append(t)
            continue
        if empty:
            g.initializer.append(onnx.TensorProto(name=t.name, data_type=t.data_type, dims=[0]))
            continue
        if is_external(t):
            g.initializer.append(t)
            continue
        s = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims)
        s.data_location = onnx.TensorProto.EXTERNAL
        s.external_data.add(key="location", value="__stripped__")
        g.initializer.append(s)
    return out


def attrs_of(node: onnx.NodeProto) -> dict[str, Any]:
    """Attribute values of a node as Python values (strings decoded)."""
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        out[a.name] = v
    return out


def _subgraph_refs(node: onnx.NodeProto, acc: set[str]) -> None:
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for sg in graphs:
            for n in sg.node:
                acc.update(i for i in n.input if i)
                _subgraph_refs(n, acc)
            acc.update(o.name for o in sg.output)


class Graph:
    """Editing helpers over `model.graph` (edits happen in place).

    Args:
        model: the model to edit.
    """

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.g = model.graph
        self._maps: tuple[dict, dict] | None = None
        self._types: dict[str, tuple[int, tuple]] | None = None
        self._names: set[str] | None = None
        self._counter = itertools.count()

    # ------------------------------------------------------------------ queries
    def opset(self, domain: str = "") -> int:
        for o in self.model.opset_import:
            if o.domain in (domain, "ai.onnx" if domain == "" else domain):
                return o.version
        return 0

    def set_opset(self, version: int, domain: str = "") -> None:
        for o in self.model.opset_import:
            if o.domain in ("", "ai.onnx") if domain == "" else o.domain == domain:
                o.version = version
                return
        self.model.opset_import.add(domain=domain, version=version)

    def _build_maps(self) -> tuple[dict, dict, dict, dict]:
        if self._maps is None:
            inits = {t.name: t for t in self.g.initializer}
            inputs = {i.name: i for i in self.g.input}
            prod: dict[str, onnx.NodeProto] = {}
            cons: dict[str, list[onnx.NodeProto]] = {}
            for n in self.g.node:
                for o in n.output:
                    if o:
                        prod[o] = n
                for i in n.input:
                    if i:
                        cons.setdefault(i, []).append(n)
            self._maps = (prod, cons, inits, inputs)
        return self._maps

    def producer(self, name: str) -> onnx.NodeProto | None:
        return self._build_maps()[0].get(name)

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return list(self._build_maps()[1].get(name, ()))

    def is_graph_output(self, name: str) -> bool:
        return any(o.name == name for o in self.g.output)

    def graph_input(self, name: str) -> onnx.ValueInfoProto | None:
        return self._build_maps()[3].get(name)

    def initializer(self, name: str) -> onnx.TensorProto | None:
        return self._build_maps()[2].get(name)

    def const_value(self, name: str) -> np.ndarray | None:
        """Value of `name` when it is an initializer (not external) or a Constant node output."""
        if not name:
            return None
        t = self.initializer(name)
        if t is not None:
            if is_external(t) or self.graph_input(name) is not None:
                return None
            return numpy_helper.to_array(t)
        n = self.producer(name)
        if n is not None and n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            a = n.attribute[0]
            if a.name == "value":
                if is_external(a.t):
                    return None
                return numpy_helper.to_array(a.t)
            v = helper.get_attribute_value(a)
            if a.name in ("value_float", "value_int"):
                return np.array(v, dtype=np.float32 if a.name == "value_float" else np.int64)
            if a.name in ("value_floats", "value_ints"):
                return np.array(list(v), dtype=np.float32 if a.name == "value_floats" else np.int64)
        return None

    def is_const(self, name: str) -> bool:
        return self.const_value(name) is not None

    def types(self) -> dict[str, tuple[int, tuple]]:
        """{value name: (ONNX elem type, shape)} from shape inference on a weightless copy.

        Shape entries are ints for known dims, strings for named dims and None for unknown ones;
        shape is None when even the rank is unknown.
        """
        if self._types is None:
            sk = skeleton(self.model)
            try:
                inferred = onnx.shape_inference.infer_shapes(sk, strict_mode=False, data_prop=True)
            except Exception:  # inference is best-effort; rules check for missing entries
                inferred = sk
            out: dict[str, tuple[int, tuple]] = {}
            vis = itertools.chain(inferred.graph.value_info, inferred.graph.input, inferred.graph.output)
            for v in vis:
                tt = v.type.tensor_type
                if not v.type.HasField("tensor_type"):
                    continue
                shape = None
                if tt.HasField("shape"):
                    shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                  for d in tt.shape.dim)
                out[v.name] = (tt.elem_type, shape)
            for t in self.g.initializer:
                out[t.name] = (t.data_type, tuple(t.dims))
            for n in self.g.node:
                if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                    out[n.output[0]] = (n.attribute[0].t.data_type, tuple(n.attribute[0].t.dims))
            self._types = out
        return self._types

    def dtype(self, name: str) -> int:
        """ONNX elem type of a value (0 when unknown)."""
        return self.types().get(name, (0, None))[0]

    def shape(self, name: str) -> tuple | None:
        return self.types().get(name, (0, None))[1]

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        s = self.shape(name)
        if s is None or any(not isinstance(d, int) or d < 0 for d in s):
            return None
        return tuple(s)

    # ------------------------------------------------------------------ edits
    def _taken(self) -> set[str]:
        if self._names is None:
            names = {t.name for t in self.g.initializer} | {i.name for i in self.g.input}
            for n in self.g.node:
                names.update(n.output)
                names.add(n.name)
            self._names = names
        return self._names

    def fresh(self, base: str) -> str:
        """A value / node name not used in the graph yet."""
        taken = self._taken()
        name = base
        while name in taken or not name:
            name = f"{base}_{next(self._counter)}"
        taken.add(name)
        return name

    def add_initializer(self, base: str, array: np.ndarray, *, exact: bool = False) -> str:
        """Add an initializer named `base` (made unique unless `exact`); returns its name."""
        name = base if exact else self.fresh(base)
        self.g.initializer.append(numpy_helper.from_array(np.asarray(array), name))
        self.invalidate()
        return name

    def node(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str] | int = 1, *,
             name: str | None = None, domain: str = "", **attrs) -> onnx.NodeProto:
        """Make a node (not yet inserted); `outputs` may be a count of fresh names."""
        base = name or op_type
        if isinstance(outputs, int):
            outputs = [self.fresh(f"{base}_out{i}" if outputs > 1 else f"{base}_out") for i in range(outputs)]
        return helper.make_node(op_type, list(inputs), list(outputs), name=self.fresh(base), domain=domain,
                                **attrs)

    def insert(self, nodes: Iterable[onnx.NodeProto], before: onnx.NodeProto | None = None) -> None:
        """Insert nodes before `before` (or append); order is fixed again on commit.

        The graph stores copies: finish editing a node before inserting it.
        """
        nodes = list(nodes)
        idx = None
        if before is not None:
            idx = next((k for k, n in enumerate(self.g.node) if n.name == before.name), None)
        if idx is None:
            self.g.node.extend(nodes)
        else:
            for k, n in enumerate(nodes):
                self.g.node.insert(idx + k, n)
        for n in nodes:
            self._taken().update(n.output)
        self.invalidate()

    def ensure_node_names(self) -> None:
        """Give every node a unique name (unnamed / duplicate ones get fresh names); rules key
        nodes by name, since protobuf may hand out a new Python object for the same node."""
        seen: set[str] = set()
        for n in self.g.node:
            if not n.name or n.name in seen:
                n.name = self.fresh(n.name or n.op_type)
            seen.add(n.name)

    def alive(self) -> set[str]:
        """Names of the nodes currently in the graph."""
        return {n.name for n in self.g.node}

    def remove(self, nodes: Iterable[onnx.NodeProto]) -> None:
        """Remove nodes (matched by name) in place; other node objects stay valid."""
        names = {n.name for n in nodes}
        for k in range(len(self.g.node) - 1, -1, -1):
            if self.g.node[k].name in names:
                del self.g.node[k]
        self.invalidate()

    def replace_uses(self, old: str, new: str) -> None:
        """Make every reader of `old` read `new`. A graph output named `old` gets an Identity."""
        for n in self.g.node:
            for k, i in enumerate(n.input):
                if i == old:
                    n.input[k] = new
        if self.is_graph_output(old):
            self.g.node.append(helper.make_node("Identity", [new], [old], name=self.fresh(f"{old}_keep")))
        self.invalidate()

    def invalidate(self, types: bool = False) -> None:
        """Forget the producer/consumer maps (and the inferred types when `types`).

        Inferred types of values that still exist stay valid after local rewrites, so they are
        kept by default; new values read as unknown until `commit()` or `invalidate(types=True)`.
        """
        self._maps = None
        if types:
            self._types = None

    def commit(self) -> int:
        """Drop dead nodes and unused initializers, restore topological order.

        Returns:
            The number of nodes removed as dead.
        """
        needed = {o.name for o in self.g.output}
        for n in self.g.node:
            _subgraph_refs(n, needed)
        live: list[onnx.NodeProto] = []
        for n in reversed(list(self.g.node)):
            if any(o in needed for o in n.output if o):
                live.append(n)
                needed.update(i for i in n.input if i)
        removed = len(self.g.node) - len(live)
        live.reverse()
        ordered = _toposort(live, {i.name for i in self.g.input} | {t.name for t in self.g.initializer})
        del self.g.node[:]
        self.g.node.extend(ordered)
        inputs = {i.name for i in self.g.input}
        keep = [t for t in self.g.initializer if t.name in needed or t.name in inputs]
        if len(keep) != len(self.g.initializer):
            del self.g.initializer[:]
            self.g.initializer.extend(keep)
        produced = {o for n in self.g.node for o in n.output}
        vi = [v for v in self.g.value_info if v.name in produced]
        del self.g.value_info[:]
        self.g.value_info.extend(vi)
        self.invalidate(types=True)
        self._names = None
        return removed


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Stable Kahn sort; nodes whose inputs never become available keep their relative order at the end."""
    avail = set(available) | {""}
    pending = list(nodes)
    out: list[onnx.NodeProto] = []
    outer: set[str] = set()
    for n in nodes:
        _subgraph_refs(n, outer)
    produced = {o for n in nodes for o in n.output}
    avail |= outer - produced  # outer-scope names read by subgraphs that no node here makes
    progress = True
    while pending and progress:
        progress = False
        rest = []
        for n in pending:
            refs: set[str] = set()
            _subgraph_refs(n, refs)
            deps = [i for i in n.input if i] + [r for r in refs if r in produced]
            if all(d in avail for d in deps):
                out.append(n)
                avail.update(n.output)
                progress = True
            else:
                rest.append(n)
        pending = rest
    return out + pending


def np_dtype(elem_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
