"""Attention over [static KV cache ⊕ this step's K/V] with an additive validity mask.

Shapes (batch-first): q [B, heads, S, D]; k, v [B, kv_heads, S, D] (this step's, post-rotary);
past_k, past_v [B, kv_heads, M, D] (the static cache, optional: prefill has none); mask
[B, 1, S, T] additive (0 = visible, a large negative finite fill = hidden), T = M + S with a cache,
S without. Output: context [B, S, heads·D] (ready for the output projection).

- GQA by repeat: K/V heads are repeated `heads / kv_heads` times (Unsqueeze → Expand → Reshape),
  query head h uses KV head h // group, as transformers' `repeat_kv`.
- Standard (Llama): scores = (q·kᵀ)·scale + mask in the activation dtype; softmax in fp32 (an
  fp32 island: Cast up, Softmax, Cast down), as HF upcasts it (reference §3.4).
- ChatGLM-6B (`layer_coeff` = layer index + 1, reference §1.4): q is divided by √D·coeff in the
  activation dtype, scores = q·kᵀ + mask, then cast to fp32 and multiplied by coeff, softmax in
  fp32. The original masks with masked_fill(-10000); with an additive mask the hidden scores are
  score + fill instead of exactly fill — the same probabilities, since exp(fill·coeff) underflows
  to 0 in fp32 and every row sees at least its own slot.
"""

from __future__ import annotations

import math

import numpy as np

from .registry import OperatorSpec, register_operator


def _softmax32(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@register_operator
class Attention(OperatorSpec):
    """Scaled dot-product attention over cache ⊕ step with an additive mask, GQA, fp32 softmax.

    Inputs: q, k, v, mask[, past_k, past_v]. Attributes: num_heads, num_kv_heads, head_dim,
    scale (default 1/√head_dim), layer_coeff (ChatGLM-6B's layer scaling; None = standard).
    """

    name = "attention"
    fp32_island = True  # the softmax part

    def reference(self, q, k, v, mask, past_k=None, past_v=None, *, num_heads: int, num_kv_heads: int,
                  head_dim: int, scale: float | None = None, layer_coeff: float | None = None):
        q, k, v = (np.asarray(a) for a in (q, k, v))
        dt = q.dtype
        if past_k is not None:
            k = np.concatenate([np.asarray(past_k, dt), k], 2)
            v = np.concatenate([np.asarray(past_v, dt), v], 2)
        g = num_heads // num_kv_heads
        if g > 1:
            k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
        kt = np.swapaxes(k, -1, -2)
        m = np.asarray(mask).astype(dt)
        if layer_coeff is None:
            s = (q @ kt) * dt.type(scale if scale is not None else 1.0 / math.sqrt(head_dim)) + m
            p = _softmax32(s.astype(dt)).astype(dt)
        else:
            qs = q / dt.type(math.sqrt(head_dim) * layer_coeff)
            s = (qs @ kt + m).astype(dt)
            p = _softmax32(s.astype(np.float32) * np.float32(layer_coeff)).astype(dt)
        ctx = (p @ v).astype(dt)  # [B, N, S, D]
        B, N, S, D = ctx.shape
        return ctx.transpose(0, 2, 1, 3).reshape(B, S, N * D)

    def _emit(self, b, inputs, target, *, num_heads: int, num_kv_heads: int, head_dim: int,
              scale: float | None = None, layer_coeff: float | None = None):
        q, k, v, mask = inputs[:4]
        past_k, past_v = (inputs[4], inputs[5]) if len(inputs) > 4 else (None, None)
        dt = b.act_dtype
        if past_k is not None:
            k = b.node("Concat", [past_k, k], name="ConcatCacheK", axis=2)
            v = b.node("Concat", [past_v, v], name="ConcatCacheV", axis=2)
        g = num_heads // num_kv_heads
        if g > 1:
            rep = b.ints([1, 1, g, 1, 1])
            k = b.reshape(b.node("Expand", [b.unsqueeze(k, [2], name="UnsqueezeK"), rep], name="RepeatK"),
                          [0, num_heads, -1, head_dim], name="MergeK")
            v = b.reshape(b.node("Expand", [b.unsqueeze(v, [2], name="UnsqueezeV"), rep], name="RepeatV"),
                          [0, num_heads, -1, head_dim], name="MergeV")
        kt = b.node("Transpose", [k], name="TransposeK", perm=[0, 1, 3, 2])
        if layer_coeff is None:
            sc = scale if scale is not None else 1.0 / math.sqrt(head_dim)
            s = b.node("Mul", [b.node("MatMul", [q, kt], name="QK"), b.const(np.asarray(sc, dt))], name="Scale")
            s = b.node("Add", [s, mask], name="AddMask")
            with b.fp32_island():
                s32 = b.cast(s, np.float32, name="Cast_up") if dt != np.float32 else s
                p = b.node("Softmax", [s32], axis=-1)
                if dt != np.float32:
                    p = b.cast(p, dt, name="Cast_down")
        else:
            qs = b.node("Div", [q, b.const(np.asarray(math.sqrt(head_dim) * layer_coeff, dt))], name="ScaleQ")
            s = b.node("Add", [b.node("MatMul", [qs, kt], name="QK"), mask], name="AddMask")
            with b.fp32_island():
                s32 = b.cast(s, np.float32, name="Cast_up") if dt != np.float32 else s
                s32 = b.node("Mul", [s32, b.const(np.float32(layer_coeff))], name="MulCoeff")
                p = b.node("Softmax", [s32], axis=-1)
                if dt != np.float32:
                    p = b.cast(p, dt, name="Cast_down")
        ctx = b.node("MatMul", [p, v], name="PV")
        ctx = b.node("Transpose", [ctx], name="TransposeCtx", perm=[0, 2, 1, 3])
        return b.reshape(ctx, [0, 0, num_heads * head_dim], name="MergeHeads")
