"""LayerNorm with bias (ChatGLM-6B), fused where the target parses it, else primitives.

The fused form is ONNX `LayerNormalization` (axis -1, stash_type 1): it exists from opset 17 and
ATC registers it for opsets 17-18 only, i.e. CANN >= 7 (reference ascend_toolchain.md §1.2, §2).
Below that (or when the target's table lacks it) the emission is the classic
ReduceMean / Sub / Mul / ReduceMean / Add / Sqrt / Div / Mul / Add chain. Either way the norm is
computed in fp32 (an fp32 island when activations are fp16), as MindFormers' GLM port does
(`layernorm_compute_type` fp32) and as torch's fp16 layer_norm kernels accumulate.
"""

from __future__ import annotations

import numpy as np

from .registry import OperatorSpec, register_operator


@register_operator
class LayerNorm(OperatorSpec):
    """y = (x - mean) / sqrt(var + eps) · weight + bias over the last axis, computed in fp32.

    Inputs: x [..., H], weight [H], bias [H]. Attributes: eps.
    """

    name = "layer_norm"
    fp32_island = True
    fused_op = "LayerNormalization"

    def reference(self, x, weight, bias, eps: float = 1e-5):
        xf = np.asarray(x).astype(np.float32)
        mean = xf.mean(-1, keepdims=True, dtype=np.float32)
        d = xf - mean
        var = (d * d).mean(-1, keepdims=True, dtype=np.float32)
        y = d / np.sqrt(var + np.float32(eps)) * np.asarray(weight, np.float32) + np.asarray(bias, np.float32)
        return y.astype(np.asarray(x).dtype)

    def _emit(self, b, inputs, target, eps: float = 1e-5, fused: bool | None = None):
        x, w, bias = inputs
        up = b.act_dtype != np.float32
        use_fused = self.fused_available(b, target) if fused is None else fused
        with b.fp32_island():
            xf = b.cast(x, np.float32, name="Cast_up") if up else x
            wf = b.cast(w, np.float32, name="Cast_weight") if up else w
            bf = b.cast(bias, np.float32, name="Cast_bias") if up else bias
            if use_fused:
                y = b.node("LayerNormalization", [xf, wf, bf], name="LayerNormalization",
                           axis=-1, epsilon=float(eps), stash_type=1)
            else:
                mean = b.reduce_mean(xf, [-1], name="Mean")
                d = b.node("Sub", [xf, mean], name="Center")
                var = b.reduce_mean(b.node("Mul", [d, d], name="Square"), [-1], name="Var")
                rstd = b.node("Sqrt", [b.node("Add", [var, b.const(np.float32(eps))], name="AddEps")])
                y = b.node("Add", [b.node("Mul", [b.node("Div", [d, rstd]), wf], name="MulWeight"), bf],
                           name="AddBias")
            if up:
                y = b.cast(y, b.act_dtype, name="Cast_down")
        return y

    def mindspore(self, x, weight, bias, eps: float = 1e-5):
        from ascend_adapt._optional import require

        ms = require("mindspore", purpose="the MindSpore implementation of layer_norm")
        ops = ms.ops
        xf = ops.cast(x, ms.float32)
        mean = ops.mean(xf, -1, True)
        d = xf - mean
        var = ops.mean(d * d, -1, True)
        y = d / ops.sqrt(var + eps) * ops.cast(weight, ms.float32) + ops.cast(bias, ms.float32)
        return ops.cast(y, x.dtype)
