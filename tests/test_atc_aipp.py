"""AIPP config: prototxt round trip and the checks ATC applies."""

from __future__ import annotations

import pytest

from ascend_adapt.om_convert.atc import (
    AippConfig,
    AtcOptions,
    AtcValidationError,
    aipp_to_prototxt,
    check_aipp_against_options,
    parse_aipp,
    validate,
    write_aipp,
)

RESNET = AippConfig(
    input_format="RGB888_U8", src_image_size_w=256, src_image_size_h=256,
    crop=True, load_start_pos_w=16, load_start_pos_h=16, crop_size_w=224, crop_size_h=224,
    min_chn=(123.675, 116.28, 103.53), var_reci_chn=(0.0171247538316637, 0.0175070028011204, 0.0174291938997821),
)
YUV = AippConfig(
    related_input_rank=1, input_format="YUV420SP_U8", src_image_size_w=640, src_image_size_h=480,
    csc_switch=True, rbuv_swap_switch=True,
    matrix=(298, 516, 0, 298, -100, -208, 298, 0, 409), input_bias=(16, 128, 128),
    mean_chn=(0, 0, 0), padding=True, left_padding_size=2, right_padding_size=2,
)
DYNAMIC = AippConfig(aipp_mode="dynamic", max_src_image_size=921600)


@pytest.mark.parametrize("cfg", [RESNET, YUV, DYNAMIC, AippConfig(input_format="YUV400_U8")])
def test_round_trip(cfg):
    cfg.validate()
    text = cfg.to_prototxt()
    assert text.startswith("aipp_op {\n  aipp_mode: ")
    assert parse_aipp(text) == [cfg]


def test_prototxt_text_and_multiple_blocks():
    text = RESNET.to_prototxt()
    assert "  input_format: RGB888_U8\n" in text
    assert "  crop: true\n  load_start_pos_w: 16\n" in text
    assert "  min_chn_0: 123.675\n" in text
    both = aipp_to_prototxt([RESNET, YUV])
    assert parse_aipp("# comment\n" + both) == [RESNET, YUV]


def test_parses_the_spaced_style_of_hand_written_files():
    text = """
    aipp_op {
        aipp_mode : static
        input_format : XRGB8888_U8   # camera
        src_image_size_w : 224
        src_image_size_h : 224
        csc_switch : false
        var_reci_chn_0 : 0.5
    }"""
    (cfg,) = parse_aipp(text)
    assert cfg.input_format == "XRGB8888_U8" and cfg.var_reci_chn == (0.5,) and not cfg.csc_switch


@pytest.mark.parametrize("cfg, text", [
    (AippConfig(aipp_mode="auto", input_format="RGB888_U8"), "aipp_mode"),
    (AippConfig(), "needs input_format"),
    (AippConfig(input_format="FP32"), "UINT8"),
    (AippConfig(aipp_mode="dynamic"), "max_src_image_size"),
    (AippConfig(input_format="RGB888_U8", max_src_image_size=10), "dynamic only"),
    (AippConfig(input_format="RGB888_U8", src_image_size_w=200, src_image_size_h=200, crop=True,
                load_start_pos_w=16, crop_size_w=224, crop_size_h=100), "exceeds src_image_size_w"),
    (AippConfig(input_format="RGB888_U8", crop=True), "crop_size"),
    (AippConfig(input_format="YUV420SP_U8", src_image_size_w=223, src_image_size_h=224), "even"),
    (AippConfig(input_format="RGB888_U8", matrix=(1, 2, 3)), "matrix"),
    (AippConfig(input_format="RGB888_U8", mean_chn=(1, 2, 3, 4, 5)), "mean_chn"),
])
def test_invalid_configs_are_e10052(cfg, text):
    with pytest.raises(AtcValidationError) as exc:
        cfg.validate()
    assert exc.value.code == "E10052"
    assert str(exc.value).startswith("E10052: AIPP configuration is invalid. Reason: ")
    assert text in str(exc.value)


def test_parse_errors():
    with pytest.raises(AtcValidationError, match="no aipp_op block"):
        parse_aipp("aipp_mode: static")
    with pytest.raises(AtcValidationError, match="unknown AIPP field"):
        parse_aipp("aipp_op { aipp_mode: static\n colour: 3 }")


def image_options(**kw):
    return AtcOptions(model="m.onnx", output="o", soc_version="Ascend310P3", input_format="NCHW",
                      input_shape="images:1,3,224,224;scale:1", **kw)


def test_aipp_against_options():
    check_aipp_against_options([RESNET], image_options(), {"images": "uint8"})
    with pytest.raises(AtcValidationError, match="UINT8 image inputs only"):
        check_aipp_against_options([RESNET], image_options(), {"images": "float32"})
    with pytest.raises(AtcValidationError, match="4-D images"):
        check_aipp_against_options([AippConfig(related_input_rank=1, input_format="RGB888_U8")], image_options())
    with pytest.raises(AtcValidationError, match="has 2 inputs"):
        check_aipp_against_options([AippConfig(related_input_rank=2, input_format="RGB888_U8")], image_options())
    with pytest.raises(AtcValidationError) as exc:
        check_aipp_against_options([RESNET], image_options(input_fp16_nodes="images"))
    assert exc.value.code == "E10034"
    llm = AtcOptions(model="m.onnx", output="o", soc_version="Ascend310P3", input_format="ND",
                     input_shape="x:1,-1", dynamic_dims="1;2")
    with pytest.raises(AtcValidationError) as exc:
        check_aipp_against_options([RESNET], llm)
    assert exc.value.code == "E10047"


def test_write_and_validate_with_files(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    conf = write_aipp(RESNET, tmp_path / "aipp.cfg")
    opts = image_options(insert_op_conf=conf).replace(model=str(model))
    validate(opts, check_files=True)
    (tmp_path / "bad.cfg").write_text(AippConfig(input_format="RGB888_U8", related_input_rank=1).to_prototxt())
    with pytest.raises(AtcValidationError, match="E10052"):
        validate(opts.replace(insert_op_conf=str(tmp_path / "bad.cfg")), check_files=True)
