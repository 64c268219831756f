"""Tolerances derived from the arithmetic: how far two correct runs of one decoder may differ.

The model (first order, as in Higham, "Accuracy and Stability of Numerical Algorithms", ch. 3):

- Every operation rounds with relative error ≤ u: fp32 2^-24, fp16 2^-11, bf16 2^-8 (`UNIT_ROUNDOFF`).
- An accumulation of n terms (a dot product in a matmul, the mean of a norm, probs·V) computed in
  another order (another BLAS blocking, a fused kernel, a padded or shorter key axis) changes its
  result by about n·u relative to the scale of its output: the random-walk error λ·√n·u·Σ|terms|
  of Higham & Mary (2019) with Σ|terms| ≈ √n·|result| for the random-sign terms of a network.
- Along the forward pass these stages are in series and their relative errors add (linear sum: the
  conservative choice, it assumes they correlate). Each side contributes its own error against the
  exact result, so the two sides' bounds add (two fp32 implementations: ×2).
- Scale: the largest |value| of the compared output (an element near zero gets the budget of the
  largest one, which is what an atol means).

fp32 compute (`fp32_rel`, one side): u·Σ_stages n_s, with the stages per decoder layer: norm mean
(H), q/k/v projection (H), q·k (D), probs·V (keys), output projection (q_dim), norm mean (H),
up/gate projection (H), down projection (I); then the final norm (H) and the head (H)
(`accumulation_lengths`).

fp16 / bf16 compute against fp32 (`low_precision_rel`): every weight and every activation stored
in the low dtype is rounded once (relative ≤ u), and a rounding of a matmul's weights moves its
output by about the same relative amount; per layer that is 6 weight roundings + ~12 stored
activations, plus 4 outside the layers (embedding, final norm, head weight, logits), so
rel = u·(18·L + 4): 0.0195 in fp16 for 2 layers, 0.156 in bf16. The accumulations themselves run
in fp32 (the Cube unit; the simulator's fp32 islands), so the fp32 term of that side is added
(it is ≤ 1% of the fp16 one). A rotary table computed in the low dtype adds 2·P·u at positions ≤ P.
Precision modes that lower only some ops (Cube-only, mixed, keep_dtype islands) round at fewer
points: the bound above still holds for them.

Which tensor: `compare` at LM level names its tensors embed, layers.{i}, final_norm, logits; the
stages before each (`tensor_depth`) give its rel. The tolerance of a tensor (`tensor_tolerance`):
rtol = rel (each element's own roundings, relative to itself) and atol = rel × a magnitude: the
largest |reference| for embed, final_norm and logits; along the residual stream (layers.{i}) the
sum over the layers so far of the largest |sublayer output| (|layers.j − layers.{j-1}|, embed
before layers.0), because an element of the stream carries its own roundings (rtol) plus the
sublayers' errors, which are relative to *their* scale, not to the stream's (a stream ×400 larger
than its sublayers would otherwise hide a whole sublayer gone wrong).

A cosine similarity between outputs with relative error rel is ≥ 1 − rel²/2 (`cosine_floor`).

Nothing here is derived for quantized (int8) sides or for graphs without a `ModelSpec`: `compare`
then uses its documented default (`DEFAULT_ATOL`, `DEFAULT_RTOL`) and says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

U_FP32 = 2.0 ** -24
U_FP16 = 2.0 ** -11
U_BF16 = 2.0 ** -8
UNIT_ROUNDOFF = {"float32": U_FP32, "float16": U_FP16, "bfloat16": U_BF16}
# Used where nothing is derived (graph level, quantized or unknown precision): the fp32 error of a
# network with Σn·max|y| ≤ 8e3 (2·u·Σn·max|y|, e.g. 2 layers of H 1024 with |y| ≲ 1) stays below
# it; for anything computed in fp16 / bf16 / int8 give --atol / --rtol.
DEFAULT_ATOL = 1e-3
DEFAULT_RTOL = 1e-3
ROUNDINGS_PER_LAYER = 18  # 6 weight roundings + ~12 stored activations per decoder layer
ROUNDINGS_OUTSIDE = 4  # embedding, final norm, head weight, logits


def _dtype(dtype: str) -> str:
    d = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16",
         "float": "float32"}.get(str(dtype), str(dtype))
    if d not in UNIT_ROUNDOFF:
        raise ValueError(f"no unit roundoff for compute dtype '{dtype}': use one of {', '.join(UNIT_ROUNDOFF)}")
    return d


def accumulation_lengths(spec, keys: int, layers: int | None = None, head: bool = True) -> list[int]:
    """Lengths n_s of the accumulations along one forward pass of a decoder (module docstring).

    Args:
        spec: the model's `ModelSpec`.
        keys: the longest key axis attended over (prompt + generated tokens, or cache slots).
        layers: decoder layers traversed (default: all).
        head: include the final norm and the head.
    """
    H, I, D, QD = spec.hidden_size, spec.intermediate_size, spec.head_dim, spec.q_dim
    L = spec.num_layers if layers is None else layers
    per_layer = [H, H, D, keys, QD, H, H, I]
    return per_layer * L + ([H, H] if head else [])


def fp32_rel(spec, keys: int, layers: int | None = None, head: bool = True, lengths=None) -> float:
    """Relative error of ONE fp32 implementation against the exact result: u·Σn.

    `lengths` replaces `accumulation_lengths(spec, keys, layers, head)` when given."""
    n = sum(accumulation_lengths(spec, keys, layers, head) if lengths is None else lengths)
    return U_FP32 * n


def low_precision_rel(spec, dtype: str = "float16", layers: int | None = None, rotary_positions: int = 0) -> float:
    """Relative error of fp16 / bf16 storage (fp32 accumulation) against fp32: u·(18·L + 4) + 2·P·u.

    Args:
        spec: the model's `ModelSpec`.
        dtype: "float16" or "bfloat16".
        layers: decoder layers before the compared tensor (default: all).
        rotary_positions: largest position when the rotary table itself is computed in the low
            dtype (ChatGLM-6B's fp16 path); 0 when its angles are fp32.
    """
    u = UNIT_ROUNDOFF[_dtype(dtype)]
    L = spec.num_layers if layers is None else layers
    return u * (ROUNDINGS_PER_LAYER * L + ROUNDINGS_OUTSIDE) + 2 * rotary_positions * u


def cosine_floor(rel: float) -> float:
    """Lowest cosine similarity of y and y·(1 + δ) with |δ| ≤ rel: 1 − rel²/2."""
    return 1.0 - rel * rel / 2


def tensor_depth(name: str, num_layers: int) -> tuple[int, str]:
    """(decoder layers before and including `name`, its part): embed → (0, "embed"), layers.i →
    (i + 1, "stream"), final_norm → (L, "final_norm"), logits and anything else → (L, "head")."""
    if name == "embed":
        return 0, "embed"
    if name.startswith("layers."):
        try:
            return int(name.split(".")[1].split("/")[0]) + 1, "stream"
        except ValueError:
            pass
    if name == "final_norm":
        return num_layers, "final_norm"
    return num_layers, "head"


def side_rel(spec, dtype: str, keys: int, name: str = "logits") -> float:
    """Relative error of one side computing in `dtype` at the tensor `name`, against the exact result."""
    d = _dtype(dtype)
    layers, part = tensor_depth(name, spec.num_layers)
    lengths = accumulation_lengths(spec, keys, layers, head=False)
    lengths += {"embed": [], "stream": [], "final_norm": [spec.hidden_size],
                "head": [spec.hidden_size, spec.hidden_size]}[part]
    rel = fp32_rel(spec, keys, lengths=lengths)
    if d != "float32":
        rel += low_precision_rel(spec, d, layers=layers)
    return rel


def pair_rel(spec, dtype_a: str, dtype_b: str, keys: int, name: str = "logits") -> float:
    """Relative difference bound of two correct sides at tensor `name`: the sum of their errors."""
    return side_rel(spec, dtype_a, keys, name) + side_rel(spec, dtype_b, keys, name)


@dataclass(frozen=True)
class Tolerance:
    """One tensor's tolerance: pass when |b − a| ≤ atol + rtol·|a|.

    Attributes:
        atol, rtol: the tolerance.
        rel: the derived relative error (None when not derived).
        magnitude: the scale atol = rel·magnitude was taken from.
        source: where it came from, for the report.
    """

    atol: float
    rtol: float
    rel: float | None = None
    magnitude: float | None = None
    source: str = ""


def _absmax(a) -> float:
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    return float(np.abs(a).max()) if a.size else 0.0


def stream_magnitude(name: str, ref: Mapping[str, np.ndarray]) -> float | None:
    """Σ over layers 0..i of max |layers.j − layers.{j-1}| (embed before layers.0) for `name` =
    layers.i, from the reference's tensors; None when one of them is missing."""
    layers, part = tensor_depth(name, 0)
    if part != "stream":
        return None
    total = 0.0
    prev = ref.get("embed")
    for j in range(layers):
        cur = ref.get(f"layers.{j}")
        if prev is None or cur is None or np.shape(prev) != np.shape(cur):
            return None
        total += _absmax(np.asarray(cur, np.float64) - np.asarray(prev, np.float64))
        prev = cur
    return total


def describe_pair(dtype_a: str, dtype_b: str) -> str:
    """"fp16 compute vs fp32", "fp32 vs fp32", ..."""
    short = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
    a, b = short[_dtype(dtype_a)], short[_dtype(dtype_b)]
    if a == b == "fp32":
        return "fp32 vs fp32 (other accumulation order)"
    if a == "fp32":
        return f"{b} compute vs fp32"
    if b == "fp32":
        return f"fp32 vs {a} compute"
    return f"{b} compute vs {a} compute"


def tensor_tolerance(spec, dtype_a: str, dtype_b: str, keys: int, name: str,
                     ref: Mapping[str, np.ndarray]) -> Tolerance:
    """The derived tolerance of tensor `name` (module docstring): rtol = rel, atol = rel·magnitude."""
    rel = pair_rel(spec, dtype_a, dtype_b, keys, name)
    layers, part = tensor_depth(name, spec.num_layers)
    mag = stream_magnitude(name, ref) if part == "stream" else None
    where = "Σ max|sublayer output|" if mag is not None else "max|ref|"
    if mag is None:
        mag = _absmax(ref[name])
    src = (f"derived: {describe_pair(dtype_a, dtype_b)}, {layers} layer{'s' if layers != 1 else ''}: "
           f"rtol {rel:.3g}, atol {rel * mag:.3g} (= rtol × {where} {mag:.3g})")
    return Tolerance(atol=rel * mag, rtol=rel, rel=rel, magnitude=mag, source=src)
