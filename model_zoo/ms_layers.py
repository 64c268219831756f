"""MindSpore building blocks shared by the model files (`model_zoo/<family>/ms_model.py`).

Everything here follows the torch references' numerics (golden = fp32 torch on CPU):

- norms compute in fp32 whatever the compute dtype (HF Llama RMSNorm casts back *before* the
  weight multiply; torch LayerNorm on fp16 accumulates in fp32, weight and bias included);
- attention scores are formed in the compute dtype, masked there, then soft-maxed in fp32 and
  cast back (`cached_attention`);
- rotary tables are numpy constants computed once, by the function every path shares
  (`ascend_adapt.operators.rotary.rotary_table`, in the model's compute dtype), and gathered per
  token by position, so positions are graph *inputs* and a graph compiles once per shape, not
  per position.

The KV cache is static: per layer K and V of shape [max_len, B, kv_heads, head_dim] (seq-first,
so a step's K/V are written with one `scatter_nd_update` on the leading axis). Attention is a
pure function of (cache before this step, this step's K/V, mask over [cache slots ⊕ step]); who
writes the cache — a session's `Parameter`s or the host behind an exported graph — is the
caller's business (see `ascend_adapt.backends.mindspore.session.CachedStep` and `ascend_adapt.port.mindir`).

A `port --quantize` output runs with `QuantLinear` cells in place of its int8 Linears
(`quantize_model`): the operator registry's MindSpore implementations of anti_quant (W8A16) and
quant → int8_matmul → dequant (W8A8), `ascend_adapt/operators/quant.py`.

Names of parameters match the canonical tensor names (`embed.weight`, `layers.0.attn.q.weight`,
…, see `model_zoo/base.py`) so a canonical stream or an "ours"-named checkpoint loads by name.
"""

from __future__ import annotations

import math
import os

import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import initializer

COMPUTE_DTYPES = {"float32": ms.float32, "float16": ms.float16}
_CONFIGURED: dict = {}


def configure_cpu(mode: str = "graph", threads: int | None = None, device: str | None = None) -> None:
    """Apply the settings that make LLM decoding fast on MindSpore's CPU backend.

    Measured facts (../shared/reference/python_environment.md): `runtime_num_threads` must be
    set explicitly; PyNative needs `launch_blocking()` (the async launch pipeline dominates on a
    small CPU: 1.4 → 10 tok/s). Both are applied only when the device target is the CPU, so an
    Ascend build keeps its own defaults. Graph mode is entered per cell with `ms.jit`, never
    through the global context.

    Args:
        mode: "graph" or "pynative".
        threads: CPU runtime threads (default: the number of CPUs, at most 16).
        device: "CPU" / "Ascend" / "GPU" to set the target; default: MindSpore's own default.
    """
    if device and _CONFIGURED.get("device") != device:
        ms.set_device(device)
        _CONFIGURED["device"] = device
    if ms.get_context("device_target") != "CPU":
        return
    if "threads" not in _CONFIGURED:
        ms.set_context(runtime_num_threads=threads or min(os.cpu_count() or 2, 16))
        _CONFIGURED["threads"] = True
    if mode == "pynative" and "blocking" not in _CONFIGURED:
        ms.runtime.launch_blocking()
        _CONFIGURED["blocking"] = True


def compute_dtype(name: str):
    try:
        return COMPUTE_DTYPES[name]
    except KeyError:
        from ascend_adapt.errors import ConfigError

        raise ConfigError(f"mindspore: unknown compute dtype '{name}'",
                          f"use one of: {', '.join(COMPUTE_DTYPES)} (bfloat16 MatMul is not supported on CPU)") from None


def _zeros(shape, dtype) -> Parameter:
    # lazily initialised: the memory is allocated when real weights are set (or on first use)
    return Parameter(initializer("zeros", tuple(shape), dtype))


# ---- layers --------------------------------------------------------------------------------------
class Linear(nn.Dense):
    """torch-style Linear: weight [out, in] (as `nn.Dense` stores it), optional bias."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype):
        super().__init__(in_features, out_features, weight_init="zeros",
                         bias_init="zeros", has_bias=bias, dtype=dtype)


class QuantLinear(nn.Cell):
    """A Linear whose weight is stored int8 (`ascend-adapt port --quantize`), run through the
    operator registry's MindSpore implementations (`ascend_adapt.operators.quant`).

    Parameters (names as the port writes them, under the Linear's canonical prefix):
        weight: int8 [out, in] (torch / nn.Dense layout), `q` of `ascend_adapt.quant.weights`.
        weight_scale: float32 [out] (per output channel) or [out, in / group_size] (W8A16 groups).
        smooth_scale: float32 [in], W8A8 only, where 1/s is not folded into the preceding norm:
            x is multiplied by it before the quant (1/s, rounded to the compute dtype).
        input_scale: float32 [1], W8A8 only: the static per-tensor activation scale.
        bias: [out] in the compute dtype, when the Linear has one.

    W8A16: `anti_quant(weightᵀ, weight_scale)` (int8 → compute dtype, × scale, one rounding) then
    an ordinary MatMul. W8A8: [× smooth_scale] → `quant` (AscendQuant's arithmetic: fp16 x·(1/act_scale),
    round half to even, saturate) → `int8_matmul` (exact int32) → `dequant` (float32 acc ·
    input_scale·weight_scale, one rounding to the compute dtype). The activation scale is a graph
    constant, as AscendQuant's `scale` attribute is: it is read from the checkpoint before the cell
    is built (`quantize_model`); the parameter `input_scale` holds the same value for the dequant.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype, mode: str,
                 group_size: int | None = None, act_scale: float | None = None, smooth: bool = False):
        super().__init__()
        from ascend_adapt.operators import get_operator
        from ascend_adapt.operators.quant import GE_DT_FLOAT, GE_DT_FLOAT16, quant_scales

        if mode not in ("w8a16", "w8a8"):
            raise ValueError(f"QuantLinear: unknown mode {mode!r}")
        self.mode, self.group_size, self.dtype = mode, group_size, dtype
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(initializer("zeros", (out_features, in_features), ms.int8), requires_grad=False)
        scale_shape = (out_features, in_features // group_size) if group_size else (out_features,)
        self.weight_scale = Parameter(initializer("ones", scale_shape, ms.float32), requires_grad=False)
        self.has_bias = bool(bias)
        self.bias = _zeros((out_features,), dtype) if bias else None
        self.has_smooth = bool(smooth) and mode == "w8a8"
        if self.has_smooth:
            self.smooth_scale = Parameter(initializer("ones", (in_features,), ms.float32), requires_grad=False)
        if mode == "w8a8":
            if act_scale is None:
                raise ValueError("QuantLinear: w8a8 needs the activation scale")
            self.input_scale = Parameter(initializer("ones", (1,), ms.float32), requires_grad=False)
            q = quant_scales(float(act_scale))
            self.q_scale, self.q_sqrt = float(q["scale"]), bool(q["sqrt_mode"])
            self.out_code = GE_DT_FLOAT16 if dtype == ms.float16 else GE_DT_FLOAT
            self._quant = get_operator("quant").mindspore
            self._int8_matmul = get_operator("int8_matmul").mindspore
            self._dequant = get_operator("dequant").mindspore
        else:
            self._anti_quant = get_operator("anti_quant").mindspore

    def construct(self, x):
        wt = ops.transpose(self.weight, (1, 0))  # [in, out], the registry ops' weight layout
        if self.mode == "w8a16":
            s = self.weight_scale
            if self.group_size:
                s = ops.transpose(s, (1, 0))  # [in / G, out]
            w = self._anti_quant(wt, ops.cast(s, self.dtype), self.group_size)
            y = ops.matmul(x, w)
        else:
            if self.has_smooth:
                x = x * ops.cast(self.smooth_scale, x.dtype)
            xq = self._quant(x, scale=self.q_scale, sqrt_mode=self.q_sqrt)
            acc = self._int8_matmul(xq, wt)
            y = self._dequant(acc, self.input_scale * self.weight_scale, dtype=self.out_code)
        if self.has_bias:
            y = y + self.bias
        return y


def quantize_model(model, quantization: dict, get_tensor) -> list[str]:
    """Replace the model's quantized Linears by `QuantLinear` cells, before the weights load.

    Args:
        model: a family's cell (parameter paths = canonical names).
        quantization: the port manifest's "quantization" record (`ascend_adapt.port`): "mode",
            "group_size", "quantized" (canonical weight names), "smooth_scale" (those with a
            stored smoothing vector).
        get_tensor: name → numpy array of the port's weights (W8A8 reads each `input_scale`).

    Returns:
        The canonical prefixes replaced.
    """
    from ascend_adapt.errors import CheckpointError

    mode, group = quantization.get("mode"), quantization.get("group_size")
    smooth = set(quantization.get("smooth_scale") or ())
    done = []
    for wname in quantization.get("quantized") or ():
        prefix = wname[:-len(".weight")] if wname.endswith(".weight") else wname
        *path, leaf = prefix.split(".")
        parent = model
        try:
            for part in path:
                parent = parent[int(part)] if part.isdigit() else getattr(parent, part)
            old = getattr(parent, leaf)
        except (AttributeError, IndexError):
            raise CheckpointError(f"quantized Linear '{wname}' has no cell in the {model.spec.arch} model",
                                  "the port manifest does not belong to this architecture; re-run the port") from None
        out_f, in_f = (int(d) for d in old.weight.shape)
        act = None
        if mode == "w8a8":
            act = float(np.asarray(get_tensor(prefix + ".input_scale"), np.float32).reshape(-1)[0])
        cell = QuantLinear(in_f, out_f, bool(getattr(old, "has_bias", False)), model.compute_dtype, mode,
                           group_size=group, act_scale=act, smooth=wname in smooth)
        cell.update_parameters_name(prefix + ".")
        setattr(parent, leaf, cell)
        done.append(prefix)
    return done


class Embedding(nn.Cell):
    """Token embedding with a parameter named `weight` [vocab, H]."""

    def __init__(self, vocab: int, hidden: int, dtype):
        super().__init__()
        self.weight = _zeros((vocab, hidden), dtype)

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


class RMSNorm(nn.Cell):
    """HF Llama RMSNorm: x·rsqrt(mean(x²)+eps) in fp32, cast to the input dtype, then × weight."""

    def __init__(self, hidden: int, eps: float, dtype):
        super().__init__()
        self.weight = _zeros((hidden,), dtype)
        self.eps = float(eps)

    def construct(self, x):
        x32 = ops.cast(x, ms.float32)
        var = ops.mean(ops.square(x32), -1, keep_dims=True)
        y = x32 * ops.rsqrt(var + self.eps)
        return self.weight * ops.cast(y, x.dtype)


class LayerNorm(nn.Cell):
    """LayerNorm with bias over the last axis, computed in fp32 (weight and bias included)."""

    def __init__(self, hidden: int, eps: float, dtype):
        super().__init__()
        self.weight = _zeros((hidden,), dtype)
        self.bias = _zeros((hidden,), dtype)
        self.eps = float(eps)

    def construct(self, x):
        x32 = ops.cast(x, ms.float32)
        mean = ops.mean(x32, -1, keep_dims=True)
        d = x32 - mean
        var = ops.mean(ops.square(d), -1, keep_dims=True)
        y = d * ops.rsqrt(var + self.eps) * ops.cast(self.weight, ms.float32) + ops.cast(self.bias, ms.float32)
        return ops.cast(y, x.dtype)


def scalar_mul(x, s: float):
    """x·s as torch computes `tensor * python_float`: in fp32, rounded once to x's dtype."""
    return ops.cast(ops.cast(x, ms.float32) * s, x.dtype)


def scalar_div(x, s: float):
    """x / s as torch computes `tensor / python_float`: in fp32, rounded once to x's dtype."""
    return ops.cast(ops.cast(x, ms.float32) / s, x.dtype)


def tanh_in_float64() -> bool:
    """Whether `gelu_tanh` should take its tanh in float64: on MindSpore's CPU backend.

    MindSpore 2.10's CPU fp32 `Tanh` kernel is an approximation: measured against float64 it is
    off by up to 1.0e-4 absolute (1700 fp32 ulps) for 3 < |x| < 9, returns 1.0000029 at x = 4.98
    and exactly ±1 from |x| = 5 (tanh(5) = 0.99990920). Through ChatGLM's GELU and the α-scaled
    residual that alone put the fp32 MindSpore logits 3–8e-5 away from the torch golden. Its
    float64 kernel is correctly rounded, so on the CPU tanh runs in float64 and is rounded once to
    the compute dtype, which is what torch's fp32 / fp16 tanh gives (≤ 1 ulp). On Ascend the
    device's own kernel is kept (no float64 there).
    """
    return ms.get_context("device_target") == "CPU"


def gelu_tanh(x, tanh_fp64: bool = False):
    """0.5·x·(1 + tanh(0.7978845608028654·x·(1 + 0.044715·x²))), op by op in x's dtype.

    Args:
        x: the input, in the compute dtype.
        tanh_fp64: take tanh in float64 and round it once to x's dtype (`tanh_in_float64`).
    """
    u = 0.7978845608028654 * x * (1.0 + 0.044715 * x * x)
    t = ops.cast(ops.tanh(ops.cast(u, ms.float64)), x.dtype) if tanh_fp64 else ops.tanh(u)
    return 0.5 * x * (1.0 + t)


# ---- rotary --------------------------------------------------------------------------------------
def model_rotary_table(spec, num_positions: int, dtype_name: str) -> tuple[Tensor, Tensor]:
    """cos, sin [num_positions, w] Tensors in the compute dtype, from the shared table function
    (`ascend_adapt.operators.rotary.rotary_table`: Llama fp32 then cast; ChatGLM-6B in the
    compute dtype from fp16-rounded inv_freq, as the original)."""
    from ascend_adapt.operators.rotary import rotary_table

    cos, sin = rotary_table(num_positions, spec.rotary_dim, spec.rope_theta, spec.rotary, spec.rotary_table_dtype,
                            compute_dtype=dtype_name)
    dt = compute_dtype(dtype_name)
    return Tensor(cos, dt), Tensor(sin, dt)


def rotate_half(x):
    """NeoX half-split rotation over the last axis: [x1, x2] → [-x2, x1]."""
    half = x.shape[-1] // 2
    return ops.cat((-x[..., half:], x[..., :half]), -1)


def apply_rotary(x, cos, sin):
    """x·cos + rotate_half(x)·sin; x [B, heads, S, d], cos/sin broadcastable [B, 1, S, d]."""
    return x * cos + rotate_half(x) * sin


def gather_rotary(table: Tensor, positions):
    """Rows of a [P, d] table for positions [B, S] → [B, 1, S, d]."""
    return ops.expand_dims(ops.gather(table, positions, 0), 1)


# ---- attention -----------------------------------------------------------------------------------
_BMM_T = ops.BatchMatMul(transpose_b=True)
_BMM = ops.BatchMatMul()


def cached_attention(q, k_new, v_new, k_cache, v_cache, mask, score_scale: float = 1.0,
                     softmax_scale: float = 1.0, fill: float = float("-inf")):
    """Attention of this step's queries over [cache slots ⊕ this step's tokens].

    Args:
        q: [B, heads, S, D] in the compute dtype (already scaled if the family pre-scales it).
        k_new, v_new: [B, kv_heads, S, D] this step's keys (post-rotary) and values.
        k_cache, v_cache: [M, B, kv_heads, D] the cache as it was before this step.
        mask: [B, S, M + S] bool, True = may attend (`StepInputs.split_visible`, concatenated).
        score_scale: multiplies q·kᵀ in the compute dtype (Llama: 1/√D).
        softmax_scale: multiplies the fp32 scores before softmax (ChatGLM-6B: layer + 1).
        fill: value of masked scores, written in the compute dtype (ChatGLM-6B: −10000).

    Returns:
        context [B, S, heads·D] in the compute dtype.

    GQA: query head h uses KV head h // group; q is viewed as [B, kv_heads, group·S, D] so K/V are
    never repeated.
    """
    B, H, S, D = q.shape
    KV = k_new.shape[1]
    k = ops.cat((ops.transpose(k_cache, (1, 2, 0, 3)), k_new), 2)   # [B, KV, M+S, D]
    v = ops.cat((ops.transpose(v_cache, (1, 2, 0, 3)), v_new), 2)
    T = k.shape[2]
    scores = _BMM_T(ops.reshape(q, (B, KV, (H // KV) * S, D)), k)
    scores = ops.reshape(scores, (B, H, S, T))
    if score_scale != 1.0:
        scores = scalar_mul(scores, score_scale)
    scores = ops.masked_fill(scores, ops.logical_not(ops.expand_dims(mask, 1)),
                             ops.cast(fill, scores.dtype))
    scores = ops.cast(scores, ms.float32)
    if softmax_scale != 1.0:
        scores = scores * softmax_scale
    probs = ops.cast(ops.softmax(scores, -1), q.dtype)
    ctx = _BMM(ops.reshape(probs, (B, KV, (H // KV) * S, T)), v)  # [B, KV, G·S, D]
    ctx = ops.transpose(ops.reshape(ctx, (B, H, S, D)), (0, 2, 1, 3))
    return ops.reshape(ctx, (B, S, H * D))


def split_heads(x, heads: int, head_dim: int):
    """[B, S, heads·D] → [B, heads, S, D]."""
    B, S, _ = x.shape
    return ops.transpose(ops.reshape(x, (B, S, heads, head_dim)), (0, 2, 1, 3))


def default_score_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def layer_outputs(model, input_ids, rope: tuple, mask, k_caches, v_caches) -> dict:
    """PyNative walk of a family's `construct` keeping "embed", "layers.{i}", "final_norm", "logits".

    `rope` is what the family's blocks take between the hidden state and the mask ((cos, sin)
    for Llama, (table,) for ChatGLM-6B); every model has `embed`, `layers`, `final_norm`, `lm_head`.
    """
    x = model.embed(input_ids)
    outs = {"embed": x}
    for i, layer in enumerate(model.layers):
        x, _, _ = layer(x, *rope, mask, k_caches[i], v_caches[i])
        outs[f"layers.{i}"] = x
    outs["final_norm"] = model.final_norm(x)
    outs["logits"] = model.lm_head(outs["final_norm"])
    return outs

