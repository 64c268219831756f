"""AtcOptions: command-line round trip, shape syntax, and every validation rule with its ATC code."""

from __future__ import annotations

import shlex

import pytest

from ascend_adapt.errors import ConfigError
from ascend_adapt.om_convert.atc import (
    AtcOptions,
    AtcValidationError,
    DimRange,
    format_input_shape,
    parse_input_shape,
    problems,
    validate,
)


def llm_options(**changes) -> AtcOptions:
    base = AtcOptions(
        model="prefill.onnx", output="out/prefill", soc_version="Ascend310P3", input_format="ND",
        input_shape="input_ids:1,-1;attention_mask:1,-1;past_key_values:2,2,1,4,64,16",
        dynamic_dims="16,16;32,32;64,64",
    )
    return base.replace(**changes)


# ---------------------------------------------------------------------------------------------
# argv


def test_to_argv_is_the_documented_command_line():
    argv = llm_options(precision_mode="force_fp16", log="error").to_argv()
    assert argv == [
        "atc", "--framework=5", "--model=prefill.onnx", "--output=out/prefill", "--soc_version=Ascend310P3",
        "--input_format=ND",
        "--input_shape=input_ids:1,-1;attention_mask:1,-1;past_key_values:2,2,1,4,64,16",
        "--dynamic_dims=16,16;32,32;64,64", "--precision_mode=force_fp16", "--log=error",
    ]


def test_argv_round_trip_with_every_kind_of_value():
    opts = AtcOptions(
        framework=5, model="dir with space/m.onnx", output="o/m", soc_version="Ascend310B1",
        mode=0, input_format="ND", input_shape={"x:0": [1, 3], "step": [], "r": [DimRange(1, 8), 4]},
        out_nodes=["logits:0", "kv:1"], input_fp16_nodes="a;b", output_type={"logits:0": "FP16", "kv:1": "FP32"},
        precision_mode_v2="mixed_float16", keep_dtype="keep.cfg", modify_mixlist="mix.json",
        op_select_implmode="high_precision", optypelist_for_implmode="Sigmoid,Gelu",
        allow_hf32=False, enable_small_channel=True, fusion_switch_file="fusion.cfg",
        host_env_os="linux", host_env_cpu="x86_64", external_weight=1, jit_compile=0,
        check_report="r.json", op_debug_level=2, extra={"--oo_level_x": "O3"},
    )
    argv = opts.to_argv()
    assert "--allow_hf32=false" in argv and "--enable_small_channel=1" in argv
    assert "--output_type=logits:0:FP16;kv:1:FP32" in argv
    assert AtcOptions.from_argv(argv) == opts
    assert AtcOptions.from_argv(opts.to_command()) == opts  # through the shell quoting
    assert shlex.split(opts.to_command()) == argv


def test_from_argv_reads_space_separated_values_and_keeps_unknown_flags():
    opts = AtcOptions.from_argv(
        "/usr/local/Ascend/ascend-toolkit/latest/bin/atc --framework 5 --model=m.onnx --output=o "
        '--soc_version=Ascend310P3 --input_shape "x:1,3,224,224" --new_flag=7')
    assert opts.framework == 5 and opts.input_shape == {"x": (1, 3, 224, 224)}
    assert opts.extra == {"new_flag": "7"}
    assert opts.to_argv()[-1] == "--new_flag=7"


def test_om_path_appends_om():
    assert llm_options().om_path == "out/prefill.om"


# ---------------------------------------------------------------------------------------------
# input_shape syntax


def test_input_shape_parse_and_format():
    text = "input_ids:1,-1;x:0:1,3;step:;r:1~8,3,224,224"
    shapes = parse_input_shape(text)
    assert shapes == {"input_ids": (1, -1), "x:0": (1, 3), "step": (), "r": (DimRange(1, 8), 3, 224, 224)}
    assert format_input_shape(shapes) == text
    assert parse_input_shape("a:1,2;") == {"a": (1, 2)}


@pytest.mark.parametrize("text, reason", [
    ("1,3,224,224", "two parts"),
    (":1,3", "input name is empty"),
    ("x:1.5,3", "float number"),
    ("x:1,a", "not a digit"),
    ("x:1;x:2", "given twice"),
])
def test_input_shape_syntax_errors_are_e10002(text, reason):
    with pytest.raises(AtcValidationError) as exc:
        AtcOptions(input_shape=text)
    assert exc.value.code == "E10002"
    assert "for parameter --input_shape is invalid. Reason:" in str(exc.value)
    assert reason in str(exc.value)
    assert isinstance(exc.value, ConfigError)


@pytest.mark.parametrize("kw, code", [
    ({"dynamic_batch_size": "1,2,x"}, "E10003"),
    ({"dynamic_batch_size": "-1,2"}, "E10003"),
    ({"dynamic_image_size": "224,224;448"}, "E10020"),
    ({"dynamic_image_size": "224,224;a,b"}, "E10003"),
    ({"dynamic_dims": "16,a;32,32"}, "E10001"),
    ({"dynamic_dims": ";"}, "E10058"),
])
def test_gear_strings_atc_would_not_parse(kw, code):
    with pytest.raises(AtcValidationError) as exc:
        AtcOptions(**kw)
    assert exc.value.code == code


def test_e10003_fills_value_then_parameter():
    with pytest.raises(AtcValidationError) as exc:
        AtcOptions(dynamic_batch_size="1,x")
    assert 'Value 1,x for parameter --dynamic_batch_size is invalid. Reason: It can only contain digits and ",".' \
        in str(exc.value)


# ---------------------------------------------------------------------------------------------
# validation: each rule with ATC's code


def test_valid_llm_options_pass():
    validate(llm_options())
    assert problems(llm_options()) == []


VALIDATION_CASES = [
    # required flags and values
    ({"model": None}, "E10007", "--model is required"),
    ({"output": None}, "E10007", "--output is required"),
    ({"soc_version": None}, "E10007", "--soc_version is required"),
    ({"framework": None}, "E10007", "--framework is required"),
    ({"framework": 0}, "E10008", "--weight must not be empty when --framework is set to 0 (Caffe)."),
    ({"framework": 2}, "E10001", "Value 2 for parameter --framework is invalid. Reason:"),
    ({"mode": 4}, "E10001", "--mode"),
    ({"soc_version": "310P3"}, "E10001", "--soc_version"),
    ({"input_format": "FORMAT_ALL"}, "E10001", "Value FORMAT_ALL for parameter --input_format is invalid."),
    ({"precision_mode": "fp16"}, "E10001", "Value fp16 for parameter --precision_mode is invalid."),
    ({"precision_mode_v2": "force_fp16"}, "E10001", "--precision_mode_v2"),
    ({"op_select_implmode": "fast"}, "E10001", "--op_select_implmode"),
    ({"output_type": "BF17"}, "E10001", "--output_type"),
    ({"output_type": "logits:0:FP64"}, "E10001", "--output_type"),
    ({"external_weight": 3}, "E10001", "--external_weight"),
    ({"jit_compile": 5}, "E10001", "--jit_compile"),
    ({"op_debug_level": 7}, "E10001", "--op_debug_level"),
    ({"host_env_cpu": "riscv"}, "E10001", "--host_env_cpu"),
    ({"log": "verbose"}, "E10010", "Value verbose for parameter --log is invalid."),
    ({"allow_hf32": "yes"}, "E10005", "must be either true or false"),
    ({"enable_small_channel": "2"}, "E10006", "must be either 1 or 0"),
    # precision
    ({"precision_mode": "force_fp16", "precision_mode_v2": "fp16"}, "E10056",
     "Cannot configure both parameters --precision_mode and --precision_mode_v2 simultaneously."),
    ({"modify_mixlist": "mix.json", "precision_mode": "force_fp16"}, "E10001", "modify_mixlist is assigned"),
    ({"optypelist_for_implmode": "Gelu"}, "E10001", "must be set at the same time"),
    # shapes
    ({"input_shape": "input_ids:1,0;attention_mask:1,-1"}, "E10011",
     "Shape values must be positive integers. The error value in the shape is 0."),
    ({"input_shape": "input_ids:1,-3;attention_mask:1,-1"}, "E10011", "The error value in the shape is -3."),
    # gears
    ({"dynamic_batch_size": "1,2"}, "E10009", "are mutually exclusive"),
    ({"input_shape_range": "x:[1~8,3]"}, "E10009", "are mutually exclusive"),
    ({"input_shape": None}, "E10004", "Value for --input_shape is empty."),
    ({"input_shape": "input_ids:1,16;attention_mask:1,16"}, "E10040", "must have -1 axes and cannot have '~'"),
    ({"input_shape": "input_ids:1,1~64;attention_mask:1,-1"}, "E10040", "cannot have '~'"),
    ({"dynamic_dims": "16,16"}, "E10035", "has 1 profiles, which is less than the minimum 2."),
    ({"dynamic_dims": [(i, i) for i in range(1, 102)]}, "E10036",
     "has 101 profiles, which is greater than the maximum 100."),
    ({"dynamic_dims": [(16, 16), (32,)]}, "E10037", "have inconsistent dimension counts"),
    ({"dynamic_dims": [(16, 16), (0, 32)]}, "E10038", "Dimension size 0 is invalid."),
    ({"dynamic_dims": "16,16;16,16"}, "E10039", "has duplicate profiles"),
    ({"dynamic_dims": "16;32"}, "E10045", "exceeds the dimension count per profile"),
    ({"dynamic_dims": "16,16,1;32,32,1"}, "E10003",
     "Each setting needs to be consistent with the number of -1 in the input shape."),
    ({"input_format": "NCHW"}, "E10001", "input_format must be ND when set dynamic_dims"),
    ({"insert_op_conf": "aipp.cfg"}, "E10047", "--dynamic_dims and --insert_op_conf are mutually exclusive."),
    # dynamic-shape models on the 310 / 310B
    ({"soc_version": "Ascend310", "dynamic_dims": None}, "E10055", "does not support"),
    ({"soc_version": "Ascend310B1", "dynamic_dims": None,
      "input_shape": "input_ids:1,1~64;attention_mask:1,64"}, "E10055", "Ascend310B1"),
]


@pytest.mark.parametrize("changes, code, text", VALIDATION_CASES,
                         ids=[f"{c[1]}-{'-'.join(c[0])}" for c in VALIDATION_CASES])
def test_validation_error_carries_atc_code_and_wording(changes, code, text):
    with pytest.raises(AtcValidationError) as exc:
        validate(llm_options(**changes))
    err = exc.value
    assert err.code == code, str(err)
    assert text in str(err)
    assert str(err).startswith(f"{code}: ")
    assert err.hint, "every validation error says what to do"
    assert "fix:" in str(err)


def test_batch_and_image_gear_rules():
    batch = AtcOptions(model="m.onnx", output="o", soc_version="Ascend310P3", input_format="NCHW",
                       input_shape="x:-1,3,224,224", dynamic_batch_size="1,2,4")
    validate(batch)
    with pytest.raises(AtcValidationError, match="E10018"):
        validate(batch.replace(input_shape="x:1,-1,224,224"))
    image = batch.replace(dynamic_batch_size=None, input_shape="x:1,3,-1,-1", dynamic_image_size="224,224;448,448")
    validate(image)
    with pytest.raises(AtcValidationError, match="E10019"):
        validate(image.replace(input_shape="x:-1,3,224,-1"))
    with pytest.raises(AtcValidationError, match="E10003"):
        validate(image.replace(input_format="ND"))


def test_ranges_are_fine_on_310p_but_not_on_310():
    opts = AtcOptions(model="m.onnx", output="o", soc_version="Ascend310P3", input_shape="x:1~8,3,224,224")
    validate(opts)
    with pytest.raises(AtcValidationError, match="E10055"):
        validate(opts.replace(soc_version="Ascend310"))


def test_ascend950_allows_256_gears():
    gears = [(i, i) for i in range(1, 201)]
    validate(llm_options(soc_version="Ascend950PR", dynamic_dims=gears))
    with pytest.raises(AtcValidationError, match="E10036"):
        validate(llm_options(dynamic_dims=gears))


def test_mode_1_needs_om_and_json_only():
    validate(AtcOptions(framework=None, mode=1, om="m.om", json="m.json"))
    with pytest.raises(AtcValidationError, match="E10007"):
        validate(AtcOptions(framework=None, mode=1, om="m.om"))


def test_check_files(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    opts = llm_options(model=str(model))
    validate(opts, check_files=True)
    with pytest.raises(AtcValidationError) as exc:
        validate(opts.replace(model=str(tmp_path / "missing.onnx")), check_files=True)
    assert exc.value.code == "E10410" and "does not exist" in str(exc.value)
    with pytest.raises(AtcValidationError) as exc:
        validate(opts.replace(keep_dtype=str(tmp_path / "keep.cfg")), check_files=True)
    assert exc.value.code == "E10001" and "keep_dtype is not found" in str(exc.value)


def test_problems_lists_all():
    found = problems(llm_options(soc_version=None, log="loud", precision_mode="x"))
    assert {p.code for p in found} >= {"E10007", "E10010", "E10001"}
