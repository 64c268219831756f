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


# ---------------------------------------------------------------------------- one resolver
def test_resolve_target_takes_names_targets_and_paths(tmp_path):
    from ascend_adapt.targets import resolve_target

    t = load_target("Ascend310P3")
    assert resolve_target(t) is t
    assert resolve_target("ascend310p3") is t
    assert resolve_target("Ascend910B3").soc_version == "Ascend910B3"  # an alias keeps its soc_version
    doc = json.loads(_docs_json())
    p = tmp_path / f"{doc['name']}.json"
    p.write_text(json.dumps(doc))
    assert resolve_target(p).name == "Atlas300IProLowMem"
    with pytest.raises(RegistryError) as err:
        resolve_target("Ascend999")
    assert "Ascend999" in str(err.value) and all(n in err.value.hint for n in BUILTIN)
    with pytest.raises(ConfigError, match="expected a target name or a Target, got int"):
        resolve_target(310)


# ---------------------------------------------------------------------------- ATC limits from data
def test_gear_limits_and_shape_ranges_come_from_the_data():
    from ascend_adapt.targets.gear_rules import soc_limits

    common = json.loads((DATA_DIR / "_atc_common.json").read_text())["gears"]["value"]
    rules = json.loads((DATA_DIR / "_atc_soc_rules.json").read_text())["rules"]
    assert (soc_limits(None).gear_min, soc_limits(None).gear_max) == (common["min"], common["max"]) == (2, 100)
    # a chip with a profile: the profile's figures (an alias too)
    for soc, name in (("Ascend310", "Ascend310"), ("Ascend310B1", "Ascend310B1"), ("Ascend910B3", "Ascend910B")):
        t = load_target(name)
        lim = soc_limits(soc)
        assert (lim.gear_min, lim.gear_max, lim.allows_shape_ranges) == (t.gear_min, t.gear_max, t.allows_shape_ranges)
        assert lim.source == f"target profile {name}"
    # a chip without one: the rules file
    a950 = next(r for r in rules if r.get("soc_prefix") == "Ascend950")
    assert soc_limits("Ascend950PR").gear_max == a950["gears"]["max"] == 256
    assert soc_limits("Ascend310B4").allows_shape_ranges is False and soc_limits("Ascend3100").allows_shape_ranges


def test_a_registered_target_sets_atc_limits_for_its_soc(tmp_path):
    """A target file with its own gear figure changes what validate() and the simulator accept
    for its soc_version (the limits are data, not code)."""
    from ascend_adapt.om_convert.atc.validate import gear_problems
    from ascend_adapt.targets import register_target_file

    doc = json.loads(_docs_json())
    doc.update(name="TestChipGears", soc_version="Ascend310P9",
               gears={"value": {"min": 2, "max": 8}, "source": "test", "confidence": "M"})
    p = tmp_path / "TestChipGears.json"
    p.write_text(json.dumps(doc))
    register_target_file(p)
    try:
        codes = [e.code for e in gear_problems({"x": (1, -1)}, "dynamic_dims", [(g,) for g in range(1, 10)],
                                               soc_version="Ascend310P9")]
        assert codes == ["E10036"]
        assert not list(gear_problems({"x": (1, -1)}, "dynamic_dims", [(g,) for g in range(1, 9)],
                                      soc_version="Ascend310P9"))
    finally:
        TARGETS.unregister("TestChipGears")


# ---------------------------------------------------------------------------- adding a target = a file
def _tmp_target(d: Path, **over) -> Path:
    """docs/targets.md's example card as a new chip family with a published figure of its own."""
    doc = json.loads(_docs_json())
    cfg = json.loads((DATA_DIR / "models" / "Llama-2-7b-hf.json").read_text())
    (d / "models").mkdir(exist_ok=True)
    (d / "models" / "MyLlama.json").write_text(json.dumps(cfg))
    doc.update(name="TestChip9", family="TestFamily", estimate_rank=99,
               memory_efficiency={"value": 0.5, "source": "test", "confidence": "M"},
               published_decode=[{"key": "test-fig", "model": "MyLlama fp16", "config": "MyLlama",
                                  "precision": "fp16", "seq_len": 512, "batch": 1, "chips": "min",
                                  "tok_s": [5.0, 5.0], "stack": "test", "source": "test", "confidence": "M",
                                  "calibrates": True}], **over)
    p = d / "TestChip9.json"
    p.write_text(json.dumps(doc))
    return p


_PROBE = """
import json
from ascend_adapt.estimate import CALIBRATION, default_targets, estimate
from ascend_adapt.estimate.published import calibration_statement, figure, fit_memory_efficiency, model_tok_s
from ascend_adapt.targets import list_targets
fit = fit_memory_efficiency("test-fig")
print(json.dumps({"targets": list_targets(), "default": list(default_targets()), "calibration": CALIBRATION,
                  "statement": calibration_statement("TestChip9"), "fit": fit,
                  "at_fit": model_tok_s(figure("test-fig"), fit),
                  "est": estimate(figure("test-fig").config, ["TestChip9"], seq_len=512).targets[0].calibration}))
"""


def _run_probe(env_dirs: str, code: str = _PROBE):
    import os
    import subprocess
    import sys

    env = dict(os.environ, ASCEND_ADAPT_TARGETS_PATH=env_dirs)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)


def test_a_target_file_in_ascend_adapt_targets_path_is_a_whole_target(tmp_path):
    """Adding a target is adding a file (docs/targets.md): a directory in ASCEND_ADAPT_TARGETS_PATH
    holding the profile and the config of its published figure; the registry, estimate's default
    targets, the calibration table and the fit all pick it up."""
    _tmp_target(tmp_path)
    r = _run_probe(str(tmp_path))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "TestChip9" in out["targets"] and out["default"][-1] == "TestChip9"
    assert out["default"][:-1] == ["Ascend310", "Ascend310P3", "Atlas300IDuo", "Ascend310B1", "Ascend910B", "MLU370"]
    assert out["calibration"]["TestFamily"] == "test-fig"
    assert out["statement"].startswith("TestChip9: memory efficiency 0.500 calibrated on 'test-fig'")
    assert out["est"] == out["statement"]
    # 40 bisection steps on [1e-3, 1]: the efficiency is within 2^-40 of the root, and decode
    # tok/s grows at most in proportion to the efficiency (only the memory terms scale with it),
    # so the relative error is <= 2^-40 / fit; x4 covers the float64 rounding of the estimate's
    # own sums (~1e-13 relative, far below)
    assert 1e-3 < out["fit"] < 1.0
    assert out["at_fit"] == pytest.approx(5.0, rel=2.0 ** -40 / out["fit"] * 4)


def test_targets_path_errors_name_the_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _tmp_target(tmp_path / "a")
    _tmp_target(tmp_path / "b")
    import os

    r = _run_probe(f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}", "from ascend_adapt.targets import list_targets; list_targets()")
    assert r.returncode != 0 and "redefines target 'TestChip9'" in r.stderr and str(tmp_path / "b") in r.stderr
    r = _run_probe(str(tmp_path / "nope"), "from ascend_adapt.targets import list_targets; list_targets()")
    assert r.returncode != 0 and "ASCEND_ADAPT_TARGETS_PATH names" in r.stderr and "nope" in r.stderr


@pytest.mark.parametrize("edit,match", [
    (lambda f: f.update(tok_s=[6.0]), "tok_s must be"),
    (lambda f: f.update(config="NoSuchModel"), "config 'NoSuchModel' not found"),
    (lambda f: f.pop("source"), "missing"),
    (lambda f: f.update(color="red"), "unknown keys"),
    (lambda f: f.update(chips="all"), "chips must be"),
])
def test_bad_published_figures_are_refused(tmp_path, edit, match):
    p = _tmp_target(tmp_path)
    doc = json.loads(p.read_text())
    edit(doc["published_decode"][0])
    p.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=match):
        load_target_file(p)


def test_published_figures_are_not_inherited():
    duo, p3 = load_target("Atlas300IDuo"), load_target("Ascend310P3")
    assert [f.key for f in duo.published] == ["duo-llama-13b"] and [f.key for f in p3.published] == ["310p-llamacpp"]
    assert duo.estimate_rank is not None and load_target("MLU370-X8").estimate_rank is None


def test_gear_rule_wording_is_atcs_own():
    """The simulator's fallback templates (used where the ATC driver is not importable) are ATC's
    own, word for word, and cover every code the gear rules raise."""
    from ascend_adapt.om_convert.atc.codes import ge_code
    from ascend_adapt.sim.acceptance import _TEMPLATES
    from ascend_adapt.targets.gear_rules import gear_violations

    for code, template in _TEMPLATES.items():
        assert template == ge_code(code)["template"], code
    cases = [({}, "dynamic_dims", [1, 2]), ({"x": (1, 3)}, "dynamic_dims", [1, 2]),
             ({"x": (1, -1)}, "dynamic_dims", [(1,)]), ({"x": (1, -1)}, "dynamic_dims", [(1,)] + [(0, 2)] * 2),
             ({"x": (1, -1)}, "dynamic_dims", [(i,) for i in range(1, 102)]),
             ({"x": (1, -1), "y": (-1,)}, "dynamic_dims", [(1,), (2,)]), ({"x": (1, -1)}, "dynamic_dims", [(1, 2), (3, 4)]),
             ({"x": (3, -1)}, "dynamic_batch_size", [1, 2]), ({"x": (1, -1, 3, -1)}, "dynamic_image_size", [(1, 2), (3, 4)])]
    seen = set()
    for shape, flag, gears in cases:
        for fmt in ("NCHW", "ND", None):
            seen |= {v.code for v in gear_violations(shape, flag, gears, input_format=fmt, insert_op_conf="a.cfg")}
    assert seen == {"E10004", "E10040", "E10035", "E10036", "E10037", "E10038", "E10039", "E10045", "E10003",
                    "E10047", "E10018", "E10019", "E10001"}
    assert seen <= set(_TEMPLATES)
