"""ChatGLM-6B adapter: config → ModelSpec, the real key names, the per-head interleaved fused QKV.

Facts: ../shared/reference/model_architectures.md §1 (config keys, checkpoint keys, QKV layout,
block math, attention quirks, 2-D rotary, §1.12 behaviours of the original code).

Two conventions we follow, as the original code does (§1.12):
- α = sqrt(2·28) for every config: the original never passes num_layers to its blocks.
- `lm_head.weight` is tied to the embedding on load and wins: the spec says
  `tie_word_embeddings=True, tied_source="lm_head.weight"`; both tensors stay in the canonical
  stream so HF → canonical → HF is bit-exact.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ascend_adapt.checkpoint.config import (MAX_HEADS, MAX_HIDDEN, MAX_INTERMEDIATE, MAX_LAYERS, MAX_POSITIONS,
                                             MAX_VOCAB, ConfigFields, check_head_dim)
from ascend_adapt.errors import UnsupportedError

from ascend_adapt.spec import ModelSpec, glm_alpha

from ..base import Adapter, register_adapter, table
from .positions import GLM2D_POSITIONS

ALIASES = {
    "hidden_size": ("hidden_size",),
    "num_layers": ("num_layers", "num_hidden_layers"),
    "num_heads": ("num_attention_heads",),
    "intermediate_size": ("inner_hidden_size", "ffn_hidden_size"),
    "vocab_size": ("vocab_size", "padded_vocab_size"),
    "norm_eps": ("layernorm_epsilon",),
    "max_position": ("max_sequence_length", "seq_length"),
}

_L = "transformer.layers.{layer}."
HF_TABLE = table([
    ("embed.weight", "transformer.word_embeddings.weight"),
    ("layers.{layer}.attn_norm.weight", _L + "input_layernorm.weight"),
    ("layers.{layer}.attn_norm.bias", _L + "input_layernorm.bias"),
    (("layers.{layer}.attn.q.weight", "layers.{layer}.attn.k.weight", "layers.{layer}.attn.v.weight"),
     _L + "attention.query_key_value.weight", "glm_qkv"),
    (("layers.{layer}.attn.q.bias", "layers.{layer}.attn.k.bias", "layers.{layer}.attn.v.bias"),
     _L + "attention.query_key_value.bias", "glm_qkv"),
    ("layers.{layer}.attn.o.weight", _L + "attention.dense.weight"),
    ("layers.{layer}.attn.o.bias", _L + "attention.dense.bias"),
    ("layers.{layer}.mlp_norm.weight", _L + "post_attention_layernorm.weight"),
    ("layers.{layer}.mlp_norm.bias", _L + "post_attention_layernorm.bias"),
    ("layers.{layer}.mlp.up.weight", _L + "mlp.dense_h_to_4h.weight"),
    ("layers.{layer}.mlp.up.bias", _L + "mlp.dense_h_to_4h.bias"),
    ("layers.{layer}.mlp.down.weight", _L + "mlp.dense_4h_to_h.weight"),
    ("layers.{layer}.mlp.down.bias", _L + "mlp.dense_4h_to_h.bias"),
    ("final_norm.weight", "transformer.final_layernorm.weight"),
    ("final_norm.bias", "transformer.final_layernorm.bias"),
    ("lm_head.weight", "lm_head.weight"),
])

# MindFormers GLM v1 names (§4.2): LayerNorm weight/bias → gamma/beta, embedding_table.
MINDFORMERS_TABLE = table([
    (e.canonical, e.source.replace("word_embeddings.weight", "word_embeddings.embedding_table")
     .replace("layernorm.weight", "layernorm.gamma").replace("layernorm.bias", "layernorm.beta"),
     e.transform, e.optional) for e in HF_TABLE
])


def split_glm_qkv(w: np.ndarray, num_heads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-head interleaved fused QKV [heads·3·D, …] → q, k, v each [heads·D, …] (§1.2)."""
    rows, rest = w.shape[0], w.shape[1:]
    d = rows // (3 * num_heads)
    blocks = w.reshape(num_heads, 3, d, *rest)
    return tuple(np.ascontiguousarray(blocks[:, i].reshape(num_heads * d, *rest)) for i in range(3))


def merge_glm_qkv(q: np.ndarray, k: np.ndarray, v: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of `split_glm_qkv`."""
    rest = q.shape[1:]
    d = q.shape[0] // num_heads
    stacked = np.stack([x.reshape(num_heads, d, *rest) for x in (q, k, v)], axis=1)
    return stacked.reshape(num_heads * 3 * d, *rest)


@register_adapter
class ChatGLMAdapter(Adapter):
    name = "chatglm"
    architectures = ("ChatGLMModel", "ChatGLMForConditionalGeneration")
    model_types = ("chatglm",)
    weight_tables = {"hf": HF_TABLE, "mindformers": MINDFORMERS_TABLE}
    ignored = (r"attention\.rotary_emb\.inv_freq$",)
    tokenizer_kind = "chatglm"
    position_scheme = GLM2D_POSITIONS  # 2-D positions, prefix-LM context, prompts end in [gMASK] <sop>
    serving_engines = ()
    verify_prompt = "你好"  # ChatGLM-6B's icetk vocabulary is built for Chinese text
    not_served = ("ChatGLM-6B (v1) is not served by vLLM-Ascend or MindIE (their ChatGLM support is ChatGLM2/3)",
                  "use ascend-adapt convert --quantize w8a8 for the OM route, or a ChatGLM2/3 checkpoint")

    def spec_from_config(self, config: Mapping) -> ModelSpec:
        """ChatGLM-6B config.json → ModelSpec, every field typed and bounded.

        Raises:
            ConfigError: a missing key or a bad value (naming the file, the key, the value and
                what is expected; see `ascend_adapt/checkpoint/config.py` for the bounds).
            UnsupportedError: ChatGLM2/3, 1-D positions, quantized or P-tuning configs.
        """
        f = ConfigFields(config, ALIASES)
        c = config
        if "multi_query_attention" in c or "padded_vocab_size" in c or "rmsnorm" in c:
            raise UnsupportedError(
                f"{f.source} describes ChatGLM2/ChatGLM3 (multi_query_attention / padded_vocab_size), "
                "not ChatGLM-6B v1",
                "ChatGLM2/3 are not supported yet: their QKV layout, RoPE and norms differ (reference §2)",
            )
        if not f.bool("position_encoding_2d", True):
            raise UnsupportedError(f"{f.source}: position_encoding_2d=false is not supported",
                                   "ChatGLM-6B uses 2-D positions; this checkpoint is a different GLM")
        # quantization_bit is 4 or 8 in the int4 / int8 repos; pre_seq_len a prefix length (128)
        qbits = f.int("quantization_bit", 0, lo=0, hi=64)
        if qbits:
            raise UnsupportedError(
                f"{f.source}: quantization_bit={qbits} (int4/int8 ChatGLM) is not supported",
                "use the fp16 checkpoint THUDM/chatglm-6b; quantize for the target with ATC/AMCT later",
            )
        if f.int("pre_seq_len", 0, lo=0, hi=MAX_POSITIONS):
            raise UnsupportedError(f"{f.source}: pre_seq_len (P-tuning v2 prefix) is not supported",
                                   "merge or drop the prefix encoder first")
        H = f.int("hidden_size", hi=MAX_HIDDEN)
        heads = f.int("num_heads", hi=MAX_HEADS)
        f.divisible("hidden_size", H, "num_heads", heads)
        # glm2d: each half of a head is rotated in (half-split) pairs, so head_dim % 4 == 0
        head_dim = check_head_dim(f, H // heads, f.find("hidden_size")[0], even=4)
        return ModelSpec(
            arch="chatglm", hidden_size=H, num_layers=f.int("num_layers", hi=MAX_LAYERS),
            num_heads=heads, num_kv_heads=heads, head_dim=head_dim,
            intermediate_size=f.int("intermediate_size", 4 * H, hi=MAX_INTERMEDIATE),
            vocab_size=f.int("vocab_size", hi=MAX_VOCAB), ffn="gelu_tanh", norm="layernorm",
            # eps is added to a variance: positive and far below 1 in every model (1e-5)
            norm_eps=f.float("norm_eps", 1e-5, lo=0.0, lo_open=True, hi=1.0),
            residual="glm_alpha", residual_alpha=glm_alpha(),
            rotary="glm2d", rotary_dim=head_dim // 2, rope_theta=10000.0, rotary_table_dtype="float16",
            attn_layer_scaling=True, mask_fill=-10000.0,
            qkv_bias=True, o_bias=True, mlp_bias=True,
            tie_word_embeddings=f.bool("tie_word_embeddings", True), tied_source="lm_head.weight",
            max_position=f.int("max_position", 2048, hi=MAX_POSITIONS), kv_layout="sbhd",
            bos_token_id=f.token_id("bos_token_id", 130004), eos_token_id=f.token_ids("eos_token_id", 130005),
            pad_token_id=f.token_id("pad_token_id", 3), mask_token_id=f.token_id("mask_token_id", 130000),
            gmask_token_id=f.token_id("gmask_token_id", 130001),
            torch_dtype=f.dtype(("torch_dtype",), "float16"),
        )

    def split_glm_qkv(self, w, spec):
        return split_glm_qkv(w, spec.num_heads)

    def shape_glm_qkv(self, shapes, spec):
        return (sum(s[0] for s in shapes), *shapes[0][1:])  # q, k, v rows stacked

    def merge_glm_qkv(self, arrays, spec):
        return merge_glm_qkv(*arrays, spec.num_heads)

    def tiny_config(self) -> dict:
        """A ChatGLM-6B config.json with the real keys (§1.1), tiny sizes.

        Token ids are filled in by the tiny-checkpoint writer from its tokenizer.
        """
        return {
            "_name_or_path": "THUDM/chatglm-6b", "architectures": ["ChatGLMModel"],
            "auto_map": {
                "AutoConfig": "configuration_chatglm.ChatGLMConfig",
                "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
                "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
            },
            "model_type": "chatglm", "hidden_size": 64, "inner_hidden_size": 256,
            "num_attention_heads": 4, "num_layers": 2, "layernorm_epsilon": 1e-05,
            "max_sequence_length": 256, "position_encoding_2d": True, "use_cache": True,
            "vocab_size": 640, "torch_dtype": "float32", "transformers_version": "4.23.1",
            "bos_token_id": 130004, "eos_token_id": 130005, "mask_token_id": 130000,
            "gmask_token_id": 130001, "pad_token_id": 3,
        }
