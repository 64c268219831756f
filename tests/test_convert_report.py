"""The convert report is honest: one verdict rule, visible sub-verdicts, the fp16 token rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ascend_adapt.om_convert.convert import (
    ConvertReport,
    _metrics,
    finite_note_for,
    token_check,
    top2_gaps,
    verdict,
)


def _report(checks: dict) -> ConvertReport:
    r = ConvertReport(source="src", kind="hf", target="Ascend310P3", soc_version="Ascend310P3",
                      precision_mode="force_fp16", out="out")
    r.verify = {"runner": "sim", "golden": "torch fp32", "summary": "s", "checks": checks,
                "passed": verdict(checks)[0]}
    return r


def test_overall_is_the_conjunction_and_the_text_names_the_failed_check():
    ok = {"passed": True, "counts": True, "detail": "fine"}
    bad = {"passed": False, "counts": True, "detail": "cosine 0.9"}
    r = _report({"tokens": ok, "logits": bad, "layers": ok})
    assert not r.passed and r.to_dict()["passed"] is False
    text = r.to_text()
    assert "FAILED (logits)" in text and "logits: FAILED — cosine 0.9" in text
    assert "tokens: passed" in text and "layers: passed" in text
    r = _report({"tokens": ok, "logits": ok, "layers": ok})
    assert r.passed and "PASSED" in r.to_text() and "FAILED" not in r.to_text()
    # a check that does not count is shown but does not decide
    r = _report({"tokens": ok, "speed": {"passed": False, "counts": False, "detail": "slow"}})
    assert r.passed and "speed: FAILED (not counted)" in r.to_text()
    # no checks at all is not a pass
    assert not _report({}).passed


def test_tensor_verdict_is_the_reports_rule_not_an_atol_zero_compare():
    ref = np.linspace(-1, 1, 64, dtype=np.float32)
    got = ref + np.float32(1e-3)  # cosine > 0.999 but not bit-equal
    m = _metrics("logits", ref, got)
    assert m["passed"] is True and m["finite"] and m["nonfinite"] == 0
    assert finite_note_for(m) == ""  # all values finite: no "(finite part)" remark
    got[3] = np.inf
    got[7] = np.nan
    m = _metrics("logits", ref, got)
    assert m["passed"] is False and m["nonfinite"] == 2
    assert finite_note_for(m) == " (finite part; 2 non-finite values)"


def test_token_rule_allows_only_near_tie_flips():
    gaps = np.array([5.0, 3.0, 0.01, 2.0])
    bound = 2 * 0.02  # 2 x a logit error of 0.02
    same = token_check([1, 2, 3, 4], [1, 2, 3, 4], gaps, bound)
    assert same["passed"] and same["identical"]
    late_tie = token_check([1, 2, 3, 4], [1, 2, 9, 9], gaps, bound)  # gap 0.01 <= 0.04 at step 2
    assert late_tie["passed"] and late_tie["first_difference"] == 2
    first = token_check([1, 2, 3, 4], [7, 2, 3, 4], gaps, bound)  # clear winner (gap 5) flipped
    assert not first["passed"] and first["first_difference"] == 0 and "NOT a near-tie" in first["detail"]
    # the bound is inclusive and scales with the measured error: the same flip passes when the
    # logit error is as large as half the gap
    assert token_check([1], [7], [5.0], 2 * 2.5)["passed"]


def test_top2_gaps():
    g = top2_gaps(np.array([[0.0, 3.0, 1.0], [2.0, 2.0, -1.0]]))
    np.testing.assert_array_equal(g, [2.0, 0.0])


def test_real_convert_report_is_consistent(tiny_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from ascend_adapt.om_convert.convert import convert

    out = tmp_path / "o"
    r = convert(tiny_dir("llama"), out, soc="Ascend310P3", max_len=96, use_atc="never", verify_tokens=8)
    d = json.loads((out / "convert_report.json").read_text())
    v = d["verify"]
    assert set(v["checks"]) == {"tokens", "logits", "layers"}
    # no sub-verdict contradicts the overall one
    assert d["passed"] == v["passed"] == all(c["passed"] for c in v["checks"].values())
    assert v["logits"]["passed"] == v["checks"]["logits"]["passed"]
    text = (out / "convert_report.txt").read_text()
    for name in v["checks"]:
        assert f"    {name}: " in text
    if v["logits"]["nonfinite"] == 0:
        assert "finite part" not in text
    assert r.passed == d["passed"]


def test_unverified_report_says_so_and_is_not_passed():
    """A skipped or switched-off verify is neither PASSED nor FAILED: the report says UNVERIFIED."""
    from ascend_adapt.om_convert.convert import ConvertReport

    r = ConvertReport(source="s", kind="hf", target="Ascend310P3", soc_version="Ascend310P3",
                      precision_mode="force_fp16", out="o")
    r.steps.append({"step": "verify", "summary": "SKIPPED: needs 41 GiB", "seconds": 0.0, "skipped": True})
    assert r.outcome == "unverified" and r.passed is False and r.to_dict()["outcome"] == "unverified"
    text = r.to_text()
    assert "UNVERIFIED" in text and "skipped" in text and "PASSED" not in text


def test_hf_gears_from_python_are_lengths_not_tuples():
    """gears=[(16, 32, 64)] used to build [1, 16] silently (first number of the tuple kept)."""
    from ascend_adapt.errors import ConfigError
    from ascend_adapt.om_convert.convert import _prefill_gears

    assert _prefill_gears([16, (32,), 64]) == [16, 32, 64]
    assert _prefill_gears(None) is None
    for bad in ([(16, 32, 64)], [0], [True], ["16"]):
        with pytest.raises(ConfigError, match="gear"):
            _prefill_gears(bad)
