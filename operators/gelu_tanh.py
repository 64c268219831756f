"""GELU, tanh approximation, written out as ChatGLM-6B's `gelu_impl` writes it.

    gelu(x) = 0.5·x·(1 + tanh(0.7978845608028654·x·(1 + 0.044715·x·x)))

(reference model_architectures.md §1.3). ONNX's `Gelu` op is opset 20 and ATC registers no
parser for it (ascend_toolchain.md §2), so this is always Mul / Add / Tanh primitives, in the
same evaluation order as the original.
"""

from __future__ import annotations

import numpy as np

from .registry import OperatorSpec, register_operator

K = 0.7978845608028654
C = 0.044715


@register_operator
class GeluTanh(OperatorSpec):
    """y = 0.5·x·(1 + tanh(0.7978845608028654·x·(1 + 0.044715·x²))).

    Inputs: x [...].
    """

    name = "gelu_tanh"

    def reference(self, x):
        x = np.asarray(x)
        t = x.dtype.type
        inner = t(K) * x * (t(1.0) + t(C) * x * x)
        return (t(0.5) * x * (t(1.0) + np.tanh(inner))).astype(x.dtype)

    def _emit(self, b, inputs, target):
        (x,) = inputs
        dt = b.act_dtype
        c = lambda v: b.const(np.asarray(v, dtype=dt))  # noqa: E731
        kx = b.node("Mul", [c(K), x], name="MulK")
        cxx = b.node("Mul", [b.node("Mul", [c(C), x], name="MulC"), x], name="MulX")
        inner = b.node("Mul", [kx, b.node("Add", [c(1.0), cxx], name="AddOne")], name="Inner")
        half_x = b.node("Mul", [c(0.5), x], name="Half")
        return b.node("Mul", [half_x, b.node("Add", [c(1.0), b.node("Tanh", [inner])], name="AddOneTanh")],
                      name="Gelu")

    def mindspore(self, x):
        from ascend_adapt._optional import require

        ms = require("mindspore", purpose="the MindSpore implementation of gelu_tanh")
        return 0.5 * x * (1.0 + ms.ops.tanh(K * x * (1.0 + C * x * x)))
