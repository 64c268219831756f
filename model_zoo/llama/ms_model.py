"""Llama-2 (GQA included) as a MindSpore `nn.Cell`, built from a `ModelSpec` and canonical weights.

Numerics follow transformers' `LlamaForCausalLM` (reference model_architectures.md §3.4):
RMSNorm in fp32 then cast, then × weight; rotary cos/sin computed in fp32 and cast to the
compute dtype; rotate_half (half-split) over the whole head; q·kᵀ·(1/√D) in the compute dtype,
fp32 softmax; SwiGLU MLP down(silu(gate(x))·up(x)).

One step of the model maps (input_ids [B, S], positions [B, S], mask [B, S, M+S], the per-layer
caches before this step) to (logits [B, S, V], per-layer K/V of this step [B, kv_heads, S, D]).
Parameter names are the canonical names (`embed.weight`, `layers.{i}.attn.q.weight`, …).
"""

from __future__ import annotations

from mindspore import nn, ops

from ..ms_layers import (layer_outputs, Embedding, Linear, RMSNorm, apply_rotary, cached_attention, compute_dtype,
                         default_score_scale, gather_rotary, model_rotary_table, split_heads)
from ascend_adapt.spec import ModelSpec


class LlamaAttention(nn.Cell):
    def __init__(self, spec: ModelSpec, dtype):
        super().__init__()
        H = spec.hidden_size
        self.heads, self.kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.q = Linear(H, spec.q_dim, False, dtype)
        self.k = Linear(H, spec.kv_dim, False, dtype)
        self.v = Linear(H, spec.kv_dim, False, dtype)
        self.o = Linear(spec.q_dim, H, False, dtype)
        self.scale = default_score_scale(spec.head_dim)
        self.fill = float(spec.mask_fill)

    def construct(self, x, cos, sin, mask, k_cache, v_cache):
        q = apply_rotary(split_heads(self.q(x), self.heads, self.head_dim), cos, sin)
        k = apply_rotary(split_heads(self.k(x), self.kv_heads, self.head_dim), cos, sin)
        v = split_heads(self.v(x), self.kv_heads, self.head_dim)
        ctx = cached_attention(q, k, v, k_cache, v_cache, mask, score_scale=self.scale, fill=self.fill)
        return self.o(ctx), k, v


class LlamaMLP(nn.Cell):
    def __init__(self, spec: ModelSpec, dtype):
        super().__init__()
        self.gate = Linear(spec.hidden_size, spec.intermediate_size, False, dtype)
        self.up = Linear(spec.hidden_size, spec.intermediate_size, False, dtype)
        self.down = Linear(spec.intermediate_size, spec.hidden_size, False, dtype)

    def construct(self, x):
        return self.down(ops.silu(self.gate(x)) * self.up(x))


class LlamaDecoderLayer(nn.Cell):
    """Pre-norm block: h = x + attn(norm(x)); out = h + mlp(norm(h))."""

    def __init__(self, spec: ModelSpec, dtype):
        super().__init__()
        self.attn_norm = RMSNorm(spec.hidden_size, spec.norm_eps, dtype)
        self.attn = LlamaAttention(spec, dtype)
        self.mlp_norm = RMSNorm(spec.hidden_size, spec.norm_eps, dtype)
        self.mlp = LlamaMLP(spec, dtype)

    def construct(self, x, cos, sin, mask, k_cache, v_cache):
        a, k, v = self.attn(self.attn_norm(x), cos, sin, mask, k_cache, v_cache)
        h = x + a
        return h + self.mlp(self.mlp_norm(h)), k, v


class LlamaForCausalLM(nn.Cell):
    """Llama-2 decoder with canonical parameter names.

    Args:
        spec: the model (`LlamaAdapter.spec_from_config`).
        dtype: compute dtype name, "float32" or "float16".
        num_positions: rows of the rotary table (default `spec.max_position`).
    """

    def __init__(self, spec: ModelSpec, dtype: str = "float32", num_positions: int | None = None):
        super().__init__()
        self.spec = spec
        self.compute_dtype = compute_dtype(dtype)
        dt = self.compute_dtype
        self.embed = Embedding(spec.vocab_size, spec.hidden_size, dt)
        self.layers = nn.CellList([LlamaDecoderLayer(spec, dt) for _ in range(spec.num_layers)])
        self.final_norm = RMSNorm(spec.hidden_size, spec.norm_eps, dt)
        self.lm_head = Linear(spec.hidden_size, spec.vocab_size, False, dt)
        # fp32 table cast to the compute dtype, as HF does
        self.cos, self.sin = model_rotary_table(spec, num_positions or spec.max_position, dtype)

    def rotary(self, positions):
        return gather_rotary(self.cos, positions), gather_rotary(self.sin, positions)

    def construct(self, input_ids, positions, mask, k_caches, v_caches):
        """One step.

        Args:
            input_ids: [B, S] int32.
            positions: [B, S] int32.
            mask: [B, S, M+S] bool, True = visible (cache slots, then this step's tokens).
            k_caches, v_caches: indexable by layer, each [M, B, kv_heads, D] (before this step).

        Returns:
            (logits [B, S, V] in the compute dtype, tuple of K [B, kv_heads, S, D] per layer,
            tuple of V per layer).
        """
        cos, sin = self.rotary(positions)
        x = self.embed(input_ids)
        ks, vs = (), ()
        for i in range(len(self.layers)):
            x, k, v = self.layers[i](x, cos, sin, mask, k_caches[i], v_caches[i])
            ks += (k,)
            vs += (v,)
        return self.lm_head(self.final_norm(x)), ks, vs

    def layer_outputs(self, input_ids, positions, mask, k_caches, v_caches) -> dict:
        """PyNative walk of `construct` that keeps "embed", "layers.{i}", "final_norm", "logits"."""
        return layer_outputs(self, input_ids, tuple(self.rotary(positions)), mask, k_caches, v_caches)


def build(spec: ModelSpec, dtype: str = "float32", num_positions: int | None = None) -> LlamaForCausalLM:
    """Family hook used by `ascend_adapt.backends.mindspore.session`."""
    return LlamaForCausalLM(spec, dtype, num_positions)


__all__ = ["LlamaForCausalLM", "build"]
