"""Rotary position embedding: half-split (HF Llama, NeoX), interleaved pairs (GPT-J, Meta,
ChatGLM2) and ChatGLM-6B's 2-D variant — cos/sin tables computed offline, shipped as constants.

Tables (`rotary_table`): inv_freq[i] = 1 / theta^(2i / rotary_dim), angle[t, i] = t · inv_freq[i].
- "float32" (Llama, reference model_architectures.md §3.4): inv_freq, positions, angles and
  cos/sin all in fp32, then cast to the activation dtype.
- "float16" (ChatGLM-6B, §1.5): inv_freq computed in fp32 then cast to fp16; positions fp16; the
  outer product rounded to fp16; cos/sin of those fp16 angles, rounded to fp16 — exactly the
  original's `precision=torch.half` path (the model was trained with this table).

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


def rotary_table(rows: int, rotary_dim: int, theta: float = 10000.0, style: str = "half_split",
                 table_dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """cos, sin tables [rows, w] (w = rotary_dim; interleaved: rotary_dim / 2) in `table_dtype`."""
    if rotary_dim % 2:
        raise ValueError(f"rotary_dim must be even, got {rotary_dim}")
    exponent = np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(rotary_dim)
    inv_freq = (np.float32(1.0) / np.power(np.float32(theta), exponent, dtype=np.float32)).astype(np.float32)
    if table_dtype == "float16":
        inv16 = inv_freq.astype(np.float16)
        t16 = np.arange(rows).astype(np.float16)
        angles = (t16.astype(np.float32)[:, None] * inv16.astype(np.float32)[None, :]).astype(np.float16)
        cos = np.cos(angles.astype(np.float32)).astype(np.float16)
        sin = np.sin(angles.astype(np.float32)).astype(np.float16)
    elif table_dtype == "float32":
        angles = np.arange(rows, dtype=np.float32)[:, None] * inv_freq[None, :]
        cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    else:
        raise ValueError(f"rotary table dtype must be float32 or float16, got {table_dtype!r}")
    if style in ("half_split", "glm2d"):
        cos, sin = np.concatenate([cos, cos], -1), np.concatenate([sin, sin], -1)
    elif style != "interleaved":
        raise ValueError(f"unknown rotary style {style!r} (known: {', '.join(STYLES)})")
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
        cos_t, sin_t = (a.astype(x.dtype) for a in rotary_table(table_rows, rd, theta, style, table_dtype))
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
            cos, sin = rotary_table(rows, rd, theta, style, table_dtype)
            tag = f"rotary.{style}.{rd}.{table_dtype}"
            b.memo[tkey] = (b.constant_tensor(f"{tag}.cos", cos.astype(b.act_dtype)),
                            b.constant_tensor(f"{tag}.sin", sin.astype(b.act_dtype)))
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
