"""dtype names shared by every checkpoint format.

Canonical names are numpy-style strings ("float32", "bfloat16", …). numpy has no bfloat16 or
float8, so those are represented with `ml_dtypes` (a dependency of onnx), imported lazily.
"""

from __future__ import annotations

import numpy as np

from ..errors import CheckpointError

# safetensors dtype tag -> canonical name
SAFETENSORS_TO_CANONICAL = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
CANONICAL_TO_SAFETENSORS = {v: k for k, v in SAFETENSORS_TO_CANONICAL.items()}

ITEMSIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1,
    "uint64": 8, "uint32": 4, "uint16": 2, "uint8": 1, "bool": 1,
    "float8_e4m3fn": 1, "float8_e5m2": 1,
}


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype for a canonical name (ml_dtypes for bfloat16 / float8)."""
    if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
    try:
        return np.dtype(name)
    except TypeError:
        raise CheckpointError(f"unknown dtype '{name}'") from None


def canonical_name(dtype) -> str:
    """Canonical name of a numpy dtype, a torch dtype or a name string."""
    s = str(dtype)
    s = s.replace("torch.", "")
    aliases = {"float": "float32", "half": "float16", "double": "float64", "long": "int64",
               "int": "int32", "short": "int16", "bool_": "bool", "float8_e4m3fn": "float8_e4m3fn"}
    s = aliases.get(s, s)
    if s not in ITEMSIZE:
        raise CheckpointError(
            f"unsupported dtype '{dtype}'",
            f"supported dtypes: {', '.join(sorted(ITEMSIZE))}",
        )
    return s
