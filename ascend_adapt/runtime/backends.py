"""Backend registry: name → factory(path, **options) -> LMBackend.

Built-in backends live in their own modules and register themselves on import; the registry's
loader imports each listed module if it exists (a backend whose optional dependency is missing
raises `MissingDependencyError` only when it is used).

Every artifact directory (HF checkpoint, MindSpore port, ONNX export, simulator artifact) keeps
`config.json` and the tokenizer files of its source, so `generate` can load the tokenizer from
any of them.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Callable

from ascend_adapt.registry import Registry

# backend modules, imported lazily by the registry loader
BUILTIN_BACKEND_MODULES = (
    "ascend_adapt.runtime.torch_backend",      # "torch": fp32 golden (transformers Llama, our ChatGLM-6B)
    "ascend_adapt.model_zoo.ms_backend",       # "mindspore"
    "ascend_adapt.runtime.ort_backend",        # "onnxruntime": built prefill/decode graphs
    "ascend_adapt.runtime.sim_backend",        # "sim": the Ascend CPU simulator on .omsim artifacts
    "ascend_adapt.runtime.acl_backend",        # "acl": real .om through pyACL / ais_bench
    "ascend_adapt.runtime.torch_npu_backend",  # "torch_npu" / "torch_mlu": the torch model on an NPU / MLU
)


def _load() -> None:
    for mod in BUILTIN_BACKEND_MODULES:
        try:
            found = importlib.util.find_spec(mod) is not None
        except ImportError:
            found = False
        if found:
            importlib.import_module(mod)


BACKENDS: Registry[Callable] = Registry("backend", loader=_load)


def get_backend(name: str, path, **options):
    """Create backend `name` for the artifact at `path`."""
    return BACKENDS.get(name)(path, **options)
