"""Error statistics of one tensor pair, and the tolerances that would have passed.

A pair passes when every element satisfies |b − a| ≤ atol + rtol·|a| (numpy.allclose with `a`
the reference), where non-finite values must match exactly (same inf, or NaN in both). Beside
the verdict each pair reports the *minimum* tolerances that would have passed (as Polygraphy
prints them):

    min_atol = max |b − a|                           (with rtol = 0)
    min_rtol = max over elements of (|b − a| − atol) / |a|, at the given atol (0 where it passes
               on atol alone; inf where a = 0 and the error exceeds atol)

A pair with a non-finite mismatch (b is inf/NaN where a is finite, or the reverse) can pass no
tolerance: both minima are inf.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

FP16_MAX = 65504.0


@dataclass
class TensorStats:
    """Error of `got` against `ref` for one tensor.

    Attributes:
        name: tensor name.
        shape: the reference shape.
        passed: within atol + rtol·|ref| everywhere (non-finite values matching).
        max_abs / mean_abs: absolute error over the finite elements.
        max_rel: max |b − a| / |a| over finite elements with a ≠ 0.
        p90_abs / p99_abs: percentiles of the absolute error.
        cosine: cosine similarity of the flattened finite parts (1.0 for two zero tensors).
        min_atol / min_rtol: the tolerances that would have passed (see the module docstring).
        nonfinite_ref / nonfinite_got: counts of inf/NaN elements.
        nonfinite_mismatch: elements where exactly one side is non-finite (or infs differ).
        ref_absmax: max |a| over finite elements (above 65504 it overflows fp16).
        shape_mismatch: the shapes differ (nothing else is computed).
        atol / rtol: the tolerance this tensor was judged with.
    """

    name: str
    shape: tuple
    passed: bool
    max_abs: float
    mean_abs: float
    max_rel: float
    p90_abs: float
    p99_abs: float
    cosine: float
    min_atol: float
    min_rtol: float
    nonfinite_ref: int
    nonfinite_got: int
    nonfinite_mismatch: int
    ref_absmax: float
    shape_mismatch: bool = False
    got_shape: tuple | None = None
    atol: float = 0.0
    rtol: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = str(v)
        d["shape"] = list(self.shape)
        if self.got_shape is not None:
            d["got_shape"] = list(self.got_shape)
        return d


def _f64(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.number):
        a = a.astype(np.float64)
    return a.astype(np.float64, copy=False)


def tensor_stats(name: str, ref, got, atol: float, rtol: float) -> TensorStats:
    """Compare `got` with the reference `ref` (any numeric arrays of one shape)."""
    a, b = _f64(ref), _f64(got)
    if a.shape != b.shape:
        inf = float("inf")
        return TensorStats(name, tuple(a.shape), False, inf, inf, inf, inf, inf, float("nan"), inf, inf,
                           0, 0, 0, 0.0, True, tuple(b.shape), float(atol), float(rtol))
    fa, fb = np.isfinite(a), np.isfinite(b)
    both = fa & fb
    same_nonfinite = (~fa & ~fb) & ((np.isnan(a) & np.isnan(b)) | (a == b))
    mismatch = int(((fa ^ fb) | ((~fa & ~fb) & ~same_nonfinite)).sum())
    err = np.abs(b[both] - a[both])
    ra = np.abs(a[both])
    if err.size:
        max_abs = float(err.max())
        mean_abs = float(err.mean())
        p90, p99 = (float(x) for x in np.percentile(err, [90, 99]))
        nz = ra > 0
        max_rel = float((err[nz] / ra[nz]).max()) if nz.any() else (0.0 if max_abs == 0 else float("inf"))
        over = err - atol
        need = over > 0
        if not need.any():
            min_rtol = 0.0
        elif (ra[need] == 0).any():
            min_rtol = float("inf")
        else:
            min_rtol = float((over[need] / ra[need]).max())
        va, vb = a[both].ravel(), b[both].ravel()
        na, nb = float(np.linalg.norm(va)), float(np.linalg.norm(vb))
        if na == 0 and nb == 0:
            cosine = 1.0
        elif na == 0 or nb == 0:
            cosine = 0.0
        else:
            cosine = float(np.dot(va, vb) / (na * nb))
        ref_absmax = float(ra.max())
        ok = bool((err <= atol + rtol * ra).all())
    else:
        max_abs = mean_abs = p90 = p99 = max_rel = min_rtol = 0.0
        cosine, ref_absmax, ok = 1.0, 0.0, True
    if mismatch:
        ok = False
        max_abs_req = min_rtol = float("inf")
    else:
        max_abs_req = max_abs
    return TensorStats(name, tuple(a.shape), ok and not mismatch, max_abs, mean_abs, max_rel, p90, p99, cosine,
                       max_abs_req, min_rtol, int((~fa).sum()), int((~fb).sum()), mismatch, ref_absmax,
                       atol=float(atol), rtol=float(rtol))


def layer_of(name: str) -> str:
    """The layer a tensor name belongs to: "layers.3/mlp/Mul_output_0" → "layers.3"."""
    head = name.split("/")[0]
    if head.startswith("layers.") or head.startswith("layer."):
        parts = head.split(".")
        return ".".join(parts[:2])
    for sep in ("/", ":"):
        if sep in name:
            return name.split(sep)[0]
    return name
