"""Numeric tolerances of the tests, derived from floating-point arithmetic instead of tuned to a run.

The decoder-level functions (`accumulation_lengths`, u·Σn, u·(18·L + 4), `cosine_floor`) live in
`ascend_adapt/compare/tolerance.py`, where `compare` derives its default tolerance from them; this
module imports them and adds the test facts below.

The model (first order, as in Higham, "Accuracy and Stability of Numerical Algorithms", ch. 3):

- Every fp32 operation rounds with relative error ≤ u = 2^-24 (fp16: 2^-11).
- An accumulation of n terms (a dot product in a matmul, the mean of a norm, probs·V) computed in
  another order (another BLAS blocking, a fused kernel, a padded or shorter key axis) changes its
  result by about n·u relative to the scale of its output: the random-walk error λ·√n·u·Σ|terms|
  of Higham & Mary (2019) with Σ|terms| ≈ √n·|result| for the random-sign terms of a network.
- Along the forward pass these stages are in series and their relative errors add (linear sum: the
  conservative choice, it assumes they correlate). Two implementations both round, hence ×2.
- Scale: the largest |value| of the compared output (an element near zero gets the budget of the
  largest one, which is what an atol means).

So two correct fp32 runs of the same network differ by at most

    atol = 2 · u · Σ_stages n_s · max|output|                       (`fp32_atol`)

with the stages per decoder layer: norm mean (H), q/k/v projection (H), q·k (D), probs·V (keys),
output projection (q_dim), norm mean (H), up/gate projection (H), down projection (I); then the
final norm (H) and the head (H). For the tiny models (H 64, I 176/256, D 16, 2 layers, ≤ 41 keys)
Σn ≈ 1.2e3, so atol ≈ 1.4e-4 · max|logits|: 1e-3 for logits of ~7 (unit head), 4.5e-3 for ~32.
Measured differences are 1e-6 – 1e-5 (≥ 100× inside); the bugs these tests exist for are ≥ 1e-1:
a visible pad token changes the tiny Llama's logits by ~35, a repeated or swapped position by
2–4, a stale or misplaced cache slot by O(1) (`BUG_SIZE`; `fp32_atol` refuses a tolerance that
would not be 5× below it: on the N(0, 1)-head tiny models, logits ~70, it is 1e-2).

A backend whose elementary functions are not correctly rounded adds their error per layer
(`extra_rel`): MindSpore 2.10's CPU softmax is off by up to 6.7e-6 relative (measured against
float64 on scores of scale 1–30; `MS_SOFTMAX_REL` = 2^-17 ≥ that), its sigmoid (SiLU) by up to
1.4e-6 (`MS_SIGMOID_REL` = 2^-19). (Its fp32 tanh is off by up to 1e-4; ChatGLM's MindSpore GELU
takes tanh in float64 on the CPU instead, see `model_zoo/ms_layers.py`.)

fp16 compute against the fp32 golden (`fp16_rel`): every fp16 weight and every activation stored
in fp16 is rounded once (relative ≤ 2^-11), and a rounding of a matmul's weights moves its output
by about the same relative amount; per layer that is 6 weight roundings + ~12 stored activations,
so rel ≈ 2^-11 · (18·L + 4) = 0.019 for 2 layers. The rotary angles of a table computed in fp16
(ChatGLM-6B's original fp16 path) are off by up to P·2^-11 rad at positions ≤ P (angle ≤ P, one
fp16 rounding), which rotates q and k by that: + 2·P·2^-11. A cosine similarity between outputs with relative error rel is
≥ 1 − rel²/2 (`cosine_floor`).
"""

from __future__ import annotations

# The decoder-level derivation is the library's (compare's default tolerance uses it too);
# what stays here are the test facts: BUG_SIZE, the measured MindSpore / onnxruntime errors and
# the assertion that a tolerance still catches the bugs the tests are for.
from ascend_adapt.compare.tolerance import (  # noqa: F401
    U_BF16,
    U_FP16,
    U_FP32,
    UNIT_ROUNDOFF,
    accumulation_lengths,
    cosine_floor,
    fp32_rel,
    low_precision_rel,
)

BUG_SIZE = 1e-1  # smallest error of the bugs these tests guard against (masks, positions, cache slots)
MS_SOFTMAX_REL = 2.0 ** -17  # ≥ 6.7e-6 measured, MindSpore 2.10 CPU softmax (fp32)
MS_SIGMOID_REL = 2.0 ** -19  # ≥ 1.4e-6 measured, MindSpore 2.10 CPU sigmoid (fp32)


def fp32_atol(spec, magnitude: float, keys: int, *, layers: int | None = None, head: bool = True,
              extra_rel: float = 0.0) -> float:
    """|Δ| bound between two correct fp32 implementations: (2·u·Σn + extra_rel·L)·magnitude
    (`ascend_adapt.compare.tolerance.fp32_rel` is one implementation's u·Σn).

    Args:
        spec: the model's `ModelSpec`.
        magnitude: max |value| of the compared output (e.g. of the golden logits).
        keys: the longest key axis.
        layers / head: how much of the forward pass lies before the compared output.
        extra_rel: relative error per layer of non-correctly-rounded elementary functions
            (`MS_SOFTMAX_REL`, `MS_SIGMOID_REL`).

    Raises:
        AssertionError: when the tolerance would not be 5× below `BUG_SIZE` (it would stop catching
            the bugs it is there for).
    """
    L = spec.num_layers if layers is None else layers
    tol = (2 * fp32_rel(spec, keys, layers, head) + extra_rel * L) * float(magnitude)
    assert tol <= BUG_SIZE / 5, f"derived tolerance {tol:.3g} is too loose to catch a {BUG_SIZE} error"
    return tol


def fp16_rel(spec, rotary_positions: int = 0) -> float:
    """Relative error of fp16 compute against the fp32 golden: 2^-11·(18·L + 4) + 2·P·2^-11
    (`ascend_adapt.compare.tolerance.low_precision_rel`).

    Args:
        spec: the model's `ModelSpec`.
        rotary_positions: largest position when the rotary table itself is computed in fp16
            (ChatGLM-6B's fp16 path); 0 when its angles are fp32.
    """
    return low_precision_rel(spec, "float16", rotary_positions=rotary_positions)


def low_precision_atol(roundings: int, magnitude: float, dtype: str = "float16") -> float:
    """|Δ| bound of fp16 / bf16 storage with fp32 accumulation (the card's Cube ops) against fp32.

    Each rounding on the path to the output (an input, a weight, a stored activation) perturbs
    it by ≤ u (2^-11 fp16, 2^-8 bf16) relative; through a matmul a relative perturbation of its
    inputs moves the output by about as much relative to the output's scale, and through tanh,
    whose slope is ≤ 1, at most as much; the roundings add. Hence u·roundings·max|output|.
    """
    u = {"float16": UNIT_ROUNDOFF["float16"], "bfloat16": UNIT_ROUNDOFF["bfloat16"]}[dtype]
    return u * roundings * float(magnitude)


# ---- single operators and graph rewrites (test_operators, test_rewrites, …) --------------------
# Elementary functions are not correctly rounded. Measured against float64 on a 4M-point grid:
# onnxruntime 1.32's MLAS fp32 Tanh is off by up to 3.3e-7 absolute (5.5 ulp), Sigmoid 1.7e-7, Erf
# 6e-8; numpy's fp32 tanh 6e-8. Their values lie in [-1, 1], so the bound is absolute: 2^-20 =
# 9.5e-7 ≥ 2.9× the largest (other SIMD paths of the same polynomials stay within that).
ELEMENTARY_ABS = 2.0 ** -20
# fp32 exp, relative: onnxruntime 7.4e-8, numpy 2.0e-7 (2.4 ulp) measured; 2^-21 = 4.8e-7.
EXP_REL = 2.0 ** -21


def fp32_ops_atol(lengths, magnitude: float, *, extra_abs: float = 0.0) -> float:
    """|Δ| bound between two correct fp32 evaluations of one small computation (an operator
    against its numpy reference, a graph before and after a rewrite): 2·u·Σn·magnitude + extra_abs.

    The same model as `fp32_atol`, for a computation that is not a whole decoder: each stage an
    accumulation of n terms (a mean over H, a dot product of length K) or, with n = 1, one
    correctly rounded element-wise op (a Mul, Add, Div, Sqrt) that the two evaluations may order
    or fuse differently; both evaluations round, hence ×2.

    Args:
        lengths: n per stage along the path to the compared output.
        magnitude: max |value| along that path (the compared output's, unless an intermediate is
            larger: the roundings are relative to the values they round).
        extra_abs: absolute error of non-correctly-rounded elementary functions on the path, already
            multiplied by whatever scales them (e.g. `ELEMENTARY_ABS`·max|x| for x·tanh(…)).

    Raises:
        AssertionError: when the tolerance would not be 5× below an error of `BUG_SIZE` relative to
            the magnitude (a wrong axis, constant, weight or bias: the bugs an operator test is for).
    """
    tol = 2 * U_FP32 * sum(lengths) * float(magnitude) + extra_abs
    assert tol <= BUG_SIZE / 5 * float(magnitude), (
        f"derived tolerance {tol:.3g} is too loose to catch a {BUG_SIZE} relative error of {float(magnitude):.3g}")
    return tol
# MindSpore 2.10 CPU fp32 kernels, absolute (measured against float64 on a 2M-point grid over
# [-30, 30]): tanh 1.006e-4 (a fast approximation), sigmoid 8.3e-7; 2^-12 and 2^-19 are ≥ 2.3× that.
MS_TANH_ABS = 2.0 ** -12
MS_SIGMOID_ABS = 2.0 ** -19


def layer_norm_magnitude(x, weight, bias=None, axis: int = -1) -> float:
    """max |normalized·weight| + max |bias| of a LayerNorm of x over axes ≥ `axis` (float64)."""
    import numpy as np

    a = np.asarray(x, np.float64)
    axes = tuple(range(axis % a.ndim, a.ndim))
    norm = (a - a.mean(axis=axes, keepdims=True)) / np.sqrt(np.var(a, axis=axes, keepdims=True))
    mag = float(np.abs(norm * np.asarray(weight, np.float64)).max())
    return mag + (0.0 if bias is None else float(np.abs(np.asarray(bias, np.float64)).max()))


def layer_norm_atol(x, weight, bias=None, axis: int = -1) -> float:
    """|Δ| bound between two fp32 LayerNorms (a fused kernel, primitives, numpy) over axes ≥ `axis`.

    Stages: the mean over H, the centring, the variance over H, + eps, Sqrt, Div, the weight, the
    bias. onnxruntime's fused LayerNormalization takes var = E[x²] − E[x]² in one pass, whose error
    is H·u·E[x²], i.e. H·κ·u relative to var with κ = max over rows of E[x²] / var (from the data;
    ≈ 1 for centred x). Magnitude: `layer_norm_magnitude`.
    """
    import numpy as np

    a = np.asarray(x, np.float64)
    axes = tuple(range(axis % a.ndim, a.ndim))
    H = int(np.prod([a.shape[i] for i in axes]))
    kappa = float((np.mean(a * a, axis=axes) / np.var(a, axis=axes)).max())
    return fp32_ops_atol([H, 1, int(np.ceil(H * kappa)), 1, 1, 1, 1, 1], layer_norm_magnitude(x, weight, bias, axis))
