"""ChatGLM-6B's residual: α · LN(x) + f(LN(x)) — the residual is the LN *output*, scaled by α.

α = sqrt(2·28) for every config (reference model_architectures.md §1.3, §1.12).
"""

from __future__ import annotations

import numpy as np

from .registry import OperatorSpec, register_operator


@register_operator
class GLMResidual(OperatorSpec):
    """y = alpha · a + f, with a the LayerNorm output and f the sub-layer (attention / MLP) output.

    Inputs: a [..., H], f [..., H]. Attributes: alpha.
    """

    name = "glm_residual"

    def reference(self, a, f, alpha: float):
        a = np.asarray(a)
        return (a.dtype.type(alpha) * a + np.asarray(f)).astype(a.dtype)

    def _emit(self, b, inputs, target, alpha: float):
        a, f = inputs
        scaled = b.node("Mul", [b.const(np.asarray(alpha, b.act_dtype)), a], name="MulAlpha")
        return b.node("Add", [scaled, f], name="AddResidual")

    def mindspore(self, a, f, alpha: float):
        return alpha * a + f
