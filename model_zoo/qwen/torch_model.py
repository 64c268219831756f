"""Qwen2 / Qwen3 golden: transformers' own `Qwen2ForCausalLM` / `Qwen3ForCausalLM`, fed from our
canonical weight stream through the adapter's table (as the Llama golden: strict load, eager
attention, the same session bookkeeping — `model_zoo/llama/torch_model.py`)."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ascend_adapt.model_zoo.llama.torch_model import LlamaReference, build_transformers_model
from ascend_adapt.spec import ModelSpec


def hf_config(spec: ModelSpec, attn_implementation: str = "eager"):
    """A transformers `Qwen2Config` / `Qwen3Config` equivalent to `spec`."""
    import transformers

    eos = spec.eos_token_id
    common = dict(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, hidden_act="silu", max_position_embeddings=spec.max_position,
        rms_norm_eps=spec.norm_eps, rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        tie_word_embeddings=spec.tie_word_embeddings, use_sliding_window=False,
        bos_token_id=spec.bos_token_id, eos_token_id=list(eos) if isinstance(eos, tuple) else eos,
        pad_token_id=spec.pad_token_id,
    )
    if spec.arch == "qwen3":
        cfg = transformers.Qwen3Config(head_dim=spec.head_dim, attention_bias=spec.qkv_bias, **common)
    else:
        cfg = transformers.Qwen2Config(**common)
    cfg._attn_implementation = attn_implementation
    return cfg


def build_hf_model(spec: ModelSpec, canonical: Iterable[tuple[str, np.ndarray]], dtype: str = "float32",
                   attn_implementation: str = "eager"):
    """transformers' Qwen2/Qwen3 causal LM with the canonical weights, loaded strictly under HF names."""
    import transformers

    cls = transformers.Qwen3ForCausalLM if spec.arch == "qwen3" else transformers.Qwen2ForCausalLM
    return build_transformers_model(spec, canonical, cls, hf_config(spec, attn_implementation), dtype)


class QwenReference(LlamaReference):
    """The Llama reference's sessions and full logits over transformers' Qwen2/Qwen3 model."""

    def __init__(self, spec: ModelSpec, stream, dtype: str = "float32"):
        self.spec = spec
        self.dtype = dtype
        self.model = build_hf_model(spec, stream, dtype)


def load_reference(spec: ModelSpec, stream, dtype: str = "float32") -> QwenReference:
    """Family hook used by `ascend_adapt.backends.torch.session`."""
    return QwenReference(spec, stream, dtype)


def calib_stages(spec: ModelSpec, source):
    """Family hook of the layer-streamed calibration: the Llama golden's stepper over transformers'
    Qwen2/Qwen3 classes (`model_zoo/llama/torch_model.py: HFLayerStages`)."""
    from ascend_adapt.model_zoo.llama.torch_model import HFLayerStages

    return HFLayerStages(spec, source, hf_config(spec))


def calib_imports(spec: ModelSpec) -> None:
    """Family hook: the library code of `calib_stages`, imported before `plan_w8a8` reads the
    host's free memory (as the Llama golden's)."""
    from ascend_adapt.model_zoo.llama.torch_model import import_hf_model_code

    import_hf_model_code(hf_config(spec))
