"""ChatGLM-6B torch reference: fp16 rotary table, the documented block math, cache vs recompute."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import forced_decode_logits, full_recompute_logits, left_pad, tiny_prompts  # noqa: E402
from tolerances import U_FP32, fp16_rel, fp32_atol  # noqa: E402

from ascend_adapt.model_zoo.base import ADAPTERS  # noqa: E402
from ascend_adapt.model_zoo.chatglm.torch_model import ChatGLMForCausalLM  # noqa: E402
from ascend_adapt.model_zoo.tiny import random_canonical_weights, tiny_config  # noqa: E402
from ascend_adapt.operators.rotary import rotary_table  # noqa: E402
from ascend_adapt.runtime.generate import greedy_tokens  # noqa: E402
from ascend_adapt.runtime.lm_inputs import prefill_inputs  # noqa: E402


def _spec():
    return ADAPTERS.get("chatglm").spec_from_config(tiny_config("chatglm"))


# ---- rotary table (§1.5) --------------------------------------------------------------------------

def _original_table(rows: int, dim: int, model_dtype):
    """The original `RotaryEmbedding(dim, base=10000, precision=torch.half)`, step by step from the
    reference notes (§1.5), in the original's op order and dtypes, for a model in `model_dtype`:

    1. inv_freq = 1 / 10000^(arange(0, dim, 2).float() / dim), in fp32;
    2. `.half()`: stored as an fp16 buffer;
    3. the model's `.half()` / `.float()` casts that buffer: fp16 stays, fp32 keeps the fp16-rounded
       values in fp32;
    4. t = arange(rows, dtype=inv_freq.dtype); freqs = einsum("i,j->ij", t, inv_freq) in that dtype;
    5. emb = cat(freqs, freqs); cos/sin of emb in that dtype.

    cos/sin are returned correctly rounded to fp32 (float64, rounded once; an fp16 table then
    rounds that to fp16 as torch's half kernels do) and as torch's CPU kernels give them
    (faithful: within 1 ulp, which entries differ depends on torch's SIMD path).
    """
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    inv_freq = inv_freq.half()
    inv_freq = inv_freq.to(model_dtype)
    t = torch.arange(rows, dtype=inv_freq.dtype)
    freqs = torch.einsum("i,j->ij", t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    # correctly rounded fp32 cos/sin (torch's double → float conversion rounds once), then the
    # model dtype: torch's half kernels compute in fp32 and round the result to fp16
    exact = (emb.double().cos().float().to(model_dtype), emb.double().sin().float().to(model_dtype))
    return exact, (emb.cos(), emb.sin())


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_rotary_table_is_the_originals_for_the_compute_dtype(dtype):
    rows, dim = 2049, 64
    tdt = getattr(torch, dtype)
    (cos_x, sin_x), (cos_t, sin_t) = _original_table(rows, dim, tdt)
    cos, sin = rotary_table(rows, dim, 10000.0, "glm2d", "float16", compute_dtype=dtype)
    assert cos.dtype == np.dtype(dtype) and cos.shape == (rows, dim)
    # bit-exact: same angles (any 1-ulp angle difference shows in cos or sin), same rounding
    assert np.array_equal(cos, cos_x.numpy()) and np.array_equal(sin, sin_x.numpy())
    # and torch's own cos/sin of the original's angles are within one ulp of it
    for ours, theirs in ((cos, cos_t.numpy()), (sin, sin_t.numpy())):
        ulp = np.spacing(np.abs(ours)).astype(np.float64)
        assert (np.abs(ours.astype(np.float64) - theirs.astype(np.float64)) <= ulp).all()
    # every model path builds exactly this table for the compute dtype
    spec = _spec()
    model = ChatGLMForCausalLM(spec, dtype)
    want = rotary_table(spec.max_position + 1, spec.rotary_dim, 10000.0, "glm2d", "float16", compute_dtype=dtype)
    assert model.cos.dtype == tdt
    assert np.array_equal(model.cos.numpy(), want[0]) and np.array_equal(model.sin.numpy(), want[1])


def test_fp32_table_is_not_the_fp16_table_cast():
    """The fp32 original computes its angles in fp32: at large positions it is far from the fp16
    table (which an fp32 port used to cast), at small ones close."""
    c32, _ = rotary_table(2048, 64, 10000.0, "glm2d", "float16", compute_dtype="float32")
    c16, _ = rotary_table(2048, 64, 10000.0, "glm2d", "float16", compute_dtype="float16")
    d = np.abs(c32 - c16.astype(np.float32))
    assert d[:8].max() < 2e-3 and d.max() > 0.3
    # fp32 angles from the fp16-rounded inv_freq: t·inv16 in fp32, not t·inv_freq in fp32
    inv16 = (1.0 / 10000 ** (np.arange(0, 64, 2) / 64)).astype(np.float16).astype(np.float64)
    assert c32[2040, 2] == np.float32(np.cos(np.float32(2040 * inv16[2])))


def test_fp16_rotary_table_pinned_at_large_positions():
    cos, sin = rotary_table(2048, 64, 10000.0, "glm2d", "float16")
    assert cos.dtype == np.float16 and cos.shape == (2048, 64)
    # exact fp16 values of the trained table (fp16 angles, as the original in fp16 / MindFormers)
    pins = {(2040, 2): (-0.2495, -0.9683), (2047, 0): (0.2498, -0.9683), (1000, 5): (-0.0652, -0.998),
            (100, 1): (0.922, -0.3877)}
    for (p, k), (c, s) in pins.items():
        assert cos[p, k] == np.float16(c) and sin[p, k] == np.float16(s), (p, k)
        assert cos[p, k + 32] == cos[p, k]  # emb = cat(freqs, freqs)
    # the same entry from exact angles is far away: the fp16 angle of 2040·inv_freq[2] is off by ~0.5 rad
    inv = 1.0 / 10000 ** (np.arange(0, 64, 2) / 64)
    exact = np.cos(np.outer(np.arange(2048), inv))
    assert abs(np.cos(2040 * inv[2]) - (-0.87997592)) < 1e-7  # float64 cos: u64-exact, 1e-7 is its 7 printed digits
    assert abs(float(cos[2040, 2]) - exact[2040, 2]) > 0.6
    worst = np.abs(cos[:, :32].astype(np.float64) - exact).max()
    assert 0.75 < worst < 0.8  # §1.5: "cos values by up to 0.78"


# ---- the documented math, by hand in numpy ------------------------------------------------------

def _np_layernorm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _np_rotate(x, pos, cos, sin):
    """x [S, heads, half]; NeoX rotate_half inside the half."""
    c, s = cos[pos][:, None, :], sin[pos][:, None, :]
    h = x.shape[-1] // 2
    rot = np.concatenate([-x[..., h:], x[..., :h]], -1)
    return x * c + rot * s


def test_single_layer_matches_handwritten_numpy():
    """Layer 1 (coeff 2) of the tiny model: α·LN(x) residuals, q/(√d·coeff), −10000 fill, fp32
    softmax of scores·coeff, tanh GELU — written out from reference §1.3–1.6."""
    spec = _spec()
    assert spec.residual_alpha == pytest.approx(math.sqrt(56))  # 2-layer config: still √(2·28) (§1.12)
    w = random_canonical_weights(spec, seed=3)
    model = ChatGLMForCausalLM(spec, "float32").load_canonical(w.items())
    layer_id = 1
    g = {k.split(f"layers.{layer_id}.")[1]: v.astype(np.float64) for k, v in w.items()
         if k.startswith(f"layers.{layer_id}.")}
    S, H, nh, D = 6, spec.hidden_size, spec.num_heads, spec.head_dim
    rng = np.random.default_rng(0)
    x = rng.standard_normal((S, H))
    ids = np.array([11, 12, 13, spec.gmask_token_id, spec.bos_token_id, 20])
    step, _ = prefill_inputs(spec, ids[None], None, S)
    pos, blk = step.positions[0]
    assert pos.tolist() == [0, 1, 2, 3, 3, 3] and blk.tolist() == [0, 0, 0, 0, 1, 2]
    vis = step.visible[0]
    cos, sin = (t.astype(np.float64) for t in rotary_table(spec.max_position + 1, spec.rotary_dim, 10000.0, "glm2d",
                                                           "float16", compute_dtype="float32"))

    alpha, coeff, eps = math.sqrt(56), float(layer_id + 1), spec.norm_eps
    a = _np_layernorm(x, g["attn_norm.weight"], g["attn_norm.bias"], eps)
    q = (a @ g["attn.q.weight"].T + g["attn.q.bias"]).reshape(S, nh, D)
    k = (a @ g["attn.k.weight"].T + g["attn.k.bias"]).reshape(S, nh, D)
    v = (a @ g["attn.v.weight"].T + g["attn.v.bias"]).reshape(S, nh, D)
    half = D // 2
    q = np.concatenate([_np_rotate(q[..., :half], pos, cos, sin), _np_rotate(q[..., half:], blk, cos, sin)], -1)
    k = np.concatenate([_np_rotate(k[..., :half], pos, cos, sin), _np_rotate(k[..., half:], blk, cos, sin)], -1)
    q = q / (math.sqrt(D) * coeff)
    scores = np.einsum("shd,thd->hst", q, k)
    scores = np.where(vis[None], scores, -10000.0) * coeff
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ctx = np.einsum("hst,thd->shd", p, v).reshape(S, nh * D)
    h = alpha * a + (ctx @ g["attn.o.weight"].T + g["attn.o.bias"])
    m = _np_layernorm(h, g["mlp_norm.weight"], g["mlp_norm.bias"], eps)
    u = m @ g["mlp.up.weight"].T + g["mlp.up.bias"]
    u = 0.5 * u * (1 + np.tanh(0.7978845608028654 * u * (1 + 0.044715 * u * u)))
    expected = alpha * m + (u @ g["mlp.down.weight"].T + g["mlp.down.bias"])

    got = model.layers[layer_id](torch.from_numpy(x[None].astype(np.float32)),
                                 torch.from_numpy(step.positions), torch.from_numpy(step.visible),
                                 model.cos, model.sin)[0].detach().numpy()
    # one layer in fp32 (torch) vs float64 (numpy): 2·u·Σn·max|out| over that layer's accumulations
    # (tests/tolerances.py) ≈ 7e-5·max|out|; a wrong α, coeff, fill or rotary half is O(1e-1) or more
    np.testing.assert_allclose(got, expected, rtol=0,
                               atol=fp32_atol(spec, np.abs(expected).max(), keys=S, layers=1, head=False))


def test_tied_head_and_embedding_take_lm_head_weight():
    spec = _spec()
    w = random_canonical_weights(spec, seed=1)
    w["embed.weight"] = np.zeros_like(w["embed.weight"])  # a checkpoint whose two copies differ
    model = ChatGLMForCausalLM(spec).load_canonical(w.items())
    assert np.array_equal(model.embed.weight.detach().numpy(), w["lm_head.weight"])
    assert np.array_equal(model.lm_head.weight.detach().numpy(), w["lm_head.weight"])


# ---- serving through the static cache ------------------------------------------------------------

def test_cached_decoding_equals_full_recompute_32_steps(tiny_backend):
    be = tiny_backend("chatglm")
    ids, mask = left_pad(tiny_prompts(be.spec), be.spec.pad_token_id)
    forced = np.random.default_rng(0).integers(10, 300, (2, 32))
    cached = forced_decode_logits(be, ids, mask, forced)
    full = full_recompute_logits(be, ids, mask, forced)
    assert cached.shape == full.shape == (2, 33, be.spec.vocab_size)
    err = np.abs(cached - full).max()
    # same fp32 math over a static cache vs one pass: 2·u·Σn·max|logits| (tests/tolerances.py),
    # ≈ 1e-3 here (logits ~7), measured ~1e-6; a stale or misplaced cache slot is O(1)
    tol = fp32_atol(be.spec, np.abs(full).max(), keys=cached.shape[1] + ids.shape[1])
    assert err <= tol, f"cache vs recompute: max |Δ| = {err:.2e} over 32 steps (tolerance {tol:.2e})"
    # greedy decoding through the session agrees with recompute too
    toks, logits = greedy_tokens(be, ids, 8, mask, return_logits=True)
    assert np.abs(logits - full_recompute_logits(be, ids, mask, toks[:, :-1])).max() <= tol


def test_left_padded_batch_gives_the_same_tokens_as_each_prompt_alone(tiny_backend):
    be = tiny_backend("chatglm")
    prompts = tiny_prompts(be.spec)
    ids, mask = left_pad(prompts, be.spec.pad_token_id)
    forced = np.random.default_rng(1).integers(10, 300, (2, 12))
    batch = forced_decode_logits(be, ids, mask, forced)
    for b, p in enumerate(prompts):
        alone = forced_decode_logits(be, np.array([p]), None, forced[b:b + 1])
        assert batch[b].argmax(-1).tolist() == alone[0].argmax(-1).tolist()
        # the padded row sums attention over more (masked) keys: fp32 bound (tests/tolerances.py);
        # a visible pad or a shifted 2-D position moves logits by O(1e-1) or more
        tol = fp32_atol(be.spec, np.abs(alone).max(), keys=batch.shape[1] + ids.shape[1])
        assert np.abs(batch[b] - alone[0]).max() <= tol
    # greedy, on the untied variant (a random tied ChatGLM just repeats its input token)
    be = tiny_backend("chatglm", untied=True)
    greedy = greedy_tokens(be, ids, 12, mask)
    assert len(set(greedy[1].tolist())) > 3
    for b, p in enumerate(prompts):
        assert greedy[b].tolist() == greedy_tokens(be, np.array([p]), 12)[0].tolist()


def test_layer_outputs_and_fp16_compute(tiny_backend):
    be32 = tiny_backend("chatglm")
    ids = np.array(tiny_prompts(be32.spec)[:1])
    logits, outs = be32.full_logits(ids, layer_outputs=True)
    L = be32.spec.num_layers
    assert list(outs) == ["embed"] + [f"layers.{i}" for i in range(L)] + ["final_norm", "logits"]
    assert np.array_equal(outs["logits"], logits)
    # one matmul of length H, numpy vs torch: 2·u·H·max|logits| (tests/tolerances.py)
    np.testing.assert_allclose(outs["final_norm"] @ be32.model.lm_head.weight.detach().numpy().T, logits,
                               atol=2 * U_FP32 * be32.spec.hidden_size * np.abs(logits).max())
    be16 = tiny_backend("chatglm", "float16")
    assert be16.model.dtype == torch.float16
    l16 = be16.full_logits(ids)
    assert np.isfinite(l16).all()
    # fp16 weights, activations and (as the original in fp16) rotary angles: relative
    # 2^-11·(18·L + 4) + 2·P·2^-11 (tests/tolerances.py), ≈ 0.03 here; measured 5e-4
    assert np.abs(l16 - logits).max() <= fp16_rel(be16.spec, rotary_positions=ids.shape[1]) * np.abs(logits).max()
    assert (l16[0, -1].argmax() == logits[0, -1].argmax())
