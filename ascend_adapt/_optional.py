"""Guarded imports of optional and heavy dependencies.

`require("mindspore", extra=None, purpose="the MindSpore route")` imports and returns the module,
or raises `MissingDependencyError` naming the package and the extra that provides it.
`available("torch_npu")` answers without importing (importlib.util.find_spec).
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import MissingDependencyError

# import name -> (distribution, extra)
_KNOWN = {
    "torch": ("torch", None),
    "mindspore": ("mindspore", None),
    "onnx": ("onnx", None),
    "onnxruntime": ("onnxruntime", None),
    "transformers": ("transformers", None),
    "sentencepiece": ("sentencepiece", None),
    "safetensors": ("safetensors", None),
    "matplotlib": ("matplotlib", "plot"),
    "torch_npu": ("torch-npu", "npu"),
    "acl": ("pyACL (CANN toolkit)", None),
    "ais_bench": ("ais_bench", "msit"),
}


def available(module: str) -> bool:
    """True when `module` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import `module` or raise an error that names the package and extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        dist, extra = _KNOWN.get(module.split(".")[0], (module.split(".")[0], None))
        err = MissingDependencyError(dist, extra, purpose)
        raise err from exc
