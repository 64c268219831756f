"""The simulator refuses what ATC / the card would refuse, with ATC's code and wording."""

from __future__ import annotations

import pytest

pytest.importorskip("onnx")

from ascend_adapt.errors import UnsupportedError  # noqa: E402
from ascend_adapt.sim import examples as ex  # noqa: E402
from ascend_adapt.sim.acceptance import SimulatorRejection, accept_model, check_model  # noqa: E402
from ascend_adapt.sim.settings import GearSpec, SimSettings  # noqa: E402


def gears(n: int) -> GearSpec:
    return GearSpec("dynamic_dims", tuple((i,) for i in range(1, n + 1)))


def test_static_mlp_is_accepted_with_a_memory_estimate():
    r = check_model(ex.mlp(), "Ascend310")
    assert r.accepted, r.to_text()
    assert r.memory.weights_bytes > 0 and r.memory.fits
    assert "simulated" in r.to_text()


def test_dynamic_shape_without_gears_is_refused_on_ascend310():
    with pytest.raises(SimulatorRejection) as e:
        accept_model(ex.mlp(batch="B"), "Ascend310")
    err = e.value
    assert isinstance(err, UnsupportedError)
    assert err.code == "E10055"
    assert "The operation is not supported. Reason: dynamic-shape model" in str(err)
    assert "x:[B,64]" in str(err) and "simulated" in str(err)
    assert "--dynamic_dims" in err.hint  # what to do


@pytest.mark.parametrize("target", ["Ascend310", "Ascend310B1"])
def test_shape_ranges_are_refused_where_the_chip_has_none(target):
    s = SimSettings(target=target, input_shape={"x": ((1, 8), 64)})
    r = check_model(ex.mlp(batch="B"), target, s)
    assert [p.code for p in r.problems] == ["E10055"]
    assert "1~8" in r.problems[0].message


def test_dynamic_shape_is_a_warning_on_ascend310p3():
    r = check_model(ex.mlp(batch="B"), "Ascend310P3")
    assert r.accepted
    assert any("dynamic-shape model" in w for w in r.warnings)


def test_gears_make_a_dynamic_dim_acceptable_on_ascend310():
    s = SimSettings(target="Ascend310", input_shape={"x": (-1, 64)}, gears=gears(4))
    assert check_model(ex.mlp(batch="B"), "Ascend310", s).accepted


def test_101_gears_is_e10036():
    s = SimSettings(target="Ascend310P3", input_shape={"x": (-1, 64)}, gears=gears(101))
    with pytest.raises(SimulatorRejection) as e:
        accept_model(ex.mlp(batch="B"), "Ascend310P3", s)
    assert e.value.code == "E10036"
    assert ("--dynamic_batch_size, --dynamic_image_size, or --dynamic_dims has 101 profiles, which is greater "
            "than the maximum 100.") in str(e.value)


def test_one_gear_is_e10035_and_gears_need_minus_one():
    s = SimSettings(target="Ascend310P3", input_shape={"x": (-1, 64)}, gears=gears(1))
    assert [p.code for p in check_model(ex.mlp(batch="B"), "Ascend310P3", s).problems] == ["E10035"]
    s = SimSettings(target="Ascend310P3", input_shape={"x": (4, 64)}, gears=gears(2))
    assert "E10040" in [p.code for p in check_model(ex.mlp(batch="B"), "Ascend310P3", s).problems]


def test_loop_has_no_parser_e19010():
    r = check_model(ex.loop_graph(), "Ascend310P3")
    p = [p for p in r.problems if p.op_type == "Loop"]
    assert p and p[0].code == "E19010"
    assert p[0].message.startswith("No parser is registered for Op [loop_0, optype [ai.onnx::17::Loop]].")


def test_gelu_at_opset_20_is_refused():
    with pytest.raises(SimulatorRejection) as e:
        accept_model(ex.single_op("Gelu", opset=20), "Ascend310P3")
    assert e.value.code == "E19010"
    assert "ai.onnx::20::Gelu" in str(e.value)
    assert "opset" in e.value.hint


def test_attribute_restriction_is_ez3003():
    r = check_model(ex.single_op("GatherND", n_inputs=1, batch_dims=1), "Ascend310P3", memory=False)
    assert [p.code for p in r.problems] == ["EZ3003"]
    assert "batch_dims=1" in r.problems[0].message


def test_model_larger_than_the_card_is_refused_at_load():
    # 64k x 64k fp32 weights = 16 GiB (8 GiB in fp16): more than an Ascend310's 8 GiB
    model = ex.big_matmul(65536, 65536)
    for mode in ("must_keep_origin_dtype", "force_fp16"):
        with pytest.raises(SimulatorRejection) as e:
            accept_model(model, "Ascend310", SimSettings(target="Ascend310", precision_mode=mode))
        assert e.value.code == "207001"
        assert "ACL_ERROR_RT_MEMORY_ALLOCATION" in str(e.value) and "Ascend310 has 8.00 GiB" in str(e.value)
    # the same graph fits an Ascend310P3 in fp16 (8 GiB of ~21 GiB)
    assert check_model(model, "Ascend310P3").accepted


def test_bf16_precision_mode_on_a_chip_without_bf16():
    s = SimSettings(target="Ascend310P3", precision_mode_v2="mixed_bfloat16")
    r = check_model(ex.mlp(), "Ascend310P3", s)
    assert [p.code for p in r.problems] == ["E10001"]
    assert "--precision_mode_v2" in r.problems[0].message
    assert check_model(ex.mlp(), "Ascend910B", s.replace(target="Ascend910B")).accepted


def test_unknown_input_shape_name_and_wrong_rank():
    s = SimSettings(target="Ascend310P3", input_shape={"y": (1, 2), "x": (4,)})
    codes = sorted(p.code for p in check_model(ex.mlp(), "Ascend310P3", s).problems)
    assert codes == ["E10016", "E10049"]


def test_unmatched_keep_dtype_entry_is_a_warning_as_in_atc():
    s = SimSettings(target="Ascend310P3", keep_dtype=("no_such_node", "OpType::MatMul"))
    r = check_model(ex.mlp(), "Ascend310P3", s)
    assert r.accepted
    assert any("no_such_node" in w for w in r.warnings)
    assert not any("OpType::MatMul" in w for w in r.warnings)


def test_rejection_lists_every_problem():
    err = SimulatorRejection(check_model(ex.loop_graph(), "Ascend310", SimSettings(
        target="Ascend310", input_shape={"x": (-1,)})).problems, "Ascend310")
    assert len(err.problems) >= 2
    assert all(str(p) in str(err) for p in err.problems)
