"""The compare plot (matplotlib): the PNG is written, has the expected size, and draws the compare's values."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from ascend_adapt.compare import compare
from ascend_adapt.compare.plot import DPI, figure_size_px, make_figure, plot_report
from ascend_adapt.model_zoo.base import ADAPTERS
from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint, random_canonical_weights, tiny_config


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory):
    """A golden tiny Llama and a copy whose layer 1 MLP output is scaled: divergence from layers.1 on."""
    d = tmp_path_factory.mktemp("plot")
    spec = ADAPTERS.get("llama").spec_from_config(tiny_config("llama"))
    w = random_canonical_weights(spec, 0)
    make_tiny_checkpoint(d / "golden", "llama", weights=w)
    p = dict(w)
    p["layers.1.mlp.down.weight"] = w["layers.1.mlp.down.weight"] * 1.5
    make_tiny_checkpoint(d / "pert", "llama", weights=p)
    return compare(d / "golden", d / "pert", layerwise=True)


def test_plot_file_is_a_png_of_the_expected_size(perturbed, tmp_path):
    out = tmp_path / "err.png"
    desc = plot_report(perturbed, out)  # default backend: matplotlib is a test dependency
    assert "matplotlib" in desc
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    w, h = struct.unpack(">II", data[16:24])
    assert (w, h) == figure_size_px(len(perturbed.per_layer())) == (6 * DPI, 4 * DPI)
    assert data.rstrip(b"\x00")[-8:-4] == b"IEND"
    # a decodable image: matplotlib reads it back with that size
    import matplotlib.image as mpimg

    assert mpimg.imread(str(out)).shape[:2] == (h, w)


def test_drawn_bars_are_the_compare_values(perturbed):
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    rows = perturbed.per_layer()
    fig = make_figure(perturbed)
    try:
        ax = fig.axes[0]
        bars = list(ax.patches)
        assert len(bars) == len(rows) == 5  # embed, layers.0, layers.1, final_norm, logits
        heights = [b.get_height() for b in bars]
        expected = [max(e if math.isfinite(e) else 1e6, 1e-12) for _, e, _ in rows]
        np.testing.assert_array_equal(heights, expected)  # the very floats of the compare, not re-derived
        assert [t.get_text() for t in ax.get_xticklabels()] == [r[0] for r in rows]
        first = [r[0] for r in rows].index(perturbed.first_divergent_layer)
        assert perturbed.first_divergent_layer == "layers.1"
        colours = [b.get_facecolor() for b in bars]
        assert all(c == to_rgba("tab:gray") for c in colours[:first])
        assert all(c == to_rgba("tab:red") for c in colours[first:])
        (line,) = ax.get_lines()
        assert list(line.get_ydata()) == [perturbed.atol, perturbed.atol]
        assert ax.get_yscale() == "log" and "FAILED" in ax.get_title()
    finally:
        plt.close(fig)
