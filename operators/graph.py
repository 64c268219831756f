"""`GraphBuilder`: a small helper that operators emit ONNX nodes through.

It names nodes by scope (`layers.3/attn/q_proj/MatMul`), names output tensors
`<node name>_output_<i>` unless told otherwise, keeps small constants inline (deduplicated),
references big weights as ONNX external data, tags every node with the operator that emitted it
(node metadata `ascend_adapt.op`), and records the node names of fp32 islands (ATC
`--keep_dtype` candidates).

    >>> import numpy as np
    >>> b = GraphBuilder("demo", opset=17)
    >>> x = b.add_input("x", np.float32, [2, 3])
    >>> with b.scope("layers.0"):
    ...     y = b.node("Relu", [x])
    >>> b.add_output(y, np.float32, [2, 3])
    'layers.0/Relu_output_0'
    >>> [n.name for n in b.nodes]
    ['layers.0/Relu']
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OP_TAG = "ascend_adapt.op"
# inline constants up to this many elements are shared between nodes (same dtype, shape, bytes)
_DEDUP_MAX_ELEMS = 256


def onnx_dtype(dtype) -> int:
    """numpy dtype (or name) → ONNX TensorProto enum."""
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class GraphBuilder:
    """Accumulates nodes, inputs, outputs and initializers of one ONNX graph.

    Args:
        name: graph name.
        opset: default-domain opset (operators branch on it, e.g. ReduceMean's axes).
        act_dtype: activation dtype of the graph (float32 / float16); fp32 islands cast back to it.
    """

    def __init__(self, name: str, opset: int = 17, act_dtype=np.float32):
        self.name = name
        self.opset = int(opset)
        self.act_dtype = np.dtype(act_dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.keep_dtype: list[str] = []  # node names inside fp32 islands
        self.memo: dict = {}  # per-graph cache for emissions shared by layers (rotary tables, …)
        self._scope: list[str] = []
        self._tag: list[str] = []
        self._island = 0
        self._node_names: set[str] = set()
        self._tensor_names: set[str] = set()
        self._const_cache: dict[tuple, str] = {}
        self._n_const = 0
        # where big constants go: callable(name, array) -> (location, offset, length), or None
        self.external_sink = None
        self.external_threshold_bytes = 64 * 1024

    # ---- naming -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Nodes created inside are named `<outer scopes>/<name>/<local>`."""
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    @contextlib.contextmanager
    def root_scope(self, name: str) -> Iterator[None]:
        """Like `scope`, from the top level (for nodes shared by every layer, e.g. rotary tables)."""
        saved, self._scope = self._scope, [name]
        try:
            yield
        finally:
            self._scope = saved

    @contextlib.contextmanager
    def op_tag(self, op_name: str) -> Iterator[None]:
        """Nodes created inside carry metadata `ascend_adapt.op = op_name` (innermost wins)."""
        self._tag.append(op_name)
        try:
            yield
        finally:
            self._tag.pop()

    @contextlib.contextmanager
    def fp32_island(self) -> Iterator[None]:
        """Nodes created inside are recorded in `keep_dtype` (they must stay fp32 on the card)."""
        self._island += 1
        try:
            yield
        finally:
            self._island -= 1

    @property
    def prefix(self) -> str:
        return "/".join(self._scope)

    def _unique_node_name(self, local: str) -> str:
        base = f"{self.prefix}/{local}" if self._scope else local
        name, k = base, 1
        while name in self._node_names:
            name = f"{base}_{k}"
            k += 1
        self._node_names.add(name)
        return name

    def _claim_tensor(self, name: str) -> str:
        if name in self._tensor_names:
            raise ValueError(f"tensor name '{name}' is already used in graph '{self.name}'")
        self._tensor_names.add(name)
        return name

    # ---- graph pieces -----------------------------------------------------------------------
    def add_input(self, name: str, dtype, shape: Sequence[int]) -> str:
        self.inputs.append(helper.make_tensor_value_info(self._claim_tensor(name), onnx_dtype(dtype), list(shape)))
        return name

    def add_output(self, tensor: str, dtype, shape: Sequence[int] | None, name: str | None = None) -> str:
        """Declare `tensor` a graph output (under `name`, through an Identity when it differs)."""
        if name is not None and name != tensor:
            tensor = self.node("Identity", [tensor], outputs=[name], name=f"output/{name}")
        self.outputs.append(helper.make_tensor_value_info(tensor, onnx_dtype(dtype),
                                                          None if shape is None else list(shape)))
        return tensor

    def node(self, op_type: str, inputs: Sequence[str], n_out: int = 1, *, name: str | None = None,
             outputs: Sequence[str] | None = None, **attrs) -> str | list[str]:
        """Append a node; returns its output name (or the list of them when `n_out > 1`).

        Args:
            op_type: ONNX op type (default domain).
            inputs: input tensor names ("" for an omitted optional input).
            n_out: number of outputs (ignored when `outputs` is given).
            name: local node name (default: the op type), made unique within the scope.
            outputs: explicit output tensor names.
            **attrs: ONNX attributes.
        """
        node_name = self._unique_node_name(name or op_type)
        if outputs is None:
            outputs = [f"{node_name}_output_{i}" for i in range(n_out)]
        for o in outputs:
            self._claim_tensor(o)
        n = helper.make_node(op_type, list(inputs), list(outputs), name=node_name, **attrs)
        if self._tag:
            entry = n.metadata_props.add()
            entry.key, entry.value = OP_TAG, self._tag[-1]
        if self._island:
            self.keep_dtype.append(node_name)
        self.nodes.append(n)
        return outputs[0] if len(outputs) == 1 else list(outputs)

    def const(self, value, dtype=None, name: str | None = None) -> str:
        """An inline constant initializer (small arrays with equal bytes are shared)."""
        arr = np.asarray(value, dtype=dtype if dtype is not None else None)
        if dtype is None and arr.dtype == np.float64:
            arr = arr.astype(self.act_dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes()) if arr.size <= _DEDUP_MAX_ELEMS and name is None else None
        if key is not None and key in self._const_cache:
            return self._const_cache[key]
        if name is None:
            name = f"const.{self._n_const}"
            self._n_const += 1
        self.initializers.append(numpy_helper.from_array(arr, self._claim_tensor(name)))
        if key is not None:
            self._const_cache[key] = name
        return name

    def external(self, name: str, dtype, shape: Sequence[int], location: str, offset: int, length: int) -> str:
        """An initializer whose bytes live in an external-data file (no data in the proto)."""
        t = TensorProto()
        t.name = self._claim_tensor(name)
        t.data_type = onnx_dtype(dtype)
        t.dims.extend(int(d) for d in shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", str(int(offset))), ("length", str(int(length)))):
            e = t.external_data.add()
            e.key, e.value = k, v
        self.initializers.append(t)
        return name

    def rename(self, tensor: str, new_name: str) -> str:
        """Rename a node output that nothing consumes yet (e.g. to `layers.3`)."""
        for n in reversed(self.nodes):
            if tensor in n.output:
                if any(tensor in m.input for m in self.nodes):
                    raise ValueError(f"cannot rename '{tensor}': it is already consumed")
                n.output[list(n.output).index(tensor)] = self._claim_tensor(new_name)
                self._tensor_names.discard(tensor)
                return new_name
        raise ValueError(f"no node produces '{tensor}'")

    def constant_tensor(self, name: str, array) -> str:
        """A named constant: external data through `external_sink` when it is big, else inline."""
        arr = np.ascontiguousarray(array)
        if self.external_sink is not None and arr.nbytes >= self.external_threshold_bytes:
            location, offset, length = self.external_sink(name, arr)
            return self.external(name, arr.dtype, arr.shape, location, offset, length)
        return self.const(arr, name=name)

    # ---- common small emissions -------------------------------------------------------------
    def cast(self, x: str, to, name: str = "Cast") -> str:
        return self.node("Cast", [x], name=name, to=onnx_dtype(to))

    def ints(self, values: Sequence[int]) -> str:
        """An int64 1-D constant (shapes, axes, slice bounds)."""
        return self.const(np.asarray(list(values), dtype=np.int64))

    def reduce_mean(self, x: str, axes: Sequence[int], keepdims: int = 1, name: str = "ReduceMean") -> str:
        """ReduceMean with `axes` as an attribute (opset < 18) or an input (opset >= 18)."""
        if self.opset >= 18:
            return self.node("ReduceMean", [x, self.ints(axes)], name=name, keepdims=keepdims)
        return self.node("ReduceMean", [x], name=name, axes=list(axes), keepdims=keepdims)

    def slice(self, x: str, starts, ends, axes, name: str = "Slice") -> str:
        return self.node("Slice", [x, self.ints(starts), self.ints(ends), self.ints(axes)], name=name)

    def unsqueeze(self, x: str, axes: Sequence[int], name: str = "Unsqueeze") -> str:
        return self.node("Unsqueeze", [x, self.ints(axes)], name=name)

    def squeeze(self, x: str, axes: Sequence[int], name: str = "Squeeze") -> str:
        return self.node("Squeeze", [x, self.ints(axes)], name=name)

    def reshape(self, x: str, shape: Sequence[int], name: str = "Reshape") -> str:
        return self.node("Reshape", [x, self.ints(shape)], name=name)

    # ---- model ------------------------------------------------------------------------------
    def make_model(self, producer: str = "ascend-adapt", doc: str = "", metadata: dict | None = None) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  producer_name=producer, doc_string=doc)
        # the lowest IR version that carries this opset, so older parsers (ATC's ONNX 1.12) read it
        model.ir_version = min(model.ir_version, _IR_FOR_OPSET.get(self.opset, model.ir_version))
        for k, v in (metadata or {}).items():
            onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, k: str(v)})
        return model


# ONNX IR version that introduced each opset (onnx/helper.py VERSION_TABLE)
_IR_FOR_OPSET = {11: 6, 12: 7, 13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8}
