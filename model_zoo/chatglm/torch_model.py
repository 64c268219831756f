"""ChatGLM-6B (v1) in plain torch, written from the documented math — the golden for this family.

transformers has no ChatGLM-6B class (remote code only, reference model_architectures.md §1.11),
so this file reimplements THUDM/chatglm-6b's `modeling_chatglm.py` forward pass, quirks included
(§1.3–1.7, §1.12):

- rotary table as the original's `RotaryEmbedding(precision=torch.half)` builds it (§1.5):
  inv_freq computed in fp32 and rounded to fp16; positions, angles and cos/sin then in the
  model's dtype (fp16 model: fp16 angles and table, the one it was trained with; fp32 model, i.e.
  the original after `.float()`: fp32 positions × fp16-rounded inv_freq in fp32, fp32 cos/sin).
  One function builds it for every path: `ascend_adapt.operators.rotary.rotary_table`;
- 2-D positions: dims [0, D/2) rotate with the position, [D/2, D) with the block id, each half
  with NeoX's rotate_half;
- residual α·LN(x) + f(LN(x)) with α = spec.residual_alpha (= √56 for every config, §1.12);
- q / (√D·(layer+1)), scores in the compute dtype, masked_fill(−10000) in the compute dtype,
  then fp32 softmax of scores·(layer+1);
- tanh GELU, LayerNorm with bias, every Linear with bias;
- embedding and head both take `spec.tied_source` (`lm_head.weight`) when tied (§1.12);
- the KV cache holds post-rotary keys. Here it is static: [max_len, B, heads, D] per layer
  (seq-first, like the original), a step writes its K/V at `start_slot` and attends over all
  slots through `StepInputs.visible`.

Layout inside the model is batch-first ([B, S, H]); the math is identical to the seq-first
original.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch
from torch import nn

from ascend_adapt.spec import ModelSpec
from ascend_adapt.model_zoo.torch_reference import ModuleReference

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """The original's `gelu_impl`: 0.5·x·(1 + tanh(0.79788456·x·(1 + 0.044715·x²)))."""
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_glm2d_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       positions: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, S, heads, D]: first half by positions[:, 0], second half by positions[:, 1].

    cos / sin: [P, D/2] tables in x's dtype; positions: [B, 2, S] int64.
    """
    half = x.shape[-1] // 2
    out = []
    for i, part in enumerate((x[..., :half], x[..., half:])):
        c = nn.functional.embedding(positions[:, i], cos).unsqueeze(2)  # [B, S, 1, D/2]
        s = nn.functional.embedding(positions[:, i], sin).unsqueeze(2)
        out.append(part * c + _rotate_half(part) * s)
    return torch.cat(out, dim=-1)


class GLMBlock(nn.Module):
    """One ChatGLM-6B layer (attention + MLP with the α-scaled LN-output residuals)."""

    def __init__(self, spec: ModelSpec, layer_id: int, dtype: torch.dtype):
        super().__init__()
        H, I, QD = spec.hidden_size, spec.intermediate_size, spec.q_dim
        kw = dict(dtype=dtype)
        self.layer_id = layer_id
        self.num_heads, self.head_dim = spec.num_heads, spec.head_dim
        self.alpha = float(spec.residual_alpha)
        self.coeff = float(layer_id + 1) if spec.attn_layer_scaling else 1.0
        self.mask_fill = float(spec.mask_fill)
        self.attn_norm = nn.LayerNorm(H, eps=spec.norm_eps, **kw)
        self.q = nn.Linear(H, QD, bias=spec.qkv_bias, **kw)
        self.k = nn.Linear(H, spec.kv_dim, bias=spec.qkv_bias, **kw)
        self.v = nn.Linear(H, spec.kv_dim, bias=spec.qkv_bias, **kw)
        self.o = nn.Linear(QD, H, bias=spec.o_bias, **kw)
        self.mlp_norm = nn.LayerNorm(H, eps=spec.norm_eps, **kw)
        self.up = nn.Linear(H, I, bias=spec.mlp_bias, **kw)
        self.down = nn.Linear(I, H, bias=spec.mlp_bias, **kw)

    def attention(self, a, positions, visible, cos, sin, cache, start_slot):
        B, S, _ = a.shape
        nh, D = self.num_heads, self.head_dim
        q = apply_glm2d_rotary(self.q(a).view(B, S, nh, D), cos, sin, positions)
        k = apply_glm2d_rotary(self.k(a).view(B, S, nh, D), cos, sin, positions)
        v = self.v(a).view(B, S, nh, D)
        if cache is not None:  # static cache [M, B, heads, D]: write this step, attend over all slots
            k_cache, v_cache = cache
            k_cache[start_slot:start_slot + S] = k.transpose(0, 1)
            v_cache[start_slot:start_slot + S] = v.transpose(0, 1)
            k, v = k_cache.permute(1, 2, 0, 3), v_cache.permute(1, 2, 0, 3)  # [B, heads, M, D]
        else:
            k, v = k.transpose(1, 2), v.transpose(1, 2)
        q = q.transpose(1, 2) / (math.sqrt(D) * self.coeff)          # compute dtype, as the original
        scores = torch.matmul(q, k.transpose(-1, -2))                 # [B, heads, S, M]
        scores = scores.masked_fill(~visible[:, None], self.mask_fill)
        probs = torch.softmax(scores.float() * self.coeff, dim=-1).to(a.dtype)
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(B, S, nh * D)
        return self.o(ctx)

    def forward(self, x, positions, visible, cos, sin, cache=None, start_slot=0):
        a = self.attn_norm(x)
        h = self.alpha * a + self.attention(a, positions, visible, cos, sin, cache, start_slot)
        m = self.mlp_norm(h)
        return self.alpha * m + self.down(gelu_tanh(self.up(m)))


class ChatGLMForCausalLM(nn.Module):
    """ChatGLM-6B with canonical parameter names (`embed`, `layers.{i}.q`, …, `final_norm`, `lm_head`).

    Args:
        spec: the model (from `ChatGLMAdapter.spec_from_config`).
        dtype: compute dtype, "float32" (golden) or "float16".
    """

    def __init__(self, spec: ModelSpec, dtype: str = "float32"):
        super().__init__()
        self.spec = spec
        self.dtype = _DTYPES[dtype]
        H = spec.hidden_size
        self.embed = nn.Embedding(spec.vocab_size, H, dtype=self.dtype)
        self.layers = nn.ModuleList(GLMBlock(spec, i, self.dtype) for i in range(spec.num_layers))
        self.final_norm = nn.LayerNorm(H, eps=spec.norm_eps, dtype=self.dtype)
        self.lm_head = nn.Linear(H, spec.vocab_size, bias=False, dtype=self.dtype)
        from ascend_adapt.operators.rotary import rotary_table

        # the original's table for this compute dtype (fp16 → fp16 angles, fp32 → fp32 angles)
        cos, sin = rotary_table(spec.max_position + 1, spec.rotary_dim, spec.rope_theta, "glm2d",
                                spec.rotary_table_dtype, compute_dtype=dtype)
        # via fp32 (exact for every table dtype): torch.from_numpy has no ml_dtypes bfloat16
        self.register_buffer("cos", torch.from_numpy(cos.astype(np.float32)).to(self.dtype), persistent=False)
        self.register_buffer("sin", torch.from_numpy(sin.astype(np.float32)).to(self.dtype), persistent=False)
        self.eval()

    # ---- loading -----------------------------------------------------------------------------
    _CANON = {"attn_norm.weight": "attn_norm.weight", "attn_norm.bias": "attn_norm.bias",
              "attn.q.weight": "q.weight", "attn.q.bias": "q.bias", "attn.k.weight": "k.weight",
              "attn.k.bias": "k.bias", "attn.v.weight": "v.weight", "attn.v.bias": "v.bias",
              "attn.o.weight": "o.weight", "attn.o.bias": "o.bias", "mlp_norm.weight": "mlp_norm.weight",
              "mlp_norm.bias": "mlp_norm.bias", "mlp.up.weight": "up.weight", "mlp.up.bias": "up.bias",
              "mlp.down.weight": "down.weight", "mlp.down.bias": "down.bias"}

    def _param_name(self, canonical: str) -> str:
        if canonical.startswith("layers."):
            _, i, rest = canonical.split(".", 2)
            return f"layers.{i}.{self._CANON[rest]}"
        return {"embed.weight": "embed.weight", "final_norm.weight": "final_norm.weight",
                "final_norm.bias": "final_norm.bias", "lm_head.weight": "lm_head.weight"}[canonical]

    @torch.no_grad()
    def load_canonical(self, stream: Iterable[tuple[str, np.ndarray]]) -> "ChatGLMForCausalLM":
        """Copy weights from a canonical stream (one tensor at a time).

        With a tied spec, both the embedding and the head take `spec.tied_source` (the
        checkpoint's `lm_head.weight` for ChatGLM-6B, §1.12); the other tensor is used only when
        the source is absent.
        """
        params = dict(self.named_parameters())
        tied = self.spec.tie_word_embeddings
        src = self.spec.tied_source
        seen: set[str] = set()
        fallback = None
        for name, arr in stream:
            t = torch.from_numpy(np.ascontiguousarray(np.asarray(arr, dtype=np.float32)))
            if tied and name in ("embed.weight", "lm_head.weight"):
                if name != src:
                    fallback = t
                    continue
                params["embed.weight"].copy_(t)
                params["lm_head.weight"].copy_(t)
                seen.update(("embed.weight", "lm_head.weight"))
                continue
            pname = self._param_name(name)
            params[pname].copy_(t)
            seen.add(pname)
        if tied and "embed.weight" not in seen and fallback is not None:
            params["embed.weight"].copy_(fallback)
            params["lm_head.weight"].copy_(fallback)
            seen.update(("embed.weight", "lm_head.weight"))
        missing = sorted(set(params) - seen)
        if missing:
            from ascend_adapt.errors import CheckpointError

            raise CheckpointError(f"ChatGLM reference: {len(missing)} parameters were not in the checkpoint, "
                                  f"e.g. '{missing[0]}'")
        return self

    # ---- forward -----------------------------------------------------------------------------
    def new_cache(self, batch: int, max_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Static KV cache: per layer (k, v), each [max_len, batch, heads, head_dim], post-rotary keys."""
        shape = (max_len, batch, self.spec.num_heads, self.spec.head_dim)
        return [(torch.zeros(shape, dtype=self.dtype), torch.zeros(shape, dtype=self.dtype))
                for _ in range(self.spec.num_layers)]

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor,
                cache: list | None = None, start_slot: int = 0,
                layer_outputs: dict | None = None) -> torch.Tensor:
        """One step.

        Args:
            input_ids: [B, S] int64.
            positions: [B, 2, S] int64 (positions, block ids).
            visible: [B, S, K] bool; K = S without cache (full recompute), max_len with it.
            cache: from `new_cache`, or None; this step's K/V go to slots start_slot … start_slot+S-1.
            layer_outputs: when a dict, filled with "embed", "layers.{i}", "final_norm", "logits"
                ([B, S, H] / [B, S, V] tensors in the compute dtype).

        Returns:
            logits [B, S, vocab] in the compute dtype.
        """
        x = self.embed(input_ids)
        if layer_outputs is not None:
            layer_outputs["embed"] = x
        for i, layer in enumerate(self.layers):
            x = layer(x, positions, visible, self.cos, self.sin,
                      None if cache is None else cache[i], start_slot)
            if layer_outputs is not None:
                layer_outputs[f"layers.{i}"] = x
        x = self.final_norm(x)
        logits = self.lm_head(x)
        if layer_outputs is not None:
            layer_outputs["final_norm"] = x
            layer_outputs["logits"] = logits
        return logits



class ChatGLMReference(ModuleReference):
    """The torch backend's ChatGLM-6B golden: sessions and full logits over `ChatGLMForCausalLM`."""

    model_class = ChatGLMForCausalLM


def load_reference(spec: ModelSpec, stream, dtype: str = "float32") -> ChatGLMReference:
    """Family hook used by `ascend_adapt.backends.torch.session`."""
    return ChatGLMReference(spec, stream, dtype)


# ---- layer-streamed calibration (ascend_adapt.quant.calib.stream_act_stats) ----------------------

class GLMLayerStages:
    """One `GLMBlock` at a time, for calibration: the embedding, the rotary table, positions and
    mask exactly as `ChatGLMForCausalLM.forward` (via `forward_full`) computes them, then each
    layer built alone with its fp32 weights and called as the whole model calls it.

    Args:
        spec: the model; source: `ascend_adapt.quant.calib.CanonicalSource` (`get`, `in`).
    """

    block = GLMBlock
    canon = ChatGLMForCausalLM._CANON
    table = "glm2d"

    def __init__(self, spec: ModelSpec, source, dtype: str = "float32"):
        from ascend_adapt.operators.rotary import rotary_table

        self.spec, self.source, self.dtype = spec, source, _DTYPES[dtype]
        cos, sin = rotary_table(spec.max_position + 1, spec.rotary_dim, spec.rope_theta, self.table,
                                spec.rotary_table_dtype, compute_dtype=dtype)
        self.cos = torch.from_numpy(cos.astype(np.float32)).to(self.dtype)  # as the model's buffers
        self.sin = torch.from_numpy(sin.astype(np.float32)).to(self.dtype)
        self.embed_w = self._tensor(self._tied("embed.weight"))

    def _tied(self, name: str) -> str:
        """ChatGLM-6B's embedding and head both take `spec.tied_source` when tied (the other
        tensor only when the source is absent), as `load_canonical` does."""
        if not self.spec.tie_word_embeddings:
            return name
        other = "lm_head.weight" if self.spec.tied_source == "embed.weight" else "embed.weight"
        return self.spec.tied_source if self.spec.tied_source in self.source else other

    def _tensor(self, name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.asarray(self.source.get(name), dtype=np.float32))).to(self.dtype)

    def _context(self, positions, visible):
        return torch.from_numpy(positions), torch.from_numpy(visible)

    @torch.no_grad()
    def embed(self, ids: np.ndarray):
        from ascend_adapt.runtime.lm_inputs import prefill_inputs

        step, _ = prefill_inputs(self.spec, ids, None, ids.shape[1])
        x = nn.functional.embedding(torch.from_numpy(step.input_ids), self.embed_w)
        return x, self._context(step.positions, step.visible)

    def _new_block(self, i: int):
        return self.block(self.spec, i, self.dtype)

    def layer(self, i: int):
        with torch.device("meta"):
            block = self._new_block(i)
        state = {rest: self._tensor(f"layers.{i}.{c}") for c, rest in self.canon.items()
                 if f"layers.{i}.{c}" in self.source}
        block.load_state_dict(state, strict=True, assign=True)
        return block.eval()

    def linears(self, i: int, block) -> dict:
        from ascend_adapt.quant.calib import linear_names

        out = {}
        for n in linear_names(self.spec):
            if n.startswith(f"layers.{i}."):
                out[n] = block.get_submodule(self.canon[n.split(".", 2)[2] + ".weight"][: -len(".weight")])
        return out

    @torch.no_grad()
    def run_layer(self, i: int, block, x, ctx):
        positions, visible = ctx
        return block(x, positions, visible, self.cos, self.sin)

    @torch.no_grad()
    def final_norm(self, x):
        if not hasattr(self, "_norm"):
            with torch.device("meta"):
                norm = nn.LayerNorm(self.spec.hidden_size, eps=self.spec.norm_eps, dtype=self.dtype)
            norm.load_state_dict({k: self._tensor(f"final_norm.{k}") for k in ("weight", "bias")}, assign=True)
            self._norm = norm
        return self._norm(x)

    def head(self):
        w = self.embed_w if self.spec.tie_word_embeddings else self._tensor("lm_head.weight")
        with torch.device("meta"):
            lm = nn.Linear(self.spec.hidden_size, self.spec.vocab_size, bias=False, dtype=self.dtype)
        lm.load_state_dict({"weight": w}, assign=True)
        return lm.eval()


def calib_stages(spec: ModelSpec, source) -> GLMLayerStages:
    """Family hook of the layer-streamed calibration (`ascend_adapt.quant.calib.stream_act_stats`)."""
    return GLMLayerStages(spec, source)
