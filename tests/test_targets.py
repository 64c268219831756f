"""Targets as data files: loading, provenance of every figure, opset ranges, op support rules."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ascend_adapt.errors import ConfigError, RegistryError
from ascend_adapt.targets import (CONFIDENCE, DATA_DIR, TARGETS, Target, list_targets, load_target,
                                  load_target_file)
from ascend_adapt.targets.optable import ATC_TABLE, build_rows, format_opsets, parse_opsets, read_table

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"
BUILTIN = ["Ascend310", "Ascend310B1", "Ascend310P3", "Ascend910B", "Atlas300IDuo", "MLU370"]


def test_builtin_targets_are_registered():
    assert set(BUILTIN) <= set(list_targets())
    for name in BUILTIN:
        t = load_target(name)
        assert isinstance(t, Target) and t.name == name


@pytest.mark.parametrize("name", BUILTIN)
def test_every_figure_has_source_and_confidence(name):
    t = load_target(name)
    for key in ("fp16_tflops", "int8_tops", "fp32_tflops", "memory_bytes", "memory_bandwidth_gbps",
                "chips_per_card", "launch_overhead_us", "allows_shape_ranges", "precision_modes", "gears",
                "onnx_opsets"):
        f = t.fact(key)
        assert f.source.strip() and f.confidence in CONFIDENCE, (name, key)
    assert t.op_table.source and t.op_table.confidence in CONFIDENCE
    for spec in t.op_table.ops.values():
        for r in spec.restrictions:
            assert r.source and r.confidence in CONFIDENCE
    assert t.fp16_tflops > 0 and t.memory_bytes > 2**30 and t.memory_bandwidth_gbps > 0
    assert t.launch_overhead_us > 0 and t.chips_per_card >= 1


def test_figures_from_the_reference_sheet():
    p3, duo, a310 = load_target("Ascend310P3"), load_target("Atlas300IDuo"), load_target("Ascend310")
    assert p3.usable_memory_bytes == 21534 * 2**20 and p3.fact("usable_memory_bytes").confidence == "V"
    assert duo.chips_per_card == 2 and duo.memory_bytes == 48 * 10**9 and duo.card_memory_bytes == 96 * 10**9
    assert duo.soc_version == "Ascend310P3" and duo.usable_memory_bytes == 48_000_000_000 - 3042 * 2**20
    assert duo.op_table.get("ScatterND").restrictions  # inherited through extends
    assert a310.chips_per_card == 4 and a310.int8_tops == 16
    b = load_target("Ascend910B")
    assert "conflict" in b.fact("memory_bandwidth_gbps").note and b.fact("fp16_tflops").confidence == "M"
    assert b.bf16_tflops and "allow_mix_precision_bf16" in b.precision_modes
    assert "allow_mix_precision_bf16" not in p3.precision_modes and p3.bf16_tflops is None
    mlu = load_target("MLU370")
    assert mlu.vendor == "Cambricon" and mlu.toolchain == "magicmind" and mlu.op_table.confidence == "M"
    assert mlu.gear_max is None and mlu.fp32_tflops == 16


def test_shape_ranges_and_gears():
    assert not load_target("Ascend310").allows_shape_ranges
    assert not load_target("Ascend310B1").allows_shape_ranges
    assert load_target("Ascend310P3").allows_shape_ranges
    for name in ("Ascend310", "Ascend310P3", "Ascend310B1", "Ascend910B", "Atlas300IDuo"):
        t = load_target(name)
        assert (t.gear_min, t.gear_max) == (2, 100)


@pytest.mark.parametrize("version,expected", [
    (None, 18), ("5.0", 13), ("6.0", 13), ("6.0.1", 13), ("6.3.RC2", 13), ("7.0.0", 18), ("8.0.RC2.2", 18),
    ("9.0", 18)])
def test_max_opset_per_cann(version, expected):
    t = load_target("Ascend310P3")
    assert t.max_opset(version) == expected
    assert t.min_opset(version) == 9


def test_too_old_cann_is_an_error():
    with pytest.raises(ConfigError, match="predates"):
        load_target("Ascend310P3").max_opset("3.3")


def test_lookup_by_alias_case_and_unknown():
    assert load_target("ascend310p3").name == "Ascend310P3"
    assert load_target("Ascend910B3").name == "Ascend910B"
    with pytest.raises(RegistryError) as exc:
        load_target("Ascend999")
    assert "Ascend310P3" in str(exc.value)


def test_registry_refuses_duplicates():
    t = load_target("Ascend310")
    with pytest.raises(RegistryError, match="already registered"):
        TARGETS.register("Ascend310P3", t)


@pytest.mark.parametrize("op,opset,attrs,kw,ok,why", [
    ("ScatterND", 16, {"reduction": "mul"}, {}, False, "reduction='mul'"),
    ("ScatterND", 16, {"reduction": "add"}, {}, True, ""),
    ("ScatterND", 13, {}, {}, True, ""),
    ("GatherND", 13, {"batch_dims": 1}, {}, False, "batch_dims"),
    ("GatherND", 13, {}, {}, True, ""),
    ("ArgMax", 13, {"select_last_index": 1}, {}, False, "select_last_index"),
    ("ArgMin", 13, {"select_last_index": 1}, {}, False, "select_last_index"),
    ("ArgMax", 13, {"select_last_index": 0}, {}, True, ""),
    ("MaxPool", 12, {"storage_order": 1}, {}, False, "storage_order"),
    ("MaxPool", 12, {}, {"num_outputs": 2}, False, "Indices"),
    ("MaxPool", 12, {}, {"num_outputs": 1, "input_ranks": [3]}, False, "rank 3"),
    ("ReduceL1", 13, {"noop_with_empty_axes": 1}, {}, False, "noop_with_empty_axes"),
    ("ReduceL2", 13, {"noop_with_empty_axes": 0}, {}, True, ""),
    ("Trilu", 14, {}, {"num_inputs": 3}, False, "at most 2"),
    ("LayerNormalization", 16, {}, {}, False, "17-18"),
    ("LayerNormalization", 17, {}, {}, True, ""),
    ("LayerNormalization", 17, {}, {"cann_version": "6.0"}, False, "range 9-13"),
    ("Add", 19, {}, {}, False, "range 9-18"),
    ("Add", 8, {}, {}, False, "range 9-18"),
    ("Gelu", 20, {}, {}, False, "no atc ONNX parser"),
    ("Loop", 16, {}, {}, False, "no atc ONNX parser"),
    ("Scan", 16, {}, {}, False, "no atc ONNX parser"),
    ("GroupNormalization", 18, {}, {}, False, "no atc ONNX parser"),
    ("QuantizeLinear", 13, {}, {}, False, "no atc ONNX parser"),
    ("DequantizeLinear", 13, {}, {}, False, "no atc ONNX parser"),
    ("DynamicQuantizeLinear", 13, {}, {}, False, "no atc ONNX parser"),
    ("MatMulInteger", 13, {}, {}, False, "no atc ONNX parser"),
    ("Constant", 13, {}, {}, True, ""),
    ("Add", 13, {}, {"input_dtypes": ["float64", "float64"]}, False, "float64"),
    ("MatMul", 13, {}, {"input_dtypes": [16, 16]}, False, "bfloat16"),
    ("GatherElements", 13, {}, {"input_dtypes": ["int64", "int64"]}, False, "input 0 of dtype int64"),
    ("GatherElements", 13, {}, {"input_dtypes": ["float16", "int64"]}, True, ""),
    ("FusedMatMul", 1, {}, {"domain": "com.microsoft"}, False, "custom domain 'com.microsoft'"),
    ("NPUFastGelu", 1, {}, {"domain": "npu"}, True, ""),
])
def test_op_support_on_310p3(op, opset, attrs, kw, ok, why):
    v = load_target("Ascend310P3").op_support(op, opset, attrs, **kw)
    assert v.supported is ok and bool(v) is ok
    assert why in v.reason


def test_ignored_attributes_warn_and_data_dependent_shapes():
    p3, a310 = load_target("Ascend310P3"), load_target("Ascend310")
    v = p3.op_support("ReduceMean", 13, {"noop_with_empty_axes": 1})
    assert v.supported and "ignored" in v.warnings[0]
    assert p3.op_support("NonZero", 13).supported and p3.op_support("NonZero", 13).warnings
    v = a310.op_support("NonZero", 13)
    assert not v.supported and v.reason.startswith("dynamic shape")


def test_bf16_on_910b_and_mlu_table():
    assert load_target("Ascend910B").op_support("MatMul", 13, input_dtypes=["bfloat16"] * 2).supported
    assert not load_target("Ascend910B").op_support("MatMul", 13, input_dtypes=["float64"] * 2).supported
    mlu = load_target("MLU370")
    assert mlu.op_support("MatMul", 13).supported
    assert not mlu.op_support("MatMul", 17).supported  # MagicMind opset range assumed 9-13
    assert not mlu.op_support("Loop", 13).supported and not mlu.op_support("NonZero", 13).supported
    assert not mlu.op_support("NPUFastGelu", 13).supported  # vendor-custom ATC ops are not included


def test_ge_op_type_mapping():
    t = load_target("Ascend310P3")
    assert t.ge_op_type("MatMul") == "BatchMatMulV2" and t.ge_op_type("Softmax") == "SoftmaxV2"
    assert t.ge_op_type("Nope") == ""


def _docs_json() -> str:
    text = (REPO / "docs" / "targets.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_docs_example_target_loads(tmp_path):
    doc = json.loads(_docs_json())
    p = tmp_path / f"{doc['name']}.json"
    p.write_text(json.dumps(doc))
    t = load_target(str(p))
    assert t.name == "Atlas300IProLowMem" and t.soc_version == "Ascend310P3"
    assert t.memory_bytes == 12 * 2**30 and t.usable_memory_bytes is None
    assert t.fact("memory_bytes").source == "example for docs/targets.md"
    assert not t.op_support("TopK", 13, {"largest": 0}).supported
    assert t.op_support("TopK", 13, {"largest": 1}).supported
    assert not t.op_support("ScatterND", 16, {"reduction": "mul"}).supported  # inherited restriction
    assert "Atlas300IProLowMem" not in list_targets()  # loading a file does not register it


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["memory_bytes"].pop("source"), "needs a non-empty source"),
    (lambda d: d["memory_bytes"].update(confidence="high"), "confidence V, S or M"),
    (lambda d: d.update(memory_bytes=12), "must be an object"),
    (lambda d: d.update(color="red"), "unknown keys"),
    (lambda d: d.update(extends="NoSuchTarget"), "was not found"),
    (lambda d: d["op_table"]["overrides"]["TopK"]["restrictions"][0].pop("confidence"), "confidence"),
])
def test_bad_target_files_are_refused(tmp_path, edit, match):
    doc = json.loads(_docs_json())
    edit(doc)
    p = tmp_path / "Bad.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=match):
        load_target_file(p)


def test_opset_parsing_round_trip():
    assert parse_opsets("1,6,8-10") == {1, 6, 8, 9, 10}
    assert format_opsets({1, 6, 8, 9, 10}) == "1,6,8-10"
    assert parse_opsets("") == frozenset()
    with pytest.raises(ValueError):
        parse_opsets("9-x")


def test_derived_table_has_provenance_and_expected_rows():
    text = (DATA_DIR / ATC_TABLE).read_text()
    assert text.startswith("# ATC ONNX op table (derived data file")
    assert "atc_onnx_op_support.csv" in text.splitlines()[2] + text.splitlines()[1]
    table = read_table(DATA_DIR / ATC_TABLE)
    assert table[("ai.onnx", "LayerNormalization")].opsets == frozenset({17, 18})
    assert table[("ai.onnx", "MatMul")].ge_op_type == "BatchMatMulV2"
    assert ("ai.onnx", "Unique") in table and ("npu", "NPUFastGelu") in table
    for missing in ("Loop", "Scan", "GroupNormalization", "Gelu", "QuantizeLinear", "MatMulInteger"):
        assert ("ai.onnx", missing) not in table


def test_derived_table_matches_a_rebuild(tmp_path):
    src, yml = REFERENCE / "atc_onnx_op_support.csv", REFERENCE / "msit_onnx_map.yaml"
    if not src.is_file() or not yml.is_file():
        pytest.skip(f"reference sheet not available in {REFERENCE}")
    rows = build_rows(src, yml)
    committed = read_table(DATA_DIR / ATC_TABLE)
    assert len(rows) == len(committed)
    for r in rows:
        assert committed[(r["domain"], r["op_type"])].opsets == parse_opsets(r["opsets"]), r["op_type"]
