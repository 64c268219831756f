"""Gear planner: ATC's limits (2-100 gears, 256 on Ascend950), coverage, prefill shapes, cost."""

from __future__ import annotations

import pytest

from ascend_adapt.errors import ConfigError
from ascend_adapt.om_convert.atc import (
    AtcOptions,
    AtcValidationError,
    estimate_compile_cost,
    plan_gears,
    prefill_gear_shapes,
    validate,
)


def _check_plan(plan, min_len, max_len, max_gears):
    assert 2 <= len(plan) <= max_gears
    assert plan == sorted(set(plan))
    assert plan[-1] == max_len
    assert plan[0] >= 1
    # every length in [min_len, max_len] has a gear that holds it
    assert all(any(g >= n for g in plan) for n in (min_len, (min_len + max_len) // 2, max_len))


def test_pow2():
    assert plan_gears(1, 1000) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    assert plan_gears(16, 1024) == [16, 32, 64, 128, 256, 512, 1024]
    assert plan_gears(5, 7) == [5, 7]


@pytest.mark.parametrize("strategy", ["pow2", "linear"])
@pytest.mark.parametrize("min_len, max_len, max_gears", [(1, 2, 2), (1, 4096, 100), (7, 3000, 5),
                                                          (1, 2**40, 8), (100, 101, 100), (1, 100000, 100)])
def test_plans_stay_within_atc_limits(strategy, min_len, max_len, max_gears):
    _check_plan(plan_gears(min_len, max_len, max_gears, strategy), min_len, max_len, max_gears)


def test_linear_step_and_align():
    assert plan_gears(128, 1024, strategy="linear", step=128) == [128, 256, 384, 512, 640, 768, 896, 1024]
    plan = plan_gears(1, 1000, max_gears=10, strategy="linear", align=16)
    assert all(g % 16 == 0 for g in plan[:-1]) and plan[-1] == 1000 and len(plan) <= 10
    with pytest.raises(AtcValidationError) as exc:
        plan_gears(1, 1000, max_gears=10, strategy="linear", step=1)
    assert exc.value.code == "E10036"


def test_explicit():
    assert plan_gears(None, 512, strategy="explicit", gears=[512, 128, 256, 128]) == [128, 256, 512]
    with pytest.raises(AtcValidationError) as exc:
        plan_gears(None, None, strategy="explicit", gears=[128])
    assert exc.value.code == "E10035"
    with pytest.raises(AtcValidationError) as exc:
        plan_gears(None, None, strategy="explicit", gears=range(1, 102))
    assert exc.value.code == "E10036"
    with pytest.raises(AtcValidationError) as exc:
        plan_gears(None, None, strategy="explicit", gears=[0, 16])
    assert exc.value.code == "E10038"
    with pytest.raises(ConfigError, match="does not cover"):
        plan_gears(None, 1024, strategy="explicit", gears=[128, 256])


def test_limits_and_bad_arguments():
    with pytest.raises(ConfigError):
        plan_gears(1, 1024, max_gears=101)
    with pytest.raises(ConfigError):
        plan_gears(1, 1024, max_gears=1)
    assert 100 < len(plan_gears(1, 1000, max_gears=256, strategy="linear", soc_version="Ascend950")) <= 256
    with pytest.raises(AtcValidationError) as exc:
        plan_gears(64, 64)
    assert exc.value.code == "E10035" and "static" in exc.value.hint
    with pytest.raises(ConfigError):
        plan_gears(0, 64)
    with pytest.raises(ConfigError):
        plan_gears(64, 32)
    with pytest.raises(ConfigError):
        plan_gears(1, 64, strategy="fibonacci")


def test_prefill_gear_shapes_builds_input_shape_and_dynamic_dims():
    kv = 1024
    plan = prefill_gear_shapes(
        {"input_ids": [1, "seq"], "position_ids": [1, "seq"], "attention_mask": [1, f"seq+{kv}"],
         "past_key_values": [2, 2, 1, 4, kv, 64]},
        [128, 256, 512])
    assert plan.input_shape_str == "input_ids:1,-1;position_ids:1,-1;attention_mask:1,-1;past_key_values:2,2,1,4,1024,64"
    assert plan.dynamic_dims_str == "128,128,1152;256,256,1280;512,512,1536"
    opts = plan.apply(AtcOptions(model="p.onnx", output="o/p", soc_version="Ascend310P3", input_format="NCHW"))
    assert opts.input_format == "ND"
    validate(opts)  # ATC would accept it
    assert "--dynamic_dims=128,128,1152;256,256,1280;512,512,1536" in opts.to_argv()


def test_prefill_gear_shapes_errors():
    with pytest.raises(ConfigError, match="no input dim depends"):
        prefill_gear_shapes({"x": [1, 16]}, [1, 2])
    with pytest.raises(ConfigError):
        prefill_gear_shapes({"x": [1, -1]}, [1, 2])
    with pytest.raises(ConfigError):
        prefill_gear_shapes({"x": [1, "len"]}, [1, 2])
    with pytest.raises(ConfigError, match="at gear 1"):
        prefill_gear_shapes({"x": [1, "seq-4"]}, [1, 8])
    with pytest.raises(AtcValidationError, match="E10039"):
        prefill_gear_shapes({"x": [1, "seq"]}, [8, 8])
    assert prefill_gear_shapes({"x": [1, "2*seq"]}, [8, 16]).dynamic_dims == ((16,), (32,))


def test_compile_cost_scales_with_gear_count():
    one = estimate_compile_cost([128, 256], seconds_per_gear=10, fixed_seconds=5, weight_bytes=100, bytes_per_gear=7)
    two = estimate_compile_cost(list(range(1, 5)), seconds_per_gear=10, fixed_seconds=5, weight_bytes=100,
                                bytes_per_gear=7)
    assert (one.gear_count, one.seconds, one.om_bytes) == (2, 25.0, 114)
    assert (two.gear_count, two.seconds, two.om_bytes) == (4, 45.0, 128)
    assert "one static graph per gear" in one.assumption
