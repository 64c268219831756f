"""RMSNorm (Llama-2) as an fp32 island.

HF / Meta numerics (reference model_architectures.md §3.4): x is cast to fp32, mean(x²) and
x·rsqrt(mean + eps) are computed in fp32, the result is cast back to the activation dtype and
only then multiplied by the weight. The emission names its nodes `Cast_up`, `Square`,
`ReduceMean`, `AddEps`, `Sqrt`, `Div`, `Cast_down` under the caller's scope and records them as
ATC `--keep_dtype` candidates (RMSNorm in fp16 breaks Llama-2 generation, §5 pitfall 3).
ONNX has no RMSNorm before opset 23 and ATC parses none, so there is no fused form.
"""

from __future__ import annotations

import numpy as np

from .registry import OperatorSpec, register_operator


@register_operator
class RMSNorm(OperatorSpec):
    """y = weight · cast_act(x_fp32 / sqrt(mean(x_fp32², -1) + eps)), computed in fp32.

    Inputs: x [..., H] (activation dtype), weight [H]. Attributes: eps.
    """

    name = "rms_norm"
    fp32_island = True

    def reference(self, x, weight, eps: float = 1e-5):
        xf = np.asarray(x).astype(np.float32)
        var = np.mean(xf * xf, axis=-1, keepdims=True, dtype=np.float32)
        y = (xf / np.sqrt(var + np.float32(eps))).astype(np.asarray(x).dtype)
        return (y * np.asarray(weight).astype(y.dtype)).astype(y.dtype)

    def _emit(self, b, inputs, target, eps: float = 1e-5):
        x, w = inputs
        up = b.act_dtype != np.float32
        with b.fp32_island():
            xf = b.cast(x, np.float32, name="Cast_up") if up else x
            sq = b.node("Mul", [xf, xf], name="Square")
            var = b.reduce_mean(sq, [-1])
            ve = b.node("Add", [var, b.const(np.float32(eps))], name="AddEps")
            rms = b.node("Sqrt", [ve])
            y = b.node("Div", [xf, rms])
            if up:
                y = b.cast(y, b.act_dtype, name="Cast_down")
        return b.node("Mul", [y, w], name="MulWeight")

    def mindspore(self, x, weight, eps: float = 1e-5):
        from ascend_adapt._optional import require

        ms = require("mindspore", purpose="the MindSpore implementation of rms_norm")
        ops = ms.ops
        xf = ops.cast(x, ms.float32)
        var = ops.mean(xf * xf, -1, True)
        y = ops.cast(xf * ops.rsqrt(var + eps), x.dtype)
        return y * ops.cast(weight, x.dtype)
