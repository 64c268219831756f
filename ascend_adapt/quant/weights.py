"""Symmetric int8 weight quantization (per output channel, or per group along the input axis).

This is the one definition of how a float weight becomes int8 + scale in ascend-adapt; the W8A16
emission (`om_convert/builder/llm.py`), the W8A8 plan (`ascend_adapt/quant/smoothquant.py`), the
msModelSlim export and the accuracy report all call these functions, so every path quantizes
a weight to the same bits.

Arithmetic (symmetric, no zero point, the form AscendAntiQuant / AscendDequant consume):

- `scale = max|w| / 127` over the quantization group (a row, or `group_size` consecutive input
  columns of a row), computed in float32; an all-zero group gets scale 1.0 (any scale decodes
  zeros exactly, 1.0 keeps the division finite);
- `q = clip(rint(w / scale), -127, 127)` in float32, then int8. `np.rint` rounds half to even.
  -128 is never produced (symmetric range), so `-q` never overflows.

Rounding: AMCT's weight quantizer and the card's AscendQuant (`round_mode="Round"`, the default)
round to nearest; ties cannot occur for `w / scale` except on exact .5 quotients, where round half
to even and round half away from zero differ by one code (error ≤ 1 LSB either way). Sources and
the exact CANN round mode are written down in docs/quantization.md.
"""

from __future__ import annotations

import numpy as np

from ascend_adapt.errors import ConfigError

INT8_MAX = 127


def _as_matrix(w, what: str) -> np.ndarray:
    a = np.asarray(w)
    if a.ndim != 2:
        raise ConfigError(f"{what}: expected a 2-D weight [out, in], got shape {a.shape}",
                          "quantize Linear weights only (embeddings and norms stay in float)")
    if not np.issubdtype(a.dtype, np.floating):
        raise ConfigError(f"{what}: expected a float weight, got dtype {a.dtype}",
                          "pass the fp16 / fp32 / bf16-as-fp32 weight")
    return a.astype(np.float32, copy=False)


def _scale_from_absmax(absmax: np.ndarray) -> np.ndarray:
    scale = (absmax.astype(np.float32) / np.float32(INT8_MAX)).astype(np.float32)
    # a zero group: any scale decodes it exactly; 1.0 keeps w / scale finite
    return np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)


def _round_clip(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), -INT8_MAX, INT8_MAX).astype(np.int8)


# rows per block: the float32 temporaries of one block stay ~16 MB whatever the matrix size, so a
# [32000, 4096] head quantizes in ~its int8 output plus a few blocks (streamed builds, ≤ 2 GB peak)
_BLOCK_ELEMS = 1 << 22


def _row_blocks(rows: int, cols: int):
    step = max(1, _BLOCK_ELEMS // max(cols, 1))
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


def quantize_per_channel(w, col_scale=None) -> tuple[np.ndarray, np.ndarray]:
    """Quantize a Linear weight per output channel.

    Args:
        w: float weight [out, in] (fp16 / fp32).
        col_scale: optional float32 [in]: quantize `w · diag(col_scale)` instead (SmoothQuant's
            migration, the product taken in float32), without materializing it whole.

    Returns:
        (q, scale): q int8 [out, in] in [-127, 127]; scale float32 [out], with
        `w ≈ q * scale[:, None]`.

    The work is done in blocks of rows (every step is per row), so the result is the same as on
    the whole matrix at once and the float32 temporaries stay small.
    """
    a = np.asarray(w)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.floating):
        _as_matrix(a, "quantize_per_channel")  # raises with the reason
    out_f, in_f = a.shape
    cs = None if col_scale is None else np.asarray(col_scale, np.float32)
    if cs is not None and cs.shape != (in_f,):
        raise ConfigError(f"quantize_per_channel: col_scale shape {cs.shape} does not match {in_f} input channels")
    q = np.empty((out_f, in_f), np.int8)
    scale = np.ones(out_f, np.float32)
    for r0, r1 in _row_blocks(out_f, in_f):
        wf = a[r0:r1].astype(np.float32)
        if cs is not None:
            wf *= cs
        if in_f:
            scale[r0:r1] = _scale_from_absmax(np.max(np.abs(wf), axis=1))
        wf /= scale[r0:r1, None]
        q[r0:r1] = _round_clip(wf)
    return q, scale


def check_group_size(in_features: int, group_size: int, what: str = "weight") -> None:
    """Raise a ConfigError unless `group_size` is a positive divisor of `in_features`."""
    if not isinstance(group_size, (int, np.integer)) or group_size <= 0:
        raise ConfigError(f"{what}: group size {group_size!r} must be a positive integer",
                          "pass --group-size N with N dividing the input features (e.g. 64, 128)")
    if in_features % group_size:
        raise ConfigError(
            f"{what}: group size {group_size} does not divide the input features {in_features}",
            "choose a --group-size that divides every Linear's input size (e.g. 64 or 128), "
            "or drop it for per-channel scales")


def quantize_groupwise(w, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantize a Linear weight per group of `group_size` consecutive input columns of each row.

    Args:
        w: float weight [out, in].
        group_size: columns per group; must divide `in`.

    Returns:
        (q, scale): q int8 [out, in]; scale float32 [out, in // group_size], with
        `w[o, g*G:(g+1)*G] ≈ q[o, g*G:(g+1)*G] * scale[o, g]`.
    """
    a = np.asarray(w)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.floating):
        _as_matrix(a, "quantize_groupwise")  # raises with the reason
    out_f, in_f = a.shape
    check_group_size(in_f, group_size)
    ng = in_f // group_size
    q = np.empty((out_f, in_f), np.int8)
    scale = np.empty((out_f, ng), np.float32)
    for r0, r1 in _row_blocks(out_f, in_f):  # per row: blocks give the whole-matrix answer
        g = a[r0:r1].astype(np.float32).reshape(r1 - r0, ng, group_size)
        scale[r0:r1] = _scale_from_absmax(np.max(np.abs(g), axis=2))
        g /= scale[r0:r1, :, None]
        q[r0:r1] = _round_clip(g).reshape(r1 - r0, in_f)
    return q, scale


def dequantize(q, scale, group_size: int | None = None) -> np.ndarray:
    """float32 weight from int8 codes and scales (the inverse of the two quantizers).

    Args:
        q: int8 [out, in].
        scale: float32 [out] (per channel) or [out, in // group_size] (group-wise).
        group_size: None for per-channel, else the group size used to quantize.

    Returns:
        float32 [out, in] = q * scale (broadcast per row or per group), computed in float32.
    """
    qa = np.asarray(q)
    s = np.asarray(scale, dtype=np.float32)
    if qa.ndim != 2:
        raise ConfigError(f"dequantize: expected int8 codes [out, in], got shape {qa.shape}")
    qf = qa.astype(np.float32)
    if group_size is None:
        if s.shape != (qa.shape[0],):
            raise ConfigError(f"dequantize: per-channel scale shape {s.shape} does not match "
                              f"{qa.shape[0]} output channels",
                              "pass group_size for group-wise scales")
        return qf * s[:, None]
    check_group_size(qa.shape[1], group_size)
    if s.shape != (qa.shape[0], qa.shape[1] // group_size):
        raise ConfigError(f"dequantize: group scale shape {s.shape} does not match codes "
                          f"{qa.shape} with group size {group_size}")
    out_f, in_f = qa.shape
    return (qf.reshape(out_f, in_f // group_size, group_size) * s[:, :, None]).reshape(out_f, in_f)
