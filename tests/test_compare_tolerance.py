"""compare's default tolerance is derived from the arithmetic (ascend_adapt/compare/tolerance.py):
a correct fp16 port passes against its fp32 golden at the defaults, broken ones still fail, and
the numbers are the formula's."""

import re

import numpy as np
import pytest
from ascend_adapt.model_zoo.base import ADAPTERS
from ascend_adapt.model_zoo.tiny import (
    make_tiny_checkpoint,
    random_canonical_weights,
    tiny_config,
)

from ascend_adapt.cli.main import main
from ascend_adapt.compare import compare, format_report
from ascend_adapt.compare.tolerance import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    U_BF16,
    U_FP16,
    U_FP32,
    accumulation_lengths,
    pair_rel,
    stream_magnitude,
    tensor_depth,
    tensor_tolerance,
)

SPEC = ADAPTERS.get("llama").spec_from_config(tiny_config("llama"))


def test_derived_numbers_equal_the_formula():
    L, H, keys = SPEC.num_layers, SPEC.hidden_size, 41
    n_logits = sum(accumulation_lengths(SPEC, keys))  # L layers + final norm + head
    assert pair_rel(SPEC, "float32", "float32", keys, "logits") == 2 * U_FP32 * n_logits
    assert pair_rel(SPEC, "float32", "float16", keys, "logits") == U_FP16 * (18 * L + 4) + 2 * U_FP32 * n_logits
    assert pair_rel(SPEC, "float32", "bfloat16", keys, "logits") == U_BF16 * (18 * L + 4) + 2 * U_FP32 * n_logits
    assert pair_rel(SPEC, "float16", "float16", keys, "logits") == 2 * U_FP16 * (18 * L + 4) + 2 * U_FP32 * n_logits
    # depth: the stages before each tensor
    assert [tensor_depth(n, L) for n in ("embed", "layers.0", "layers.1", "final_norm", "logits")] == [
        (0, "embed"), (1, "stream"), (2, "stream"), (L, "final_norm"), (L, "head")]
    n0 = sum(accumulation_lengths(SPEC, keys, layers=1, head=False))
    assert pair_rel(SPEC, "float32", "float16", keys, "layers.0") == U_FP16 * 22 + 2 * U_FP32 * n0
    n_norm = sum(accumulation_lengths(SPEC, keys, head=False)) + H
    assert pair_rel(SPEC, "float32", "float32", keys, "final_norm") == 2 * U_FP32 * n_norm
    assert pair_rel(SPEC, "float32", "float16", keys, "embed") == U_FP16 * 4
    # magnitudes: max|ref| off the stream; along it Σ max|sublayer output|
    rng = np.random.default_rng(0)
    e = rng.standard_normal((1, 4, H)) * 400  # a stream ×400 its sublayers
    d0, d1 = rng.standard_normal((1, 4, H)), rng.standard_normal((1, 4, H)) * 3
    ref = {"embed": e, "layers.0": e + d0, "layers.1": e + d0 + d1, "logits": rng.standard_normal((1, 4, 8)) * 30}
    assert stream_magnitude("layers.1", ref) == pytest.approx(np.abs(d0).max() + np.abs(d1).max(), rel=1e-12)
    t = tensor_tolerance(SPEC, "float32", "float16", keys, "layers.1", ref)
    assert t.rtol == pair_rel(SPEC, "float32", "float16", keys, "layers.1") and t.atol == t.rtol * t.magnitude
    assert t.magnitude < np.abs(ref["layers.1"]).max() / 50  # the stream's size does not loosen it
    t = tensor_tolerance(SPEC, "float32", "float16", keys, "logits", ref)
    assert t.atol == t.rtol * np.abs(ref["logits"]).max()
    assert t.source.startswith("derived: fp16 compute vs fp32, 2 layers: rtol 0.0197")
    assert stream_magnitude("layers.1", {"layers.1": e}) is None  # predecessors missing: max|ref| instead
    with pytest.raises(ValueError, match="no unit roundoff for compute dtype 'int8'"):
        pair_rel(SPEC, "float32", "int8", keys)


@pytest.fixture(scope="module")
def ports(tmp_path_factory):
    """The golden tiny Llama converted for Ascend310P3 (a correct fp16 port), the same with layer 1's
    MLP down projection ×1.5 (a broken port), and a ×400-embedding variant whose RMSNorm x² overflows
    fp16, as an .omsim of its export without keep_dtype."""
    d = tmp_path_factory.mktemp("tol")
    w = random_canonical_weights(SPEC, 0)
    make_tiny_checkpoint(d / "golden", "llama", weights=w)
    p = dict(w)
    p["layers.1.mlp.down.weight"] = w["layers.1.mlp.down.weight"] * 1.5
    make_tiny_checkpoint(d / "pert", "llama", weights=p)
    for name in ("golden", "pert"):
        assert main(["convert", str(d / name), "--soc", "Ascend310P3", "-o", str(d / f"{name}_out")]) == 0
    big = dict(w)
    big["embed.weight"] = w["embed.weight"] * 400
    make_tiny_checkpoint(d / "big", "llama", weights=big)
    from ascend_adapt.om_convert.builder import build_llm_onnx

    from ascend_adapt.backends.sim.artifact import write_omsim
    from ascend_adapt.sim import SimSettings

    exp = d / "big_export"
    build_llm_onnx(d / "big", exp, seq_len=8, max_len=16, progress=False)
    write_omsim(d / "big.omsim", {"prefill": exp / "prefill.onnx", "decode": exp / "decode.onnx"}, "Ascend310P3",
                settings=SimSettings(target="Ascend310P3"), copy_from=exp)
    return d


def _keys(report) -> int:
    return int(re.search(r"keys (\d+)", report.tolerance).group(1))


def test_correct_port_passes_at_the_defaults(ports):
    r = compare(ports / "golden", ports / "golden_out", layerwise=True)
    assert r.passed, format_report(r)
    assert r.tolerance.startswith("derived: fp16 compute vs fp32, 2 layers: rtol 0.0197, atol ")
    keys = _keys(r)
    assert keys >= 8  # the prompt, or the artifact's padded prefill
    by = {s.name: s for s in r.tensors}
    for name in ("embed", "layers.0", "layers.1", "final_norm", "logits"):
        assert by[name].rtol == pair_rel(SPEC, "float32", "float16", keys, name)
    assert r.rtol == by["logits"].rtol and r.atol == by["logits"].atol == by["logits"].rtol * by["logits"].ref_absmax
    assert by["final_norm"].atol == by["final_norm"].rtol * by["final_norm"].ref_absmax
    text = format_report(r)
    assert "[I] tolerance: derived: fp16 compute vs fp32, 2 layers" in text and "(derived) | Command:" in text


def test_explicit_tolerances_win(ports, capsys):
    golden, out = str(ports / "golden"), str(ports / "golden_out")
    r = compare(golden, out, atol=1e-3, rtol=1e-3)
    assert not r.passed and r.tolerance == "given" and (r.atol, r.rtol) == (1e-3, 1e-3)
    r = compare(golden, out, rtol=0.0)  # one given: it replaces the derived one for every tensor
    assert r.rtol == 0.0 and r.outputs[0].rtol == 0.0 and "given rtol 0 replaces it" in r.tolerance
    assert main(["compare", golden, out]) == 0
    assert "derived: fp16 compute vs fp32, 2 layers" in capsys.readouterr().out
    assert main(["compare", golden, out, "--atol", "1e-3", "--rtol", "1e-3"]) == 1
    assert "FAILED | atol 0.001 rtol 0.001 | Command: ascend-adapt compare" in capsys.readouterr().out


def test_broken_port_fails_at_the_defaults(ports):
    r = compare(ports / "golden", ports / "pert_out", layerwise=True, fix=False)
    assert not r.passed and r.first_divergent == "layers.1", format_report(r)
    assert {s.name: s for s in r.tensors}["layers.0"].passed


def test_fp16_overflow_fails_at_the_defaults_and_its_fix_passes(ports, tmp_path):
    r = compare(ports / "big", ports / "big.omsim", layerwise=True, fix_dir=tmp_path / "fix")
    assert not r.passed and r.first_divergent == "layers.0", format_report(r)
    assert r.fix is not None and r.fix.recheck_passed
    keep = (tmp_path / "fix" / "keep_dtype.cfg").read_text().split()
    r2 = compare(ports / "big", ports / "big.omsim", layerwise=True, keep_dtype=keep)
    assert r2.passed and r2.tolerance.startswith("derived: fp16 compute vs fp32"), format_report(r2)


def test_fp32_sides_and_graph_level(ports):
    r = compare(ports / "big", ports / "big_export")  # torch fp32 vs its fp32 export on onnxruntime
    assert r.tolerance.startswith("derived: fp32 vs fp32 (other accumulation order), 2 layers"), r.tolerance
    assert r.passed and r.rtol == pair_rel(SPEC, "float32", "float32", _keys(r), "logits")
    r = compare(ports / "golden", ports / "golden_out" / "export")  # convert's export is fp16
    assert r.tolerance.startswith("derived: fp16 compute vs fp32, 2 layers"), r.tolerance
    r = compare(ports / "golden", ports / "golden_out", dtype="bfloat16")  # torch in bf16 against the fp16 port
    assert r.tolerance.startswith("derived: fp16 compute vs bf16 compute"), r.tolerance
    assert r.passed and r.rtol == pair_rel(SPEC, "bfloat16", "float16", _keys(r), "logits")
    onnx = ports / "big_export" / "prefill.onnx"
    g = compare(onnx, onnx)
    assert g.passed and (g.atol, g.rtol) == (DEFAULT_ATOL, DEFAULT_RTOL) and g.tolerance.startswith("default")
