"""analyze: per-op status against a target, model-level findings, 'fixable' from the rules' dry run,
renderers, weights never loaded, and the CLI's exit codes."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ascend_adapt.cli.cmd_analyze import parse_input_shapes
from ascend_adapt.cli.main import main
from ascend_adapt.errors import ConfigError
from ascend_adapt.om_convert.analyze import analyze_model

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def make(nodes, inputs, outputs, inits=(), opset=17, extra_opsets=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in dict(inits).items()])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    return helper.make_model(g, opset_imports=opsets, ir_version=9)


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def mixed_model(reduction="mul"):
    """LayerNorm (fine at opset 17 on CANN >= 7), ScatterND (reduction=mul: never), a custom-domain op."""
    nodes = [
        helper.make_node("LayerNormalization", ["x", "s"], ["ln"], name="ln"),
        helper.make_node("Softmax", ["ln"], ["p"], name="sm"),
        helper.make_node("ScatterND", ["p", "idx", "upd"], ["sc"], name="scatter",
                         **({"reduction": reduction} if reduction else {})),
        helper.make_node("FusedMatMul", ["sc", "w"], ["y"], name="fmm", domain="com.microsoft"),
    ]
    inits = {"s": np.ones(4, np.float32), "idx": np.array([[0]], np.int64), "upd": np.ones((1, 4), np.float32),
             "w": np.ones((4, 4), np.float32)}
    return make(nodes, [vi("x", F, [2, 4])], [vi("y", F, [2, 4])], inits, extra_opsets=[("com.microsoft", 1)])


def test_rows_statuses_and_reasons():
    r = analyze_model(mixed_model(), "Ascend310P3")
    assert r.row("LayerNormalization").status == "supported"
    sc = r.row("ScatterND")
    assert sc.status == "unsupported" and "reduction='mul'" in sc.reason and sc.category == "attribute"
    fmm = r.row("FusedMatMul", "com.microsoft")
    assert fmm.status == "unsupported" and fmm.reason.startswith("custom domain 'com.microsoft'")
    assert fmm.opset == 1 and fmm.count == 1 and fmm.nodes == ("fmm",)
    assert not r.accepted_as_is and r.accepted_after_rules is False and r.exit_code == 1
    assert [x.status for x in r.rows][:2] == ["unsupported", "unsupported"]  # problems first
    assert any("ScatterND" in b for b in r.blocking)


def test_old_cann_makes_opset_17_ops_fixable():
    r = analyze_model(mixed_model(reduction=None), "Ascend310P3", cann_version="6.0")
    ln = r.row("LayerNormalization")
    assert ln.status == "fixable" and "range 9-13" in ln.reason and ln.fixable_by == ("layernorm_to_primitives",)
    sm = r.row("Softmax")
    assert sm.status == "fixable" and sm.fixable_by == ("opset_downconvert",)
    assert r.row("FusedMatMul", "com.microsoft").status == "unsupported"  # no rule for a custom domain
    opset = next(f for f in r.findings if f.code == "opset")
    assert opset.level == "error" and opset.fixable_by == ("opset_downconvert",)
    assert r.after is not None and r.after.model_opset == 13 and not r.accepted_after_rules


def test_opset_lowering_blocked_by_an_attribute_says_so():
    r = analyze_model(mixed_model(), "Ascend310P3", cann_version="6.0")
    assert r.row("Softmax").status == "unsupported"  # the whole model stays at opset 17
    err = r.rewrite.errors["opset_downconvert"]
    assert "ScatterND 'scatter'" in err and "reduction" in err


def test_accepted_after_rules_and_exit_code():
    m = make([helper.make_node("LayerNormalization", ["x", "s"], ["y"])], [vi("x", F, [2, 4])], [vi("y", F, [2, 4])],
             {"s": np.ones(4, np.float32)})
    assert analyze_model(m, "Ascend310P3").accepted_as_is
    r = analyze_model(m, "Ascend310P3", cann_version="6.0")
    assert not r.accepted_as_is and r.accepted_after_rules and r.exit_code == 0
    r = analyze_model(m, "Ascend310P3", cann_version="6.0", rules=False)
    assert r.accepted_after_rules is None and r.exit_code == 1 and r.row("LayerNormalization").status == "unsupported"


def test_gelu20_model_is_fixable():
    m = make([helper.make_node("Gelu", ["x"], ["y"])], [vi("x", F, [4])], [vi("y", F, [4])], opset=20)
    r = analyze_model(m, "Ascend310P3")
    g = r.row("Gelu")
    assert g.status == "fixable" and g.fixable_by == ("gelu20_to_tanh_or_erf",)
    assert any(f.code == "opset" and f.level == "error" for f in r.findings)
    assert r.accepted_after_rules and r.after.model_opset == 18


def test_dynamic_inputs_depend_on_shape_range_support():
    m = make([helper.make_node("Relu", ["x"], ["y"])], [vi("x", F, ["batch", 8])], [vi("y", F, ["batch", 8])])
    r310 = analyze_model(m, "Ascend310")
    f = next(f for f in r310.findings if f.code == "dynamic_input")
    assert f.level == "error" and "[batch, 8]" in f.message
    assert "dynamic: needs gears or fixed --input-shape" in f.message
    assert not r310.accepted_as_is and not r310.accepted_after_rules
    fixed = analyze_model(m, "Ascend310", input_shapes={"x": (1, 8)})
    assert fixed.accepted_after_rules
    assert next(f for f in fixed.findings if f.code == "dynamic_input").fixable_by == ("fix_input_shapes",)
    r = analyze_model(m, "Ascend310P3")
    assert next(f for f in r.findings if f.code == "dynamic_input").level == "warning" and r.accepted_as_is


def test_int64_is_advice_and_float64_blocks():
    m = make([helper.make_node("Gather", ["emb", "ids"], ["y"])], [vi("ids", I64, [1, 3])], [vi("y", F, [1, 3, 2])],
             {"emb": np.ones((5, 2), np.float32)})
    r = analyze_model(m, "Ascend310P3")
    assert r.accepted_as_is and any(f.code == "int64" and f.level == "info" for f in r.findings)
    m64 = make([helper.make_node("Add", ["x", "c"], ["y"])], [vi("x", TensorProto.DOUBLE, [2])],
               [vi("y", TensorProto.DOUBLE, [2])], {"c": np.ones(2)})
    r = analyze_model(m64, "Ascend310P3")
    f = next(f for f in r.findings if f.code == "float64")
    assert f.level == "error" and f.fixable_by == ("float64_to_float32",)
    assert r.row("Add").status == "fixable" and r.row("Add").category == "dtype"
    assert r.accepted_after_rules
    assert analyze_model(m64, "Ascend910B").row("Add").status == "fixable"  # 910B: no float64 either


def test_unregistered_ops_are_unsupported():
    m = make([helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"])], [vi("x", F, [4])],
             [vi("q", TensorProto.UINT8, [4]), vi("s", F, []), vi("z", TensorProto.UINT8, [])])
    r = analyze_model(m, "Ascend310P3")
    row = r.row("DynamicQuantizeLinear")
    assert row.status == "unsupported" and row.category == "no_parser" and "E19010" in row.reason


def test_renderers():
    r = analyze_model(mixed_model(), "Ascend310P3", cann_version="6.0")
    d = json.loads(r.to_json())
    assert d["accepted_as_is"] is False and d["simulated"] is True and d["rows"][0]["status"] == "unsupported"
    assert d["rewrite"]["rules"] and {"op_type", "status", "fixable_by"} <= set(d["rows"][0])
    rows = list(csv.DictReader(io.StringIO(r.to_csv())))
    assert {x["op_type"] for x in rows} >= {"ScatterND", "LayerNormalization", "(model)"}
    table = r.to_table()
    assert "ScatterND" in table and "[fix: layernorm_to_primitives]" in table and "verdict:" in table
    with pytest.raises(ConfigError):
        r.render("xml")


def test_weights_are_never_loaded(tmp_path):
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    m = make([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", F, [1, 64])], [vi("y", F, [1, 64])], {"w": w})
    p = tmp_path / "m.onnx"
    onnx.save(m, str(p), save_as_external_data=True, location="m.data", size_threshold=0)
    (tmp_path / "m.data").unlink()  # analyze must not need the weights
    r = analyze_model(p, "Ascend310P3")
    assert r.accepted_as_is and any(f.code == "external_data" for f in r.findings)


def test_model_proto_is_not_modified():
    m = mixed_model()
    before = m.SerializeToString()
    analyze_model(m, "Ascend310P3", cann_version="6.0")
    assert m.SerializeToString() == before


def test_input_shape_parsing():
    assert parse_input_shapes("input_ids:1,128;attention_mask:1,128") == {"input_ids": (1, 128),
                                                                          "attention_mask": (1, 128)}
    assert parse_input_shapes(None) is None
    with pytest.raises(ConfigError):
        parse_input_shapes("1,128")
    with pytest.raises(ConfigError):
        parse_input_shapes("x:1~8,128")


def test_cli_exit_codes_and_formats(tmp_path, capsys):
    good = make([helper.make_node("Relu", ["x"], ["y"])], [vi("x", F, [2])], [vi("y", F, [2])])
    onnx.save(good, str(tmp_path / "good.onnx"))
    onnx.save(mixed_model(), str(tmp_path / "bad.onnx"))
    assert main(["analyze", str(tmp_path / "good.onnx"), "--soc", "Ascend310P3", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["accepted_as_is"] is True
    assert main(["analyze", str(tmp_path / "bad.onnx"), "--soc", "Ascend310P3", "--format", "csv"]) == 1
    assert "ScatterND" in capsys.readouterr().out
    assert main(["analyze", str(tmp_path / "bad.onnx"), "--soc", "NoSuchChip"]) == 2
    assert "unknown target" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "missing.onnx"), "--soc", "Ascend310P3"]) == 2


def test_cli_ops_list_and_show(capsys):
    assert main(["ops", "list", "--kind", "rules"]) == 0
    out = capsys.readouterr().out
    assert "opset_downconvert" in out and "int64_to_int32" in out
    assert main(["ops", "show", "einsum_to_matmul"]) == 0
    assert "bhqd,bhkd->bhqk" in capsys.readouterr().out
    assert main(["ops", "show", "nope"]) == 2
