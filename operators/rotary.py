"""Rotary position embedding: half-split (HF Llama, NeoX), interleaved pairs (GPT-J, Meta,
ChatGLM2) and ChatGLM-6B's 2-D variant — cos/sin tables computed offline, shipped as constants.

Tables (`rotary_table`, the one function every path uses: torch references, MindSpore models,
ONNX builder): inv_freq[i] = 1 / theta^(2i / rotary_dim), angle[t, i] = t · inv_freq[i].
- table_dtype "float32" (Llama, reference model_architectures.md §3.4): inv_freq, positions,
  angles and cos/sin all in fp32 whatever the compute dtype, then cast to the compute dtype.
- table_dtype "float16" (ChatGLM-6B, §1.5): the original's `RotaryEmbedding(precision=torch.half)`
  computes inv_freq in fp32 and stores it as an fp16 *buffer*; everything after follows that
  buffer, whose dtype is the model's: positions `arange(dtype=inv_freq.dtype)`, the outer product,
  cos/sin. fp16 model: fp16 positions, fp16 angles, fp16 cos/sin (the table it was trained
  with). fp32 model (`.float()`): the buffer keeps its fp16-rounded values in fp32, so positions,
  angles and cos/sin are fp32. So the table follows `compute_dtype`.
- table_dtype "model_dtype" (ChatGLM2, §2): `RotaryEmbedding.forward_impl` computes theta =
  1 / base^(arange(0, d, 2) / d), the positions and their outer product op by op in the model's
  dtype (fp16: fp16 angles, and positions above 2048 round — what ChatGLM3 fixed), then cos/sin
  in fp32 of those angles, cast to the model's dtype. In an fp32 model it is the "float32"
  table. (ChatGLM3 computes theta and positions in fp32: "float32".)

Rounding, op by op as torch does it on the CPU: fp32 theta^e is torch's (double pow rounded once
to fp32), 1/x an fp32 division; every angle t·inv_freq is the exact product rounded once to the
table's dtype; cos/sin are the correctly rounded fp32 values of those angles (float64, rounded
once), for an fp16 table then rounded to fp16 (torch's half kernels compute in fp32). torch's own
CPU cos/sin are faithful (within 1 ulp of that) but not correctly rounded, and which entries
differ depends on its SIMD path: the correctly rounded table is the same on every machine.

Styles (x is [B, heads, S, head_dim]; only the first `rotary_dim` dims rotate, the rest pass):
- "half_split": rotate_half pairs (i, i + rotary_dim/2): x·cos + rotate_half(x)·sin, with
  cos = cat(cos(angle), cos(angle)).
- "interleaved": adjacent pairs (2i, 2i+1) rotated by angle[t, i].
- "glm2d": head_dim splits into two halves of `rotary_dim` (= head_dim/2); the first half is
  half-split-rotated by positions[:, 0] (positions), the second by positions[:, 1] (block ids).

The emission gathers cos/sin rows once per graph and positions tensor (`GraphBuilder.memo`), so
every layer reuses them: Gather(table [P, w], positions int32 [B, S]) → Unsqueeze → [B, 1, S, w].
"""

from __future__ import annotations

import numpy as np

from .registry import OperatorSpec, register_operator

STYLES = ("half_split", "interleaved", "glm2d")
TABLE_DTYPES = ("float32", "float16", "model_dtype")


_NP_DTYPES = ("float32", "float16", "bfloat16")


def _np_dtype(name) -> np.dtype:
    """numpy dtype for "float32" / "float16" / "bfloat16" (ml_dtypes) or a numpy dtype."""
    key = name if isinstance(name, str) else np.dtype(name).name
    if key == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if key not in _NP_DTYPES:
        raise ValueError(f"rotary compute dtype must be one of {', '.join(_NP_DTYPES)}, got {key!r}")
    return np.dtype(key)


def _round(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float64 values rounded to `dtype` as torch's CPU kernels do: fp32 once; fp16 / bfloat16 via
    fp32, the kernels' compute type (exact for products of two fp16 / bf16 values, whose 22 / 16
    significant bits fit fp32's 24; for cos/sin: the fp32 result rounded to the half type)."""
    if dtype.name in ("float16", "bfloat16"):
        return a.astype(np.float32).astype(dtype)
    return a.astype(dtype)


def inv_freq(rotary_dim: int, theta: float = 10000.0) -> np.ndarray:
    """fp32 inv_freq[i] = 1 / theta^(2i / rotary_dim), rounded as torch computes
    `1.0 / (theta ** (torch.arange(0, dim, 2).float() / dim))`: fp32 exponent, pow rounded once to
    fp32, fp32 reciprocal."""
    if rotary_dim % 2:
        raise ValueError(f"rotary_dim must be even, got {rotary_dim}")
    exponent = np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(rotary_dim)
    power = np.power(np.float64(theta), exponent.astype(np.float64)).astype(np.float32)
    return (np.float32(1.0) / power).astype(np.float32)


def rotary_table(rows: int, rotary_dim: int, theta: float = 10000.0, style: str = "half_split",
                 table_dtype: str = "float32", compute_dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin tables [rows, w] (w = rotary_dim; interleaved: rotary_dim / 2) in the compute dtype.

    Args:
        rows: positions 0 … rows-1.
        rotary_dim: rotated dims (glm2d: per half).
        theta: rotary base.
        style: "half_split" / "glm2d" (emb = cat(freqs, freqs)) or "interleaved" (freqs).
        table_dtype: the precision rule (module docstring): "float32" (HF Llama, ChatGLM3: fp32
            table, cast to the compute dtype), "float16" (ChatGLM-6B: fp16-rounded inv_freq, then
            positions, angles and cos/sin in the compute dtype) or "model_dtype" (ChatGLM2: theta,
            positions and angles op by op in the compute dtype, cos/sin in fp32 then cast).
        compute_dtype: the model's compute dtype ("float32", "float16", "bfloat16" or a numpy
            dtype); None: `table_dtype` itself (for "float16": the fp16 model's table;
            "model_dtype": float32).

    Returns:
        cos, sin in the compute dtype.
    """
    if table_dtype not in TABLE_DTYPES:
        raise ValueError(f"rotary table dtype must be one of {', '.join(TABLE_DTYPES)}, got {table_dtype!r}")
    if style not in STYLES:
        raise ValueError(f"unknown rotary style {style!r} (known: {', '.join(STYLES)})")
    default = "float32" if table_dtype == "model_dtype" else table_dtype
    out = _np_dtype(compute_dtype if compute_dtype is not None else default)
    inv = inv_freq(rotary_dim, theta)
    if table_dtype == "float16":  # `inv_freq.half()`, then the buffer follows the model's dtype
        work = out
        inv = inv.astype(np.float16).astype(work)
    elif table_dtype == "model_dtype":  # ChatGLM2: theta op by op in the model's dtype
        work = out
        exponent = _round(np.arange(0, rotary_dim, 2).astype(np.float64) / rotary_dim, work)
        power = _round(np.power(np.float64(theta), exponent.astype(np.float64)), work)
        inv = _round(1.0 / power.astype(np.float64), work)
    else:                         # HF Llama: fp32 throughout, `.to(x.dtype)` at the end
        work = np.dtype(np.float32)
    t = np.arange(rows).astype(work)                                     # arange(dtype=...)
    angles = _round(t.astype(np.float64)[:, None] * inv.astype(np.float64)[None, :], work)
    cos = _round(np.cos(angles.astype(np.float64)), work).astype(out)
    sin = _round(np.sin(angles.astype(np.float64)), work).astype(out)
    if style in ("half_split", "glm2d"):
        cos, sin = np.concatenate([cos, cos], -1), np.concatenate([sin, sin], -1)
    return cos, sin


def _apply_np(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, style: str, rd: int) -> np.ndarray:
    """x [B, N, S, D]; cos/sin [B, 1, S, w] in x's dtype."""
    xr, rest = x[..., :rd], x[..., rd:]
    if style == "interleaved":
        xe, xo = xr[..., 0::2], xr[..., 1::2]
        ye, yo = xe * cos - xo * sin, xo * cos + xe * sin
        y = np.stack([ye, yo], -1).reshape(xr.shape)
    else:
        h = rd // 2
        rot = np.concatenate([-xr[..., h:], xr[..., :h]], -1)
        y = xr * cos + rot * sin
    return np.concatenate([y, rest], -1).astype(x.dtype)


@register_operator
class Rotary(OperatorSpec):
    """Rotary embedding of q or k over a static table, by position ids.

    Inputs: x [B, heads, S, head_dim]; positions int [B, S] (glm2d: [B, 2, S]).
    Attributes: style, rotary_dim, theta, table_dtype, table_rows (positions must be below it).
    """

    name = "rotary"

    def reference(self, x, positions, style: str = "half_split", rotary_dim: int | None = None,
                  theta: float = 10000.0, table_dtype: str = "float32", table_rows: int = 2048,
                  head_dim: int | None = None):
        x = np.asarray(x)
        pos = np.asarray(positions)
        D = x.shape[-1]
        rd = rotary_dim or (D // 2 if style == "glm2d" else D)
        cos_t, sin_t = rotary_table(table_rows, rd, theta, style, table_dtype, compute_dtype=x.dtype)
        if style == "glm2d":
            parts = []
            for i, xh in enumerate((x[..., :rd], x[..., rd:2 * rd])):
                p = pos[:, i]
                parts.append(_apply_np(xh, cos_t[p][:, None], sin_t[p][:, None], "half_split", rd))
            return np.concatenate(parts + [x[..., 2 * rd:]], -1)
        return _apply_np(x, cos_t[pos][:, None], sin_t[pos][:, None], style, rd)

    # ---- emission ----------------------------------------------------------------------------
    def _tables(self, b, positions: str, index: int | None, style, rd, theta, table_dtype, rows):
        """Gathered cos, sin [B, 1, S, w] for positions (row `index` of [B, 2, S] when given)."""
        key = ("rotary", positions, index, style, rd, float(theta), table_dtype, rows)
        if key in b.memo:
            return b.memo[key]
        tkey = ("rotary_table", style, rd, float(theta), table_dtype, rows)
        if tkey not in b.memo:
            # the graph's activation dtype is the model's compute dtype: ChatGLM-6B's table follows it
            cos, sin = rotary_table(rows, rd, theta, style, table_dtype, compute_dtype=b.act_dtype)
            tag = f"rotary.{style}.{rd}.{table_dtype}"
            b.memo[tkey] = (b.constant_tensor(f"{tag}.cos", cos), b.constant_tensor(f"{tag}.sin", sin))
        cos_t, sin_t = b.memo[tkey]
        with b.root_scope("rotary_tables"):  # shared by every layer: not under layers.0/
            pos = positions
            if index is not None:
                pos = b.node("Gather", [positions, b.const(np.int32(index))], name=f"Positions{index}", axis=1)
            sfx = "" if index is None else str(index)
            cos = b.unsqueeze(b.node("Gather", [cos_t, pos], name=f"GatherCos{sfx}", axis=0), [1],
                              name=f"UnsqueezeCos{sfx}")
            sin = b.unsqueeze(b.node("Gather", [sin_t, pos], name=f"GatherSin{sfx}", axis=0), [1],
                              name=f"UnsqueezeSin{sfx}")
        b.memo[key] = (cos, sin)
        return cos, sin

    def _rotate(self, b, x, cos, sin, style, rd, D, tag=""):
        xr = x if rd == D else b.slice(x, [0], [rd], [-1], name=f"SliceRot{tag}")
        if style == "interleaved":
            pairs = b.reshape(xr, [0, 0, 0, rd // 2, 2], name=f"Pairs{tag}")
            xe = b.slice(pairs, [0], [1], [-1], name=f"Even{tag}")
            xo = b.slice(pairs, [1], [2], [-1], name=f"Odd{tag}")
            c = b.unsqueeze(cos, [-1], name=f"CosPairs{tag}")
            s = b.unsqueeze(sin, [-1], name=f"SinPairs{tag}")
            ye = b.node("Sub", [b.node("Mul", [xe, c], name=f"EvenCos{tag}"),
                                b.node("Mul", [xo, s], name=f"OddSin{tag}")], name=f"NewEven{tag}")
            yo = b.node("Add", [b.node("Mul", [xo, c], name=f"OddCos{tag}"),
                                b.node("Mul", [xe, s], name=f"EvenSin{tag}")], name=f"NewOdd{tag}")
            y = b.reshape(b.node("Concat", [ye, yo], name=f"StackPairs{tag}", axis=-1), [0, 0, 0, rd],
                          name=f"Unpairs{tag}")
        else:
            h = rd // 2
            x1 = b.slice(xr, [0], [h], [-1], name=f"Half1{tag}")
            x2 = b.slice(xr, [h], [rd], [-1], name=f"Half2{tag}")
            rot = b.node("Concat", [b.node("Neg", [x2], name=f"Neg{tag}"), x1], name=f"RotateHalf{tag}", axis=-1)
            y = b.node("Add", [b.node("Mul", [xr, cos], name=f"MulCos{tag}"),
                               b.node("Mul", [rot, sin], name=f"MulSin{tag}")], name=f"Rotated{tag}")
        if rd == D:
            return y
        rest = b.slice(x, [rd], [D], [-1], name=f"SlicePass{tag}")
        return b.node("Concat", [y, rest], name=f"ConcatPass{tag}", axis=-1)

    def _emit(self, b, inputs, target, style: str = "half_split", rotary_dim: int | None = None,
              theta: float = 10000.0, table_dtype: str = "float32", table_rows: int = 2048,
              head_dim: int | None = None):
        x, positions = inputs
        if head_dim is None:
            raise ValueError("rotary.emit needs head_dim (the last dimension of x)")
        D = int(head_dim)
        rd = int(rotary_dim or (D // 2 if style == "glm2d" else D))
        if style == "glm2d":
            halves = []
            for i in (0, 1):
                xh = b.slice(x, [i * rd], [(i + 1) * rd], [-1], name=f"GlmHalf{i}")
                cos, sin = self._tables(b, positions, i, "glm2d", rd, theta, table_dtype, table_rows)
                halves.append(self._rotate(b, xh, cos, sin, "half_split", rd, rd, tag=str(i)))
            if 2 * rd < D:
                halves.append(b.slice(x, [2 * rd], [D], [-1], name="GlmPass"))
            return b.node("Concat", halves, name="GlmConcat", axis=-1)
        cos, sin = self._tables(b, positions, None, style, rd, theta, table_dtype, table_rows)
        return self._rotate(b, x, cos, sin, style, rd, D)
