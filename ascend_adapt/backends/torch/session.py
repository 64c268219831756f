"""The "torch" backend: the fp32 CPU golden every other backend is compared with.

Per family, `ascend_adapt.model_zoo.<adapter name>.torch_model.load_reference(spec, stream,
dtype)` builds the reference (Llama: transformers' `LlamaForCausalLM`; ChatGLM-6B: our
reimplementation). Weights always come through the adapter's canonical stream, so every
checkpoint layout the adapters read works here.

No torch import at module level: importing this module stays cheap; torch is imported when a backend is created.

Layer outputs (`full_logits(..., layer_outputs=True)`): a dict name → float32 array with
    "embed"        [B, S, H]  token embeddings
    "layers.{i}"   [B, S, H]  output of decoder layer i (0-based)
    "final_norm"   [B, S, H]  after the final norm
    "logits"       [B, S, V]
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from ascend_adapt._optional import require
from ascend_adapt.errors import ConfigError, UnsupportedError


DTYPES = ("float32", "float16", "bfloat16")


def reference_module(arch: str):
    """The family's torch reference module (`model_zoo/<arch>/torch_model.py`)."""
    name = f"ascend_adapt.model_zoo.{arch}.torch_model"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if not exc.name or not name.startswith(exc.name):  # a missing dependency inside the module
            raise
        raise UnsupportedError(
            f"architecture '{arch}' has no torch reference ({name})",
            "add model_zoo/<arch>/torch_model.py with load_reference(spec, stream, dtype); "
            "see docs/adding_an_architecture.md",
        ) from None


class TorchBackend:
    """fp32 (golden) or fp16 torch execution of a checkpoint directory.

    Args:
        path: HF / Meta checkpoint directory (config.json or params.json + weights).
        dtype: compute dtype: "float32" (golden), "float16" or "bfloat16".

    Attributes:
        name: "torch".
        spec: the `ModelSpec` of the checkpoint.
        path: the directory.
        reference: the family's reference object (holds `.model`, the torch module).
    """

    name = "torch"

    def __init__(self, path, dtype: str = "float32"):
        require("torch", purpose="the torch golden backend")
        from ascend_adapt.checkpoint import open_checkpoint
        from ascend_adapt.model_zoo.base import adapter_for_config

        if dtype not in DTYPES:
            raise ConfigError(f"torch backend: unknown dtype '{dtype}'", f"use one of: {', '.join(DTYPES)}")
        self.path = Path(path)
        self.dtype = dtype
        reader = open_checkpoint(self.path)
        self.adapter = adapter_for_config(reader.config, str(self.path / "config.json"))
        self.spec = self.adapter.spec_from_config(reader.config)
        module = reference_module(self.adapter.name)
        self.reference = module.load_reference(self.spec, self.adapter.iter_canonical(reader, self.spec), dtype)

    @classmethod
    def from_canonical(cls, spec, canonical, dtype: str = "float32") -> "TorchBackend":
        """A backend from a spec and in-memory canonical weights (dict or (name, array) pairs)."""
        self = cls.__new__(cls)
        self.path, self.dtype, self.spec = None, dtype, spec
        from ascend_adapt.model_zoo.base import ADAPTERS

        self.adapter = ADAPTERS.get(spec.arch)
        items = canonical.items() if hasattr(canonical, "items") else canonical
        self.reference = reference_module(spec.arch).load_reference(spec, iter(items), dtype)
        return self

    @property
    def model(self):
        """The torch module (transformers `LlamaForCausalLM`, or `ChatGLMForCausalLM`)."""
        return self.reference.model

    def new_session(self, batch: int, max_len: int):
        """An `LMSession` for `batch` rows over a cache of `max_len` slots."""
        return self.reference.new_session(batch, max_len)

    def full_logits(self, input_ids, attention_mask=None, layer_outputs: bool = False):
        """Golden full forward without cache over a left-padded batch.

        Args:
            input_ids: [B, S] (or [S]) token ids, left-padded.
            attention_mask: [B, S] 1 = real token, 0 = padding (None = no padding).
            layer_outputs: also return the per-layer dict (see module docstring).

        Returns:
            float32 logits [B, S, vocab], or (logits, {name: float32 array}) with `layer_outputs`.
        """
        ids = np.asarray(input_ids, dtype=np.int64)
        ids = ids[None] if ids.ndim == 1 else ids
        return self.reference.full_logits(ids, attention_mask, layer_outputs=layer_outputs)


def torch_backend(path, dtype: str = "float32", **_ignored) -> TorchBackend:
    """Factory of the "torch" backend."""
    return TorchBackend(path, dtype=dtype)

