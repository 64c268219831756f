"""ONNX graph facts the simulator needs: opsets, typed tensors, concrete shapes, op classes.

Models are read without their external data (`load_model(path)`): initializer dims and dtypes
are in the proto, so acceptance and cost never touch the weights file.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from ascend_adapt.errors import ConfigError

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)

# Ops executed by the Cube unit (matrix engine): fp16 inputs, fp32 accumulation on the card.
CUBE_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "MatMulInteger",
                      "QLinearMatMul", "BatchMatMul", "BatchMatMulV2", "FusedMatMul"})

# Ops that only move or select values: an output holds values of the inputs, so fp16-exact
# inputs give fp16-exact outputs (no rounding of their outputs needed).
MOVE_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Concat",
                      "Slice", "Gather", "GatherElements", "GatherND", "Split", "Expand", "Tile",
                      "Where", "Max", "Min", "Relu", "Neg", "Abs", "ReduceMax", "ReduceMin", "MaxPool",
                      "ScatterND", "ScatterElements", "Pad", "DepthToSpace", "SpaceToDepth", "TopK",
                      "Trilu", "Resize"})

# Ops that are views on the card (no kernel launch, no data moved after ATC's graph passes).
VIEW_OPS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Constant", "Shape",
                      "Size", "Dropout"})

_NP = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64,
       TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8, TensorProto.INT16: np.int16,
       TensorProto.UINT16: np.uint16, TensorProto.INT32: np.int32, TensorProto.INT64: np.int64,
       TensorProto.UINT32: np.uint32, TensorProto.UINT64: np.uint64, TensorProto.BOOL: np.bool_}


def elem_size(elem_type: int) -> int:
    """Bytes per element of an ONNX dtype (bf16 = 2; unknown = 4)."""
    if elem_type == TensorProto.BFLOAT16:
        return 2
    np_t = _NP.get(elem_type)
    return np.dtype(np_t).itemsize if np_t is not None else 4


def np_dtype(elem_type: int) -> np.dtype:
    if elem_type == TensorProto.BFLOAT16:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if elem_type not in _NP:
        raise ConfigError(f"ONNX dtype {elem_type} has no numpy equivalent here", "use float/int/bool tensors")
    return np.dtype(_NP[elem_type])


def load_model(model: str | os.PathLike | onnx.ModelProto, *, load_weights: bool = False) -> onnx.ModelProto:
    """Read an ONNX model (weights left external unless `load_weights`)."""
    if isinstance(model, onnx.ModelProto):
        return model
    p = Path(model)
    if not p.is_file():
        raise ConfigError(f"ONNX model '{p}' not found", "check the path (an .omsim directory holds graphs/*.onnx)")
    try:
        return onnx.load(str(p), load_external_data=load_weights)
    except Exception as exc:  # noqa: BLE001 - protobuf errors have many types
        raise ConfigError(f"cannot read ONNX model '{p}': {exc}", "re-export the model") from exc


def opset_of(model: onnx.ModelProto, domain: str = "") -> int | None:
    for o in model.opset_import:
        if (o.domain or "") in (domain, "ai.onnx" if domain == "" else domain):
            return int(o.version)
    return None


def iter_nodes(graph: onnx.GraphProto, prefix: str = "") -> Iterator[tuple[onnx.NodeProto, str, int]]:
    """Every node, subgraphs included; yields (node, path of the enclosing nodes or "", index of
    the node in its own graph)."""
    for i, node in enumerate(graph.node):
        yield node, prefix, i
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g, f"{prefix}{node_label(node, i)}/")
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_nodes(g, f"{prefix}{node_label(node, i)}/")


def node_label(node: onnx.NodeProto, index: int | None = None) -> str:
    """A node's name, or `<OpType>_<index>` for unnamed nodes (as ATC names them)."""
    if node.name:
        return node.name
    return f"{node.op_type}_{index}" if index is not None else node.op_type


def dims_of(vi: onnx.ValueInfoProto) -> list[int | str] | None:
    """Dims of a value info: int, or the dim_param string ("?" when neither); None = unknown rank."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    out: list[int | str] = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            out.append(d.dim_param)
        else:
            out.append("?")
    return out


@dataclass(frozen=True)
class TensorInfo:
    """dtype (ONNX enum) and shape (ints, or strings for unknown dims; None = unknown rank)."""

    elem_type: int
    shape: tuple[int | str, ...] | None

    @property
    def is_float(self) -> bool:
        return self.elem_type in FLOAT_TYPES

    @property
    def static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    @property
    def numel(self) -> int | None:
        return math.prod(self.shape) if self.static else None  # type: ignore[arg-type]

    def nbytes(self, elem_bytes: int | None = None) -> int | None:
        n = self.numel
        return None if n is None else n * (elem_bytes or elem_size(self.elem_type))


def graph_inputs(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """Real inputs (initializers listed as inputs are skipped)."""
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        d = dims_of(vi)
        out[vi.name] = TensorInfo(vi.type.tensor_type.elem_type, None if d is None else tuple(d))
    return out


def graph_outputs(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    out = {}
    for vi in model.graph.output:
        d = dims_of(vi)
        out[vi.name] = TensorInfo(vi.type.tensor_type.elem_type, None if d is None else tuple(d))
    return out


def initializer_infos(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    return {i.name: TensorInfo(i.data_type, tuple(int(d) for d in i.dims)) for i in model.graph.initializer}


def with_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    """A copy of the graph (weights not copied: initializers keep external references) whose
    inputs have the given concrete shapes."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape
            dims.ClearField("dim")
            for d in shapes[vi.name]:
                dims.dim.add().dim_value = int(d)
    return m


def _strip_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose initializers keep dims and dtype but no data (for shape inference)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for init in m.graph.initializer:
        if init.data_location != TensorProto.EXTERNAL and math.prod(init.dims) <= 64:
            continue  # small tensors (shape constants) stay for data propagation
        dims, dt, name = list(init.dims), init.data_type, init.name
        init.Clear()
        init.name, init.data_type = name, dt
        init.dims.extend(dims)
    return m


def infer_tensor_infos(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None
                       ) -> dict[str, TensorInfo]:
    """Dtype and shape of every tensor (inputs, initializers, node outputs, outputs).

    Uses ONNX shape inference with data propagation on a weight-less copy, with the graph inputs
    pinned to `input_shapes` where given.
    """
    m = with_input_shapes(model, input_shapes or {})
    m = _strip_weights(m)
    try:
        inferred = onnx.shape_inference.infer_shapes(m, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - fall back to what the file declares
        inferred = m
    infos: dict[str, TensorInfo] = {}
    infos.update(initializer_infos(model))
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        if vi.name in infos and infos[vi.name].static:
            continue
        d = dims_of(vi)
        infos[vi.name] = TensorInfo(vi.type.tensor_type.elem_type, None if d is None else tuple(d))
    # Constant nodes
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    infos[node.output[0]] = TensorInfo(a.t.data_type, tuple(int(x) for x in a.t.dims))
    return infos


def expose_all_outputs(model: onnx.ModelProto, names: Iterable[str] | None = None) -> onnx.ModelProto:
    """Add `names` (default: every node output) as graph outputs of `model`, in place.

    The new outputs carry no type; onnxruntime infers it. Used to dump every intermediate tensor.
    """
    if names is None:
        names = [o for n in model.graph.node for o in n.output]
    have = {o.name for o in model.graph.output}
    for n in names:
        if n and n not in have:
            model.graph.output.append(onnx.ValueInfoProto(name=n))
            have.add(n)
    return model


def probe_tensor_infos(model_path_or_bytes: Any, feeds: Mapping[str, np.ndarray],
                       model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """Exact shapes of every tensor by running the graph once in onnxruntime (fallback when
    static inference leaves shapes unknown)."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    expose_all_outputs(m)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    vals = sess.run(names, dict(feeds))
    infos = dict(infer_tensor_infos(model))
    for n, v in zip(names, vals):
        v = np.asarray(v)
        et = helper.np_dtype_to_tensor_dtype(v.dtype) if v.dtype != object else TensorProto.UNDEFINED
        infos[n] = TensorInfo(int(et), tuple(int(d) for d in v.shape))
    for k, v in feeds.items():
        v = np.asarray(v)
        infos[k] = TensorInfo(int(helper.np_dtype_to_tensor_dtype(v.dtype)), tuple(v.shape))
    return infos


def attrs_of(node: onnx.NodeProto) -> dict[str, Any]:
    """Attribute values (graphs omitted)."""
    out = {}
    for a in node.attribute:
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            continue
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        out[a.name] = v
    return out


def external_data_files(model: onnx.ModelProto) -> list[str]:
    """Relative locations of the external data files the model's initializers point to."""
    locs: list[str] = []
    for init in model.graph.initializer:
        if init.data_location == TensorProto.EXTERNAL:
            for e in init.external_data:
                if e.key == "location" and e.value not in locs:
                    locs.append(e.value)
    return locs
