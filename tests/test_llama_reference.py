"""Llama-2 golden: transformers' LlamaForCausalLM fed through the adapter; cache vs recompute."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import forced_decode_logits, full_recompute_logits, left_pad, tiny_prompts  # noqa: E402

from ascend_adapt.runtime.generate import greedy_tokens  # noqa: E402
from ascend_adapt.runtime.torch_backend import TorchBackend  # noqa: E402


def _hf_logits(model_dir, ids, mask=None, dtype=torch.float32):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=dtype).eval()
    with torch.no_grad():
        kw = {} if mask is None else {"attention_mask": torch.from_numpy(mask)}
        return model(input_ids=torch.from_numpy(ids), **kw).logits.float().numpy()


def test_adapter_path_reproduces_transformers_bit_exactly(tiny_dir):
    d = tiny_dir("llama")
    ours = TorchBackend(d)
    assert ours.spec.num_kv_heads < ours.spec.num_heads  # the tiny model uses GQA
    ids = np.array([tiny_prompts(ours.spec)[0]])
    expected = _hf_logits(d, ids)
    assert np.array_equal(ours.full_logits(ids), expected)


def test_meta_layout_reproduces_transformers_bit_exactly(tiny_dir):
    """Meta's consolidated shards (interleaved-pair wq/wk, split across 2 files) → the same logits."""
    ours = TorchBackend(tiny_dir("llama", "meta"))
    ids = np.array([tiny_prompts(ours.spec)[0]])
    assert np.array_equal(ours.full_logits(ids), _hf_logits(tiny_dir("llama"), ids))


def test_left_padded_full_logits_match_transformers(tiny_dir):
    d = tiny_dir("llama")
    ours = TorchBackend(d)
    ids, mask = left_pad(tiny_prompts(ours.spec), 0)
    got = ours.full_logits(ids, mask)
    # transformers computes position_ids from the mask itself in generate(); here we pass none,
    # so compare only the unpadded row, and the padded row's real positions against it alone
    ref = _hf_logits(d, ids[:1], mask[:1])
    assert np.array_equal(got[0], ref[0])
    n = int(mask[1].sum())
    alone = _hf_logits(d, ids[1:, -n:])
    np.testing.assert_allclose(got[1, -n:], alone[0], rtol=0, atol=1e-5)


def test_cached_decoding_equals_full_recompute_32_steps(tiny_backend):
    be = tiny_backend("llama")
    ids, mask = left_pad(tiny_prompts(be.spec), 0)
    forced = np.random.default_rng(0).integers(3, 300, (2, 32))
    cached = forced_decode_logits(be, ids, mask, forced)
    full = full_recompute_logits(be, ids, mask, forced)
    assert cached.shape == full.shape == (2, 33, be.spec.vocab_size)
    err = np.abs(cached - full).max()
    assert err <= 1e-5, f"cache vs recompute: max |Δ| = {err:.2e} over 32 steps (tolerance 1e-5)"
    toks, logits = greedy_tokens(be, ids, 32, mask, return_logits=True)
    assert np.abs(logits - full_recompute_logits(be, ids, mask, toks[:, :-1])).max() <= 1e-5


def test_left_padded_batch_gives_the_same_tokens_as_each_prompt_alone(tiny_backend):
    be = tiny_backend("llama")
    prompts = tiny_prompts(be.spec)
    ids, mask = left_pad(prompts, 0)
    batch = greedy_tokens(be, ids, 16, mask)
    assert len(set(batch[0].tolist())) > 3
    for b, p in enumerate(prompts):
        assert batch[b].tolist() == greedy_tokens(be, np.array([p]), 16)[0].tolist()


def test_layer_outputs(tiny_backend):
    be = tiny_backend("llama")
    ids = np.array(tiny_prompts(be.spec)[:1])
    logits, outs = be.full_logits(ids, layer_outputs=True)
    L = be.spec.num_layers
    assert list(outs) == ["embed"] + [f"layers.{i}" for i in range(L)] + ["final_norm", "logits"]
    assert all(outs[f"layers.{i}"].shape == (1, ids.shape[1], be.spec.hidden_size) for i in range(L))
    assert np.array_equal(outs["logits"], logits)
    head = be.model.lm_head.weight.detach().numpy()
    np.testing.assert_allclose(outs["final_norm"] @ head.T, logits, atol=1e-5)
    # the last layer's output, RMS-normed with the final weight, is the final norm's output
    x = outs[f"layers.{L - 1}"].astype(np.float64)
    normed = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + be.spec.norm_eps)
    normed *= be.model.model.norm.weight.detach().numpy()
    np.testing.assert_allclose(normed, outs["final_norm"], atol=1e-5)


def test_fp16_compute_matches_transformers_fp16(tiny_dir):
    d = tiny_dir("llama", unit_head=True)
    be16 = TorchBackend(d, dtype="float16")
    assert next(be16.model.parameters()).dtype == torch.float16
    assert be16.model.model.rotary_emb.inv_freq.dtype == torch.float32  # as from_pretrained keeps it
    ids = np.array(tiny_prompts(be16.spec)[:1])
    l16 = be16.full_logits(ids)
    assert l16.dtype == np.float32 and np.isfinite(l16).all()
    assert np.array_equal(l16, _hf_logits(d, ids, dtype=torch.float16))
    l32 = TorchBackend(d).full_logits(ids)
    assert np.abs(l16 - l32).max() < 0.05 * np.abs(l32).max()


def test_backend_from_in_memory_canonical_weights(tiny_dir):
    from ascend_adapt.checkpoint import open_checkpoint

    on_disk = TorchBackend(tiny_dir("llama"))
    canon = dict(on_disk.adapter.iter_canonical(open_checkpoint(tiny_dir("llama")), on_disk.spec))
    in_mem = TorchBackend.from_canonical(on_disk.spec, canon)
    ids = np.array(tiny_prompts(on_disk.spec)[:1])
    assert np.array_equal(in_mem.full_logits(ids), on_disk.full_logits(ids))
