"""ChatGLM2-6B / ChatGLM3-6B adapter: one family, the differences as data.

Facts: ../shared/reference/model_architectures.md §2 (config keys, checkpoint keys, the
contiguous [Q | K | V] fused QKV, the [gate | up] fused dense_h_to_4h, MQA groups, half-head
interleaved rotary, RMSNorm, the rotary precision difference, tokens), §4.3 (MindFormers names).

Both versions ship as `ChatGLMModel` / model_type "chatglm", like ChatGLM-6B (§1). A config is
ChatGLM2/3's when it carries the v2 keys (`multi_query_attention`, `padded_vocab_size`,
`rmsnorm`, …, §2); the adapter claims exactly those configs (`claims`), so the registry picks it
before ChatGLM-6B's adapter. Which version (`glm_version`): the config's `_name_or_path`
("THUDM/chatglm2-6b" / "THUDM/chatglm3-6b", as the real config.json files carry it), else
`rope_ratio` (only ChatGLM3 revisions have it), else ChatGLM2. The version decides:

- the rotary table's precision (`rotary_table_dtype`): ChatGLM2 computes theta, positions and
  angles in the model's dtype ("model_dtype"), ChatGLM3 in fp32 ("float32");
- the chat format and the special tokens (the tokenizer: `model_zoo/tokenizers.py`).

Two adapters, "chatglm2" and "chatglm3", each claiming its version's configs; the spec's `arch`
is "chatglm2" / "chatglm3" and `spec.extra["glm_version"]` 2 / 3. The implementation is this one
package (one torch reference, one MindSpore cell); `model_zoo/chatglm3/` only re-exports them, so
the backends' lookup by `spec.arch` finds them.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ascend_adapt.checkpoint.config import (MAX_HEAD_DIM, MAX_HEADS, MAX_HIDDEN, MAX_INTERMEDIATE, MAX_LAYERS,
                                             MAX_POSITIONS, MAX_VOCAB, ConfigFields, check_head_dim)
from ascend_adapt.errors import UnsupportedError

from ..base import Adapter, register_adapter, table
from ascend_adapt.spec import ModelSpec

ALIASES = {
    "hidden_size": ("hidden_size",),
    "num_layers": ("num_layers", "num_hidden_layers"),
    "num_heads": ("num_attention_heads",),
    "head_dim": ("kv_channels",),
    "num_kv_heads": ("multi_query_group_num",),
    "intermediate_size": ("ffn_hidden_size",),
    "vocab_size": ("padded_vocab_size", "vocab_size"),
    "norm_eps": ("layernorm_epsilon",),
    "max_position": ("seq_length",),
}

# keys only ChatGLM2/3 configs have (ChatGLM-6B's config has none of them, §1.1 vs §2)
V2_KEYS = ("multi_query_attention", "padded_vocab_size", "rmsnorm", "add_qkv_bias", "ffn_hidden_size",
           "kv_channels", "multi_query_group_num")

# the special tokens the original tokenizer appends after the SentencePiece pieces (§2; the ids
# below are the real tokenizer's: 64789 pieces, then these in order)
SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")  # ChatGLM3 only
REAL_NUM_PIECES = 64789

_L = "transformer.encoder.layers.{layer}."
HF_TABLE = table([
    ("embed.weight", "transformer.embedding.word_embeddings.weight"),
    ("layers.{layer}.attn_norm.weight", _L + "input_layernorm.weight"),
    (("layers.{layer}.attn.q.weight", "layers.{layer}.attn.k.weight", "layers.{layer}.attn.v.weight"),
     _L + "self_attention.query_key_value.weight", "glm2_qkv"),
    (("layers.{layer}.attn.q.bias", "layers.{layer}.attn.k.bias", "layers.{layer}.attn.v.bias"),
     _L + "self_attention.query_key_value.bias", "glm2_qkv"),
    ("layers.{layer}.attn.o.weight", _L + "self_attention.dense.weight"),
    ("layers.{layer}.mlp_norm.weight", _L + "post_attention_layernorm.weight"),
    (("layers.{layer}.mlp.gate.weight", "layers.{layer}.mlp.up.weight"), _L + "mlp.dense_h_to_4h.weight",
     "glm2_h_to_4h"),
    ("layers.{layer}.mlp.down.weight", _L + "mlp.dense_4h_to_h.weight"),
    ("final_norm.weight", "transformer.encoder.final_layernorm.weight"),
    ("lm_head.weight", "transformer.output_layer.weight", None, True),
])

# MindFormers GLM2/GLM3 (§4.3): only the word embedding is renamed
MINDFORMERS_TABLE = table([
    (e.canonical, e.source.replace("embedding.word_embeddings.weight", "embedding.embedding_weight"),
     e.transform, e.optional) for e in HF_TABLE
])


def glm_version(config: Mapping) -> int:
    """2 or 3 for a ChatGLM2/3 config: `_name_or_path` / `name_or_path` naming chatglm2 / chatglm3,
    else 3 when it has `rope_ratio` (ChatGLM3 revisions only), else 2."""
    for key in ("_name_or_path", "name_or_path"):
        name = config.get(key)
        if isinstance(name, str):
            low = name.lower()
            if "chatglm3" in low:
                return 3
            if "chatglm2" in low:
                return 2
    return 3 if config.get("rope_ratio") is not None else 2


def is_glm2_config(config: Mapping) -> bool:
    """Whether a `ChatGLMModel` / "chatglm" config is ChatGLM2/3's (it carries v2-only keys)."""
    return any(k in config for k in V2_KEYS)


def split_glm2_qkv(w: np.ndarray, q_rows: int, kv_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fused [Q q_rows | K kv_rows | V kv_rows] rows (contiguous blocks, §2) → q, k, v."""
    if w.shape[0] != q_rows + 2 * kv_rows:
        raise ValueError(f"fused QKV has {w.shape[0]} rows, expected {q_rows} + 2·{kv_rows}")
    return (np.ascontiguousarray(w[:q_rows]), np.ascontiguousarray(w[q_rows:q_rows + kv_rows]),
            np.ascontiguousarray(w[q_rows + kv_rows:]))


@register_adapter
class ChatGLM2Adapter(Adapter):
    name = "chatglm2"
    architectures = ()
    model_types = ()
    shared_names = ("ChatGLMModel", "ChatGLMForConditionalGeneration", "chatglm")
    weight_tables = {"hf": HF_TABLE, "mindformers": MINDFORMERS_TABLE}
    ignored = (r"^transformer\.rotary_pos_emb\.inv_freq$",)
    tokenizer_kind = "chatglm2"
    version = 2  # of the tiny config; a real config's version comes from `glm_version`

    def claims(self, config: Mapping) -> bool:
        return is_glm2_config(config) and glm_version(config) == self.version

    def spec_from_config(self, config: Mapping) -> ModelSpec:
        """ChatGLM2/3 config.json → ModelSpec, every field typed and bounded.

        Raises:
            ConfigError: a missing key or a bad value (naming the file, the key, the value and
                what is expected; see `ascend_adapt/checkpoint/config.py` for the bounds).
            UnsupportedError: variants the original code has but the released models do not use
                (LayerNorm, post-LN residuals, biases on dense layers, an fp32 residual stream),
                quantized or P-tuning configs.
        """
        f = ConfigFields(config, ALIASES)
        refuse = [
            ("rmsnorm", True, "LayerNorm instead of RMSNorm"),
            ("post_layer_norm", True, "no final norm"),
            ("apply_residual_connection_post_layernorm", False, "post-LN residuals"),
            ("add_bias_linear", False, "biases on the dense / MLP layers"),
            ("fp32_residual_connection", False, "an fp32 residual stream"),
        ]
        for key, released, what in refuse:
            if f.bool(key, released) != released:
                raise UnsupportedError(f"{f.source}: {key}={not released} ({what}) is not supported",
                                       f"the released ChatGLM2/3-6B use {key}={str(released).lower()} (reference §2)")
        qbits = f.int("quantization_bit", 0, lo=0, hi=64)
        if qbits:
            raise UnsupportedError(
                f"{f.source}: quantization_bit={qbits} (int4/int8 ChatGLM2/3) is not supported",
                "use the fp16 checkpoint (THUDM/chatglm2-6b, THUDM/chatglm3-6b); quantize for the target later")
        if f.int("pre_seq_len", 0, lo=0, hi=MAX_POSITIONS):
            raise UnsupportedError(f"{f.source}: pre_seq_len (P-tuning v2 prefix) is not supported",
                                   "merge or drop the prefix encoder first")
        H = f.int("hidden_size", hi=MAX_HIDDEN)
        heads = f.int("num_heads", hi=MAX_HEADS)
        f.divisible("hidden_size", H, "num_heads", heads)
        # rotary on the first half of each head in adjacent pairs: head_dim % 4 == 0
        head_dim = check_head_dim(f, f.int("head_dim", H // heads, hi=MAX_HEAD_DIM), "kv_channels", even=4)
        kv = f.int("num_kv_heads", hi=heads) if f.bool("multi_query_attention", False) else heads
        f.divisible("num_heads", heads, "num_kv_heads", kv)
        version = glm_version(config)
        ratio = f.float("rope_ratio", 1.0, lo=0.0, lo_open=True, hi=1e6)
        ids = {name: REAL_NUM_PIECES + i for i, name in enumerate(SPECIAL_TOKENS)}
        return ModelSpec(
            arch=f"chatglm{version}", hidden_size=H, num_layers=f.int("num_layers", hi=MAX_LAYERS),
            num_heads=heads, num_kv_heads=kv, head_dim=head_dim,
            intermediate_size=f.int("intermediate_size", hi=MAX_INTERMEDIATE),
            vocab_size=f.int("vocab_size", hi=MAX_VOCAB), ffn="swiglu", norm="rmsnorm",
            # eps is added to a mean of squares: positive and far below 1 in every model (1e-5)
            norm_eps=f.float("norm_eps", 1e-5, lo=0.0, lo_open=True, hi=1.0),
            residual="prenorm", rotary="interleaved", rotary_dim=head_dim // 2, rope_theta=10000.0 * ratio,
            rotary_table_dtype="model_dtype" if version == 2 else "float32",
            attn_layer_scaling=False, mask_fill=float("-inf"),
            qkv_bias=f.bool("add_qkv_bias", True), o_bias=False, mlp_bias=False,
            tie_word_embeddings=f.bool("tie_word_embeddings", False), tied_source="embed.weight",
            max_position=f.int("max_position", 2048, hi=MAX_POSITIONS), kv_layout="sbhd",
            bos_token_id=f.token_id("bos_token_id", ids["sop"]), eos_token_id=f.token_ids("eos_token_id", 2),
            pad_token_id=f.token_id("pad_token_id", 0), mask_token_id=f.token_id("mask_token_id", ids["[MASK]"]),
            gmask_token_id=f.token_id("gmask_token_id", ids["[gMASK]"]),
            torch_dtype=f.dtype(("torch_dtype",), "float16"),
            extra={"glm_version": version},
        )

    # ---- the two fused tensors (§2) ------------------------------------------------------------
    def split_glm2_qkv(self, w, spec):
        return split_glm2_qkv(w, spec.q_dim, spec.kv_dim)

    def merge_glm2_qkv(self, arrays, spec):
        return np.concatenate(arrays, axis=0)

    def shape_glm2_qkv(self, shapes, spec):
        return (sum(s[0] for s in shapes), *shapes[0][1:])

    def split_glm2_h_to_4h(self, w, spec):
        """dense_h_to_4h [2·I, H] → gate (first half, under SiLU) and up (second half)."""
        I = spec.intermediate_size
        if w.shape[0] != 2 * I:
            raise ValueError(f"dense_h_to_4h has {w.shape[0]} rows, expected 2·{I}")
        return np.ascontiguousarray(w[:I]), np.ascontiguousarray(w[I:])

    def merge_glm2_h_to_4h(self, arrays, spec):
        return np.concatenate(arrays, axis=0)

    shape_glm2_h_to_4h = shape_glm2_qkv

    def tiny_config(self) -> dict:
        """A ChatGLM2-6B config.json with the real keys (§2), tiny sizes (2 KV groups of 2 heads).

        Token ids are filled in by the tiny-checkpoint writer from its tokenizer.
        """
        return {
            "_name_or_path": f"THUDM/chatglm{self.version}-6b", "model_type": "chatglm",
            "architectures": ["ChatGLMModel"],
            "auto_map": {
                "AutoConfig": "configuration_chatglm.ChatGLMConfig",
                "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
                "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
                "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
            },
            "add_bias_linear": False, "add_qkv_bias": True, "apply_query_key_layer_scaling": True,
            "apply_residual_connection_post_layernorm": False, "attention_dropout": 0.0,
            "attention_softmax_in_fp32": True, "bias_dropout_fusion": True, "ffn_hidden_size": 176,
            "fp32_residual_connection": False, "hidden_dropout": 0.0, "hidden_size": 64, "kv_channels": 16,
            "layernorm_epsilon": 1e-05, "multi_query_attention": True, "multi_query_group_num": 2,
            "num_attention_heads": 4, "num_layers": 2, "original_rope": True, "padded_vocab_size": 640,
            "post_layer_norm": True, "rmsnorm": True, "seq_length": 256, "use_cache": True,
            "tie_word_embeddings": False, "torch_dtype": "float32", "transformers_version": "4.30.2",
            "eos_token_id": 2, "pad_token_id": 0,
        }


@register_adapter
class ChatGLM3Adapter(ChatGLM2Adapter):
    """ChatGLM3-6B: the same adapter and data; it claims the configs `glm_version` calls 3."""

    name = "chatglm3"
    version = 3
