"""Llama-2 family (HF `LlamaForCausalLM`, and Meta's original consolidated layout)."""

from .adapter import LlamaAdapter

__all__ = ["LlamaAdapter"]
