"""E-code table and the ATC output decoder, on the real message samples of the reference sheet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ascend_adapt.om_convert.atc import (
    AtcLogDecoder,
    atc_status,
    decode_atc_log,
    format_ge_message,
    ge_code,
    ge_error_table,
)
from ascend_adapt.om_convert.atc.logparse import ENV_LIBRARY, STATUS_FAILED, STATUS_SUCCESS

REPO = Path(__file__).resolve().parents[1]
SHEET = REPO.parent / "shared" / "reference" / "ge_error_codes.txt"


# ---------------------------------------------------------------------------------------------
# the packaged table


def test_table_has_the_gear_codes_with_templates():
    table = ge_error_table()
    for code in ("E10001", "E10007", "E10008", "E10009", "E10011", "E10035", "E10036", "E10037", "E10039",
                 "E10040", "E10047", "E10052", "E10055", "E10056", "E19999", "W11001"):
        assert table[code]["template"], code
    assert ge_code("E10008")["fixes"] == ["If the source model framework is Caffe, try again with a valid --weight argument."]
    assert ge_code("E10035")["title"] == "Invalid_Argument_Tensor_Dynamic_Shape"
    assert ge_code("W11001")["level"] == "warning"
    assert ge_code("EZ3003")["template"].startswith("No supported Ops kernel")  # operator codes added
    assert "README" not in table


def test_format_fills_placeholders_in_sequence():
    assert format_ge_message("E10001", "FORMAT_ALL", "--input_format", "bad") == \
        "Value FORMAT_ALL for parameter --input_format is invalid. Reason: bad"
    assert format_ge_message("E10035", 1, 2) == \
        "--dynamic_batch_size, --dynamic_image_size, or --dynamic_dims has 1 profiles, which is less than the minimum 2."


@pytest.mark.skipif(not SHEET.is_file(), reason="../shared/reference/ge_error_codes.txt not present")
def test_packaged_json_matches_the_sheet():
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "gen_ge_error_codes.py"), "--check",
                           "--source", str(SHEET)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------
# decoding: samples from reference sheet §3 (msit's atc_err test data and regexes)

SAMPLES = [
    ("E19010: No parser is registered for Op [Conv_52, optype [ai.onnx::11::Convx]].",
     "E19010", "Conv_52", "ai.onnx::11::Convx"),
    ("EZ9010: No parser is registered for Op [Conv_52, optype [ai.onnx::11::Convx]].",
     "EZ9010", "Conv_52", "ai.onnx::11::Convx"),
    ("EZ0501: IR for Op [Conv_52, optype [Conv]], is not registered.", "EZ0501", "Conv_52", "Conv"),
    ("EZ3002: Optype [Convx] of Ops kernel [AICORE] is unsupported.", "EZ3002", None, "Convx"),
    ("EZ3003: No supported Ops kernel and engine are found for [Conv_52], optype [Conv].",
     "EZ3003", "Conv_52", "Conv"),
]


@pytest.mark.parametrize("line, code, op_name, op_type", SAMPLES)
def test_unsupported_op_samples(line, code, op_name, op_type):
    (diag,) = decode_atc_log(line)
    assert (diag.code, diag.level, diag.op_name, diag.op_type) == (code, "error", op_name, op_type)
    assert diag.message == line.split(": ", 1)[1]
    assert diag.fix


def test_real_screen_output_with_pid_solution_and_traceback():
    text = """ATC start working now, please wait for a moment.
ATC run failed, Please check the detail log, Try 'atc --help' for more information
E19010: [PID: 5948] 2025-04-21-15:00:19.776.801 No parser is registered for Op [/model/layers.0/mlp/act/Gelu, optype [ai.onnx::20::Gelu]].
        Solution: Check the version of the installation package and reinstall the package. For details, see the operator specifications.
        TraceBack (most recent call last):
        Model parse to graph failed, graph name:Graph. [FILE: onnx_parser.cc]
        No parser is registered for Op [ignored_in_traceback, optype [ai.onnx::20::Gelu]].

W11001: Op Add_1 does not hit the high-priority operator information library, which might result in compromised performance.
E19999: [PID: 5948] Inner Error!
"""
    diags = decode_atc_log(text)
    assert [d.code for d in diags] == [STATUS_FAILED, "E19010", "W11001", "E19999"]
    gelu = diags[1]
    assert gelu.op_name == "/model/layers.0/mlp/act/Gelu" and gelu.op_type == "ai.onnx::20::Gelu"
    assert gelu.message.startswith("No parser is registered") and "PID" not in gelu.message
    assert gelu.solution.startswith("Check the version of the installation package")
    assert "opset <= 18" in gelu.fix and "ascend-adapt analyze" in gelu.fix
    assert diags[2].level == "warning" and diags[2].op_name == "Add_1"
    assert "plog" in diags[3].fix
    assert atc_status(text) == "failed"


def test_fixes_per_code():
    fixes = {d.code: d.fix for d in decode_atc_log("\n".join(s[0] for s in SAMPLES))}
    assert "--keep_dtype" in fixes["EZ3002"] and "opp" in fixes["EZ3002"]
    assert "int32" in fixes["EZ3003"]
    assert "ascend-adapt analyze" in fixes["EZ0501"]
    (gear,) = decode_atc_log("E10035: --dynamic_batch_size, --dynamic_image_size, or --dynamic_dims has 1 "
                             "profiles, which is less than the minimum 2.")
    assert "plan_gears" in gear.fix
    (caffe,) = decode_atc_log("E10008: --weight must not be empty when --framework is set to 0 (Caffe).")
    assert caffe.fix == "If the source model framework is Caffe, try again with a valid --weight argument."
    (inner,) = decode_atc_log("EZ9999: Inner Error!")
    assert "plog" in inner.fix
    (custom,) = decode_atc_log("E19010: No parser is registered for Op [q, optype [com.microsoft::1::QuickGelu]].")
    assert "custom domain" in custom.fix


def test_op_messages_without_code_and_wrapped_lines():
    text = ("some log prefix: No parser is registered for Op [Sm_1, optype [ai.onnx::19::Softmax]].\n"
            "E10501: IR for Op foo with optype Bar is not registered.\n")
    diags = decode_atc_log(text)
    assert [(d.code, d.op_name, d.op_type) for d in diags] == [("EZ9010", "Sm_1", "ai.onnx::19::Softmax"),
                                                                ("E10501", "foo", "Bar")]
    wrapped = decode_atc_log("E19010: No parser is registered for Op [/post_layernorm/LayerNormalization,\n"
                             "        optype [ai.onnx::11::LayerNormalization]].\n")
    assert wrapped[0].op_type == "ai.onnx::11::LayerNormalization"


def test_success_duplicates_and_environment():
    text = "ATC run success, welcome to the next use.\nW11001: Op A does not hit the high-priority operator " \
           "information library, which might result in compromised performance.\n" * 2
    diags = decode_atc_log(text)
    assert [d.code for d in diags] == [STATUS_SUCCESS, "W11001"]
    assert atc_status(text) == "success"
    (env,) = decode_atc_log("atc.bin: error while loading shared libraries: libge_runner.so: cannot open shared object file")
    assert env.code == ENV_LIBRARY and "set_env.sh" in env.fix


def test_streaming_decoder_matches_batch():
    text = "\n".join(s[0] for s in SAMPLES)
    dec = AtcLogDecoder()
    for line in text.splitlines(keepends=True):
        dec.feed(line)
    assert dec.close() == decode_atc_log(text)
    assert dec.status is None
