"""ChatGLM-6B (v1) as a MindSpore `nn.Cell`, built from a `ModelSpec` and canonical weights.

Numerics follow the torch reference (`model_zoo/chatglm/torch_model.py`, which reimplements
THUDM's `modeling_chatglm.py`; reference model_architectures.md §1.3–1.7, §1.12):

- rotary table as the original builds it for the compute dtype (fp32 inv_freq rounded to fp16,
  then positions, angles and cos/sin in the compute dtype: fp16 → the trained fp16 table, fp32 →
  fp32 angles from the fp16-rounded inv_freq), from the shared `operators.rotary.rotary_table`;
- 2-D positions: head dims [0, D/2) rotate by the position, [D/2, D) by the block id, each half
  with rotate_half;
- residual α·LN(x) + f(LN(x)) with α = `spec.residual_alpha` (√56 for every config, §1.12);
- q / (√D·(layer+1)) in the compute dtype, scores in the compute dtype, masked_fill(−10000)
  there, fp32 softmax of scores·(layer+1);
- tanh GELU, LayerNorm with bias (fp32 inside), every Linear with bias;
- the prefix-LM mask comes from the host (`StepInputs.visible`), nothing is built in the graph.

Step contract and parameter names: as `model_zoo/llama/ms_model.py` (positions are [B, 2, S]).
"""

from __future__ import annotations

import math

from mindspore import nn, ops

from ..ms_layers import (layer_outputs, Embedding, LayerNorm, Linear, apply_rotary, cached_attention, compute_dtype,
                         gather_rotary, gelu_tanh, model_rotary_table, scalar_div, scalar_mul, split_heads,
                         tanh_in_float64)
from ascend_adapt.spec import ModelSpec


class GLMAttention(nn.Cell):
    def __init__(self, spec: ModelSpec, layer_id: int, dtype):
        super().__init__()
        H = spec.hidden_size
        self.heads, self.head_dim = spec.num_heads, spec.head_dim
        self.q = Linear(H, spec.q_dim, spec.qkv_bias, dtype)
        self.k = Linear(H, spec.kv_dim, spec.qkv_bias, dtype)
        self.v = Linear(H, spec.kv_dim, spec.qkv_bias, dtype)
        self.o = Linear(spec.q_dim, H, spec.o_bias, dtype)
        self.coeff = float(layer_id + 1) if spec.attn_layer_scaling else 1.0
        self.q_div = math.sqrt(spec.head_dim) * self.coeff
        self.fill = float(spec.mask_fill)

    def rotate(self, x, rope):
        """2-D rotary on [B, heads, S, D]: first half by position, second half by block id."""
        cos0, sin0, cos1, sin1 = rope
        half = self.head_dim // 2
        return ops.cat((apply_rotary(x[..., :half], cos0, sin0),
                        apply_rotary(x[..., half:], cos1, sin1)), -1)

    def construct(self, x, rope, mask, k_cache, v_cache):
        q = self.rotate(split_heads(self.q(x), self.heads, self.head_dim), rope)
        k = self.rotate(split_heads(self.k(x), self.heads, self.head_dim), rope)
        v = split_heads(self.v(x), self.heads, self.head_dim)
        q = scalar_div(q, self.q_div)  # q / (√D·(layer+1)) in the compute dtype, as the original
        ctx = cached_attention(q, k, v, k_cache, v_cache, mask, softmax_scale=self.coeff, fill=self.fill)
        return self.o(ctx), k, v


class GLMMLP(nn.Cell):
    def __init__(self, spec: ModelSpec, dtype):
        super().__init__()
        self.up = Linear(spec.hidden_size, spec.intermediate_size, spec.mlp_bias, dtype)
        self.down = Linear(spec.intermediate_size, spec.hidden_size, spec.mlp_bias, dtype)
        self.tanh_fp64 = tanh_in_float64()  # MindSpore's CPU fp32 Tanh is off by up to 1e-4

    def construct(self, x):
        return self.down(gelu_tanh(self.up(x), self.tanh_fp64))


class GLMBlock(nn.Cell):
    """a = LN(x); h = α·a + attn(a); m = LN(h); out = α·m + mlp(m)."""

    def __init__(self, spec: ModelSpec, layer_id: int, dtype):
        super().__init__()
        self.alpha = float(spec.residual_alpha)
        self.attn_norm = LayerNorm(spec.hidden_size, spec.norm_eps, dtype)
        self.attn = GLMAttention(spec, layer_id, dtype)
        self.mlp_norm = LayerNorm(spec.hidden_size, spec.norm_eps, dtype)
        self.mlp = GLMMLP(spec, dtype)

    def construct(self, x, rope, mask, k_cache, v_cache):
        a = self.attn_norm(x)
        att, k, v = self.attn(a, rope, mask, k_cache, v_cache)
        h = scalar_mul(a, self.alpha) + att
        m = self.mlp_norm(h)
        return scalar_mul(m, self.alpha) + self.mlp(m), k, v


class ChatGLMForCausalLM(nn.Cell):
    """ChatGLM-6B with canonical parameter names.

    Args:
        spec: the model (`ChatGLMAdapter.spec_from_config`).
        dtype: compute dtype name, "float32" or "float16".
        num_positions: rows of the rotary table (default `spec.max_position + 1`, as the original).
    """

    def __init__(self, spec: ModelSpec, dtype: str = "float32", num_positions: int | None = None):
        super().__init__()
        self.spec = spec
        self.compute_dtype = compute_dtype(dtype)
        dt = self.compute_dtype
        self.embed = Embedding(spec.vocab_size, spec.hidden_size, dt)
        self.layers = nn.CellList([GLMBlock(spec, i, dt) for i in range(spec.num_layers)])
        self.final_norm = LayerNorm(spec.hidden_size, spec.norm_eps, dt)
        self.lm_head = Linear(spec.hidden_size, spec.vocab_size, False, dt)
        # the original's table for this compute dtype (fp16 → fp16 angles, fp32 → fp32 angles)
        self.cos, self.sin = model_rotary_table(spec, num_positions or spec.max_position + 1, dtype)

    def rotary(self, positions):
        pos, block = positions[:, 0], positions[:, 1]
        return (gather_rotary(self.cos, pos), gather_rotary(self.sin, pos),
                gather_rotary(self.cos, block), gather_rotary(self.sin, block))

    def construct(self, input_ids, positions, mask, k_caches, v_caches):
        """One step; see `LlamaForCausalLM.construct` (positions here are [B, 2, S])."""
        rope = self.rotary(positions)
        x = self.embed(input_ids)
        ks, vs = (), ()
        for i in range(len(self.layers)):
            x, k, v = self.layers[i](x, rope, mask, k_caches[i], v_caches[i])
            ks += (k,)
            vs += (v,)
        return self.lm_head(self.final_norm(x)), ks, vs

    def layer_outputs(self, input_ids, positions, mask, k_caches, v_caches) -> dict:
        """PyNative walk of `construct` that keeps "embed", "layers.{i}", "final_norm", "logits"."""
        return layer_outputs(self, input_ids, (self.rotary(positions),), mask, k_caches, v_caches)


def build(spec: ModelSpec, dtype: str = "float32", num_positions: int | None = None) -> ChatGLMForCausalLM:
    """Family hook used by `ascend_adapt.backends.mindspore.session`."""
    return ChatGLMForCausalLM(spec, dtype, num_positions)


__all__ = ["ChatGLMForCausalLM", "build"]
