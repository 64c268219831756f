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
    from ascend_adapt.backends.torch.session import TorchBackend

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
    from ascend_adapt.backends.torch.session import TorchBackend

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


# ---- the α search and the max_error rule ------------------------------------------------------------

def test_alpha_errors_measure_the_int8_linear():
    """In-sample (one fold), the error of α is ‖Q(x/s)·Q(W·s)ᵀ − x·Wᵀ‖ / ‖x·Wᵀ‖ with the plan's own
    quantizers (act_scale_of, quantize_per_channel): recomputed here in float64 from the same
    int8 operands. The search takes its products in float32: each output element is off by at most
    (in + 2)·u·(|Q(x/s)|·|Q(W·s)|ᵀ + |x|·|W|ᵀ) (two length-`in` dot products), so the relative
    error moves by at most (1 + rel)·‖that‖/‖x·Wᵀ‖."""
    from ascend_adapt.quant.smoothquant import alpha_errors
    from ascend_adapt.quant.weights import dequantize, quantize_per_channel

    rng = np.random.default_rng(7)
    x = _outlier_acts(rng, tokens=40)
    w = rng.standard_normal((24, x.shape[1])).astype(np.float32)
    grid = (0.0, 0.3, 0.5, 0.8, 1.0)
    got = alpha_errors(x, w, np.abs(w).max(0), None, grid)
    amax = np.abs(x).max(0)
    for a, g in zip(grid, got):
        s = smooth_factors(amax, np.abs(w).max(0), a)
        step = act_scale_of(amax, s)
        xq = np.clip(np.rint((x * (np.float32(1.0) / s)) / step), -127, 127) * step
        wq = dequantize(*quantize_per_channel(w, s))
        y = x.astype(np.float64) @ w.T.astype(np.float64)
        ref = np.linalg.norm(xq.astype(np.float64) @ wq.T.astype(np.float64) - y) / np.linalg.norm(y)
        b = (x.shape[1] + 2) * U32 * (np.abs(xq) @ np.abs(wq).T + np.abs(x) @ np.abs(w).T)
        assert abs(g - ref) <= (1 + ref) * np.linalg.norm(b) / (np.linalg.norm(y) - np.linalg.norm(b))
    # the outlier channels make both ends bad: activation range (α=0) or weight range (α=1)
    assert got[2] < got[0] and got[2] < got[-1]


def test_held_out_search_sees_what_the_calibration_maximum_clips():
    """In-sample, α = 1 flattens every channel to exactly its calibration maximum, and nothing
    clips. Held out (the statistic from the other prompts), a channel that runs higher than in
    the statistic's prompts clips there: the held-out error at α = 1 is larger, and the search
    picks a smaller α."""
    from ascend_adapt.quant.smoothquant import ALPHA_GRID, alpha_errors

    rng = np.random.default_rng(8)
    x = rng.standard_normal((64, 48)).astype(np.float32)
    x[:, 5] *= 40.0
    folds = np.repeat([0, 1], 32)
    x[folds == 0, 9] *= 6.0   # channel 9 runs 6x higher in prompt 0 only, channel 20 in prompt 1
    x[folds == 1, 20] *= 6.0
    w = (rng.standard_normal((32, 48)) * 0.05).astype(np.float32)
    ins = alpha_errors(x, w, np.abs(w).max(0), None)
    held = alpha_errors(x, w, np.abs(w).max(0), folds)
    assert held[-1] > 2 * ins[-1]
    assert ALPHA_GRID[int(np.argmin(held))] < ALPHA_GRID[int(np.argmin(ins))]


def test_auto_alpha_takes_each_groups_least_error_and_the_rule_keeps_large_errors():
    from ascend_adapt.quant.smoothquant import ALPHA_GRID

    spec = _spec("llama", 3)
    amax, colmax = _fake_stats(spec, np.random.default_rng(9))
    rng = np.random.default_rng(10)
    groups = [f"layers.{i}.{g}" for i in range(3) for g in ("attn.q", "attn.o", "mlp.gate", "mlp.down")]
    search = {g: 0.01 + 0.02 * rng.random(len(ALPHA_GRID)) for g in groups}
    search["layers.1.attn.o"] = np.full(len(ALPHA_GRID), 0.2)  # every α bad: kept by max_error
    search["layers.1.attn.o"][7] = 0.06
    search["layers.1.mlp.gate"][[2, 6]] = 0.001                   # a tie: the first α wins
    plan = plan_from_stats(spec, amax, colmax, alpha="auto", search=search, grid=ALPHA_GRID)
    assert plan.alpha == "auto"
    for lead, lp in ((lp.group[0], lp) for lp in plan.linears.values()):
        assert lp.alpha == ALPHA_GRID[int(np.argmin(search[lead]))]
    assert plan.get("layers.1.mlp.up").alpha == ALPHA_GRID[2]
    q, k = plan.get("layers.2.attn.q"), plan.get("layers.2.attn.k")
    np.testing.assert_array_equal(q.smooth, smooth_factors(amax["layers.2.attn.q"], np.maximum.reduce(
        [colmax[f"layers.2.attn.{x}"] for x in "qkv"]), q.alpha))
    assert k.alpha == q.alpha
    # max_error (default 4 %): the o_proj with 6 % at its best α stays fp16, with the reason
    assert "layers.1.attn.o" in plan.kept and "6.0 % > 4 %" in plan.kept["layers.1.attn.o"][0]
    loose = plan_from_stats(spec, amax, colmax, alpha="auto", search=search, grid=ALPHA_GRID,
                            rule=KeepRule.parse("max_error=off"))
    assert "layers.1.attn.o" in loose.linears and loose.get("layers.1.attn.o").alpha == ALPHA_GRID[7]
    # what export.json and the report record
    man = plan.alpha_manifest()
    assert man["alpha"] == "auto" and man["alpha_grid"] == list(ALPHA_GRID)
    assert man["alpha_per_group"]["layers.1.mlp.gate"] == ALPHA_GRID[2]
    assert man["int8_output_error_per_group"]["layers.1.attn.o"] == pytest.approx(0.06)
    text = "\n".join(plan.summary())
    assert "α=auto" in text and "α layer 1:" in text and "mlp.gate=0.2" in text
    # a search is needed for every group, on the same grid
    with pytest.raises(ConfigError, match="no α search for 'layers.0.attn.q'"):
        plan_from_stats(spec, amax, colmax, alpha="auto", search={}, grid=ALPHA_GRID)
    with pytest.raises(ConfigError, match="grid of 3"):
        plan_from_stats(spec, amax, colmax, alpha="auto", search=search, grid=(0.1, 0.5, 0.9))


def test_max_error_parses_and_reads_back():
    r = KeepRule.parse("max_error=0.1;outlier_ratio=off")
    assert r.max_error == 0.1 and KeepRule.parse(r.describe()) == r
    assert math.isinf(KeepRule.parse("max_error=off").max_error)
    assert "max_error=0.04" in KeepRule().describe()
    with pytest.raises(ConfigError, match="max_error"):
        KeepRule.parse("max_error=-1")
    # a long rule text is not mistaken for a file name
    long = "keep=" + ",".join(f"layers.{i}.mlp.down" for i in range(40))
    assert len(KeepRule.parse(long).keep) == 40


def test_plan_w8a8_searches_alpha_by_default(llama_dir):
    """The default plan (α=auto) on the tiny Llama: every group's α is the argmin of its recorded
    search, on the builtin set (a uniform stride keeping ≤ SEARCH_TOKENS of its tokens); a fixed α
    is measured too (a grid of one) and every group carries it."""
    from ascend_adapt.quant.smoothquant import ALPHA_GRID, SEARCH_TOKENS, plan_w8a8
    from ascend_adapt.backends.torch.session import TorchBackend

    be = TorchBackend(llama_dir)
    plan = plan_w8a8(llama_dir, rule="edge_layers=0;outlier_ratio=off;max_error=off", backend=be)
    stride = -(-plan.tokens // SEARCH_TOKENS)
    assert plan.alpha == "auto" and plan.grid == ALPHA_GRID and plan.search_tokens == -(-plan.tokens // stride)
    for lp in plan.linears.values():
        assert lp.alpha == ALPHA_GRID[int(np.argmin(plan.search[lp.group[0]]))]
    fixed = plan_w8a8(llama_dir, alpha=0.5, rule="edge_layers=0;outlier_ratio=off;max_error=off", backend=be)
    assert fixed.grid == (0.5,) and {lp.alpha for lp in fixed.linears.values()} == {0.5}
    assert set(fixed.group_errors()) == set(plan.search)


def test_calibration_keeps_strided_inputs(llama_dir):
    """keep_inputs keeps the Linear's input rows on global token indices 0, stride, 2·stride, …
    (stride = ceil(tokens / max_kept_tokens)), with each row's prompt; they are the hook's input,
    whose max is the amax statistic."""
    from ascend_adapt.quant.calib import collect_act_stats
    from ascend_adapt.backends.torch.session import TorchBackend

    be = TorchBackend(llama_dir)
    prompts = [[1, 5, 9, 33, 7], [1, 40, 41, 2, 3, 100, 6]]
    full = collect_act_stats(be, prompts, keep_inputs=["layers.0.mlp.down"], max_kept_tokens=12)
    part = collect_act_stats(be, prompts, keep_inputs=["layers.0.mlp.down"], max_kept_tokens=5)
    assert full.kept_tokens == 12 and part.kept_tokens == 4  # stride 3: tokens 0, 3 | 6, 9
    np.testing.assert_array_equal(part.input_prompts, [0, 0, 1, 1])
    np.testing.assert_array_equal(part.inputs["layers.0.mlp.down"], full.inputs["layers.0.mlp.down"][[0, 3, 6, 9]])
    np.testing.assert_array_equal(np.abs(full.inputs["layers.0.mlp.down"]).max(0), full.amax["layers.0.mlp.down"])
    with pytest.raises(ConfigError, match="not a Linear"):
        collect_act_stats(be, prompts, keep_inputs=["layers.0.mlp.nope"])


# ---- --smooth-alpha on the CLI, and the host-memory check of the calibration -----------------------

@pytest.mark.parametrize("cmd", ["convert", "export", "port"])
@pytest.mark.parametrize("bad", ["1.5", "-0.1", "half", "nan"])
def test_cli_smooth_alpha_refuses_a_bad_value_naming_the_option(cmd, bad, tmp_path, capsys):
    from ascend_adapt.cli.main import main

    args = {"convert": ["convert", str(tmp_path), "--soc", "Ascend310P3", "-o", str(tmp_path / "o")],
            "export": ["export", str(tmp_path), "-o", str(tmp_path / "o")],
            "port": ["port", str(tmp_path), "--to", "mindspore", "-o", str(tmp_path / "o")]}[cmd]
    assert main(args + ["--quantize", "w8a8", "--smooth-alpha", bad]) == 2
    said = capsys.readouterr().err
    assert "--smooth-alpha" in said and "'auto'" in said and "[0, 1]" in said
    assert not (tmp_path / "o").exists()


def test_smooth_alpha_type_accepts_auto_and_numbers_in_range():
    from ascend_adapt.cli.options import SMOOTH_ALPHA

    assert SMOOTH_ALPHA.convert("auto", None, None) == "auto"
    assert SMOOTH_ALPHA.convert(" AUTO ", None, None) == "auto"
    assert SMOOTH_ALPHA.convert("0", None, None) == 0.0 and SMOOTH_ALPHA.convert("1", None, None) == 1.0
    assert SMOOTH_ALPHA.convert("0.85", None, None) == 0.85


def test_cli_smooth_alpha_auto_given_explicitly_reaches_the_option_checks(tmp_path, capsys):
    """`--smooth-alpha auto` parses (it was refused as not a float): without --quantize w8a8 the
    quantization checks then refuse it as a W8A8-only option."""
    from ascend_adapt.cli.main import main
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint

    src = make_tiny_checkpoint(tmp_path / "m", "llama")
    assert main(["export", str(src), "-o", str(tmp_path / "o"), "--quantize", "w8a16", "--smooth-alpha", "auto"]) == 2
    assert "apply to --quantize w8a8" in capsys.readouterr().err


def test_available_memory_reads_meminfo_and_the_cgroup_limit():
    from ascend_adapt.quant.smoothquant import available_memory

    meminfo = "MemTotal:       32000000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n"
    assert available_memory(meminfo) == 20000000 * 1024
    assert available_memory(meminfo, 16 * 2**30, 6 * 2**30) == 10 * 2**30  # the cgroup is tighter
    assert available_memory(meminfo, 64 * 2**30, 2**30) == 20000000 * 1024  # the host is tighter
    assert available_memory(meminfo, 2**63 - 4096, 2**30) == 20000000 * 1024  # cgroup v1 "unlimited"
    assert available_memory(None, 8 * 2**30, 9 * 2**30) == 0  # over its limit already
    assert available_memory("MemTotal: 1 kB\n") is None and available_memory(None) is None


LLAMA2_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "hidden_act": "silu", "max_position_embeddings": 4096,
             "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "vocab_size": 32000, "torch_dtype": "float16",
             "bos_token_id": 1, "eos_token_id": 2}


def test_calib_memory_of_llama2_7b_is_its_real_arithmetic():
    """Llama-2-7B (6 738 415 616 parameters): fp32 golden 4·P, held once while it loads too (the
    state dict is assigned to the module, not copied into it); 4096 calibration tokens at a search budget of 1024 keep
    every 4th token: 1024 × 32 layers × (4096 + 4096 + 4096 + 11008) in_features × 4 bytes."""
    from ascend_adapt.estimate.core import spec_for
    from ascend_adapt.quant.smoothquant import calib_memory

    spec = spec_for(LLAMA2_7B)[0]
    assert spec.param_count() == 6_738_415_616
    m = calib_memory(spec, 4096, 256, 1024, streamed=False)
    assert m.golden == 4 * 6_738_415_616 and m.load_peak == m.golden
    assert m.kept_tokens == 1024 and m.samples == 4 * 1024 * 32 * (3 * 4096 + 11008)
    # gate/up is the largest group: 2 copies of its 2·11008×4096 weight (W and W·s quantized in
    # place) + 4 outputs + 3 inputs of 1024 rows (search_temp_bytes)
    assert m.search_temp == 4 * (2 * 2 * 11008 * 4096 + 4 * 1024 * 2 * 11008 + 3 * 1024 * 4096)
    assert m.total == m.golden + m.activations + m.samples + m.search_temp  # 31.3 GB
    assert calib_memory(spec, 4096, 256, 1024, golden_loaded=True).total == m.activations + m.samples + m.search_temp
    assert calib_memory(spec, 100, 50, 1024, streamed=False).kept_tokens == 100  # fewer tokens than the budget


def test_plan_w8a8_refuses_a_7b_model_on_a_small_host_before_loading_weights(llama_dir, tmp_path):
    """A Llama-2-7B config.json with no weights at all (and the tiny model's tokenizer): the
    refusal comes from config.json and the tokenized calibration set, before any weight is read
    (else the missing weights would raise a CheckpointError). The figure is the layer-streamed
    one (the builtin set here is 1663 tokens of the tiny tokenizer, the longest prompt 130: 2.6 GB;
    the whole golden would need 30.6 GB): a 24 GB
    host passes the check and only then finds no weights, a 2 GB host is refused, and calibrating
    a whole golden (a backend given) is never the default."""
    import shutil

    from ascend_adapt.errors import CheckpointError, UnsupportedError
    from ascend_adapt.quant.smoothquant import plan_w8a8

    d = tmp_path / "llama-2-7b"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(LLAMA2_7B))
    for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(llama_dir / f, d / f)
    with pytest.raises(CheckpointError, match="no weights found"):
        plan_w8a8(d, memory_available=24e9)
    with pytest.raises(UnsupportedError) as e:
        plan_w8a8(d, memory_available=2e9)
    msg = str(e.value)
    assert str(d) in msg and "6.74 B params" in msg and "needs 2.6 GB" in msg and "2.0 GB available" in msg
    assert "one layer's fp32 weights (streamed) 809.5 MB" in msg and "embedding + hidden states" in msg
    assert "--quantize w8a16" in msg


def test_plan_w8a8_memory_check_on_a_tiny_model_that_fits(llama_dir):
    """The tiny model plans on this host (its figure read from /proc/meminfo and the cgroup), and
    is refused when one byte short of the estimate."""
    from ascend_adapt.errors import UnsupportedError
    from ascend_adapt.estimate.core import spec_for
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer
    from ascend_adapt.quant.calib import load_calib_texts, tokenize_calib
    from ascend_adapt.quant.smoothquant import calib_memory, host_memory, plan_w8a8

    ids = tokenize_calib(load_tokenizer(llama_dir), load_calib_texts("builtin"))
    need = calib_memory(spec_for(llama_dir)[0], sum(map(len, ids)), max(map(len, ids)))
    assert need.total < 50e6 and (host_memory() is None or host_memory() > need.total)
    plan = plan_w8a8(llama_dir, alpha=0.5)
    assert plan.linears
    with pytest.raises(UnsupportedError, match="W8A8 calibration of"):
        plan_w8a8(llama_dir, alpha=0.5, memory_available=need.total - 1)


@pytest.mark.parametrize("cmd", ["convert", "export", "msmodelslim", "port"])
def test_cli_refuses_a_calibration_that_does_not_fit_before_writing_anything(cmd, llama_dir, tmp_path, monkeypatch,
                                                                            capsys):
    from ascend_adapt.cli.main import main
    from ascend_adapt.quant import smoothquant

    monkeypatch.setattr(smoothquant, "host_memory", lambda: 1_000_000)  # a host with 1 MB free
    out = tmp_path / "out"
    args = {"convert": ["convert", str(llama_dir), "--soc", "Ascend310P3", "-o", str(out)],
            "export": ["export", str(llama_dir), "-o", str(out)],
            "msmodelslim": ["export", str(llama_dir), "-o", str(out), "--format", "msmodelslim"],
            "port": ["port", str(llama_dir), "--to", "mindspore", "-o", str(out), "--no-progress"]}[cmd]
    assert main(args + ["--quantize", "w8a8", "--smooth-alpha", "auto"]) == 2
    said = capsys.readouterr().err
    assert "W8A8 calibration of" in said and "1.0 MB available" in said and "--quantize w8a16" in said, said
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


# ---- layer-streamed calibration (issue #14) -----------------------------------------------------------

def _assert_same_plan(a, b):
    assert a.tokens == b.tokens and a.prompts == b.prompts and a.search_tokens == b.search_tokens
    assert list(a.linears) == list(b.linears) and a.kept == b.kept
    assert sorted(a.search) == sorted(b.search)
    for k in a.search:
        np.testing.assert_array_equal(a.search[k], b.search[k], err_msg=k)
    for n, x in a.linears.items():
        y = b.linears[n]
        np.testing.assert_array_equal(x.amax, y.amax, err_msg=n)
        np.testing.assert_array_equal(x.smooth, y.smooth, err_msg=n)
        assert x.act_scale == y.act_scale and x.alpha == y.alpha and x.fold == y.fold, n


@pytest.mark.parametrize("arch,rule", [("llama", "lm_head=false"), ("qwen2", None), ("chatglm", None),
                                       ("chatglm2", "edge_layers=0")])
def test_layer_streamed_plan_equals_the_whole_golden_plan(arch, rule, tmp_path):
    """The default (layer-streamed) calibration gives the plan of the whole fp32 golden bit for
    bit: every layer is the golden's own module class with the same fp32 weights, called with the
    embeddings / mask / rotary / positions the whole model passes it, so every hooked input, amax,
    kept sample and α-search error is the same float32 arithmetic (tolerance 0). Llama runs with a
    quantized head (the head stage builds the head and searches its α); the others keep it fp16
    (only its input's amax is taken)."""
    pytest.importorskip("transformers")
    from ascend_adapt.backends.torch.session import TorchBackend
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint
    from ascend_adapt.quant.smoothquant import plan_w8a8

    d = make_tiny_checkpoint(tmp_path / arch, arch)
    whole = plan_w8a8(d, rule=rule, backend=TorchBackend(d), memory_available=math.inf)
    streamed = plan_w8a8(d, rule=rule, memory_available=math.inf)
    _assert_same_plan(whole, streamed)
    assert whole.linears and whole.search
    assert ("lm_head" in streamed.linears) == (rule == "lm_head=false")


def test_layer_streamed_stats_are_the_whole_golden_hooks_per_layer(llama_dir):
    """`stream_act_stats` against `collect_act_stats` on the same prompts: every Linear's amax and
    every kept input row equal (the same stride over the same global token indices)."""
    from ascend_adapt.backends.torch.session import TorchBackend, reference_module
    from ascend_adapt.quant.calib import CanonicalSource, collect_act_stats, linear_names, stream_act_stats

    prompts = [[1, 5, 9, 33, 7], [1, 40, 41, 2, 3, 100, 6], [1, 3, 4]]
    keep = ["layers.0.attn.q", "layers.1.mlp.down", "lm_head"]
    whole = collect_act_stats(TorchBackend(llama_dir), prompts, keep_inputs=keep, max_kept_tokens=6)
    src = CanonicalSource(llama_dir)
    seen = {}
    streamed = stream_act_stats(reference_module("llama").calib_stages(src.spec, src), src.spec, prompts,
                                keep_inputs=keep, max_kept_tokens=6, head=True,
                                on_stage=lambda st: seen.update({k: (v, st.input_prompts) for k, v in st.inputs.items()}))
    assert streamed.kept_tokens == whole.kept_tokens == 5 and streamed.tokens == 15  # stride ⌈15 / 6⌉ = 3
    for n in linear_names(src.spec):
        np.testing.assert_array_equal(streamed.amax[n], whole.amax[n], err_msg=n)
    for n in keep:
        np.testing.assert_array_equal(seen[n][0], whole.inputs[n], err_msg=n)
        np.testing.assert_array_equal(seen[n][1], whole.input_prompts)


def test_calib_memory_of_llama2_7b_streamed_fits_a_24gb_host():
    """Llama-2-7B streamed (4096 tokens, longest prompt 256, 1024 kept): one decoder layer's fp32
    weights 4·(4·4096² + 3·4096·11008 + 2·4096) = 809.5 MB (1.62 GB while built from its source
    arrays); held throughout the fp32 embedding 4·32000·4096 = 524.3 MB, the hidden states twice
    (2·4·4096·4096 = 134.2 MB) and the layer arguments 4·(256·4096 + 2·4096·128) = 8.4 MB; one
    layer's α-search samples 4·1024·(3·4096 + 11008) = 95.4 MB; the gate/up search temporaries
    as in the whole figure (1.13 GB): ≈ 2.8 GB against the whole golden's 31.3 GB."""
    from ascend_adapt.estimate.core import spec_for
    from ascend_adapt.quant.smoothquant import calib_memory

    spec = spec_for(LLAMA2_7B)[0]
    m = calib_memory(spec, 4096, 256, 1024)
    layer = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096
    assert m.streamed and m.golden == 4 * layer == 809_533_440 and m.load_peak == 2 * m.golden
    assert m.resident == 4 * (32000 * 4096 + 2 * 4096 * 4096 + 256 * 4096 + 2 * 4096 * 128)
    assert m.samples == 4 * 1024 * (3 * 4096 + 11008)
    assert m.search_temp == calib_memory(spec, 4096, 256, 1024, streamed=False).search_temp
    assert m.activations == 4 * (256 * (4 * 4096 + 3 * 4096 + 3 * 11008) + 2 * 32 * 256 * 256)
    assert m.total == m.resident + m.golden + m.activations + m.samples + m.search_temp
    assert 2.7e9 < m.total < 2.9e9 and m.total < calib_memory(spec, 4096, 256, 1024, streamed=False).total / 9
    # a quantized (untied) head: its stage holds its 32000×4096 fp32 weight and the logits
    h = calib_memory(spec, 4096, 256, 1024, quantized_head=True)
    assert h.golden == m.golden and h.samples == m.samples  # 32000·4096 < one layer's parameters
    assert h.activations == m.activations + 4 * 256 * 32000  # the head's logits


class _Tok:
    """A tokenizer that ends every prompt with a fixed suffix, as ChatGLM-6B's writes [gMASK] <sop>."""

    def __init__(self, suffix):
        self.suffix = list(suffix)

    def encode(self, text):
        return [ord(c) for c in text] + self.suffix


def test_tokenize_calib_cuts_the_body_and_keeps_the_prompt_suffix():
    from ascend_adapt.quant.calib import tokenize_calib

    tok = _Tok([901, 902])
    texts = ["abcdefgh", "ijklmnop", "qrstuvwx"]
    got = tokenize_calib(tok, texts, max_tokens=11, max_seq_len=6, suffix=[901, 902])
    # 6 per prompt at most (4 of body + the suffix), 11 in all: the third has 1 place, too few for the suffix
    assert got == [[97, 98, 99, 100, 901, 902], [105, 106, 107, 901, 902]]
    # without a suffix the tail is cut, as before
    assert tokenize_calib(tok, texts, max_tokens=11, max_seq_len=6) == [[97, 98, 99, 100, 101, 102],
                                                                        [105, 106, 107, 108, 109]]


def test_a_chatglm_calibration_cut_short_still_ends_its_prompts_with_gmask_sop(tmp_path):
    """ChatGLM-6B's golden refuses a prompt without [gMASK] <sop>: a token budget that cuts the
    calibration prompts must keep them (it used to cut them away: "has no <sop>")."""
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint
    from ascend_adapt.quant.smoothquant import plan_w8a8

    d = make_tiny_checkpoint(tmp_path / "glm", "chatglm")
    plan = plan_w8a8(d, alpha=0.5, max_tokens=100, max_seq_len=24)
    assert plan.tokens <= 100 and plan.linears


class _LiveTorchBytes:
    """Peak bytes of the tensors torch makes inside a block (every aten op's outputs, each storage
    once, freed when its last tensor goes: CPython frees them deterministically, by refcount)."""

    def __init__(self):
        self.live = self.peak = 0
        self._owners: dict[int, list] = {}  # storage pointer → [bytes, live tensors on it]
        self.foreign: set[int] = set()

    def __enter__(self):
        import weakref

        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        track = self

        def gone(ptr):
            slot = track._owners[ptr]
            slot[1] -= 1
            if slot[1] == 0:
                track.live -= slot[0]
                del track._owners[ptr]

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in (out if isinstance(out, (tuple, list)) else (out,)):
                    if not hasattr(t, "untyped_storage"):
                        continue
                    st = t.untyped_storage()
                    ptr = st.data_ptr()
                    if func is torch.ops.aten.lift_fresh.default or ptr in track.foreign:
                        track.foreign.add(ptr)  # torch.from_numpy: the caller's memory, and its views
                        continue
                    slot = track._owners.setdefault(ptr, [0, 0])
                    if slot[1] == 0:  # a new storage (in-place ops and views return an old one)
                        slot[0] = st.nbytes()
                        track.live += slot[0]
                        track.peak = max(track.peak, track.live)
                    slot[1] += 1
                    weakref.finalize(t, gone, ptr)
                return out

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


@pytest.mark.parametrize("folds", ["parity", "in-sample"])
def test_the_alpha_search_holds_what_calib_memory_counts(folds):
    """The α search of one input group holds at most `search_temp_bytes` (the term of
    `calib_memory`): its stacked W (a numpy array, 4·out·in), one copy of W·s quantized in place
    (4·out·in), the outputs and the quantized inputs. Counted on every tensor torch makes inside
    `alpha_errors` (a dispatch mode; not RSS, not timed). Out-of-place, W·s, W·s/step, its
    rounding and the previous grid point's int8 image were alive at once: 4 weight copies beside W,
    1.9 × this bound at this shape (out·in dominant: 512·256 against 32 rows)."""
    from ascend_adapt.quant.smoothquant import ALPHA_GRID, alpha_errors, search_temp_bytes

    rng = np.random.default_rng(5)
    T, o, i = 32, 512, 256
    x = (rng.standard_normal((T, i)) * rng.lognormal(0, 1, i)).astype(np.float32)
    w = (rng.standard_normal((o, i)) * 0.02).astype(np.float32)
    f = np.arange(T) % 2 if folds == "parity" else None
    with _LiveTorchBytes() as live:
        alpha_errors(x, w, np.abs(w).max(0), f, ALPHA_GRID)
    assert live.live == 0  # every tensor it made is freed on return
    held = w.nbytes + live.peak
    assert held <= search_temp_bytes(o, i, T), (held, search_temp_bytes(o, i, T))
    # the two weight-sized tensors are there: the bound is not loose by a weight
    assert held > 2 * w.nbytes
