"""Simulator faithfulness: Resize rounding, per-SoC kernel dtypes, gears on Ascend310 / 310B1."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from ascend_adapt.sim.numerics import SimSession  # noqa: E402
from ascend_adapt.sim.settings import SimSettings  # noqa: E402


# ------------------------------------------------------------------------------------ Resize
def _resize_model(mode: str) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])
    scales = numpy_helper.from_array(np.array([1, 1, 4, 4], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode, name="resize")
    g = helper.make_graph([node], "resize", [x], [y], initializer=[scales])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _run(model, mode: str, x: np.ndarray) -> np.ndarray:
    s = SimSession(model, SimSettings(target="Ascend310P3", precision_mode=mode))
    try:
        return s.run({"x": x})["y"]
    finally:
        s.close()


# fp16-exact inputs one fp16 ulp (2**-10 at 1.0) apart: interpolating between them gives values
# at 1 + k * 2**-13, which fp16 cannot hold, so a computing op must round them.
X = np.array([[[[1.0, 1.0 + 2**-10], [1.0 + 2**-9, 1.0 + 3 * 2**-10]]]], np.float32)


def test_resize_nearest_only_moves_values():
    model = _resize_model("nearest")
    exact = _run(model, "must_keep_origin_dtype", X)
    got = _run(model, "force_fp16", X)
    # nearest copies input values, all fp16-exact: bit-identical to fp32 (tolerance 0)
    np.testing.assert_array_equal(got, exact)
    assert set(np.unique(got)) <= set(np.unique(X))


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_resize_linear_is_rounded_to_fp16_under_force_fp16(mode):
    model = _resize_model(mode)
    exact = _run(model, "must_keep_origin_dtype", X)
    got = _run(model, "force_fp16", X)
    rounded = exact.astype(np.float16).astype(np.float32)
    # the interpolated values are not fp16-exact (else this test could not tell rounding apart) ...
    assert not np.array_equal(exact, rounded)
    # ... and under force_fp16 the card stores the computed output in fp16: exactly the fp32
    # result rounded once to fp16 (inputs are fp16-exact, so input rounding changes nothing)
    np.testing.assert_array_equal(got, rounded)


# ------------------------------------------------------------------------ per-SoC kernel dtypes
def _cast_to_bf16_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [2, 4])
    g = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.BFLOAT16, name="to_bf16")],
                          "bf16", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_bf16_tensor_refused_on_310p3_with_reason_and_fix_accepted_on_910b():
    from ascend_adapt.sim.acceptance import check_model

    m = _cast_to_bf16_model()  # the Cast's *input* is fp32: only the tensor scan sees the bf16 output
    r = check_model(m, "Ascend310P3", memory=False)
    assert not r.accepted
    (p,) = [p for p in r.problems if p.kind == "dtype"]
    assert "bfloat16" in p.message and "Ascend310P3 has no bfloat16 kernels" in p.message
    assert "source:" in p.message  # the profile fact's source and confidence travel with the refusal
    assert "float16 or float32" in p.hint and "Ascend910B" in p.hint
    assert check_model(m, "Ascend910B", memory=False).accepted


def test_bf16_is_a_per_soc_fact_in_the_target_files():
    from ascend_adapt.targets import load_target

    for name in ("Ascend310", "Ascend310P3", "Ascend310B1"):
        t = load_target(name)
        assert "bfloat16" in t.unsupported_dtypes
        assert t.source_file.endswith(f"{name}.json") and t.fact("unsupported_dtypes").confidence in "VSM"
    assert "bfloat16" not in load_target("Ascend910B").unsupported_dtypes


def _conv_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])
    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "conv", [x], [y],
                          initializer=[w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_fp16_only_op_refused_under_must_keep_on_ascend310_only():
    from ascend_adapt.sim.acceptance import check_model
    from ascend_adapt.targets import load_target

    m = _conv_model()
    keep = SimSettings(target="Ascend310", precision_mode="must_keep_origin_dtype")
    r = check_model(m, "Ascend310", keep, memory=False)
    (p,) = r.problems
    assert p.code == "EZ3003" and p.op_type == "Conv" and "no float32 Conv kernel" in p.message
    assert "aoepar_16_044" in p.message and "allow_fp32_to_fp16" in p.hint
    # in fp16 the op has its kernel
    assert check_model(m, "Ascend310", SimSettings(target="Ascend310", precision_mode="force_fp16"),
                       memory=False).accepted
    # the reference names no fp32-less op for 310P3: unknown, so accepted with a warning saying so
    assert load_target("Ascend310P3").fp16_only_ops is None
    r = check_model(m, "Ascend310P3", SimSettings(target="Ascend310P3", precision_mode="must_keep_origin_dtype"),
                    memory=False)
    assert r.accepted and any("not known" in w for w in r.warnings)


# ------------------------------------------------------------------------------ Atlas 300I Duo
def test_duo_fit_check_uses_the_derived_usable_memory():
    from ascend_adapt.sim.acceptance import check_memory
    from ascend_adapt.targets import load_target

    duo, p3 = load_target("Atlas300IDuo"), load_target("Ascend310P3")
    reserve = p3.memory_bytes - p3.usable_memory_bytes  # 24 GiB - 21534 MiB = 3042 MiB
    assert duo.usable_memory_bytes == duo.memory_bytes - reserve
    assert duo.fact("usable_memory_bytes").source.startswith("derived")
    # I/O of 46 GB: inside the chip's 48 GB but above what is usable after the reserve
    n = 46_000_000_000 // 8
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "big", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 13)])
    problems, total = check_memory(m, duo, SimSettings(target="Atlas300IDuo"))
    assert total.total_bytes == 46_000_000_000 < duo.memory_bytes
    assert total.limit_bytes == duo.usable_memory_bytes
    assert [p.code for p in problems] == ["207001"]


# ------------------------------------------------------------------------- gears on 310 / 310B1
@pytest.mark.parametrize("soc", ["Ascend310", "Ascend310B1"])
def test_gears_convert_and_generate_on_310_family(tiny_dir, tmp_path, soc):
    from ascend_adapt.om_convert.convert import convert
    from ascend_adapt.backends import get_backend
    from ascend_adapt.runtime.generate import greedy_tokens

    src = tiny_dir("llama")
    out = tmp_path / "out"
    report = convert(src, out, soc=soc, gears=[(16,), (32,)], max_len=96, precision_mode="must_keep_origin_dtype",
                     use_atc="never", verify=False)
    assert report.analysis["step"]["accepted"], report.analysis
    assert "--dynamic_dims=1,1,1,97;16,16,16,112;32,32,32,128" in report.atc["commands"]["step"].replace("'", "")
    golden = get_backend("torch", src)
    sim = get_backend("sim", out / "model.omsim")
    try:
        assert sim.gears == [1, 16, 32]
        ids = np.asarray([[1, 5, 9, 13, 17, 21, 25]], np.int64)  # 7 tokens: padded to gear 16 on the card
        # must_keep_origin_dtype computes in fp32 like the golden: the greedy tokens are the same
        np.testing.assert_array_equal(greedy_tokens(sim.new_session, ids, 8),
                                      greedy_tokens(golden.new_session, ids, 8))
    finally:
        sim.close()


def test_a_real_range_is_still_refused_on_310_with_a_true_fix(tmp_path):
    from ascend_adapt.errors import UnsupportedError
    from ascend_adapt.om_convert.analyze import analyze_model
    from ascend_adapt.om_convert.convert import convert

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "dyn", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "dyn.onnx"
    onnx.save(m, str(path))
    for soc in ("Ascend310", "Ascend310B1"):
        with pytest.raises(UnsupportedError) as ei:
            convert(path, tmp_path / f"o_{soc}", soc=soc, use_atc="never", verify=False)
        assert "takes no shape ranges" in ei.value.message
        assert "pin every dim" in ei.value.hint and "gears" in ei.value.hint
        assert "builder" not in ei.value.hint
        # the same graph with its dynamic dim bound to gears is accepted, as ATC accepts it
        ok = analyze_model(path, soc, rules=False, input_shapes={"x": (-1, 4)}, gears=[(2,), (4,)])
        assert ok.accepted_as_is, ok.blocking
        rep = convert(path, tmp_path / f"g_{soc}", soc=soc, input_shape="x:-1,4", gears=[(2,), (4,)],
                      use_atc="never", verify=False)
        assert rep.analysis["after"]["accepted"]


def test_one_gear_rule_for_validate_acceptance_and_analyze(tmp_path):
    from ascend_adapt.om_convert.analyze import analyze_model
    from ascend_adapt.om_convert.atc import AtcOptions
    from ascend_adapt.om_convert.atc.validate import problems as atc_problems
    from ascend_adapt.sim.acceptance import check_model

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "dyn", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 13)])
    bad = [(2,), (2,)]  # duplicate profiles: E10039
    opts = AtcOptions(framework=5, model="m.onnx", output="m", soc_version="Ascend310", input_format="ND",
                      input_shape={"x": (-1, 4)}, dynamic_dims=tuple(bad))
    v = {e.code for e in atc_problems(opts)}
    a = {p.code for p in check_model(m, "Ascend310", SimSettings(target="Ascend310", input_shape={"x": (-1, 4)},
                                                                gears={"flag": "dynamic_dims", "values": bad}),
                                     memory=False).problems}
    z = {f.code for f in analyze_model(m, "Ascend310", rules=False, input_shapes={"x": (-1, 4)},
                                       gears=bad).findings if f.level == "error"}
    assert v == a == z == {"E10039"}


def test_analyze_uses_the_per_soc_dtype_facts():
    from ascend_adapt.om_convert.analyze import analyze_model

    m = _cast_to_bf16_model()
    r = analyze_model(m, "Ascend310P3", rules=False)
    f = next(f for f in r.findings if f.code == "bfloat16")
    assert f.level == "error" and not r.accepted_as_is and "Ascend910B" in f.hint
    assert analyze_model(m, "Ascend910B", rules=False).accepted_as_is
    conv = analyze_model(_conv_model(), "Ascend310", rules=False)
    assert any(f.code == "fp16_only" and "Conv" in f.message for f in conv.findings)
    assert not any(f.code == "fp16_only" for f in analyze_model(_conv_model(), "Ascend310P3", rules=False).findings)
