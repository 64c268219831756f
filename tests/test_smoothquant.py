"""SmoothQuant math, calibration statistics and the keep-fp16 rule (ascend_adapt/quant/)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ascend_adapt.errors import ConfigError
from ascend_adapt.quant.smoothquant import (KeepRule, act_scale_of, apply_smoothing, plan_from_stats,
                                            smooth_factors)

U32 = 2.0 ** -24  # fp32 unit roundoff


def _outlier_acts(rng, tokens=64, channels=48):
    x = rng.standard_normal((tokens, channels)).astype(np.float32)
    x[:, 5] *= 80.0  # an outlier channel, as LLM activations have
    x[:, 17] *= 30.0
    return x


# ---- the math -------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.85, 1.0])
def test_smoothing_keeps_the_linear_function(alpha):
    """x/s · (W·s)ᵀ = x·Wᵀ: in fp32 each term x_j·w_j picks up 3 extra roundings (x/s, W·s, and
    their product replacing x_j·w_j), so |y_s - y| ≤ (in + 3)·u·Σ_j |x_j w_j| per output (the
    standard γ_n bound of a length-`in` dot product, doubled for the two evaluations)."""
    rng = np.random.default_rng(0)
    x = _outlier_acts(rng)
    w = rng.standard_normal((32, x.shape[1])).astype(np.float32)
    s = smooth_factors(np.abs(x).max(0), np.abs(w).max(0), alpha)
    assert s.dtype == np.float32 and np.all(s > 0)
    y = x @ w.T
    ys = (x / s) @ (w * s).T
    bound = 2 * (x.shape[1] + 3) * U32 * (np.abs(x) @ np.abs(w).T)
    assert np.all(np.abs(ys - y) <= bound)


def test_smoothing_moves_the_outlier_into_the_weight():
    """α = 0.5 equalizes max|x/s| and max|W·s| per channel: sqrt(amax·wmax) both (exact in real
    arithmetic; fp32 pow/div give a few ulps: 8 u relative)."""
    rng = np.random.default_rng(1)
    x = _outlier_acts(rng)
    w = rng.standard_normal((32, x.shape[1])).astype(np.float32)
    a, m = np.abs(x).max(0), np.abs(w).max(0)
    s = smooth_factors(a, m, 0.5)
    np.testing.assert_allclose(a / s, np.sqrt(a.astype(np.float64) * m), rtol=8 * U32)
    np.testing.assert_allclose(m * s, np.sqrt(a.astype(np.float64) * m), rtol=8 * U32)
    # the activation's channel spread shrinks: its max/median drops by sqrt of what it was
    assert (a / s).max() / np.median(a / s) < (a.max() / np.median(a)) ** 0.75


def test_smooth_factors_zero_channels_get_one():
    s = smooth_factors(np.array([0.0, 2.0, 3.0]), np.array([1.0, 0.0, 4.0]), 0.5)
    assert s[0] == 1.0 and s[1] == 1.0 and s[2] == np.float32(math.sqrt(3.0) / 2.0)


def test_act_scale_is_the_static_per_tensor_int8_step_of_the_smoothed_input():
    rng = np.random.default_rng(2)
    x = _outlier_acts(rng)
    w = rng.standard_normal((16, x.shape[1])).astype(np.float32)
    a = np.abs(x).max(0)
    s = smooth_factors(a, np.abs(w).max(0), 0.5)
    step = act_scale_of(a, s)
    assert step == np.float32(np.max(a / s) / 127)
    q = np.rint((x / s) / step)
    # the calibration data never clips: |q| ≤ 127, and the largest channel uses the full range
    # (rounding of the fp32 quotients moves it by at most one code)
    assert np.abs(q).max() <= 127 and np.abs(q).max() >= 126
    assert act_scale_of(np.zeros(4), np.ones(4)) == 1.0


# ---- the keep rule --------------------------------------------------------------------------------

def test_keep_rule_parses_every_form(tmp_path):
    r = KeepRule.parse("edge_layers=2;edge_linears=mlp.down,attn.o;outlier_ratio=off;keep=layers.5.*;lm_head=true")
    assert r.edge_layers == 2 and r.edge_linears == ("mlp.down", "attn.o") and math.isinf(r.outlier_ratio)
    assert r.keep == ("layers.5.*",) and r.lm_head
    assert KeepRule.parse(r.describe()) == r  # what the report prints reads back
    j = {"edge_layers": 0, "keep": ["*.mlp.down"], "outlier_ratio": 16}
    assert KeepRule.parse(json.dumps(j)) == KeepRule(edge_layers=0, keep=("*.mlp.down",), outlier_ratio=16.0)
    f = tmp_path / "rule.json"
    f.write_text(json.dumps(j))
    assert KeepRule.parse(str(f)) == KeepRule.parse(json.dumps(j))
    assert KeepRule.parse("") == KeepRule()


@pytest.mark.parametrize("text, needle", [
    ("edge_layer=1", "unknown key 'edge_layer'"),
    ("edge_layers=-1", "edge_layers"),
    ("edge_layers=two", "edge_layers"),
    ("outlier_ratio=0.5", "outlier_ratio"),
    ("lm_head=maybe", "lm_head"),
    ("keep", "not key=value"),
    ("{bad json", "not valid JSON"),
    ("missing_rule.json", "does not exist"),
])
def test_keep_rule_errors_name_the_key(text, needle):
    with pytest.raises(ConfigError) as e:
        KeepRule.parse(text)
    assert needle in str(e.value) and e.value.hint


def _fake_stats(spec, rng, massive_down_layer=None):
    from ascend_adapt.quant.calib import linear_names

    amax, colmax = {}, {}
    shapes = spec.canonical_shapes()
    for n in linear_names(spec):
        in_f = shapes[n + ".weight"][1]
        amax[n] = (1.0 + rng.random(in_f)).astype(np.float32)
        colmax[n] = (0.5 + rng.random(in_f)).astype(np.float32)
    for i in range(spec.num_layers):  # inputs shared by a group carry the same statistic
        for a, b in (("attn.q", "attn.k"), ("attn.q", "attn.v"), ("mlp.up", "mlp.gate")):
            if f"layers.{i}.{b}" in amax:
                amax[f"layers.{i}.{b}"] = amax[f"layers.{i}.{a}"]
    if massive_down_layer is not None:
        amax[f"layers.{massive_down_layer}.mlp.down"][3] = 1e5
    return amax, colmax


def _spec(arch, layers=4):
    from ascend_adapt.model_zoo.base import ADAPTERS
    from ascend_adapt.model_zoo.tiny import tiny_config

    cfg = tiny_config(arch)
    key = "num_layers" if arch == "chatglm" else "num_hidden_layers"
    cfg[key] = layers
    return ADAPTERS.get(arch).spec_from_config(cfg)


def test_keep_rule_applies_defaults_outliers_and_patterns():
    spec = _spec("llama", 4)
    amax, colmax = _fake_stats(spec, np.random.default_rng(3), massive_down_layer=2)
    plan = plan_from_stats(spec, amax, colmax)
    # defaults: first and last layers' down_proj, the outlier down_proj of layer 2, the head
    assert set(plan.kept) == {"layers.0.mlp.down", "layers.3.mlp.down", "layers.2.mlp.down", "lm_head"}
    assert "outliers" in plan.kept["layers.2.mlp.down"][0]
    assert "layers.1.mlp.down" in plan.linears
    # q/k/v share one input: one smooth vector, one act_scale, folded into the attention norm
    q, k, v = (plan.get(f"layers.1.attn.{x}") for x in "qkv")
    assert q.smooth is k.smooth is v.smooth and q.act_scale == v.act_scale
    assert q.fold == "layers.1.attn_norm.weight" and plan.get("layers.1.attn.o").fold is None
    assert plan.get("layers.1.mlp.gate").fold == "layers.1.mlp_norm.weight"
    assert plan.get("model.layers.1.self_attn.k_proj.weight") is k  # by HF weight name
    assert plan.get("layers.1.attn.k.weight") is k                   # by canonical weight name
    # a pattern on one member keeps its whole input group (q/k/v), by HF name too
    plan2 = plan_from_stats(spec, amax, colmax, rule=KeepRule.parse(
        "edge_layers=0;outlier_ratio=off;keep=model.layers.1.self_attn.k_proj.weight"))
    assert {"layers.1.attn.q", "layers.1.attn.k", "layers.1.attn.v", "lm_head"} == set(plan2.kept)
    assert "shares its input" in plan2.kept["layers.1.attn.q"][0]
    # the summary states the rule in the form --keep-fp16 reads
    assert plan2.rule.describe() in "\n".join(plan2.summary())


def test_glm_alpha_residual_never_folds_into_the_norm():
    """ChatGLM-6B's α·LN(x) residual reuses the norm output: dividing the norm weight would change
    the residual branch, so every smoothing there is an explicit Mul (fold None)."""
    spec = _spec("chatglm", 3)
    amax, colmax = _fake_stats(spec, np.random.default_rng(4))
    plan = plan_from_stats(spec, amax, colmax)
    assert plan.linears and all(lp.fold is None for lp in plan.linears.values())
    assert plan.get("transformer.layers.1.attention.query_key_value.weight").name == "layers.1.attn.q"


def test_alpha_out_of_range_is_refused():
    spec = _spec("llama", 2)
    amax, colmax = _fake_stats(spec, np.random.default_rng(5))
    with pytest.raises(ConfigError, match="smooth-alpha"):
        plan_from_stats(spec, amax, colmax, alpha=1.5)


# ---- calibration on a real (tiny) model --------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("sq") / "llama", "llama")


def test_calibration_stats_equal_a_direct_computation(llama_dir):
    """The hooks' amax equals max |input| computed independently: layer 0's q/k/v input is
    RMSNorm(embedding) · attn_norm.weight (numpy, float64: the fp32 golden differs by its own
    rounding, ≤ (H + 8)·u relative for a length-H mean of squares and the scalings); the head's
    input is the golden's own final_norm output (the same tensor: equal)."""
    from ascend_adapt.quant.accuracy import read_canonical
    from ascend_adapt.quant.calib import collect_act_stats
    from ascend_adapt.runtime.torch_backend import TorchBackend

    be = TorchBackend(llama_dir)
    spec, canon = read_canonical(llama_dir)
    prompts = [[1, 5, 9, 33, 7], [1, 40, 41, 2, 3, 100, 6]]
    stats = collect_act_stats(be, prompts)
    assert stats.tokens == 12 and stats.prompts == 2
    ids = np.concatenate(prompts)
    e = canon["embed.weight"][ids].astype(np.float64)
    h = e / np.sqrt((e * e).mean(-1, keepdims=True) + spec.norm_eps) * canon["layers.0.attn_norm.weight"]
    want = np.abs(h).max(0)
    H = spec.hidden_size
    np.testing.assert_allclose(stats.amax["layers.0.attn.q"], want, rtol=(H + 8) * U32)
    assert stats.amax["layers.0.attn.k"] is not None
    np.testing.assert_array_equal(stats.amax["layers.0.attn.q"], stats.amax["layers.0.attn.v"])
    fn = np.concatenate([be.full_logits(np.asarray([p]), layer_outputs=True)[1]["final_norm"][0] for p in prompts])
    np.testing.assert_array_equal(stats.amax["lm_head"], np.abs(fn).max(0))


def test_plan_and_smoothing_keep_the_model_function(llama_dir):
    """End to end on the tiny Llama: plan from the builtin calibration set, apply the smoothing
    (W·s, norm weights / s; an explicit x / s for o and down, as the graph's Mul), and the fp32
    golden's logits stay those of the original. Each smoothed element carries ≤ 3 fp32 roundings
    (≈ 2e-7 relative); through 2 layers of 4 Linears and the norms that stays far below the fp16
    half-ulp 2^-11 the assertion allows — a wrong fold or a missing division moves logits by O(1)."""
    import torch

    from ascend_adapt.quant.accuracy import read_canonical
    from ascend_adapt.quant.calib import torch_linear_modules
    from ascend_adapt.quant.smoothquant import plan_w8a8
    from ascend_adapt.runtime.torch_backend import TorchBackend

    spec, canon = read_canonical(llama_dir)
    ref = TorchBackend.from_canonical(spec, canon)
    plan = plan_w8a8(llama_dir, rule="edge_layers=0;outlier_ratio=off", backend=ref)
    assert len(plan.linears) == 7 * spec.num_layers and set(plan.kept) == {"lm_head"}
    assert plan.prompts == 16 and plan.tokens > 500
    sm = TorchBackend.from_canonical(spec, apply_smoothing(canon, plan))
    mods = torch_linear_modules(sm)
    for n, lp in plan.linears.items():
        if lp.fold is None:
            inv = torch.from_numpy(1.0 / lp.smooth)
            mods[n].register_forward_pre_hook(lambda m, a, inv=inv: (a[0] * inv,))
    ids = np.asarray([[1, 17, 200, 33, 9, 64, 5]])
    a, b = ref.full_logits(ids), sm.full_logits(ids)
    assert np.max(np.abs(a - b)) <= 2.0 ** -11 * np.max(np.abs(a))
    # without the explicit division the function changes: the check can fail
    for h in list(mods.values()):
        h._forward_pre_hooks.clear()
    assert np.max(np.abs(a - sm.full_logits(ids))) > 2.0 ** -11 * np.max(np.abs(a))


def test_calibration_file_errors(tmp_path):
    from ascend_adapt.quant.calib import load_calib_texts

    with pytest.raises(ConfigError, match="does not exist"):
        load_calib_texts(tmp_path / "nope.txt")
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(ConfigError, match=r"c.jsonl:2"):
        load_calib_texts(bad)
    empty = tmp_path / "e.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ConfigError, match="no prompt"):
        load_calib_texts(empty)
    lines = tmp_path / "p.txt"
    lines.write_text("first prompt\n\nsecond prompt\n")
    assert load_calib_texts(lines) == ["first prompt", "second prompt"]
    builtin = load_calib_texts("builtin")
    assert len(builtin) >= 10 and any("\u4e00" <= ch <= "\u9fff" for t in builtin for ch in t)  # Chinese too


def test_lm_head_quantized_only_when_asked_and_untied():
    """lm_head=false quantizes an untied head (its input is the final norm's output: folds there);
    a tied head is the embedding matrix too, so it stays fp16 whatever the rule says."""
    from dataclasses import replace

    spec = replace(_spec("llama", 2), tie_word_embeddings=False)
    amax, colmax = _fake_stats(spec, np.random.default_rng(6))
    plan = plan_from_stats(spec, amax, colmax, rule=KeepRule.parse("lm_head=false"))
    assert "lm_head" not in plan.kept and plan.get("lm_head").fold == "final_norm.weight"
    tied = replace(spec, tie_word_embeddings=True)
    plan_t = plan_from_stats(tied, amax, colmax, rule=KeepRule.parse("lm_head=false"))
    assert "tied" in plan_t.kept["lm_head"][0] and plan_t.get("lm_head") is None
