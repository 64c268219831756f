"""Qwen family: Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`: q/k/v biases) and Qwen3 (`Qwen3ForCausalLM`:
per-head q/k RMSNorm, no biases) — Llama's decoder with their differences as spec data."""

from .adapter import Qwen2Adapter, Qwen3Adapter

__all__ = ["Qwen2Adapter", "Qwen3Adapter"]
