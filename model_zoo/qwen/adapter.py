"""Qwen2 / Qwen2.5 / Qwen3 adapters: HF config → ModelSpec, weight names as data.

Both are Llama's pre-norm decoder (RMSNorm, SwiGLU, half-split rotary over the whole head, GQA);
what differs is data on the spec (transformers' `modeling_qwen2.py` / `modeling_qwen3.py`):

- Qwen2 / Qwen2.5: q/k/v projections WITH bias (always: the config has no switch), o without;
  rope_theta 1e6 on the released models; tied embeddings on the small sizes (0.5B–3B).
- Qwen3: no q/k/v bias (`attention_bias`, default false), and an RMSNorm over head_dim applied
  to every query and key head before the rotary (`q_norm` / `k_norm`, weights [head_dim]);
  `head_dim` is its own config key (128 in the released models, not hidden / heads).

Sliding-window attention (`use_sliding_window`, off in every released config) and rope scaling
(YaRN for long contexts) are refused with a clear error.
"""

from __future__ import annotations

from typing import Mapping

from ascend_adapt.checkpoint.config import (MAX_HEAD_DIM, MAX_HEADS, MAX_HIDDEN, MAX_INTERMEDIATE, MAX_LAYERS,
                                             MAX_POSITIONS, MAX_VOCAB, ConfigFields, check_head_dim, shown)
from ascend_adapt.errors import UnsupportedError

from ..base import Adapter, register_adapter, table
from ascend_adapt.spec import ModelSpec

ALIASES = {
    "hidden_size": ("hidden_size",),
    "num_layers": ("num_hidden_layers",),
    "num_heads": ("num_attention_heads",),
    "num_kv_heads": ("num_key_value_heads",),
    "intermediate_size": ("intermediate_size",),
    "vocab_size": ("vocab_size",),
    "norm_eps": ("rms_norm_eps",),
    "max_position": ("max_position_embeddings",),
    "head_dim": ("head_dim",),
}

# transformers' Qwen2 / Qwen3 state-dict names; rows whose canonical tensor the spec lacks (biases
# on Qwen3, q/k norms on Qwen2) drop out of the concrete table (`Adapter.entries`)
HF_TABLE = table([
    ("embed.weight", "model.embed_tokens.weight"),
    ("layers.{layer}.attn_norm.weight", "model.layers.{layer}.input_layernorm.weight"),
    ("layers.{layer}.attn.q.weight", "model.layers.{layer}.self_attn.q_proj.weight"),
    ("layers.{layer}.attn.q.bias", "model.layers.{layer}.self_attn.q_proj.bias"),
    ("layers.{layer}.attn.k.weight", "model.layers.{layer}.self_attn.k_proj.weight"),
    ("layers.{layer}.attn.k.bias", "model.layers.{layer}.self_attn.k_proj.bias"),
    ("layers.{layer}.attn.v.weight", "model.layers.{layer}.self_attn.v_proj.weight"),
    ("layers.{layer}.attn.v.bias", "model.layers.{layer}.self_attn.v_proj.bias"),
    ("layers.{layer}.attn.q_norm.weight", "model.layers.{layer}.self_attn.q_norm.weight"),
    ("layers.{layer}.attn.k_norm.weight", "model.layers.{layer}.self_attn.k_norm.weight"),
    ("layers.{layer}.attn.o.weight", "model.layers.{layer}.self_attn.o_proj.weight"),
    ("layers.{layer}.attn.o.bias", "model.layers.{layer}.self_attn.o_proj.bias"),
    ("layers.{layer}.mlp_norm.weight", "model.layers.{layer}.post_attention_layernorm.weight"),
    ("layers.{layer}.mlp.gate.weight", "model.layers.{layer}.mlp.gate_proj.weight"),
    ("layers.{layer}.mlp.up.weight", "model.layers.{layer}.mlp.up_proj.weight"),
    ("layers.{layer}.mlp.down.weight", "model.layers.{layer}.mlp.down_proj.weight"),
    ("final_norm.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight", None, True),
])


class _QwenAdapter(Adapter):
    weight_tables = {"hf": HF_TABLE}
    ignored = (r"rotary_emb\.inv_freq$",)
    tokenizer_kind = "bpe"
    # the variant's facts: q/k/v bias always on (Qwen2) or from attention_bias (Qwen3); q/k norm
    always_qkv_bias = False
    qk_norm = False

    def spec_from_config(self, config: Mapping) -> ModelSpec:
        """HF config.json → ModelSpec, every field typed and bounded.

        Raises:
            ConfigError: a missing key or a bad value (naming the file, the key and the value).
            UnsupportedError: rope scaling, sliding-window attention or an activation other than silu.
        """
        f = ConfigFields(config, ALIASES)
        c = config
        H = f.int("hidden_size", hi=MAX_HIDDEN)
        heads = f.int("num_heads", hi=MAX_HEADS)
        kv = f.int("num_kv_heads", heads, hi=heads)
        f.divisible("num_heads", heads, "num_kv_heads", kv)
        if c.get("head_dim") is not None:
            head_dim = check_head_dim(f, f.int("head_dim", hi=MAX_HEAD_DIM))
        else:
            f.divisible("hidden_size", H, "num_heads", heads)
            head_dim = check_head_dim(f, H // heads, f.find("hidden_size")[0])
        rope = f.mapping("rope_parameters")
        rf = ConfigFields(rope, source=f"{f.source} (rope_parameters)")
        theta = rf.float("rope_theta", None, lo=0.0, lo_open=True)
        if theta is None:
            theta = f.float("rope_theta", 10000.0, lo=0.0, lo_open=True)
        scaling = c.get("rope_scaling") or (rope if rf.str("rope_type", "default") != "default" else None)
        if scaling:
            raise UnsupportedError(f"{f.source}: rope scaling {shown(scaling)} is not supported yet",
                                   "the released Qwen configs use none; remove rope_scaling (YaRN) for "
                                   "contexts within max_position_embeddings")
        if f.bool("use_sliding_window", False):
            raise UnsupportedError(f"{f.source}: use_sliding_window = true is not supported",
                                   "every released Qwen2/2.5/3 config has it false; set it to false")
        act = f.str("hidden_act", "silu")
        if act != "silu":
            raise UnsupportedError(f"{f.source}: hidden_act {shown(act)} is not supported for {self.name} "
                                   "(expected silu)")
        bias = True if self.always_qkv_bias else f.bool("attention_bias", False)
        return ModelSpec(
            arch=self.name, hidden_size=H, num_layers=f.int("num_layers", hi=MAX_LAYERS),
            num_heads=heads, num_kv_heads=kv, head_dim=head_dim,
            intermediate_size=f.int("intermediate_size", hi=MAX_INTERMEDIATE),
            vocab_size=f.int("vocab_size", hi=MAX_VOCAB), ffn="swiglu", norm="rmsnorm",
            norm_eps=f.float("norm_eps", 1e-6, lo=0.0, lo_open=True, hi=1.0),
            residual="prenorm", rotary="half_split", rotary_dim=head_dim, rope_theta=theta,
            rotary_table_dtype="float32", mask_fill=float("-inf"),
            qkv_bias=bias, o_bias=bias and not self.always_qkv_bias, qk_norm=self.qk_norm,
            tie_word_embeddings=f.bool("tie_word_embeddings", False), tied_source="embed.weight",
            max_position=f.int("max_position", 32768, hi=MAX_POSITIONS), kv_layout="bhsd",
            bos_token_id=f.token_id("bos_token_id"), eos_token_id=f.token_ids("eos_token_id"),
            pad_token_id=f.token_id("pad_token_id"),
            torch_dtype=f.dtype(("torch_dtype", "dtype"), "float32"),
        )


@register_adapter
class Qwen2Adapter(_QwenAdapter):
    name = "qwen2"
    architectures = ("Qwen2ForCausalLM",)
    model_types = ("qwen2",)
    always_qkv_bias = True
    gguf_architectures = ("qwen2",)

    def gguf_config(self, meta) -> dict:
        """GGUF metadata → a Qwen2 config.json (q/k/v biases need no switch; no sliding window)."""
        cfg = super().gguf_config(meta)
        cfg.update(hidden_act="silu", use_sliding_window=False)
        return cfg

    def tiny_config(self) -> dict:
        """A Qwen2.5-0.5B-style config.json, tiny: GQA, q/k/v bias, rope_theta 1e6, tied."""
        return {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu",
            "max_position_embeddings": 256, "initializer_range": 0.02, "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0, "use_sliding_window": False, "sliding_window": 256, "max_window_layers": 2,
            "tie_word_embeddings": True, "use_cache": True, "attention_dropout": 0.0,
            "bos_token_id": None, "eos_token_id": 2, "vocab_size": 512,
            "torch_dtype": "float32", "transformers_version": "4.43.1",
        }


@register_adapter
class Qwen3Adapter(_QwenAdapter):
    name = "qwen3"
    architectures = ("Qwen3ForCausalLM",)
    model_types = ("qwen3",)
    qk_norm = True
    gguf_architectures = ("qwen3",)

    def gguf_config(self, meta) -> dict:
        """GGUF metadata → a Qwen3 config.json (`attention_bias` from whether the q bias is stored)."""
        cfg = super().gguf_config(meta)
        cfg.update(hidden_act="silu", attention_bias=meta.has_tensor("blk.0.attn_q.bias"))
        return cfg

    def tiny_config(self) -> dict:
        """A Qwen3-0.6B-style config.json, tiny: GQA, head_dim its own key (≠ hidden / heads),
        q/k RMSNorm, no bias, rope_theta 1e6, tied."""
        return {
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
            "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "hidden_act": "silu",
            "max_position_embeddings": 256, "initializer_range": 0.02, "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0, "attention_bias": False, "use_sliding_window": False,
            "sliding_window": None, "max_window_layers": 2, "tie_word_embeddings": True, "use_cache": True,
            "attention_dropout": 0.0, "bos_token_id": None, "eos_token_id": 2, "vocab_size": 512,
            "torch_dtype": "float32", "transformers_version": "4.51.0",
        }
