"""The quant operators (operators/quant.py) and the int8 weight quantizers (ascend_adapt/quant/weights.py).

Every comparison of a simulator kernel with its numpy reference is bit for bit (`same_bits`):
the kernels compute in onnxruntime through the simulator's lowering, the references in numpy,
and each rounding is the card's one, so there is no tolerance to derive.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ascend_adapt.errors import AscendAdaptError, ConfigError
from ascend_adapt.operators import get_operator
from ascend_adapt.operators.quant import (ASCEND_QUANT_OPS, decode_deq_scale, encode_deq_scale,
                                          has_quant_ops, lower_quant_ops, quant_scales)
from ascend_adapt.quant.weights import dequantize, quantize_groupwise, quantize_per_channel


def same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ------------------------------------------------------------------------------- weight quantizers
def test_per_channel_quantization_is_symmetric_and_within_half_a_step():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 48)).astype(np.float16)
    w[3] = 0  # a zero row gets scale 1.0 and codes 0
    q, s = quantize_per_channel(w)
    assert q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (16,)
    assert s[3] == 1.0 and not q[3].any()
    assert q.min() >= -127 and q.max() <= 127  # -128 never: symmetric
    # each row's largest |w| maps to ±127 exactly
    nz = [i for i in range(16) if i != 3]
    assert (np.abs(q[nz]).max(axis=1) == 127).all()
    # |w - q·s| ≤ s/2 per element (round to nearest), + float32 rounding of w/s (≤ 2^-23 relative)
    err = np.abs(dequantize(q, s) - w.astype(np.float32))
    assert (err <= s[:, None] * (0.5 + 2.0 ** -20)).all()


def test_rounding_is_half_to_even():
    # w / scale = k + 0.5 exactly: 127 / 127 · {0.5, 1.5, 2.5} with max 127 → scale 1
    w = np.array([[127.0, 0.5, 1.5, 2.5, -0.5, -2.5]], np.float32)
    q, s = quantize_per_channel(w)
    assert s[0] == 1.0
    assert q.tolist() == [[127, 0, 2, 2, 0, -2]]


def test_groupwise_quantization_scales_each_group():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 32)).astype(np.float32)
    w[:, 8:16] *= 100  # one loud group: the others keep their own resolution
    q, s = quantize_groupwise(w, 8)
    assert s.shape == (8, 4) and q.shape == (8, 32)
    err = np.abs(dequantize(q, s, 8) - w)
    assert (err <= np.repeat(s, 8, axis=1) * (0.5 + 2.0 ** -20)).all()
    qc, sc = quantize_per_channel(w)
    quiet = np.r_[0:8, 16:32]
    assert np.abs(dequantize(qc, sc) - w)[:, quiet].max() > 10 * err[:, quiet].max()


@pytest.mark.parametrize("bad", [0, -4, 5, 2.0])
def test_group_size_must_divide_the_input(bad):
    with pytest.raises(ConfigError, match="group size"):
        quantize_groupwise(np.ones((4, 16), np.float32), bad)


def test_quantizers_refuse_non_matrices():
    with pytest.raises(ConfigError, match="2-D"):
        quantize_per_channel(np.ones(5, np.float32))
    with pytest.raises(ConfigError, match="float"):
        quantize_per_channel(np.ones((2, 2), np.int32))
    with pytest.raises(ConfigError, match="scale shape"):
        dequantize(np.zeros((2, 4), np.int8), np.ones(3, np.float32))


# ------------------------------------------------------------------------------- operator kernels
def _quant_inputs(rng):
    x = (rng.standard_normal((3, 5, 64)) * 4).astype(np.float16)
    # ties after scaling by 2: k + 0.5 exactly (fp16-exact), saturation both ways, ±inf, zeros
    x[0, 0, :8] = np.array([0.25, 0.75, 1.25, -0.25, -0.75, -1.25, 63.75, -64.25], np.float16)
    x[0, 1, :4] = np.array([1000, -1000, np.inf, -np.inf], np.float16)
    x[0, 2, :4] = 0
    return x


@pytest.mark.parametrize("round_mode", ["Round", "Floor", "Ceil", "Trunc"])
@pytest.mark.parametrize("sqrt_mode", [False, True])
def test_quant_kernel_equals_reference_bit_for_bit(round_mode, sqrt_mode):
    rng = np.random.default_rng(2)
    x = _quant_inputs(rng)
    op = get_operator("quant")
    scale = np.sqrt(2.0) if sqrt_mode else 2.0
    attrs = dict(scale=scale, offset=0.0, sqrt_mode=sqrt_mode, round_mode=round_mode)
    want = op.reference(x, **attrs)
    (got,) = op.sim_kernel([x], **attrs)
    assert same_bits(got, want)
    assert want.min() == -128 and want.max() == 127  # the inputs reach int8 saturation
    if round_mode == "Round" and not sqrt_mode:
        assert want[0, 0, :6].tolist() == [0, 2, 2, 0, -2, -2]  # ties to even (rint)


def test_quant_kernel_with_offset_and_fp32_input():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 33)) * 30).astype(np.float32)  # fp32 input: rounded to fp16 first
    op = get_operator("quant")
    want = op.reference(x, scale=1 / 0.37, offset=3.0)
    (got,) = op.sim_kernel([x], scale=1 / 0.37, offset=3.0, act_dtype=np.float32)
    assert same_bits(got, want)


@pytest.mark.parametrize("sqrt_mode,relu_flag", [(False, False), (True, False), (False, True)])
def test_dequant_kernel_equals_reference_bit_for_bit(sqrt_mode, relu_flag):
    rng = np.random.default_rng(4)
    # int32 accumulators beyond 2^24 (not exact in float32: the int → float rounding is exercised)
    acc = rng.integers(-2 ** 30, 2 ** 30, (2, 3, 40)).astype(np.int32)
    acc[0, 0, :3] = [2 ** 31 - 1, -2 ** 31, 0]
    s = (rng.random(40) * 1e-4 + 1e-7).astype(np.float32)
    op = get_operator("dequant")
    for deq in (encode_deq_scale(s), s.astype(np.float16)):
        want = op.reference(acc, deq, sqrt_mode=sqrt_mode, relu_flag=relu_flag)
        (got,) = op.sim_kernel([acc, deq], sqrt_mode=sqrt_mode, relu_flag=relu_flag)
        assert same_bits(got, want) and want.dtype == np.float16
    assert np.isinf(op.reference(acc, encode_deq_scale(np.full(40, 1.0, np.float32)))).any()  # fp16 overflow


def test_int8_matmul_kernel_is_exact():
    rng = np.random.default_rng(5)
    a = rng.integers(-128, 128, (2, 7, 96)).astype(np.int8)
    b = rng.integers(-127, 128, (96, 24)).astype(np.int8)
    a[0, 0] = -128
    b[:, 0] = -127  # the extreme products: |Σ| = 96·128·127, far inside int32
    op = get_operator("int8_matmul")
    want = op.reference(a, b)
    (got,) = op.sim_kernel([a, b])
    assert same_bits(got, want)
    assert want[0, 0, 0] == 96 * 128 * 127
    with pytest.raises(ConfigError, match="int8"):
        op.reference(a.astype(np.int32), b)


@pytest.mark.parametrize("group_size", [None, 16])
@pytest.mark.parametrize("act", [np.float16, np.float32])
def test_anti_quant_kernel_equals_reference_bit_for_bit(group_size, act):
    rng = np.random.default_rng(6)
    w = rng.standard_normal((24, 64)).astype(np.float32)  # [out, in]
    if group_size:
        q, s = quantize_groupwise(w, group_size)
        scale = np.ascontiguousarray(s.T.astype(act)).reshape(64 // group_size, 1, 24)
    else:
        q, s = quantize_per_channel(w)
        scale = s.astype(act)
    qt = np.ascontiguousarray(q.T)  # stored [in, out]
    op = get_operator("anti_quant")
    want = op.reference(qt, scale, group_size=group_size)
    (got,) = op.sim_kernel([qt, scale], group_size=group_size)
    assert same_bits(got, want) and want.dtype == act
    # and it is the dequantized weight, transposed, with the scale rounded to the activation dtype
    s_act = (s.astype(act).astype(np.float32))
    deq = dequantize(q, s_act, group_size) if group_size else q.astype(np.float32) * s_act[:, None]
    assert same_bits(want, deq.T.astype(act))


def test_deq_scale_encoding_round_trips_and_refuses_high_bits():
    s = np.array([1e-3, 0.5, 3.25e-6], np.float32)
    enc = encode_deq_scale(s)
    assert enc.dtype == np.uint64 and not (enc >> np.uint64(32)).any()
    assert same_bits(decode_deq_scale(enc), s)
    with pytest.raises(ConfigError, match="high 32 bits"):
        decode_deq_scale(enc | np.uint64(1 << 40))


def test_quant_scales_use_sqrt_mode_beyond_fp16():
    assert quant_scales(0.05) == {"scale": pytest.approx(20.0), "sqrt_mode": False}
    big = quant_scales(1e-6)
    assert big["sqrt_mode"] and big["scale"] ** 2 == pytest.approx(1e6)
    with pytest.raises(ConfigError, match="activation scale"):
        quant_scales(0.0)


# ------------------------------------------------------------------------------- ONNX emission
def _w8a8_linear_model(rng, act=np.float16, K=64, N=24):
    """x [2, 5, K] → quant → int8 MatMul → dequant, plus the numpy chain's answer."""
    from ascend_adapt.operators.graph import GraphBuilder

    w = rng.standard_normal((N, K)).astype(np.float32)
    q, ws = quantize_per_channel(w)
    act_scale = np.float32(0.031)
    deq = encode_deq_scale(act_scale * ws)
    b = GraphBuilder("lin", opset=17, act_dtype=act)
    x = b.add_input("x", act, [2, 5, K])
    with b.scope("layers.0/q_proj"):
        xq = get_operator("quant").emit(b, [x], None, **quant_scales(float(act_scale)))[0]
        acc = get_operator("int8_matmul").emit(b, [xq, b.const(np.ascontiguousarray(q.T))], None)[0]
        y = get_operator("dequant").emit(b, [acc, b.const(deq)], None)[0]
    b.add_output(y, act, [2, 5, N], name="y")
    xs = (rng.standard_normal((2, 5, K)) * 2).astype(act)
    ops = {n: get_operator(n) for n in ("quant", "int8_matmul", "dequant")}
    want = ops["dequant"].reference(
        ops["int8_matmul"].reference(ops["quant"].reference(xs, **quant_scales(float(act_scale))),
                                     np.ascontiguousarray(q.T)), deq)
    return b.make_model(), xs, want


def test_emission_is_the_atc_contract():
    import onnx

    model, _, _ = _w8a8_linear_model(np.random.default_rng(7))
    nodes = {n.op_type: n for n in model.graph.node}
    assert {"AscendQuant", "MatMul", "AscendDequant"} <= set(nodes)
    for n in model.graph.node:
        assert n.domain == ""  # ATC's plugins register ai.onnx::<opset>::AscendQuant (default domain)
    qa = {a.name: onnx.helper.get_attribute_value(a) for a in nodes["AscendQuant"].attribute}
    assert set(qa) == {"scale", "offset", "sqrt_mode", "round_mode"}
    assert isinstance(qa["scale"], float) and qa["round_mode"] == b"Round" and qa["offset"] == 0.0
    da = {a.name: onnx.helper.get_attribute_value(a) for a in nodes["AscendDequant"].attribute}
    assert da == {"dtype": 1, "sqrt_mode": 0, "relu_flag": 0}  # fp16 output
    inits = {t.name: t for t in model.graph.initializer}
    dq = nodes["AscendDequant"]
    assert dq.input[0] == nodes["MatMul"].output[0]
    assert inits[dq.input[1]].data_type == onnx.TensorProto.UINT64  # deq_scale: input 2, uint64
    assert inits[nodes["MatMul"].input[1]].data_type == onnx.TensorProto.INT8
    meta = {p.key: p.value for p in nodes["MatMul"].metadata_props}
    assert meta["ascend_adapt.op"] == "int8_matmul"
    assert has_quant_ops(model)
    lowered = lower_quant_ops(model)
    assert not has_quant_ops(lowered)
    assert not {n.op_type for n in lowered.graph.node} & set(ASCEND_QUANT_OPS)
    onnx.checker.check_model(lowered)


def test_anti_quant_emission_attributes():
    import onnx

    from ascend_adapt.operators.graph import GraphBuilder

    b = GraphBuilder("aq", opset=17, act_dtype=np.float16)
    q = b.add_input("q", np.int8, [64, 24])
    s = b.add_input("s", np.float16, [24])
    get_operator("anti_quant").emit(b, [q, s], None)
    aq = next(n for n in b.nodes if n.op_type == "AscendAntiQuant")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in aq.attribute}
    assert attrs == {"scale": 1.0, "offset": 0.0, "dtype": 1, "sqrt_mode": 0}


@pytest.mark.parametrize("mode", ["must_keep_origin_dtype", "force_fp16", "allow_fp32_to_fp16"])
def test_simulator_runs_the_ascend_ops_bit_exact(mode):
    """The graph with Ascend ops through SimSession (precision rewrite, then the lowering)."""
    from ascend_adapt.sim.numerics import SimSession
    from ascend_adapt.sim.settings import SimSettings

    model, xs, want = _w8a8_linear_model(np.random.default_rng(8))
    sess = SimSession(model, SimSettings(precision_mode=mode, target="Ascend310P3"), target="Ascend310P3")
    got = sess.run({"x": xs})["y"]
    assert same_bits(got, want)


def test_plain_onnxruntime_cannot_run_the_atc_form():
    """Why the simulator lowers: onnxruntime has no AscendQuant (the check is not vacuous)."""
    import onnxruntime as ort

    model, _, _ = _w8a8_linear_model(np.random.default_rng(9))
    with pytest.raises(Exception):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------- acceptance, cost
def test_a_target_without_the_ops_refuses_them(tmp_path):
    from ascend_adapt.sim.acceptance import check_model
    from ascend_adapt.targets import DATA_DIR, load_target_file

    common = json.loads((DATA_DIR / "_atc_common.json").read_text())
    prof = json.loads((DATA_DIR / "Ascend310P3.json").read_text())
    table = dict(common["op_table"], exclude=list(ASCEND_QUANT_OPS))
    prof.update(name="Ascend310P3NoQuant", op_table=table)
    prof.pop("aliases", None)
    p = tmp_path / "Ascend310P3NoQuant.json"
    p.write_text(json.dumps(prof))
    target = load_target_file(p)
    model, _, _ = _w8a8_linear_model(np.random.default_rng(10))
    assert check_model(model, "Ascend310P3").accepted
    report = check_model(model, target)
    assert not report.accepted
    refused = {pr.op_type for pr in report.problems}
    assert refused == {"AscendQuant", "AscendDequant"}
    assert all("No parser is registered" in pr.message for pr in report.problems)


def test_every_ascend_target_table_has_the_ops():
    from ascend_adapt.targets import list_targets, load_target

    for name in list_targets():
        t = load_target(name)
        has = [bool(t.op_support(op, 17).supported) for op in ASCEND_QUANT_OPS]
        assert all(has) == (t.toolchain.lower() == "atc"), (name, t.toolchain, has)


def test_sim_costs_count_int8_bytes():
    from onnx import TensorProto

    mm = get_operator("int8_matmul").sim_cost({"inputs": [((1, 1, 4096), TensorProto.INT8),
                                                          ((4096, 11008), TensorProto.INT8)],
                                               "outputs": [((1, 1, 11008), TensorProto.INT32)], "attrs": {}})
    assert mm == (2 * 4096 * 11008, 4096 + 4096 * 11008 + 4 * 11008)
    aq = get_operator("anti_quant").sim_cost({"inputs": [((64, 32), TensorProto.INT8)],
                                              "outputs": [((64, 32), TensorProto.FLOAT16)], "attrs": {}})
    assert aq[1] == 64 * 32 * (1 + 2)


def test_reference_errors_are_ascend_adapt_errors():
    with pytest.raises(AscendAdaptError, match="round_mode"):
        get_operator("quant").reference(np.ones(3, np.float16), scale=1.0, round_mode="Banker")


def test_mindspore_implementations_match_the_references():
    ms = pytest.importorskip("mindspore")
    rng = np.random.default_rng(11)
    x = _quant_inputs(rng)[:, :, :32]
    x[0, 1, :4] = [100, -100, 3, -3]  # no inf here: MindSpore's clamp of ±inf is not under test
    op = get_operator("quant")
    assert same_bits(op.mindspore(ms.Tensor(x), scale=2.0).asnumpy(), op.reference(x, scale=2.0))
    acc = rng.integers(-2 ** 24, 2 ** 24, (3, 16)).astype(np.int32)
    deq = encode_deq_scale((rng.random(16) * 1e-3).astype(np.float32))
    op = get_operator("dequant")
    assert same_bits(op.mindspore(ms.Tensor(acc), deq).asnumpy(), op.reference(acc, deq))
    a = rng.integers(-128, 128, (3, 64)).astype(np.int8)
    b = rng.integers(-127, 128, (64, 8)).astype(np.int8)
    op = get_operator("int8_matmul")
    assert same_bits(op.mindspore(ms.Tensor(a), ms.Tensor(b)).asnumpy(), op.reference(a, b))
    q = rng.integers(-127, 128, (64, 8)).astype(np.int8)
    s = (rng.random(8) * 0.01).astype(np.float16)
    op = get_operator("anti_quant")
    assert same_bits(op.mindspore(ms.Tensor(q), ms.Tensor(s)).asnumpy(), op.reference(q, s))
