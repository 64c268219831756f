"""`compare`: per-output / layer-wise errors, first divergent layer, minimum tolerances, and the
fp16-overflow diagnosis with a keep_dtype proposal that the simulator re-check accepts."""

import json
import struct
import zlib

import numpy as np
import pytest

from ascend_adapt.cli.main import main
from ascend_adapt.compare import compare, format_report, tensor_stats
from ascend_adapt.compare.plot import plot_report
from ascend_adapt.errors import ConfigError
from ascend_adapt.model_zoo.base import ADAPTERS
from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint, random_canonical_weights, tiny_config
from tolerances import fp16_rel


def _fp16_tol(fp32_self_report) -> dict:
    """compare()'s atol / rtol for an fp16 run (the simulator) against fp32 on the tiny Llama.

    fp16 compute is within fp16_rel(spec) = 2^-11·(18·L + 4) ≈ 0.02 of the fp32 golden, relative to
    an output's magnitude (tests/tolerances.py): atol = that × the largest |tensor| outside the
    residual stream (logits, final norm, K/V caches), read from the fp32 report of the same inputs
    against themselves. The residual stream (embed, layers.*) carries the ×400 embedding: its error
    is each element's own fp16 roundings (rtol = fp16_rel) plus the sublayers' (within atol). The
    fp16 overflow these tests are about is off by the output itself (relative error ~1, 30 on logits
    of 30); after keep_dtype the measured errors are ≤ 0.025 on logits and ≤ 0.1% relative along the
    stream, inside atol ≈ 0.6 and rtol ≈ 0.02.
    """
    rel = fp16_rel(ADAPTERS.get("llama").spec_from_config(tiny_config("llama")))
    mag = max(s.ref_absmax for s in fp32_self_report.outputs + fp32_self_report.tensors
              if s.name != "embed" and not s.name.startswith("layers."))
    return dict(atol=rel * mag, rtol=rel)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Golden tiny Llama, copies with one layer perturbed, and an fp16-overflow variant + export + omsim."""
    d = tmp_path_factory.mktemp("cmp")
    spec = ADAPTERS.get("llama").spec_from_config(tiny_config("llama"))
    w = random_canonical_weights(spec, 0)
    make_tiny_checkpoint(d / "golden", "llama", weights=w)
    for layer in (0, 1):
        p = dict(w)
        p[f"layers.{layer}.mlp.down.weight"] = w[f"layers.{layer}.mlp.down.weight"] * 1.5
        make_tiny_checkpoint(d / f"perturbed{layer}", "llama", weights=p)
    # residual stream ~400: x² in every RMSNorm (~1.5e6) overflows fp16 (65504)
    big = dict(w)
    big["embed.weight"] = w["embed.weight"] * 400
    make_tiny_checkpoint(d / "big", "llama", weights=big)
    from ascend_adapt.om_convert.builder import build_llm_onnx

    build_llm_onnx(d / "big", d / "big_export", seq_len=8, max_len=16, progress=False)
    return d


@pytest.mark.parametrize("layer", [0, 1])
def test_perturbed_layer_is_the_first_divergence(tiny, layer):
    r = compare(tiny / "golden", tiny / f"perturbed{layer}", layerwise=True)
    assert not r.passed
    assert r.first_divergent == f"layers.{layer}" and r.first_divergent_layer == f"layers.{layer}"
    by = {s.name: s for s in r.tensors}
    assert by["embed"].passed and by["embed"].max_abs == 0
    if layer == 1:
        assert by["layers.0"].passed
    assert [s.name for s in r.tensors] == ["embed", "layers.0", "layers.1", "final_norm", "logits"]
    # the minimum tolerance reported is what passes
    s = by["logits"]
    assert s.min_atol == s.max_abs and r.min_atol >= s.min_atol  # exact: min_atol is max_abs itself


def test_cli_text_json_and_exit_code(tiny, capsys, tmp_path):
    rc = main(["compare", str(tiny / "golden"), str(tiny / "perturbed1"), "--layerwise", "--plot",
               str(tmp_path / "err.png")])
    out = capsys.readouterr().out
    assert rc == 1
    assert "first divergence: layers.1" in out and "minimum tolerance that would have passed" in out
    assert f"Command: ascend-adapt compare {tiny / 'golden'} {tiny / 'perturbed1'}" in out and "--layerwise" in out
    assert (tmp_path / "err.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rc = main(["compare", str(tiny / "golden"), str(tiny / "golden"), "--format", "json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["verdict"] == "PASSED" and data["min_atol"] == 0
    assert data["command"].startswith("ascend-adapt compare")


def test_fp16_overflow_proposes_keep_dtype_and_recheck_passes(tiny, tmp_path):
    onnx_path = tiny / "big_export" / "prefill.onnx"
    TOL = _fp16_tol(compare(onnx_path, onnx_path))
    r = compare(onnx_path, f"sim:{onnx_path}", target="Ascend310P3", fix_dir=tmp_path / "fix", **TOL)
    assert not r.passed
    f = r.fix
    assert f is not None and f.cause.startswith("fp16 range")
    assert any(n.endswith("attn_norm/Square") for n in f.keep_nodes)
    assert f.recheck_passed is True
    kd = (tmp_path / "fix" / "keep_dtype.cfg").read_text().split()
    assert kd == f.keep_nodes
    mix = json.loads((tmp_path / "fix" / "modify_mixlist.json").read_text())
    assert set(mix["black-list"]["to-add"]) == set(f.keep_types)
    text = format_report(r)
    assert "re-check on the simulator with keep_dtype: PASSED" in text
    # the written file, passed back to the simulator, makes the comparison pass
    r2 = compare(onnx_path, f"sim:{onnx_path}", target="Ascend310P3", keep_dtype=kd, **TOL)
    assert r2.passed and r2.fix is None


def test_lm_level_against_an_omsim(tiny, tmp_path):
    from ascend_adapt.backends.sim.artifact import write_omsim
    from ascend_adapt.sim import SimSettings

    exp = tiny / "big_export"
    TOL = _fp16_tol(compare(tiny / "big", tiny / "big", layerwise=True))
    art = write_omsim(tmp_path / "big.omsim", {"prefill": exp / "prefill.onnx", "decode": exp / "decode.onnx"},
                      "Ascend310P3", settings=SimSettings(target="Ascend310P3"), copy_from=exp)
    r = compare(tiny / "big", art.path, layerwise=True, fix_dir=tmp_path / "fix", **TOL)
    assert not r.passed and r.first_divergent == "layers.0"
    assert r.fix is not None and r.fix.recheck_passed
    keep = (tmp_path / "fix" / "keep_dtype.cfg").read_text().split()
    r2 = compare(tiny / "big", art.path, layerwise=True, keep_dtype=keep, **TOL)
    assert r2.passed, format_report(r2)


def test_tensor_stats_and_tolerances():
    a = np.array([1.0, 2.0, 0.0])
    s = tensor_stats("t", a, np.array([1.1, 2.0, 0.0]), atol=0.0, rtol=0.0)
    # float64: 1.1 is rounded once (≤ 2^-53·1.1 off), 1.1 − 1.0 is exact (Sterbenz), / 1.0 exact:
    # within 2^-52 of 0.1; a wrong error (b − a relative to b, or squared) is ≥ 1e-2 off
    one_ulp = dict(rel=0, abs=2.0 ** -52)
    assert not s.passed and s.min_atol == pytest.approx(0.1, **one_ulp) and s.min_rtol == pytest.approx(0.1, **one_ulp)
    assert tensor_stats("t", a, a + [0.1, 0, 0], atol=0.1 + 2.0 ** -52, rtol=0).passed  # the same 2^-52
    s = tensor_stats("t", a, np.array([np.inf, 2.0, 0.0]), atol=1.0, rtol=1.0)
    assert not s.passed and s.nonfinite_mismatch == 1 and s.min_atol == float("inf")
    s = tensor_stats("t", a, np.ones(2), atol=1, rtol=1)
    assert s.shape_mismatch and not s.passed


def test_builtin_png_writer(tiny, tmp_path):
    r = compare(tiny / "golden", tiny / "perturbed1", layerwise=True)
    desc = plot_report(r, tmp_path / "p.png", backend="builtin")
    assert "no text labels" in desc
    data = (tmp_path / "p.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    raw = zlib.decompress(data[data.index(b"IDAT") + 4:data.index(b"IEND") - 8])
    assert len(raw) == h * (1 + 3 * w)


def test_levels_do_not_mix(tiny):
    with pytest.raises(ConfigError, match="cannot be compared with a graph"):
        compare(tiny / "golden", tiny / "big_export" / "prefill.onnx")


def test_matplotlib_plot_when_installed(tiny, tmp_path):
    r = compare(tiny / "golden", tiny / "perturbed1", layerwise=True)
    desc = plot_report(r, tmp_path / "m.png")
    assert "matplotlib" in desc and (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chatglm_default_inputs_end_with_gmask_sop(tmp_path):
    """Without --inputs, compare makes prompts a ChatGLM-6B model accepts ([gMASK] <sop> at the end)."""
    from ascend_adapt.compare import compare
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint

    d = make_tiny_checkpoint(tmp_path / "glm", "chatglm")
    report = compare(d, d)
    assert report.passed
