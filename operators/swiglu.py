"""SwiGLU activation of Llama's MLP: silu(gate) · up (the projections are plain MatMuls).

Emitted as Sigmoid / Mul / Mul: ONNX has no SiLU op at opset <= 18, and ATC parses
Sigmoid and Mul at every opset 8-18 (reference ascend_toolchain.md §2).
"""

from __future__ import annotations

import numpy as np

from .registry import OperatorSpec, register_operator


@register_operator
class SwiGLU(OperatorSpec):
    """y = gate · sigmoid(gate) · up.

    Inputs: gate [..., I], up [..., I] (the outputs of gate_proj and up_proj).
    """

    name = "swiglu"

    def reference(self, gate, up):
        g = np.asarray(gate)
        one = np.asarray(1, g.dtype)
        return (g * (one / (one + np.exp(-g))) * np.asarray(up)).astype(g.dtype)

    def _emit(self, b, inputs, target):
        gate, up = inputs
        silu = b.node("Mul", [gate, b.node("Sigmoid", [gate])], name="SiLU")
        return b.node("Mul", [silu, up], name="MulUp")

    def mindspore(self, gate, up):
        from ascend_adapt._optional import require

        ms = require("mindspore", purpose="the MindSpore implementation of swiglu")
        return gate * ms.ops.sigmoid(gate) * up
