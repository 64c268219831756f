"""Qwen2 / Qwen3 as MindSpore cells: Llama's decoder (`model_zoo/llama/ms_model.py`) with the
family's attention — q/k/v biases where the spec has them (Qwen2) and the per-head q/k RMSNorm
over head_dim before the rotary (Qwen3), as transformers' `Qwen2Attention` / `Qwen3Attention`.
Parameter names are canonical (`layers.{i}.attn.q.bias`, `layers.{i}.attn.q_norm.weight`, …)."""

from __future__ import annotations

from mindspore import nn

from ..llama.ms_model import LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP
from ..ms_layers import (Embedding, Linear, RMSNorm, apply_rotary, cached_attention, compute_dtype,
                         default_score_scale, model_rotary_table, split_heads)
from ascend_adapt.spec import ModelSpec


class QwenAttention(nn.Cell):
    def __init__(self, spec: ModelSpec, dtype):
        super().__init__()
        H = spec.hidden_size
        self.heads, self.kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.q = Linear(H, spec.q_dim, spec.qkv_bias, dtype)
        self.k = Linear(H, spec.kv_dim, spec.qkv_bias, dtype)
        self.v = Linear(H, spec.kv_dim, spec.qkv_bias, dtype)
        self.o = Linear(spec.q_dim, H, spec.o_bias, dtype)
        self.qk_norm = spec.qk_norm
        if spec.qk_norm:
            self.q_norm = RMSNorm(spec.head_dim, spec.norm_eps, dtype)
            self.k_norm = RMSNorm(spec.head_dim, spec.norm_eps, dtype)
        self.scale = default_score_scale(spec.head_dim)
        self.fill = float(spec.mask_fill)

    def construct(self, x, cos, sin, mask, k_cache, v_cache):
        q = split_heads(self.q(x), self.heads, self.head_dim)
        k = split_heads(self.k(x), self.kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        v = split_heads(self.v(x), self.kv_heads, self.head_dim)
        ctx = cached_attention(q, k, v, k_cache, v_cache, mask, score_scale=self.scale, fill=self.fill)
        return self.o(ctx), k, v


class QwenDecoderLayer(LlamaDecoderLayer):
    """Llama's pre-norm block with `QwenAttention`."""

    def __init__(self, spec: ModelSpec, dtype):
        nn.Cell.__init__(self)
        self.attn_norm = RMSNorm(spec.hidden_size, spec.norm_eps, dtype)
        self.attn = QwenAttention(spec, dtype)
        self.mlp_norm = RMSNorm(spec.hidden_size, spec.norm_eps, dtype)
        self.mlp = LlamaMLP(spec, dtype)


class QwenForCausalLM(LlamaForCausalLM):
    """Qwen2 / Qwen3 decoder with canonical parameter names (steps as `LlamaForCausalLM.construct`)."""

    def __init__(self, spec: ModelSpec, dtype: str = "float32", num_positions: int | None = None):
        nn.Cell.__init__(self)
        self.spec = spec
        self.compute_dtype = compute_dtype(dtype)
        dt = self.compute_dtype
        self.embed = Embedding(spec.vocab_size, spec.hidden_size, dt)
        self.layers = nn.CellList([QwenDecoderLayer(spec, dt) for _ in range(spec.num_layers)])
        self.final_norm = RMSNorm(spec.hidden_size, spec.norm_eps, dt)
        self.lm_head = Linear(spec.hidden_size, spec.vocab_size, False, dt)
        self.cos, self.sin = model_rotary_table(spec, num_positions or spec.max_position, dtype)


def build(spec: ModelSpec, dtype: str = "float32", num_positions: int | None = None) -> QwenForCausalLM:
    """Family hook used by `ascend_adapt.backends.mindspore.session`."""
    return QwenForCausalLM(spec, dtype, num_positions)


__all__ = ["QwenForCausalLM", "build"]
