"""Llama-2 adapter: HF config → ModelSpec, weight names as data, Meta ↔ HF rotary permutation.

Facts: ../shared/reference/model_architectures.md §3 (keys, Meta names, the Q/K permutation,
configs, numerics). Canonical Q/K rows are in HF's half-split (rotate_half) convention.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ascend_adapt.checkpoint.config import (MAX_FFN_MULTIPLIER, MAX_HEAD_DIM, MAX_HEADS, MAX_HIDDEN,
                                             MAX_INTERMEDIATE, MAX_LAYERS, MAX_MULTIPLE_OF, MAX_POSITIONS,
                                             MAX_VOCAB, ConfigFields, check_head_dim, shown)
from ascend_adapt.errors import ConfigError, UnsupportedError

from ..base import Adapter, register_adapter, table
from ascend_adapt.spec import ModelSpec

ALIASES = {
    "hidden_size": ("hidden_size", "dim"),
    "num_layers": ("num_hidden_layers", "n_layers"),
    "num_heads": ("num_attention_heads", "n_heads"),
    "num_kv_heads": ("num_key_value_heads", "n_kv_heads"),
    "intermediate_size": ("intermediate_size",),
    "vocab_size": ("vocab_size",),
    "norm_eps": ("rms_norm_eps", "norm_eps"),
    "max_position": ("max_position_embeddings", "max_seq_len"),
    "head_dim": ("head_dim",),
}

HF_TABLE = table([
    ("embed.weight", "model.embed_tokens.weight"),
    ("layers.{layer}.attn_norm.weight", "model.layers.{layer}.input_layernorm.weight"),
    ("layers.{layer}.attn.q.weight", "model.layers.{layer}.self_attn.q_proj.weight"),
    ("layers.{layer}.attn.k.weight", "model.layers.{layer}.self_attn.k_proj.weight"),
    ("layers.{layer}.attn.v.weight", "model.layers.{layer}.self_attn.v_proj.weight"),
    ("layers.{layer}.attn.o.weight", "model.layers.{layer}.self_attn.o_proj.weight"),
    ("layers.{layer}.mlp_norm.weight", "model.layers.{layer}.post_attention_layernorm.weight"),
    ("layers.{layer}.mlp.gate.weight", "model.layers.{layer}.mlp.gate_proj.weight"),
    ("layers.{layer}.mlp.up.weight", "model.layers.{layer}.mlp.up_proj.weight"),
    ("layers.{layer}.mlp.down.weight", "model.layers.{layer}.mlp.down_proj.weight"),
    ("final_norm.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight", None, True),
])

# Meta's consolidated.*.pth names (§3.1); wq / wk carry the interleaved-pair rotary convention.
META_TABLE = table([
    ("embed.weight", "tok_embeddings.weight"),
    ("layers.{layer}.attn_norm.weight", "layers.{layer}.attention_norm.weight"),
    ("layers.{layer}.attn.q.weight", "layers.{layer}.attention.wq.weight", "meta_q"),
    ("layers.{layer}.attn.k.weight", "layers.{layer}.attention.wk.weight", "meta_k"),
    ("layers.{layer}.attn.v.weight", "layers.{layer}.attention.wv.weight"),
    ("layers.{layer}.attn.o.weight", "layers.{layer}.attention.wo.weight"),
    ("layers.{layer}.mlp_norm.weight", "layers.{layer}.ffn_norm.weight"),
    ("layers.{layer}.mlp.gate.weight", "layers.{layer}.feed_forward.w1.weight"),
    ("layers.{layer}.mlp.up.weight", "layers.{layer}.feed_forward.w3.weight"),
    ("layers.{layer}.mlp.down.weight", "layers.{layer}.feed_forward.w2.weight"),
    ("final_norm.weight", "norm.weight"),
    ("lm_head.weight", "output.weight"),
])

# MindFormers' Llama checkpoint names (§4.1): same tensors, same [out, in] layout, no permute.
MINDFORMERS_TABLE = table([
    ("embed.weight", "model.tok_embeddings.embedding_weight"),
    ("layers.{layer}.attn_norm.weight", "model.layers.{layer}.attention_norm.weight"),
    ("layers.{layer}.attn.q.weight", "model.layers.{layer}.attention.wq.weight"),
    ("layers.{layer}.attn.k.weight", "model.layers.{layer}.attention.wk.weight"),
    ("layers.{layer}.attn.v.weight", "model.layers.{layer}.attention.wv.weight"),
    ("layers.{layer}.attn.o.weight", "model.layers.{layer}.attention.wo.weight"),
    ("layers.{layer}.mlp_norm.weight", "model.layers.{layer}.ffn_norm.weight"),
    ("layers.{layer}.mlp.gate.weight", "model.layers.{layer}.feed_forward.w1.weight"),
    ("layers.{layer}.mlp.up.weight", "model.layers.{layer}.feed_forward.w3.weight"),
    ("layers.{layer}.mlp.down.weight", "model.layers.{layer}.feed_forward.w2.weight"),
    ("final_norm.weight", "model.norm_out.weight"),
    ("lm_head.weight", "lm_head.weight", None, True),
])


def meta_to_hf_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Meta interleaved-pair rows → HF half-split rows, per head (HF row h·D + j·D/2 + i ← Meta h·D + 2i + j)."""
    rows, cols = w.shape[0], w.shape[1:]
    d = rows // n_heads
    return w.reshape(n_heads, d // 2, 2, *cols).swapaxes(1, 2).reshape(rows, *cols)


def hf_to_meta_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of `meta_to_hf_rows`."""
    rows, cols = w.shape[0], w.shape[1:]
    d = rows // n_heads
    return w.reshape(n_heads, 2, d // 2, *cols).swapaxes(1, 2).reshape(rows, *cols)


def _ffn_size(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@register_adapter
class LlamaAdapter(Adapter):
    name = "llama"
    architectures = ("LlamaForCausalLM",)
    model_types = ("llama",)
    weight_tables = {"hf": HF_TABLE, "meta": META_TABLE, "mindformers": MINDFORMERS_TABLE}
    ignored = (r"rotary_emb\.inv_freq$", r"^rope\.freqs$")
    gguf_architectures = ("llama",)

    def gguf_config(self, meta) -> dict:
        """GGUF metadata → a Llama config.json (GGUF records no activation and no bias switch)."""
        cfg = super().gguf_config(meta)
        cfg.update(hidden_act="silu", attention_bias=False, mlp_bias=False, rope_scaling=None)
        return cfg

    def gguf_tensor(self, hf_name, array, config):
        """llama.cpp's converter permutes Llama's Q/K rows into Meta's interleaved pairs for its rotary
        kernel: the inverse is the Meta → HF permutation."""
        if hf_name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
            heads = config["num_attention_heads" if ".q_proj." in hf_name else "num_key_value_heads"]
            return meta_to_hf_rows(array, heads)
        return array

    def spec_from_config(self, config: Mapping) -> ModelSpec:
        """HF config.json (or Meta params.json) → ModelSpec, every field typed and bounded.

        Raises:
            ConfigError: a missing key or a bad value (naming the file, the key, the value and
                what is expected; see `ascend_adapt/checkpoint/config.py` for the bounds).
            UnsupportedError: rope scaling, biases or an activation other than silu.
        """
        f = ConfigFields(config, ALIASES)
        c = config
        meta = "dim" in c and "n_layers" in c
        H = f.int("hidden_size", hi=MAX_HIDDEN)
        layers = f.int("num_layers", hi=MAX_LAYERS)
        heads = f.int("num_heads", hi=MAX_HEADS)
        kv = f.int("num_kv_heads", heads, hi=heads)
        f.divisible("num_heads", heads, "num_kv_heads", kv)
        if c.get("head_dim") is not None:
            head_dim = check_head_dim(f, f.int("head_dim", hi=MAX_HEAD_DIM))
        else:
            f.divisible("hidden_size", H, "num_heads", heads)
            head_dim = check_head_dim(f, H // heads, f.find("hidden_size")[0])
        if meta:
            if c.get("vocab_size") == -1:
                raise ConfigError(f"{f.source}: vocab_size is -1",
                                  "set vocab_size in params.json to the tokenizer's size (32000 for Llama-2)")
            vocab = f.int("vocab_size", hi=MAX_VOCAB)
            multiplier = f.float("ffn_dim_multiplier", None, lo=0.0, lo_open=True, hi=MAX_FFN_MULTIPLIER)
            inter = _ffn_size(H, f.int("multiple_of", 256, hi=MAX_MULTIPLE_OF), multiplier)
            if inter > MAX_INTERMEDIATE:
                raise f.error("ffn_dim_multiplier", multiplier,
                              f"a factor that keeps the FFN size <= {MAX_INTERMEDIATE} (it gives {inter})")
        else:
            inter = f.int("intermediate_size", hi=MAX_INTERMEDIATE)
            vocab = f.int("vocab_size", hi=MAX_VOCAB)
        rope = f.mapping("rope_parameters")
        rf = ConfigFields(rope, source=f"{f.source} (rope_parameters)")
        theta = rf.float("rope_theta", None, lo=0.0, lo_open=True)
        if theta is None:
            theta = f.float("rope_theta", 10000.0, lo=0.0, lo_open=True)
        rope_type = rf.str("rope_type", "default")
        scaling = c.get("rope_scaling") or (rope if rope_type != "default" else None)
        if scaling:
            raise UnsupportedError(f"{f.source}: rope scaling {shown(scaling)} is not supported yet",
                                   "Llama-2 uses none; remove rope_scaling or open an issue for this model")
        if f.bool("attention_bias", False) or f.bool("mlp_bias", False):
            raise UnsupportedError(f"{f.source}: attention_bias / mlp_bias are not supported for llama",
                                   "Llama-2 has no biases; this checkpoint is a different architecture")
        act = f.str("hidden_act", "silu")
        if act != "silu":
            raise UnsupportedError(f"{f.source}: hidden_act {shown(act)} is not supported for llama (expected silu)")
        return ModelSpec(
            arch="llama", hidden_size=H, num_layers=layers,
            num_heads=heads, num_kv_heads=kv, head_dim=head_dim, intermediate_size=inter,
            vocab_size=vocab, ffn="swiglu", norm="rmsnorm",
            # eps is added to a mean of squares: positive and far below 1 in every model (1e-5, 1e-6)
            norm_eps=f.float("norm_eps", 1e-5, lo=0.0, lo_open=True, hi=1.0),
            residual="prenorm", rotary="half_split", rotary_dim=head_dim, rope_theta=theta,
            rotary_table_dtype="float32", mask_fill=float("-inf"),
            tie_word_embeddings=f.bool("tie_word_embeddings", False), tied_source="embed.weight",
            max_position=f.int("max_position", 4096, hi=MAX_POSITIONS), kv_layout="bhsd",
            bos_token_id=f.token_id("bos_token_id", 1), eos_token_id=f.token_ids("eos_token_id", 2),
            pad_token_id=f.token_id("pad_token_id"),
            torch_dtype=f.dtype(("torch_dtype", "dtype"), "float32"),
        )

    # Meta's Q/K permutation (§3.2) — the only real transform of this family
    def split_meta_q(self, w, spec):
        return (meta_to_hf_rows(w, spec.num_heads),)

    def merge_meta_q(self, arrays, spec):
        return hf_to_meta_rows(arrays[0], spec.num_heads)

    def shape_meta_q(self, shapes, spec):
        return shapes[0]  # a row permutation

    shape_meta_k = shape_meta_q

    def split_meta_k(self, w, spec):
        return (meta_to_hf_rows(w, spec.num_kv_heads),)

    def merge_meta_k(self, arrays, spec):
        return hf_to_meta_rows(arrays[0], spec.num_kv_heads)

    def tiny_config(self) -> dict:
        """A Llama-2-style config.json (as the HF Llama-2 repos ship it), tiny, with GQA."""
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu",
            "max_position_embeddings": 256, "initializer_range": 0.02, "rms_norm_eps": 1e-05,
            "rope_theta": 10000.0, "rope_scaling": None, "attention_bias": False,
            "pretraining_tp": 1, "tie_word_embeddings": False, "use_cache": True,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None,
            "vocab_size": 512, "torch_dtype": "float32", "transformers_version": "4.31.0",
        }
