"""Roofline cost and memory estimates (simulated) scale as the shapes say."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")

from ascend_adapt.cost_model import CostFigures  # noqa: E402
from ascend_adapt.sim import examples as ex  # noqa: E402
from ascend_adapt.sim.cost import ASSUMPTIONS, estimate_cost  # noqa: E402
from ascend_adapt.sim.settings import GearSpec, SimSettings  # noqa: E402
from ascend_adapt.targets import load_target  # noqa: E402


def s(mode="force_fp16", **kw):
    return SimSettings(target="Ascend310P3", precision_mode=mode, **kw)


# The cost model is float64 arithmetic: a formula of k operations re-evaluated here in another
# order differs by ≤ 2·k·2^-53 relative; k ≤ 8 → F64 = 2^-49 relative. A sum over n ops: 2·n·2^-53.
# The bugs (a missing factor 2, fp16 counted as fp32, a dropped launch overhead) are ≥ 1e-3.
F64 = dict(rel=2.0 ** -49, abs=0)


def f64_sum(n: int) -> dict:
    return dict(rel=2 * n * 2.0 ** -53, abs=0)


def test_matmul_flops_are_2mnk_and_scale_with_batch():
    r1 = estimate_cost(ex.mlp(batch=4), "Ascend310P3", s())
    r2 = estimate_cost(ex.mlp(batch="B"), "Ascend310P3", s(), input_shapes={"x": (8, 64)})
    mm1 = {o.name: o.flops for o in r1.ops if o.op_type == "MatMul"}
    assert mm1 == {"fc1": 2 * 4 * 64 * 128, "fc2": 2 * 4 * 128 * 32}
    mm2 = {o.name: o.flops for o in r2.ops if o.op_type == "MatMul"}
    assert mm2 == {k: 2 * v for k, v in mm1.items()}
    assert r2.total_flops == pytest.approx(2 * r1.total_flops, **f64_sum(len(r2.ops)))


def test_memory_bound_decode_time_is_bytes_over_bandwidth():
    t = load_target("Ascend310P3")
    r = estimate_cost(ex.big_matmul(4096, 4096), t, s("must_keep_origin_dtype"))
    (op,) = r.ops
    assert op.bound == "memory" and op.unit == "cube" and op.dtype == "float32"
    w_bytes = 4096 * 4096 * 4
    assert op.bytes == pytest.approx(w_bytes + 4096 * 4 * 2, **F64)
    # the shared cost model (ascend_adapt.cost_model): bandwidth × the data file's memory efficiency
    mem_eff, cmp_eff = t.fact("memory_efficiency").value, CostFigures.of(t).compute_efficiency
    assert op.time_ms == pytest.approx(op.bytes / (t.memory_bandwidth_gbps * 1e9 * mem_eff) * 1e3
                                       + t.launch_overhead_us / 1e3, **F64)
    r16 = estimate_cost(ex.big_matmul(4096, 4096), t, s("force_fp16"))
    assert r16.ops[0].bytes == pytest.approx(op.bytes / 2, **F64)     # fp16 storage halves the traffic
    assert r16.memory.weights_bytes == r.memory.weights_bytes // 2     # and the weights
    # compute-bound at a large batch: FLOPs / the fp16 Cube peak
    big = estimate_cost(ex.big_matmul(4096, 4096, batch="B"), t, s("force_fp16"), input_shapes={"x": (8192, 4096)})
    assert big.ops[0].bound == "compute"
    assert big.ops[0].compute_ms == pytest.approx(2 * 8192 * 4096 * 4096 / (t.fp16_tflops * 1e12 * cmp_eff) * 1e3,
                                                  **F64)


def test_report_is_sorted_and_says_simulated():
    r = estimate_cost(ex.rmsnorm_block(), "Ascend310P3", s(keep_dtype=ex.RMSNORM_NODES))
    times = [o.time_ms for o in r.by_time()]
    assert times == sorted(times, reverse=True)
    text = r.to_text()
    assert text.startswith("[simulated]") and "not a measurement" in text
    assert all(a in text for a in ASSUMPTIONS)
    kept = {o.name: o.dtype for o in r.ops}
    assert kept["rms_mean"] == "float32" and kept["proj"] == "float16"
    assert r.to_dict()["simulated"] is True and "ops" not in r.summary()


def test_every_op_pays_launch_overhead_except_views():
    t = load_target("Ascend310")
    r = estimate_cost(ex.mlp(batch=1), t, SimSettings(target="Ascend310"))
    assert all(o.time_ms >= t.launch_overhead_us / 1e3 for o in r.ops)
    assert r.total_ms == pytest.approx(sum(o.time_ms for o in r.ops), **f64_sum(len(r.ops)))


def test_gears_cost_the_largest_by_default_and_any_on_request():
    st = s(input_shape={"x": (-1, 64)}, gears=GearSpec("dynamic_dims", ((1,), (16,))))
    big = estimate_cost(ex.mlp(batch="B"), "Ascend310P3", st)
    small = estimate_cost(ex.mlp(batch="B"), "Ascend310P3", st, gear="smallest")
    assert big.input_shapes == {"x": (16, 64)} and small.input_shapes == {"x": (1, 64)}
    assert big.total_flops == pytest.approx(16 * small.total_flops, **f64_sum(len(big.ops)))


def test_memory_counts_weights_io_and_workspace():
    r = estimate_cost(ex.mlp(batch=4, d_in=64, d_hidden=128, d_out=32), "Ascend310P3", s("must_keep_origin_dtype"))
    m = r.memory
    assert m.weights_bytes == 4 * (64 * 128 + 128 + 128 * 32 + 32)
    assert m.io_bytes == 4 * (4 * 64 + 4 * 32)
    # peak live intermediates: h0 and h1 ([4,128] fp32) alive together at most
    assert m.workspace_bytes == 2 * 4 * 4 * 128
    assert m.total_bytes == m.weights_bytes + m.io_bytes + m.workspace_bytes and m.fits


def test_unknown_shapes_are_probed_with_feeds():
    # a Reshape whose target shape is computed at run time: static inference cannot follow it
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Shape", ["x"], ["sh"]),
             helper.make_node("Reshape", ["x", "sh"], ["r"]),
             helper.make_node("MatMul", ["r", "x"], ["y"], name="mm")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "n"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    x = np.ones((16, 16), np.float32)
    r = estimate_cost(m, "Ascend310P3", s(), feeds={"x": x})
    (mm,) = [o for o in r.ops if o.name == "mm"]
    assert mm.flops == 2 * 16 * 16 * 16 and mm.shape_known


def test_custom_op_cost_comes_from_the_operators_registry_hook():
    from onnx import TensorProto, helper

    from ascend_adapt.operators.registry import OPERATORS, OperatorSpec

    class Fused(OperatorSpec):
        name = "sim_test_fused"
        doc = "test op"

    op = Fused()
    op.sim_cost = lambda shapes: (1e9 * shapes["inputs"][0][0][0], 4096)
    OPERATORS.register(Fused.name, op)
    try:
        node = helper.make_node("sim_test_fused", ["x"], ["y"], name="f", domain="npu")
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 8])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("npu", 1)])
        (c,) = estimate_cost(m, "Ascend310P3", s()).ops
        assert (c.flops, c.bytes) == (3e9, 4096)
    finally:
        OPERATORS.unregister(Fused.name)


def test_llm_decode_cost_groups_by_operator_and_grows_with_the_cache(tiny_dir, tmp_path):
    from ascend_adapt.om_convert.builder import build_llm_onnx

    costs = {}
    for m in (32, 128):
        r = build_llm_onnx(tiny_dir("llama"), tmp_path / f"e{m}", seq_len=4, max_len=m, progress=False)
        shapes = {i["name"]: tuple(i["shape"]) for i in r.manifest["graphs"]["decode"]["inputs"]}
        costs[m] = estimate_cost(r.decode_path, "Ascend310P3", s(input_shape=shapes), graph_name="decode")
    small, big = costs[32], costs[128]
    assert {"attention", "rms_norm"} <= set(small.by_operator())
    assert big.memory.kv_cache_bytes == 4 * small.memory.kv_cache_bytes > 0
    assert big.total_bytes > small.total_bytes and big.total_ms > small.total_ms
    assert "by operator:" in small.to_text()
