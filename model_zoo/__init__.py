"""Model adapters (one package per architecture family) and the normalized spec.

`adapter_for_config(config)` picks the adapter by HF `architectures` / `model_type`;
`ADAPTERS` is the registry (loading it imports the built-in families).
"""

from .base import ADAPTERS, Adapter, WeightEntry, adapter_for_config, register_adapter
from ascend_adapt.spec import ModelSpec

__all__ = ["ADAPTERS", "Adapter", "WeightEntry", "adapter_for_config", "register_adapter", "ModelSpec"]
