"""ChatGLM2-6B / ChatGLM3-6B in plain torch, written from the documented math — the family's golden.

transformers ships no ChatGLM2/3 class (remote code only, reference model_architectures.md §5
item 13), so this file reimplements the forward pass of THUDM's `modeling_chatglm.py` for both
versions (§2), in the original's op order and dtypes:

- embedding → pre-norm blocks h = x + attn(RMSNorm(x)); out = h + mlp(RMSNorm(h)) → final
  RMSNorm → `output_layer` (untied);
- RMSNorm: variance in fp32, x·rsqrt(var + eps) promoted to fp32, × weight in fp32, cast back to
  the input dtype (the weight multiply happens before the cast, unlike HF Llama);
- attention: fused QKV with bias (canonical q/k/v here), multi-query groups (query head h uses
  KV group h // (heads / groups)), rotary on the first `rotary_dim` = head_dim/2 dims in adjacent
  pairs (x[2i], x[2i+1]) rotated by position·θ_i, the rest passed through; scores q·kᵀ/√D in the
  compute dtype (the torch ≥ 2 path: SDPA's plain scaling; the legacy path's coeff divides and
  multiplies back, the same math), causal mask, softmax in fp32, cast back; `dense` without bias;
- MLP: dense_h_to_4h (canonical gate | up halves), silu(gate)·up, dense_4h_to_h, no biases;
- rotary table `RotaryEmbedding.forward_impl`: ChatGLM2 computes theta, positions and their outer
  product in the model's dtype, ChatGLM3 in fp32; cos/sin in fp32, cast to the model's dtype.
  One function builds it for every path (`ascend_adapt.operators.rotary.rotary_table`, rule
  `spec.rotary_table_dtype`: "model_dtype" / "float32");
- positions are 1-D, 0 … n-1 over the real tokens of a row ([gMASK] sop included); the mask is
  causal (§2: a full mask only with padding, which `StepInputs.visible` expresses);
- the KV cache holds post-rotary keys before group expansion, seq-first [max_len, B, groups, D]
  (as the original's [seq, b, groups, D]); a step writes its K/V at `start_slot` and attends over
  all slots through `StepInputs.visible`.

Layout inside the model is batch-first ([B, S, H]); the math is identical to the seq-first original.
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


class RMSNorm(nn.Module):
    """The original's RMSNorm: fp32 variance, the weight multiplied in fp32, then cast back."""

    def __init__(self, hidden: int, eps: float, dtype: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        y = x * torch.rsqrt(variance + self.eps)          # promoted to fp32
        return (self.weight * y).to(x.dtype)


def apply_interleaved_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The original's `apply_rotary_pos_emb`: x [B, S, heads, D]; cos / sin [B, S, 1, rd/2] in x's
    dtype. Pairs (x[2i], x[2i+1]) of the first rd dims rotate by angle i; dims ≥ rd pass."""
    rd = cos.shape[-1] * 2
    xr, x_pass = x[..., :rd], x[..., rd:]
    pairs = xr.reshape(*xr.shape[:-1], rd // 2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], -1).flatten(3)
    return torch.cat((out, x_pass), dim=-1)


class GLM2Block(nn.Module):
    """One ChatGLM2/3 layer."""

    def __init__(self, spec: ModelSpec, dtype: torch.dtype):
        super().__init__()
        H, I = spec.hidden_size, spec.intermediate_size
        kw = dict(dtype=dtype)
        self.num_heads, self.num_groups, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.attn_norm = RMSNorm(H, spec.norm_eps, dtype)
        self.q = nn.Linear(H, spec.q_dim, bias=spec.qkv_bias, **kw)
        self.k = nn.Linear(H, spec.kv_dim, bias=spec.qkv_bias, **kw)
        self.v = nn.Linear(H, spec.kv_dim, bias=spec.qkv_bias, **kw)
        self.o = nn.Linear(spec.q_dim, H, bias=False, **kw)
        self.mlp_norm = RMSNorm(H, spec.norm_eps, dtype)
        self.gate = nn.Linear(H, I, bias=False, **kw)
        self.up = nn.Linear(H, I, bias=False, **kw)
        self.down = nn.Linear(I, H, bias=False, **kw)

    def attention(self, a, cos, sin, visible, cache, start_slot):
        B, S, _ = a.shape
        nh, ng, D = self.num_heads, self.num_groups, self.head_dim
        q = apply_interleaved_rotary(self.q(a).view(B, S, nh, D), cos, sin)
        k = apply_interleaved_rotary(self.k(a).view(B, S, ng, D), cos, sin)
        v = self.v(a).view(B, S, ng, D)
        if cache is not None:  # static cache [M, B, groups, D]: write this step, attend over all slots
            k_cache, v_cache = cache
            k_cache[start_slot:start_slot + S] = k.transpose(0, 1)
            v_cache[start_slot:start_slot + S] = v.transpose(0, 1)
            k, v = k_cache.permute(1, 2, 0, 3), v_cache.permute(1, 2, 0, 3)  # [B, groups, M, D]
        else:
            k, v = k.transpose(1, 2), v.transpose(1, 2)
        # multi-query groups: each group serves heads / groups consecutive query heads
        k = k.repeat_interleave(nh // ng, dim=1)
        v = v.repeat_interleave(nh // ng, dim=1)
        scores = torch.matmul(q.transpose(1, 2), k.transpose(-1, -2)) / math.sqrt(D)  # [B, heads, S, M]
        scores = scores.masked_fill(~visible[:, None], float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(a.dtype)
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(B, S, nh * D)
        return self.o(ctx)

    def forward(self, x, cos, sin, visible, cache=None, start_slot=0):
        h = x + self.attention(self.attn_norm(x), cos, sin, visible, cache, start_slot)
        m = self.mlp_norm(h)
        return h + self.down(nn.functional.silu(self.gate(m)) * self.up(m))


class ChatGLM2ForCausalLM(nn.Module):
    """ChatGLM2/3 with canonical parameter names (`embed`, `layers.{i}.q`, …, `final_norm`, `lm_head`).

    Args:
        spec: the model (from `ChatGLM2Adapter.spec_from_config`).
        dtype: compute dtype, "float32" (golden) or "float16".
    """

    def __init__(self, spec: ModelSpec, dtype: str = "float32"):
        super().__init__()
        self.spec = spec
        self.dtype = _DTYPES[dtype]
        H = spec.hidden_size
        self.embed = nn.Embedding(spec.vocab_size, H, dtype=self.dtype)
        self.layers = nn.ModuleList(GLM2Block(spec, self.dtype) for _ in range(spec.num_layers))
        self.final_norm = RMSNorm(H, spec.norm_eps, self.dtype)
        self.lm_head = nn.Linear(H, spec.vocab_size, bias=False, dtype=self.dtype)
        from ascend_adapt.operators.rotary import rotary_table

        # the original's table for this compute dtype (ChatGLM2: fp16 theta / positions / angles)
        cos, sin = rotary_table(spec.max_position + 1, spec.rotary_dim, spec.rope_theta, "interleaved",
                                spec.rotary_table_dtype, compute_dtype=dtype)
        self.register_buffer("cos", torch.from_numpy(cos.astype(np.float32)).to(self.dtype), persistent=False)
        self.register_buffer("sin", torch.from_numpy(sin.astype(np.float32)).to(self.dtype), persistent=False)
        self.eval()

    # ---- loading -----------------------------------------------------------------------------
    _CANON = {"attn_norm.weight": "attn_norm.weight", "attn.q.weight": "q.weight", "attn.q.bias": "q.bias",
              "attn.k.weight": "k.weight", "attn.k.bias": "k.bias", "attn.v.weight": "v.weight",
              "attn.v.bias": "v.bias", "attn.o.weight": "o.weight", "mlp_norm.weight": "mlp_norm.weight",
              "mlp.gate.weight": "gate.weight", "mlp.up.weight": "up.weight", "mlp.down.weight": "down.weight"}

    def _param_name(self, canonical: str) -> str:
        if canonical.startswith("layers."):
            _, i, rest = canonical.split(".", 2)
            return f"layers.{i}.{self._CANON[rest]}"
        return canonical  # embed.weight, final_norm.weight, lm_head.weight

    @torch.no_grad()
    def load_canonical(self, stream: Iterable[tuple[str, np.ndarray]]) -> "ChatGLM2ForCausalLM":
        """Copy weights from a canonical stream (one tensor at a time); a tied spec uses the
        embedding for the head when the checkpoint has no head."""
        params = dict(self.named_parameters())
        seen: set[str] = set()
        for name, arr in stream:
            pname = self._param_name(name)
            if pname not in params:
                from ascend_adapt.errors import CheckpointError

                raise CheckpointError(f"ChatGLM2 reference: canonical tensor '{name}' has no parameter")
            params[pname].copy_(torch.from_numpy(np.ascontiguousarray(np.asarray(arr, dtype=np.float32))))
            seen.add(pname)
        if self.spec.tie_word_embeddings and "lm_head.weight" not in seen and "embed.weight" in seen:
            params["lm_head.weight"].copy_(params["embed.weight"])
            seen.add("lm_head.weight")
        missing = sorted(set(params) - seen)
        if missing:
            from ascend_adapt.errors import CheckpointError

            raise CheckpointError(f"ChatGLM2 reference: {len(missing)} parameters were not in the checkpoint, "
                                  f"e.g. '{missing[0]}'")
        return self

    # ---- forward -----------------------------------------------------------------------------
    def new_cache(self, batch: int, max_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Static KV cache: per layer (k, v), each [max_len, batch, groups, head_dim], post-rotary keys."""
        shape = (max_len, batch, self.spec.num_kv_heads, self.spec.head_dim)
        return [(torch.zeros(shape, dtype=self.dtype), torch.zeros(shape, dtype=self.dtype))
                for _ in range(self.spec.num_layers)]

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor,
                cache: list | None = None, start_slot: int = 0,
                layer_outputs: dict | None = None) -> torch.Tensor:
        """One step.

        Args:
            input_ids: [B, S] int64.
            positions: [B, S] int64.
            visible: [B, S, K] bool; K = S without cache (full recompute), max_len with it.
            cache: from `new_cache`, or None; this step's K/V go to slots start_slot … start_slot+S-1.
            layer_outputs: when a dict, filled with "embed", "layers.{i}", "final_norm", "logits".

        Returns:
            logits [B, S, vocab] in the compute dtype.
        """
        cos = nn.functional.embedding(positions, self.cos).unsqueeze(2)  # [B, S, 1, rd/2]
        sin = nn.functional.embedding(positions, self.sin).unsqueeze(2)
        x = self.embed(input_ids)
        if layer_outputs is not None:
            layer_outputs["embed"] = x
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, visible, None if cache is None else cache[i], start_slot)
            if layer_outputs is not None:
                layer_outputs[f"layers.{i}"] = x
        x = self.final_norm(x)
        logits = self.lm_head(x)
        if layer_outputs is not None:
            layer_outputs["final_norm"] = x
            layer_outputs["logits"] = logits
        return logits



class ChatGLM2Reference(ModuleReference):
    """The torch backend's ChatGLM2/3 golden: sessions and full logits over `ChatGLM2ForCausalLM`."""

    model_class = ChatGLM2ForCausalLM


def load_reference(spec: ModelSpec, stream, dtype: str = "float32") -> ChatGLM2Reference:
    """Family hook used by `ascend_adapt.backends.torch.session`."""
    return ChatGLM2Reference(spec, stream, dtype)


# ---- layer-streamed calibration (ascend_adapt.quant.calib.stream_act_stats) ----------------------

def _glm_stages_base():
    from ascend_adapt.model_zoo.chatglm.torch_model import GLMLayerStages

    return GLMLayerStages


def calib_stages(spec: ModelSpec, source, dtype: str = "float32"):
    """Family hook of the layer-streamed calibration: ChatGLM-6B's stepper
    (`model_zoo/chatglm/torch_model.py: GLMLayerStages`) over `GLM2Block`, with this family's
    interleaved rotary (cos/sin gathered by position once per prompt, as `forward` does) and RMSNorm."""
    base = _glm_stages_base()

    class GLM2LayerStages(base):
        canon = ChatGLM2ForCausalLM._CANON
        table = "interleaved"

        def _tied(self, name):
            return name  # the embedding is the embedding; a tied head reuses it (head())

        def _new_block(self, i):
            return GLM2Block(self.spec, self.dtype)

        def _context(self, positions, visible):
            pos = torch.from_numpy(positions)
            cos = nn.functional.embedding(pos, self.cos).unsqueeze(2)  # [B, S, 1, rd/2]
            sin = nn.functional.embedding(pos, self.sin).unsqueeze(2)
            return cos, sin, torch.from_numpy(visible)

        @torch.no_grad()
        def run_layer(self, i, block, x, ctx):
            cos, sin, visible = ctx
            return block(x, cos, sin, visible)

        @torch.no_grad()
        def final_norm(self, x):
            if not hasattr(self, "_norm"):
                norm = RMSNorm(self.spec.hidden_size, self.spec.norm_eps, self.dtype)
                norm.load_state_dict({"weight": self._tensor("final_norm.weight")}, assign=True)
                self._norm = norm
            return self._norm(x)

        def head(self):
            tied = self.spec.tie_word_embeddings and "lm_head.weight" not in self.source
            w = self.embed_w if tied else self._tensor("lm_head.weight")
            lm = nn.Linear(self.spec.hidden_size, self.spec.vocab_size, bias=False, dtype=self.dtype, device="meta")
            lm.load_state_dict({"weight": w}, assign=True)
            return lm.eval()

    return GLM2LayerStages(spec, source, dtype)
