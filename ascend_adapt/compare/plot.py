"""A PNG of the error per layer: matplotlib when installed (`pip install 'ascend-adapt[plot]'`),
else a minimal built-in PNG writer (zlib + struct) that draws the same bars without any text:
no axis labels or tick values (the report prints the numbers; the PNG only shows the shape).

Bars: log10 of the max absolute error per layer (layers in execution order), red where the
layer is at or after the first divergence, grey before it; a horizontal line marks log10(atol).
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ascend_adapt.fsutil import atomic_output


def write_png(path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image [H, W, 3] as a PNG (8-bit truecolor, no filter)."""
    img = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    Path(path).write_bytes(png)


def _values(report):
    rows = report.per_layer()
    names = [r[0] for r in rows]
    errs = [r[1] for r in rows]
    first = report.first_divergent_layer
    idx = names.index(first) if first in names else None
    return names, errs, idx


def _log(v: float) -> float:
    if not math.isfinite(v):
        return 6.0
    return math.log10(max(v, 1e-12))


def _builtin(report, path) -> None:
    names, errs, idx = _values(report)
    W, H, m = max(320, 24 * len(names) + 40), 240, 20
    img = np.full((H, W, 3), 255, np.uint8)
    logs = [_log(e) for e in errs] + [_log(report.atol)]
    lo, hi = min(logs) - 0.5, max(logs) + 0.5
    y = lambda v: int(H - m - (v - lo) / (hi - lo) * (H - 2 * m))  # noqa: E731
    img[H - m, m:W - m] = 0
    img[m:H - m, m] = 0
    bw = max(2, (W - 2 * m) // max(1, len(names)) - 4)
    for i, v in enumerate(logs[:-1]):
        x0 = m + 4 + i * (bw + 4)
        color = (200, 40, 40) if idx is not None and i >= idx else (130, 130, 130)
        top = y(v)
        img[min(top, H - m - 1):H - m, x0:x0 + bw] = color
    ya = y(logs[-1])
    img[max(ya, 0):max(ya, 0) + 1, m:W - m] = (40, 90, 200)
    write_png(path, img)


DPI = 100  # pixels per inch of the saved PNG


def figure_size_px(n_layers: int) -> tuple[int, int]:
    """(width, height) in pixels of the matplotlib plot of `n_layers` layers."""
    return int(max(6, 0.4 * n_layers) * DPI), 4 * DPI


def make_figure(report):
    """The matplotlib figure of `plot_report` (not saved): one bar per layer, the atol line.

    Bar heights are the per-layer max |B − A| of `report.per_layer()` (non-finite drawn at 1e6,
    zeros at 1e-12 on the log axis), red from the first divergent layer on, grey before it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, errs, idx = _values(report)
    w_px, h_px = figure_size_px(len(names))
    fig, ax = plt.subplots(figsize=(w_px / DPI, h_px / DPI))
    vals = [e if math.isfinite(e) else 1e6 for e in errs]
    colors = ["tab:red" if idx is not None and i >= idx else "tab:gray" for i in range(len(names))]
    ax.bar(range(len(names)), [max(v, 1e-12) for v in vals], color=colors)
    ax.axhline(report.atol, color="tab:blue", lw=1, label=f"atol {report.atol:g}")
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("max |B − A|")
    ax.set_title(f"{Path(report.a).name} vs {Path(report.b).name}: "
                 f"{'PASSED' if report.passed else 'FAILED'}"
                 + (f", first divergence {report.first_divergent_layer}" if report.first_divergent_layer else ""))
    ax.legend()
    fig.tight_layout()
    return fig


def plot_report(report, path, *, backend: str | None = None) -> str:
    """Write the per-layer error plot of a CompareReport; returns a description of what was written.

    Args:
        report: the CompareReport.
        path: the PNG path.
        backend: "matplotlib", "builtin" or None (matplotlib when importable).
    """
    path = Path(path)
    use_mpl = backend == "matplotlib"
    if backend is None:
        try:
            import matplotlib  # noqa: F401

            use_mpl = True
        except ImportError:
            use_mpl = False
    sides = [str(s).split(":", 1)[-1].split("#")[0] for s in (report.a, report.b)]  # "sim:X.onnx#g" -> X.onnx
    with atomic_output(path, force=True, inputs=sides) as tmp:
        tmp_png = tmp
        if use_mpl:
            fig = make_figure(report)  # selects the Agg backend before pyplot is imported
            import matplotlib.pyplot as plt

            fig.savefig(tmp_png, dpi=DPI, format="png")
            plt.close(fig)
            how = "matplotlib"
        else:
            _builtin(report, tmp_png)
            how = "built-in PNG writer, no text labels (pip install 'ascend-adapt[plot]' for a labelled plot)"
    return f"{path} ({how})"
