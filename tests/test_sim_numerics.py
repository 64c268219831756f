"""Precision modes computed as the card does: fp16 storage, fp32 Cube accumulation, overflow."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from ascend_adapt.errors import ConfigError  # noqa: E402
from ascend_adapt.sim import examples as ex  # noqa: E402
from ascend_adapt.sim.numerics import LOW, LOW_IN, ORIGIN, SimSession, emulate_precision, plan_precision  # noqa: E402
from ascend_adapt.sim.settings import SimSettings, normalize_precision_mode  # noqa: E402
from tolerances import low_precision_atol  # noqa: E402


def plain_ort(model, feeds):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def sim(model, feeds, **settings):
    s = SimSession(model, SimSettings(target="Ascend310P3", **settings))
    try:
        return s.run(feeds), s
    finally:
        s.close()


@pytest.fixture(scope="module")
def mlp_case():
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    m = ex.mlp(batch=4)
    return m, {"x": x}, plain_ort(m, {"x": x})["y"]


def test_must_keep_origin_dtype_is_bit_identical_to_onnxruntime(mlp_case, tmp_path):
    m, feeds, ref = mlp_case
    got, s = sim(m, feeds, precision_mode="must_keep_origin_dtype")
    assert np.array_equal(got["y"], ref)
    assert s.stats.rounding_pairs == 0
    # from a file (the path the runners take): the unmodified graph, same session options
    p = ex.save(m, tmp_path / "mlp.onnx", external="weights.bin")
    got_f, _ = sim(p, feeds, precision_mode="origin")
    assert np.array_equal(got_f["y"], ref)


def test_force_fp16_is_within_fp16_tolerance_and_differs(mlp_case):
    m, feeds, ref = mlp_case
    got, s = sim(m, feeds, precision_mode="force_fp16")
    y = got["y"]
    assert not np.array_equal(y, ref)  # emulation happened
    # fp16 storage, fp32 accumulation: 10 roundings on the path (x, w1, h0, b1, h1, tanh, w2, h3,
    # b2, y), each ≤ 2^-11 relative → 10·2^-11·max|y| ≈ 1e-2 (tests/tolerances.py); measured 1e-3.
    # Catches a missing fp32 accumulation or a coarser rounding (errors ≥ 5e-2 here).
    assert np.abs(y - ref).max() <= low_precision_atol(10, np.abs(ref).max())
    # every float value the card stores is an fp16 value
    assert np.array_equal(y, y.astype(np.float16).astype(np.float32))
    assert s.stats.low_nodes == 5 and s.stats.rounded_initializers == 4


def test_fp32_accumulation_in_cube_ops():
    # 4096 products of 1.0 + 2^-11 ... accumulated: fp16 accumulation would stall at 2048-ish steps;
    # fp32 accumulation (the Cube unit) gives the exact sum rounded once to fp16
    k = 4096
    x = np.full((1, k), 1.0, np.float32)
    w = np.full((k, 1), 1.0, np.float32)
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
                          initializer=[numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    got, _ = sim(m, {"x": x}, precision_mode="force_fp16")
    assert got["y"][0, 0] == 4096.0  # a running fp16 sum would stop at 2048 (2048 + 1 rounds to 2048)


def test_fp16_overflow_in_rmsnorm_and_keep_dtype_island():
    x = (300.0 * np.random.default_rng(2).standard_normal((2, 8, 256))).astype(np.float32)
    m = ex.rmsnorm_block()
    ref = plain_ort(m, {"x": x})
    assert np.isfinite(ref["var"]).all() and ref["var"].max() > 65504  # x*x ~ 9e4
    got, _ = sim(m, {"x": x}, precision_mode="force_fp16")
    assert not np.isfinite(got["var"]).all()       # fp16 overflow → inf, as on the card
    assert np.abs(got["y"]).max() == 0.0             # x / inf: the norm silently zeroes the layer
    kept, s = sim(m, {"x": x}, precision_mode="force_fp16", keep_dtype=ex.RMSNORM_NODES)
    assert np.isfinite(kept["var"]).all() and np.isfinite(kept["y"]).all()
    # the island stays fp32; the projection stores n, proj and y in fp16: 3 roundings of 2^-11
    # relative to max|y| (tests/tolerances.py). A zeroed or inf layer is off by max|y| itself.
    assert np.abs(kept["y"] - ref["y"]).max() <= low_precision_atol(3, np.abs(ref["y"]).max())
    assert sorted(s.stats.kept) == sorted(ex.RMSNORM_NODES)
    # by op type too (ONNX types; Ascend IR names map through the target's op table)
    by_type, _ = sim(m, {"x": x}, precision_mode="force_fp16",
                     keep_dtype=["OpType::Mul", "OpType::ReduceMean", "OpType::Add", "OpType::Sqrt", "OpType::Div"])
    assert np.isfinite(by_type["var"]).all()


def test_allow_fp32_to_fp16_rounds_only_cube_ops(mlp_case):
    m, _, _ = mlp_case
    plan = plan_precision(m, SimSettings(precision_mode="allow_fp32_to_fp16"))
    types = [n.op_type for n in m.graph.node]
    assert {t: plan.modes[i] for i, t in enumerate(types)} == {"MatMul": LOW, "Add": ORIGIN, "Tanh": ORIGIN}
    plan = plan_precision(m, SimSettings(precision_mode="force_fp32"))  # = cube_fp16in_fp32out
    assert [plan.modes[i] for i, t in enumerate(types) if t == "MatMul"] == [LOW_IN, LOW_IN]


def test_cube_fp16in_fp32out_keeps_fp32_outputs(mlp_case):
    m, feeds, ref = mlp_case
    got, _ = sim(m, {"x": feeds["x"]}, precision_mode="cube_fp16in_fp32out", )
    y = got["y"]
    assert not np.array_equal(y, y.astype(np.float16).astype(np.float32))  # output not fp16-rounded
    # only the two MatMuls' inputs are rounded (x, w1, tanh output, w2): 4·2^-11·max|y|
    # (tests/tolerances.py); measured 8e-4 of a 3e-3 bound
    assert np.abs(y - ref).max() <= low_precision_atol(4, np.abs(ref).max()) and not np.array_equal(y, ref)


def test_mixed_precision_lists_and_modify_mixlist(mlp_case):
    m, _, _ = mlp_case
    s = SimSettings(precision_mode="allow_mix_precision")
    modes = plan_precision(m, s).modes
    assert all(modes[i] == LOW for i in range(5))  # white MatMul; grey Add/Tanh follow it
    s = SimSettings(precision_mode_v2="mixed_float16", modify_mixlist={"black-list": {"to-add": ["Tanh"]}})
    modes = plan_precision(m, s).modes
    names = [n.name for n in m.graph.node]
    assert modes[names.index("act")] == ORIGIN and modes[names.index("fc2")] == LOW
    assert modes[names.index("fc2_bias")] == LOW


def test_precision_mode_names():
    assert normalize_precision_mode("force_fp32") == "cube_fp16in_fp32out"
    assert normalize_precision_mode(None, "origin") == "must_keep_origin_dtype"
    assert normalize_precision_mode("fp16") == "force_fp16"
    assert normalize_precision_mode(None, "mixed_float16") == "allow_mix_precision_fp16"
    with pytest.raises(ConfigError, match="E10056"):
        normalize_precision_mode("force_fp16", "fp16")
    with pytest.raises(ConfigError, match="E10001"):
        normalize_precision_mode("fp8")


def test_onnxruntime_keeps_the_rounding_casts(mlp_case, tmp_path):
    m, _, _ = mlp_case
    from ascend_adapt.sim.numerics import _session_options

    rewritten, stats = emulate_precision(m, SimSettings(precision_mode="force_fp16"))
    so = _session_options(False, None)
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(rewritten.SerializeToString(), so, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    casts = sum(n.op_type == "Cast" for n in optimized.graph.node)
    assert casts == 2 * stats.rounding_pairs > 0


def test_dump_returns_every_tensor_as_the_card_stores_it(mlp_case):
    m, feeds, _ = mlp_case
    got, _ = sim(m, feeds, precision_mode="force_fp16")
    s = SimSession(m, SimSettings(precision_mode="force_fp16"), dump=True)
    dumped = s.run(feeds)
    assert {"x", "h0", "h1", "h2", "h3", "y"} <= set(dumped)
    assert np.array_equal(dumped["y"], got["y"])
    assert np.array_equal(dumped["h2"], dumped["h2"].astype(np.float16).astype(np.float32))
    assert not any("__sim" in k for k in dumped)


def test_bf16_on_a_bf16_target(mlp_case):
    m, feeds, ref = mlp_case
    got, _ = sim(m, feeds, precision_mode="allow_mix_precision_bf16")
    import ml_dtypes

    y = got["y"]
    assert np.array_equal(y, y.astype(ml_dtypes.bfloat16).astype(np.float32))
    # bf16 storage: the same 10 roundings of 2^-8 each → 10·2^-8·max|y| ≈ 8e-2 (tests/tolerances.py);
    # measured 7e-3
    assert np.abs(y - ref).max() <= low_precision_atol(10, np.abs(ref).max(), "bfloat16")
