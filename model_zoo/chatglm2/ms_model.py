"""ChatGLM2-6B / ChatGLM3-6B as a MindSpore `nn.Cell`, built from a `ModelSpec` and canonical weights.

Numerics follow the torch reference (`model_zoo/chatglm2/torch_model.py`, written from reference
model_architectures.md §2):

- RMSNorm: fp32 variance, the weight multiplied in fp32, then cast to the compute dtype;
- rotary on the first `rotary_dim` (= head_dim/2) dims in adjacent pairs, the rest passed through;
  the table from the shared `operators.rotary.rotary_table` under `spec.rotary_table_dtype`
  (ChatGLM2 "model_dtype", ChatGLM3 "float32"), gathered per token by its 1-D position;
- multi-query groups through `cached_attention` (query head h uses group h // (heads / groups)),
  q·kᵀ·(1/√D) in the compute dtype, fp32 softmax; the causal mask comes from the host;
- SwiGLU down(silu(gate)·up) with no biases; QKV with bias.

Step contract and parameter names: as `model_zoo/llama/ms_model.py` (positions [B, S]).
"""

from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from ..ms_layers import (Embedding, Linear, _zeros, cached_attention, compute_dtype, default_score_scale,
                         gather_rotary, layer_outputs, model_rotary_table, split_heads)
from ascend_adapt.spec import ModelSpec


class GLM2RMSNorm(nn.Cell):
    """The original's RMSNorm: x·rsqrt(mean(x²)+eps) in fp32, × weight in fp32, cast back."""

    def __init__(self, hidden: int, eps: float, dtype):
        super().__init__()
        self.weight = _zeros((hidden,), dtype)
        self.eps = float(eps)

    def construct(self, x):
        x32 = ops.cast(x, ms.float32)
        var = ops.mean(ops.square(x32), -1, keep_dims=True)
        y = x32 * ops.rsqrt(var + self.eps)
        return ops.cast(ops.cast(self.weight, ms.float32) * y, x.dtype)


def apply_interleaved_rotary(x, cos, sin):
    """x [B, heads, S, D]; cos / sin [B, 1, S, rd/2]. Pairs (x[2i], x[2i+1]) of the first rd dims
    rotate by angle i; dims ≥ rd pass through."""
    B, N, S, D = x.shape
    half = cos.shape[-1]
    rd = 2 * half
    pairs = ops.reshape(x[..., :rd], (B, N, S, half, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = ops.reshape(ops.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), -1), (B, N, S, rd))
    if rd == D:
        return out
    return ops.cat((out, x[..., rd:]), -1)


class GLM2Attention(nn.Cell):
    def __init__(self, spec: ModelSpec, dtype):
        super().__init__()
        H = spec.hidden_size
        self.heads, self.groups, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.q = Linear(H, spec.q_dim, spec.qkv_bias, dtype)
        self.k = Linear(H, spec.kv_dim, spec.qkv_bias, dtype)
        self.v = Linear(H, spec.kv_dim, spec.qkv_bias, dtype)
        self.o = Linear(spec.q_dim, H, False, dtype)
        self.scale = default_score_scale(spec.head_dim)
        self.fill = float(spec.mask_fill)

    def construct(self, x, cos, sin, mask, k_cache, v_cache):
        q = apply_interleaved_rotary(split_heads(self.q(x), self.heads, self.head_dim), cos, sin)
        k = apply_interleaved_rotary(split_heads(self.k(x), self.groups, self.head_dim), cos, sin)
        v = split_heads(self.v(x), self.groups, self.head_dim)
        ctx = cached_attention(q, k, v, k_cache, v_cache, mask, score_scale=self.scale, fill=self.fill)
        return self.o(ctx), k, v


class GLM2MLP(nn.Cell):
    def __init__(self, spec: ModelSpec, dtype):
        super().__init__()
        self.gate = Linear(spec.hidden_size, spec.intermediate_size, False, dtype)
        self.up = Linear(spec.hidden_size, spec.intermediate_size, False, dtype)
        self.down = Linear(spec.intermediate_size, spec.hidden_size, False, dtype)

    def construct(self, x):
        return self.down(ops.silu(self.gate(x)) * self.up(x))


class GLM2Block(nn.Cell):
    """Pre-norm block: h = x + attn(RMSNorm(x)); out = h + mlp(RMSNorm(h))."""

    def __init__(self, spec: ModelSpec, dtype):
        super().__init__()
        self.attn_norm = GLM2RMSNorm(spec.hidden_size, spec.norm_eps, dtype)
        self.attn = GLM2Attention(spec, dtype)
        self.mlp_norm = GLM2RMSNorm(spec.hidden_size, spec.norm_eps, dtype)
        self.mlp = GLM2MLP(spec, dtype)

    def construct(self, x, cos, sin, mask, k_cache, v_cache):
        a, k, v = self.attn(self.attn_norm(x), cos, sin, mask, k_cache, v_cache)
        h = x + a
        return h + self.mlp(self.mlp_norm(h)), k, v


class ChatGLM2ForCausalLM(nn.Cell):
    """ChatGLM2/3 with canonical parameter names.

    Args:
        spec: the model (`ChatGLM2Adapter.spec_from_config`).
        dtype: compute dtype name, "float32" or "float16".
        num_positions: rows of the rotary table (default `spec.max_position + 1`).
    """

    def __init__(self, spec: ModelSpec, dtype: str = "float32", num_positions: int | None = None):
        super().__init__()
        self.spec = spec
        self.compute_dtype = compute_dtype(dtype)
        dt = self.compute_dtype
        self.embed = Embedding(spec.vocab_size, spec.hidden_size, dt)
        self.layers = nn.CellList([GLM2Block(spec, dt) for _ in range(spec.num_layers)])
        self.final_norm = GLM2RMSNorm(spec.hidden_size, spec.norm_eps, dt)
        self.lm_head = Linear(spec.hidden_size, spec.vocab_size, False, dt)
        self.cos, self.sin = model_rotary_table(spec, num_positions or spec.max_position + 1, dtype)

    def rotary(self, positions):
        return gather_rotary(self.cos, positions), gather_rotary(self.sin, positions)

    def construct(self, input_ids, positions, mask, k_caches, v_caches):
        """One step; see `LlamaForCausalLM.construct`."""
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


def build(spec: ModelSpec, dtype: str = "float32", num_positions: int | None = None) -> ChatGLM2ForCausalLM:
    """Family hook used by `ascend_adapt.backends.mindspore.session`."""
    return ChatGLM2ForCausalLM(spec, dtype, num_positions)


__all__ = ["ChatGLM2ForCausalLM", "build"]
