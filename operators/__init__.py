"""Custom-operator registry contents (imported as `ascend_adapt.operators`).

One module per operator: its spec, numpy reference, ONNX emission (fused where the target has
the op, else a decomposition into target-supported primitives), MindSpore implementation where
the MindSpore models use it, and simulator hooks. See `registry.py` and docs/operators.md.

    >>> from ascend_adapt.operators import OPERATORS
    >>> "rms_norm" in OPERATORS
    True

Importing this package imports neither onnx nor any framework; `GraphBuilder` (onnx) is loaded
on first access.
"""

from .registry import OPERATORS, OperatorSpec, fused_op_supported, get_operator, register_operator

__all__ = ["OPERATORS", "OperatorSpec", "register_operator", "get_operator", "fused_op_supported",
           "GraphBuilder"]


def __getattr__(name):
    if name == "GraphBuilder":
        from .graph import GraphBuilder

        return GraphBuilder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
