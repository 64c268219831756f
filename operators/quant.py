"""Quantization operators in the form ATC compiles: AscendAntiQuant, AscendQuant, int8 MatMul, AscendDequant.

ONNX QuantizeLinear / DequantizeLinear / MatMulInteger are not in ATC's ONNX tables (reference sheet
§2); the Ascend custom ops are. Their ONNX contract, as the open ONNX parser plugins read it
(`REGISTER_CUSTOM_OP(...).FrameworkType(ONNX).OriginOpType("ai.onnx::<opset>::<Op>")`, i.e. the
node sits in the DEFAULT domain, opsets 8-22):

- **AscendAntiQuant** (hicann/ops-nn `quant/ascend_anti_quant_v2/framework/ascend_anti_quant_v2_onnx_plugin.cpp`):
  one input `x` int8; float attributes `scale`, `offset` (the plugin negates `offset` for the GE
  op: GE computes `y = (x + offset_ge) * scale`, so the ONNX node means `y = (x - offset) * scale`),
  int `dtype` (0 = float32, 1 = float16, ge::DataType), int `sqrt_mode` (scale applied twice).
  Per-tensor only (scalar attributes; hicann/ops-nn `quant/ascend_anti_quant/README.md`).
- **AscendQuant** (its ONNX plugin `REGISTER_CUSTOM_OP("AscendQuant")` in the hicann ops sources; IR
  hicann/ops-nn `quant/ascend_quant/op_graph/ascend_quant_proto.h`): input `x` float16/float32; required float
  attributes `scale`, `offset`; `sqrt_mode` int; `round_mode` string in {Round, Floor, Ceil,
  Trunc} ("Round: round to nearest, tie to even (c language rint)"); output int8:
  `y = saturate_int8(round(x * scale + offset))`. AMCT / GE manual quantization set
  `scale = 1 / scale_d` (hicann/ge `docs/zh/user_guides/graph_dev/more_features/quantization.md`).
- **int8 MatMul**: a plain ONNX `MatMul` node whose inputs are int8 (the AscendQuant output and an
  int8 weight initializer); ATC maps MatMul to BatchMatMulV2, which takes int8 × int8 → int32 in
  AMCT's deploy form (reference sheet §7). Not valid for onnxruntime's MatMul schema: the simulator
  lowers it (below).
- **AscendDequant** (its ONNX plugin `REGISTER_CUSTOM_OP("AscendDequant")`; IR `REG_OP(AscendDequant)`
  in ops-nn's `ascend_dequant_proto.h`): inputs `x` int32 and `deq_scale` (uint64 holding the float32 bits of
  `scale_d · scale_w` in its low 32 bits — the GE quantization guide above — or float16), 1-D of
  the last dimension of x or 1; attributes `sqrt_mode`, `relu_flag`, `dtype` (0 fp32 / 1 fp16);
  `y = cast_dtype(float32(x) * deq_scale)`.

Card numerics we emulate (the references below): AscendQuant computes in float16 (an fp32 input
is rounded to fp16 first, `x * fp16(scale)` and `+ fp16(offset)` each rounded to fp16), rounds
with `round_mode` and saturates to [-128, 127]; AscendDequant converts int32 → float32 (round to
nearest even), multiplies by the float32 scale and rounds once to the output dtype;
AscendAntiQuant computes `(x + offset) * scale` in float32 and rounds once. The fp16 arithmetic
inside AscendQuant is the TBE kernel's behaviour as we recall it [M: not confirmed in open source;
the open ops-nn kernels are the Ascend 950 ones]. Which SoCs ship the kernels: the open ops-nn
READMEs list only the 950 / A2 / A3 kernels; for the 310 family the kernels come with the closed
built-in op package (AMCT's deploy models for 310 / 310P use AscendQuant / AscendDequant,
reference sheet §7). The targets' op tables (`targets/data/atc_onnx_ops.csv`) decide acceptance.

Simulator: onnxruntime does not know these ops. `lower_quant_ops(model)` rewrites each into
standard onnxruntime nodes that compute the reference bit for bit (Cast / Mul / Add / Round /
Clip, MatMulInteger for the int8 MatMul); `SimSession` applies it after the precision rewrite, and
each operator's `sim_kernel` runs its own node through the same lowering.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from ascend_adapt.errors import ConfigError, UnsupportedError
# the ONNX op types of ATC's quant ops and the int8 MatMul's tag are core facts (the simulator's cost
# model reads them too); imported from there, and importable from here as before
from ascend_adapt.quant import ASCEND_QUANT_OPS, INT8_MATMUL_TAG

from .registry import OperatorSpec, register_operator

GE_DT_FLOAT, GE_DT_FLOAT16 = 0, 1  # ge::DataType codes of the `dtype` attributes
ROUND_MODES = ("Round", "Floor", "Ceil", "Trunc")
FP16_MAX = 65504.0


def _ge_dtype(dtype) -> int:
    d = np.dtype(dtype)
    if d == np.float16:
        return GE_DT_FLOAT16
    if d == np.float32:
        return GE_DT_FLOAT
    raise UnsupportedError(f"Ascend quant ops output float16 or float32, not {d}")


def _np_of_ge(code: int):
    return {GE_DT_FLOAT: np.float32, GE_DT_FLOAT16: np.float16}[int(code)]


def _mindspore():
    """mindspore, for the ops' `mindspore()` implementations. `importlib.import_module`, not an
    import statement nor `require`'s try/except: a cell whose `construct` calls these ops then
    compiles under `ms.jit` (MindSpore's graph parser rejects Import / Try statements). The cells
    that call them (`model_zoo/ms_layers.py`) import mindspore themselves."""
    return importlib.import_module("mindspore")


def _f16(a) -> np.ndarray:
    """Round float32 values to float16 and back (exact float32 holding fp16 values; overflow → ±inf)."""
    with np.errstate(over="ignore"):
        return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def _round(t: np.ndarray, mode: str) -> np.ndarray:
    if mode == "Round":
        return np.rint(t)
    if mode == "Floor":
        return np.floor(t)
    if mode == "Ceil":
        return np.ceil(t)
    if mode == "Trunc":
        return np.trunc(t)
    raise ConfigError(f"AscendQuant round_mode '{mode}' is not one of {', '.join(ROUND_MODES)}")


# ---------------------------------------------------------------------------------------------
# deq_scale encoding (uint64 with the float32 bits in the low word)
# ---------------------------------------------------------------------------------------------
def encode_deq_scale(scale) -> np.ndarray:
    """float32 scales → the uint64 `deq_scale` AscendDequant reads (float32 bits in the low 32 bits)."""
    f = np.ascontiguousarray(np.asarray(scale, np.float32))
    return f.view(np.uint32).astype(np.uint64)


def decode_deq_scale(deq_scale) -> np.ndarray:
    """The float32 scales of a `deq_scale` tensor (uint64 encoded, or float16 / float32)."""
    a = np.asarray(deq_scale)
    if a.dtype == np.uint64:
        if np.any(a >> np.uint64(32)):
            raise ConfigError("AscendDequant deq_scale: the high 32 bits must be zero",
                              "encode float32 scales with encode_deq_scale()")
        return np.ascontiguousarray(a.astype(np.uint32)).view(np.float32)
    if a.dtype in (np.float16, np.float32):
        return a.astype(np.float32)
    raise ConfigError(f"AscendDequant deq_scale has dtype {a.dtype}; expected uint64 or float16")


# ---------------------------------------------------------------------------------------------
# the card's arithmetic (numpy references of the ONNX nodes)
# ---------------------------------------------------------------------------------------------
def ascend_quant_ref(x, scale: float, offset: float = 0.0, sqrt_mode: bool = False,
                     round_mode: str = "Round") -> np.ndarray:
    """AscendQuant: int8 = saturate(round(fp16(fp16(x) * fp16(scale)) + fp16(offset)))."""
    t = _f16(x)
    s = _f16(np.float32(scale))
    t = _f16(t * s)
    if sqrt_mode:
        t = _f16(t * s)
    t = _f16(t + _f16(np.float32(offset)))
    return np.clip(_round(t, round_mode), -128, 127).astype(np.int8)


def ascend_dequant_ref(x, deq_scale, sqrt_mode: bool = False, relu_flag: bool = False,
                       dtype: int = GE_DT_FLOAT16) -> np.ndarray:
    """AscendDequant: y = cast_dtype(float32(x_int32) * scale [* scale]) [relu]."""
    s = decode_deq_scale(deq_scale)
    with np.errstate(over="ignore"):  # fp16 overflow → ±inf, as on the card
        y = np.asarray(x, np.int32).astype(np.float32) * s
        if sqrt_mode:
            y = (y * s).astype(np.float32)
        if relu_flag:
            y = np.maximum(y, np.float32(0))
        return y.astype(_np_of_ge(dtype))


def ascend_anti_quant_ref(x, scale: float = 1.0, offset: float = 0.0, dtype: int = GE_DT_FLOAT16,
                          sqrt_mode: bool = False) -> np.ndarray:
    """AscendAntiQuant (ONNX attributes): y = cast_dtype((x - offset) * scale [* scale]), in float32."""
    y = np.asarray(x, np.int8).astype(np.float32)
    if offset:
        y = y + np.float32(-offset)
    y = y * np.float32(scale)
    if sqrt_mode:
        y = y * np.float32(scale)
    return y.astype(_np_of_ge(dtype))


def int8_matmul_ref(a, b) -> np.ndarray:
    """int8 × int8 → int32 with exact int32 accumulation."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != np.int8 or b.dtype != np.int8:
        raise ConfigError(f"int8 MatMul takes int8 inputs, got {a.dtype} and {b.dtype}")
    return np.matmul(a.astype(np.int32), b.astype(np.int32)).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# lowering to onnxruntime (the simulator's kernels)
# ---------------------------------------------------------------------------------------------
def _op_tag(node) -> str:
    for p in node.metadata_props:
        if p.key == "ascend_adapt.op":
            return p.value
    return ""


def has_quant_ops(model) -> bool:
    """True when `model` holds an Ascend quant op or an int8 MatMul (it needs `lower_quant_ops` for onnxruntime)."""
    return any(n.op_type in ASCEND_QUANT_OPS or (n.op_type == "MatMul" and _op_tag(n) == INT8_MATMUL_TAG)
               for n in model.graph.node)


def lower_quant_ops(model, base_dir=None):
    """A copy of `model` whose Ascend quant ops run in onnxruntime, bit-exact to the references.

    AscendAntiQuant / AscendQuant / AscendDequant become Cast / Add / Mul / Round / Clip chains in
    float32 with explicit float16 rounding (Cast pairs) where the card rounds; a MatMul tagged
    `int8_matmul` becomes MatMulInteger. Integer-valued, fp16-exact and int32 values pass every
    step exactly, so the only roundings are the card's. `deq_scale` must be a constant
    (initializer or Constant node); external data is read from `base_dir`.

    Returns:
        the lowered ModelProto (the input itself when it has nothing to lower).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if not has_quant_ops(model):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant" and n.output}
    new_inits: list = []
    counter = [0]

    def const(arr, hint: str) -> str:
        counter[0] += 1
        name = f"{hint}__lq{counter[0]}"
        new_inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def value_of(name: str) -> np.ndarray:
        if name in inits:
            t = inits[name]
            if t.data_location == TensorProto.EXTERNAL:
                if base_dir is None:
                    raise UnsupportedError(f"AscendDequant deq_scale '{name}' is in external data",
                                           "pass base_dir, or store deq_scale inline")
                from onnx.external_data_helper import load_external_data_for_tensor

                t2 = TensorProto()
                t2.CopyFrom(t)
                load_external_data_for_tensor(t2, str(base_dir))
                return numpy_helper.to_array(t2)
            return numpy_helper.to_array(t)
        if name in consts:
            for a in consts[name].attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        raise UnsupportedError(f"AscendDequant deq_scale '{name}' is not a constant",
                               "the simulator needs the dequant scale as an initializer")

    F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16

    def to_onnx_dtype(code: int) -> int:
        return F16 if int(code) == GE_DT_FLOAT16 else F32

    nodes = []
    for n in g.node:
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        base = n.name or n.output[0]
        k = [0]

        def t(suffix: str) -> str:
            k[0] += 1
            return f"{base}__lq_{suffix}{k[0]}"

        def mk(op, ins, outs, **kw):
            nodes.append(helper.make_node(op, ins, outs, name=f"{base}__lq_{op}{len(nodes)}", **kw))

        def f16_round(src: str) -> str:  # float32 → float16 → float32
            h, back = t("h"), t("f")
            mk("Cast", [src], [h], to=F16)
            mk("Cast", [h], [back], to=F32)
            return back

        if n.op_type == "AscendAntiQuant":
            x = t("x")
            mk("Cast", [n.input[0]], [x], to=F32)
            off = float(a.get("offset", 0.0))
            if off:
                y = t("add")
                mk("Add", [x, const(np.float32(-off), "aq_off")], [y])
                x = y
            sc = const(np.float32(a.get("scale", 1.0)), "aq_scale")
            for _ in range(2 if a.get("sqrt_mode", 0) else 1):
                y = t("mul")
                mk("Mul", [x, sc], [y])
                x = y
            mk("Cast", [x], [n.output[0]], to=to_onnx_dtype(a.get("dtype", GE_DT_FLOAT)))
        elif n.op_type == "AscendQuant":
            mode = a.get("round_mode", b"Round")
            mode = mode.decode() if isinstance(mode, bytes) else str(mode)
            if mode not in ROUND_MODES:
                raise UnsupportedError(f"{n.name}: AscendQuant round_mode '{mode}' is not simulated",
                                       f"use one of {', '.join(ROUND_MODES)}")
            x = t("x")
            mk("Cast", [n.input[0]], [x], to=F32)
            x = f16_round(x)
            s = const(_f16(np.float32(a.get("scale", 1.0))), "q_scale")
            for _ in range(2 if a.get("sqrt_mode", 0) else 1):
                y = t("mul")
                mk("Mul", [x, s], [y])
                x = f16_round(y)
            y = t("add")
            mk("Add", [x, const(_f16(np.float32(a.get("offset", 0.0))), "q_off")], [y])
            x = f16_round(y)
            r = t("round")
            if mode == "Round":
                mk("Round", [x], [r])
            elif mode == "Floor":
                mk("Floor", [x], [r])
            elif mode == "Ceil":
                mk("Ceil", [x], [r])
            else:  # Trunc = sign(x) * floor(|x|)
                ab, fl, sg = t("abs"), t("floor"), t("sign")
                mk("Abs", [x], [ab])
                mk("Floor", [ab], [fl])
                mk("Sign", [x], [sg])
                mk("Mul", [sg, fl], [r])
            c = t("clip")
            mk("Clip", [r, const(np.float32(-128), "q_lo"), const(np.float32(127), "q_hi")], [c])
            mk("Cast", [c], [n.output[0]], to=TensorProto.INT8)
        elif n.op_type == "AscendDequant":
            s = const(decode_deq_scale(value_of(n.input[1])), "dq_scale")
            x = t("x")
            mk("Cast", [n.input[0]], [x], to=F32)
            for _ in range(2 if a.get("sqrt_mode", 0) else 1):
                y = t("mul")
                mk("Mul", [x, s], [y])
                x = y
            if a.get("relu_flag", 0):
                y = t("relu")
                mk("Relu", [x], [y])
                x = y
            mk("Cast", [x], [n.output[0]], to=to_onnx_dtype(a.get("dtype", GE_DT_FLOAT)))
        elif n.op_type == "MatMul" and _op_tag(n) == INT8_MATMUL_TAG:
            mk("MatMulInteger", list(n.input[:2]), [n.output[0]])
        else:
            nodes.append(n)
    g.ClearField("node")
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    # a deq_scale read only by the lowered AscendDequant is now unused: drop it (its float32
    # copy replaced it)
    used = {i for nd in g.node for i in nd.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in used]
    if len(keep) != len(g.initializer):
        g.ClearField("initializer")
        g.initializer.extend(keep)
    return out


def ort_model_source(model, session_options, base_dir=None):
    """What to hand `onnxruntime.InferenceSession` for `model`, its Ascend quant ops lowered.

    Plain onnxruntime does not know AscendAntiQuant / AscendQuant / AscendDequant (nor int8 in
    MatMul): a quantized export runs through `lower_quant_ops`, the same lowering the simulator
    uses, so onnxruntime and the simulator compute the quant ops identically. A graph without
    them is handed over unchanged (a path stays a path: onnxruntime reads its external data).

    Args:
        model: a path (str / PathLike) to an .onnx file, its bytes, or a ModelProto.
        session_options: the `onnxruntime.SessionOptions` the session will be made with; for a
            lowered graph read from a path its folder is set as where the external weights are.
        base_dir: folder of the external data of a bytes / ModelProto model (default: none).

    Returns:
        a path string or the serialized model bytes.
    """
    import os

    import onnx

    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        proto = onnx.load(path, load_external_data=False)
        if not has_quant_ops(proto):
            return path
        base_dir = os.path.dirname(os.path.abspath(path))
    elif isinstance(model, (bytes, bytearray)):
        proto = onnx.load_from_string(bytes(model))
        if not has_quant_ops(proto):
            return bytes(model)
    else:
        proto = model
        if not has_quant_ops(proto):
            return proto.SerializeToString()
    if base_dir is not None:
        session_options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                                 str(base_dir))
    return lower_quant_ops(proto, base_dir).SerializeToString()


# ---------------------------------------------------------------------------------------------
# the registry entries
# ---------------------------------------------------------------------------------------------
def _run_single(op: "OperatorSpec", inputs: list[np.ndarray], const_inputs: dict[int, np.ndarray] | None = None,
                act_dtype=np.float16, **attrs) -> list[np.ndarray]:
    """Emit `op` into a one-op graph, lower it as the simulator does and run it in onnxruntime."""
    import onnxruntime as ort

    from .graph import GraphBuilder

    const_inputs = const_inputs or {}
    b = GraphBuilder(f"sim_{op.name}", opset=17, act_dtype=act_dtype)
    names, feeds = [], {}
    for i, arr in enumerate(inputs):
        arr = np.asarray(arr)
        if i in const_inputs:
            names.append(b.const(arr))
        else:
            nm = b.add_input(f"in{i}", arr.dtype, list(arr.shape))
            names.append(nm)
            feeds[nm] = arr
    outs = op.emit(b, names, None, **attrs)
    out_dt = op.output_dtypes(inputs, act_dtype=act_dtype, **attrs)
    for j, o in enumerate(outs):
        b.add_output(o, out_dt[j], None, name=f"out{j}")
    model = lower_quant_ops(b.make_model())
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _numel(shape) -> int | None:
    if shape is None or any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        return None
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def _elem_bytes(elem_type) -> int:
    from onnx import TensorProto

    return {TensorProto.INT8: 1, TensorProto.UINT8: 1, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2,
            TensorProto.INT32: 4, TensorProto.FLOAT: 4, TensorProto.UINT64: 8, TensorProto.INT64: 8,
            TensorProto.DOUBLE: 8}.get(elem_type, 4)


def _io_bytes(node_shapes: dict) -> float:
    total = 0
    for shape, et in list(node_shapes.get("inputs", [])) + list(node_shapes.get("outputs", [])):
        n = _numel(shape)
        if n is None:
            raise ValueError("unknown shape")
        total += n * _elem_bytes(et)
    return float(total)


class _QuantOp(OperatorSpec):
    """Shared plumbing: the simulator kernel runs the op's own lowered emission."""

    def output_dtypes(self, inputs, act_dtype=np.float16, **attrs) -> list:  # pragma: no cover - abstract
        raise NotImplementedError

    def _const_inputs(self, inputs) -> dict[int, np.ndarray]:
        return {}

    def __init__(self) -> None:
        super().__init__()
        self.sim_kernel = self._sim_kernel
        self.sim_cost = self._sim_cost

    def _sim_kernel(self, inputs: list[np.ndarray], **attrs) -> list[np.ndarray]:
        act = attrs.pop("act_dtype", np.float16)
        return _run_single(self, list(inputs), self._const_inputs(inputs), act_dtype=act, **attrs)

    def _sim_cost(self, node_shapes: dict) -> tuple[float, float]:
        outs = node_shapes.get("outputs", [])
        n = _numel(outs[0][0]) if outs else None
        return float(2 * (n or 0)), _io_bytes(node_shapes)


@register_operator
class AntiQuant(_QuantOp):
    """W8A16 weight dequantization: w = fp(AscendAntiQuant(q)) · scale, then an ordinary MatMul reads w.

    Inputs: q int8 [in, out] (the Linear weight, stored transposed), scale [out] (per output
    channel) or [in/G, 1, out] (group-wise, G = `group_size` input rows per group) in the
    activation dtype. Output: w [in, out] in the activation dtype, `w = round_act(q · scale)`
    (q · scale is exact in float32: 8-bit × 11-bit significands).
    Emission: AscendAntiQuant(scale=1, offset=0, dtype=act) — exact integers — then Mul by the
    scale tensor (AscendAntiQuant's scale is a per-tensor attribute, hicann/ops-nn
    `quant/ascend_anti_quant/README.md`, so the per-channel / per-group scale is a Mul; group-wise
    reshapes to [in/G, G, out] around it). Attributes: group_size (None = per channel).
    MindSpore: Cast + Mul. Cost: reads int8 q + scales, writes w.
    """

    name = "anti_quant"

    def reference(self, q, scale, group_size: int | None = None):
        q = np.asarray(q)
        s = np.asarray(scale)
        act = s.dtype.type
        w = ascend_anti_quant_ref(q, 1.0, 0.0, _ge_dtype(act)).astype(np.float32)
        if group_size:
            i, o = q.shape
            y = w.reshape(i // group_size, group_size, o) * s.astype(np.float32).reshape(i // group_size, 1, o)
            return y.reshape(i, o).astype(act)
        return (w * s.astype(np.float32)).astype(act)

    def output_dtypes(self, inputs, act_dtype=np.float16, **attrs):
        return [np.asarray(inputs[1]).dtype]

    def _emit(self, b, inputs, target, group_size: int | None = None, shape: tuple | None = None):
        q, scale = inputs
        w = b.node("AscendAntiQuant", [q], name="AntiQuant", scale=1.0, offset=0.0,
                   dtype=_ge_dtype(b.act_dtype), sqrt_mode=0)
        if not group_size:
            return b.node("Mul", [w, scale], name="MulScale")
        if shape is None:
            raise ConfigError("anti_quant: group-wise emission needs shape=(in, out)")
        i, o = shape
        w3 = b.reshape(w, [i // group_size, group_size, o], name="Group")
        y = b.node("Mul", [w3, scale], name="MulScale")
        return b.reshape(y, [i, o], name="Ungroup")

    def _sim_kernel(self, inputs, **attrs):
        q, s = (np.asarray(a) for a in inputs)
        attrs.setdefault("shape", tuple(q.shape))
        if attrs.get("group_size"):
            s = s.reshape(q.shape[0] // attrs["group_size"], 1, q.shape[1])
        return _run_single(self, [q, s], {}, act_dtype=s.dtype, **attrs)

    def mindspore(self, q, scale, group_size: int | None = None):
        ms = _mindspore()
        w = ms.ops.cast(q, scale.dtype)
        if group_size:
            i, o = q.shape
            return (w.reshape(i // group_size, group_size, o) * scale.reshape(i // group_size, 1, o)).reshape(i, o)
        return w * scale


@register_operator
class Quant(_QuantOp):
    """Static activation quantization, AscendQuant: int8 = saturate(round(x · scale + offset)).

    Input: x float16 / float32 (any shape). Attributes: scale (float, = 1 / act_scale), offset
    (float, 0 for symmetric), sqrt_mode (scale applied twice; use it when 1/act_scale exceeds
    the fp16 range), round_mode ("Round" = rint, ties to even). Output int8. The card computes
    in fp16 (see the module notes) and saturates to [-128, 127].
    MindSpore: composed (Cast, Mul, Add, Round, clip, Cast). Cost: reads x, writes int8.
    """

    name = "quant"

    def reference(self, x, scale: float = 1.0, offset: float = 0.0, sqrt_mode: bool = False,
                  round_mode: str = "Round"):
        return ascend_quant_ref(x, scale, offset, sqrt_mode, round_mode)

    def output_dtypes(self, inputs, act_dtype=np.float16, **attrs):
        return [np.int8]

    def _emit(self, b, inputs, target, scale: float = 1.0, offset: float = 0.0, sqrt_mode: bool = False,
              round_mode: str = "Round"):
        if round_mode not in ROUND_MODES:
            raise ConfigError(f"AscendQuant round_mode '{round_mode}' is not one of {', '.join(ROUND_MODES)}")
        return b.node("AscendQuant", [inputs[0]], name="Quant", scale=float(scale), offset=float(offset),
                      sqrt_mode=int(bool(sqrt_mode)), round_mode=round_mode)

    def mindspore(self, x, scale: float = 1.0, offset: float = 0.0, sqrt_mode: bool = False,
                  round_mode: str = "Round"):
        ms = _mindspore()
        ops = ms.ops
        t = ops.cast(ops.cast(x, ms.float16), ms.float32)
        s = float(np.float16(scale))
        t = ops.cast(ops.cast(t * s, ms.float16), ms.float32)
        if sqrt_mode:
            t = ops.cast(ops.cast(t * s, ms.float16), ms.float32)
        t = ops.cast(ops.cast(t + float(np.float16(offset)), ms.float16), ms.float32)
        fn = {"Round": ops.round, "Floor": ops.floor, "Ceil": ops.ceil, "Trunc": ops.trunc}[round_mode]
        return ops.cast(ops.clamp(fn(t), -128.0, 127.0), ms.int8)


@register_operator
class Int8MatMul(_QuantOp):
    """int8 × int8 → int32 MatMul (the Cube unit's int8 mode; ATC MatMul → BatchMatMulV2).

    Inputs: a int8 [..., K] (an AscendQuant output), b int8 [K, N] (a weight initializer,
    stored [in, out]). Output int32, exact (|sum| ≤ 127·128·K < 2³¹ for K < 131 000).
    Emitted as a plain ONNX MatMul with int8 inputs, tagged `int8_matmul` (AMCT deploy form);
    the simulator runs it as MatMulInteger. MindSpore: ops.matmul on int32 casts.
    Cost: 2·M·K·N int8 operations (int8 peak = 2× fp16 on the 310 family, targets' int8_tops),
    int8 operand bytes.
    """

    name = INT8_MATMUL_TAG

    def reference(self, a, b):
        return int8_matmul_ref(a, b)

    def output_dtypes(self, inputs, act_dtype=np.float16, **attrs):
        return [np.int32]

    def _emit(self, b, inputs, target):
        return b.node("MatMul", list(inputs[:2]), name="MatMulInt8")

    def _sim_cost(self, node_shapes):
        (sa, _), (sb, _) = node_shapes["inputs"][:2]
        na, nb = _numel(sa), _numel(sb)
        if na is None or nb is None:
            raise ValueError("unknown shape")
        k, n = sb[-2], sb[-1]
        return float(2 * (na // k) * k * n), _io_bytes(node_shapes)

    def mindspore(self, a, b):
        ms = _mindspore()
        return ms.ops.matmul(ms.ops.cast(a, ms.int32), ms.ops.cast(b, ms.int32))


@register_operator
class Dequant(_QuantOp):
    """AscendDequant: y = round_dtype(float32(acc) · deq_scale), deq_scale = act_scale · w_scale.

    Inputs: acc int32 [..., N] (the int8 MatMul accumulator), deq_scale uint64 [N] (float32 bits
    in the low word, `encode_deq_scale`) or float16 [N]. Attributes: sqrt_mode, relu_flag.
    Output in the activation dtype (`dtype` attribute 1 = float16, 0 = float32): one rounding.
    MindSpore: Cast + Mul + Cast. Cost: reads int32, writes the activation dtype.
    """

    name = "dequant"

    def reference(self, acc, deq_scale, sqrt_mode: bool = False, relu_flag: bool = False,
                  dtype: int = GE_DT_FLOAT16):
        return ascend_dequant_ref(acc, deq_scale, sqrt_mode, relu_flag, dtype)

    def output_dtypes(self, inputs, act_dtype=np.float16, dtype: int | None = None, **attrs):
        return [_np_of_ge(dtype if dtype is not None else _ge_dtype(act_dtype))]

    def _const_inputs(self, inputs):
        return {1: np.asarray(inputs[1])}

    def _emit(self, b, inputs, target, sqrt_mode: bool = False, relu_flag: bool = False,
              dtype: int | None = None):
        dt = _ge_dtype(b.act_dtype) if dtype is None else int(dtype)
        return b.node("AscendDequant", list(inputs[:2]), name="Dequant", dtype=dt,
                      sqrt_mode=int(bool(sqrt_mode)), relu_flag=int(bool(relu_flag)))

    def _sim_kernel(self, inputs, **attrs):
        dt = attrs.get("dtype", GE_DT_FLOAT16)
        return _run_single(self, list(inputs), {1: np.asarray(inputs[1])}, act_dtype=_np_of_ge(dt), **attrs)

    def mindspore(self, acc, deq_scale, sqrt_mode: bool = False, relu_flag: bool = False,
                  dtype: int = GE_DT_FLOAT16):
        ms = _mindspore()
        ops = ms.ops
        if isinstance(deq_scale, ms.Tensor) and deq_scale.dtype in (ms.float32, ms.float16):
            s = ops.cast(deq_scale, ms.float32)  # float scales as they are (also inside ms.jit graphs)
        else:  # uint64-encoded (numpy, or a Tensor in PyNative)
            s = ms.Tensor(decode_deq_scale(deq_scale.asnumpy() if hasattr(deq_scale, "asnumpy") else deq_scale))
        y = ops.cast(acc, ms.float32) * s
        if sqrt_mode:
            y = y * s
        if relu_flag:
            y = ops.relu(y)
        return ops.cast(y, ms.float16 if int(dtype) == GE_DT_FLOAT16 else ms.float32)


def quant_scales(act_scale: float) -> dict[str, Any]:
    """AscendQuant attributes for a static per-tensor activation scale (x ≈ q · act_scale).

    `scale = 1 / act_scale`; when that exceeds the fp16 range the square root is stored with
    `sqrt_mode` (the GE quantization guide's advice).
    """
    if not np.isfinite(act_scale) or act_scale <= 0:
        raise ConfigError(f"activation scale {act_scale!r} must be a positive finite number",
                          "recalibrate: a Linear whose input is all zeros cannot be quantized statically")
    inv = 1.0 / float(act_scale)
    if inv > FP16_MAX:
        return {"scale": float(np.sqrt(inv)), "sqrt_mode": True}
    return {"scale": inv, "sqrt_mode": False}


def annotate_quant_value_info(model) -> int:
    """Declare the type and shape of every Ascend quant op's output in `model.graph.value_info`.

    onnx shape inference knows nothing of AscendQuant & co (and refuses int8 in MatMul), so the
    tensors after them would stay untyped for the simulator's acceptance and cost model. Their
    lowered form (`lower_quant_ops`) is standard ONNX with the same tensor names: it is inferred
    once and the outputs of the Ascend nodes get its answer. In place; returns the number added.
    """
    import onnx

    if not has_quant_ops(model):
        return 0
    outs = {o for n in model.graph.node
            if n.op_type in ASCEND_QUANT_OPS or (n.op_type == "MatMul" and _op_tag(n) == INT8_MATMUL_TAG)
            for o in n.output if o}
    inferred = onnx.shape_inference.infer_shapes(lower_quant_ops(model))  # external weights are not read
    have = {v.name for v in model.graph.value_info}
    added = 0
    for v in inferred.graph.value_info:
        if v.name in outs and v.name not in have:
            model.graph.value_info.append(v)
            added += 1
    return added
