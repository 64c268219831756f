"""Every sentence of the benchmark sections that states a figure or a comparison is made from the
figures: each bench's text-making is a pure function, run here on two made-up sets of figures
where the comparison goes one way, then the other; the text must follow."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "bench"))

import build_memory  # noqa: E402
import calib_memory  # noqa: E402
import cli_startup  # noqa: E402
import convert_memory  # noqa: E402
import decode  # noqa: E402


@pytest.mark.parametrize("help_ms, verdict", [(60.0, "met"), (650.0, "NOT met")])
def test_cli_startup_prose_follows_the_figures(help_ms, verdict):
    rows = [("--help", help_ms, help_ms + 5), ("convert --help", 70.0, 80.0), ("run --help", 90.0, 95.0)]
    text = cli_startup.prose(rows, (20.0, 25.0))
    assert f"— {verdict} ({help_ms:.0f} ms median" in text
    slowest = max(rows, key=lambda r: r[1])
    assert f"the slowest command's `--help` is `{slowest[0]}` at {slowest[1]:.0f} ms" in text
    assert f"| `ascend-adapt --help` | {help_ms:.0f} |" in text


FIG = {"peak_rss_bytes": 0, "rss_before_build_bytes": 80e6, "max_tensor_bytes": 262e6, "elapsed_s": 99.0,
       "weights_bytes": 13.48e9, "num_tensors": 293, "proto_bytes": {"prefill": 343e3, "decode": 365e3},
       "nodes": {"prefill": 1940, "decode": 2070}}


@pytest.mark.parametrize("peak, verdict", [(0.57e9, "met"), (5.2e9, "MISSED")])
def test_build_memory_prose_follows_the_figures(peak, verdict):
    text = build_memory.prose(dict(FIG, peak_rss_bytes=peak), total=13.48e9, write_s=23.0, layers=32,
                              seq_len=64, max_len=512)
    assert f"Target: peak RSS ≤ 4.00 GB — {verdict} ({peak / 1e9:.2f} GB, {100 * peak / 13.48e9:.1f} %" in text


def _conv(copy_s, port_s, usual_rss_gib, small_copy_gbps):
    big = 13.48e9
    small = 2.14e9
    return {
        "7B": {"src_bytes": big, "shards": 4,
               "copy": {"median_s": copy_s, "GBps": big / copy_s / 1e9, "peak_rss_GiB": 0.04},
               "port-ckpt": {"median_s": port_s, "GBps": big / port_s / 1e9, "peak_rss_GiB": 0.31}},
        "4-layer": {"src_bytes": small, "shards": 1,
                    "copy": {"median_s": small / small_copy_gbps / 1e9, "GBps": small_copy_gbps, "peak_rss_GiB": 0.04},
                    "port-ckpt": {"median_s": 4.7, "GBps": small / 4.7e9, "peak_rss_GiB": 0.31},
                    "usual": {"median_s": 12.1, "GBps": small / 12.1e9, "peak_rss_GiB": usual_rss_gib}},
    }


def test_convert_memory_reading_follows_the_figures():
    ram = 24 * 2**30
    a = convert_memory.reading(_conv(copy_s=20.0, port_s=30.0, usual_rss_gib=4.87, small_copy_gbps=0.85), ram)
    assert "the streamed port takes 1.50× the time of a plain copy" in a and "(30.0 s vs 20.0 s)" in a
    assert "more than this machine's 24 GiB" in a
    assert "runs faster than at 7B size" in a
    b = convert_memory.reading(_conv(copy_s=30.0, port_s=20.0, usual_rss_gib=1.0, small_copy_gbps=0.2), ram)
    assert "the streamed port is 1.50× faster than a plain copy" in b and "(20.0 s vs 30.0 s)" in b
    assert "within this machine's 24 GiB" in b
    assert "runs slower than at 7B size" in b
    # the ratios are the figures', not constants
    assert "≈ 2.4× the weights" in a and "≈ 0.5× the weights" in b


def _decode_fig(hf, ort, plain, sim, read_gbps, sum_gbps):
    paths = [("hf-eager", hf), ("ort-plain", plain), ("ort", ort), ("sim-fp16", sim)]
    return {
        "model": {"hidden": 768, "layers": 12, "heads": 12, "kv_heads": 12, "intermediate": 2048, "vocab": 32000,
                  "params": 134_100_000},
        "prompt": 32, "new": 64, "repeat": 5, "threads": 2, "wait_idle_s": 20.0, "target": "Ascend310P3",
        "build_s": 0.9, "total_s": 86.0, "load0": 1.1, "load1": 1.6, "idle_rounds": 5,
        "weight_bytes": 438.1e6, "kv_bytes": 7.1e6,
        "bandwidth_keys": ["sum", "read", "gemv"],
        "bandwidth_gbps": {"sum": sum_gbps, "read": read_gbps, "gemv": 26.0}, "bandwidth_samples": 10,
        "paths": [{"name": n, "label": n, "tok_s": t, "best_tok_s": t * 1.02, "cpu": 1.99, "prefill_ms": 60.0,
                   "setup_s": 2.0} for n, t in paths],
        "agree": {"ort": [64, 64]},
        "sim": {"target": "Ascend310P3", "per_token_ms": 4.366, "prefill_ms": 4.374, "setup_s": 20.0},
        "huge_page_bytes": 866e6,
    }


def test_decode_prose_follows_the_figures():
    # A: the fast path beats every goal, huge pages help, the one-core sum is below every path
    a = decode.prose(_decode_fig(hf=20.0, ort=70.0, plain=50.0, sim=60.0, read_gbps=37.0, sum_gbps=5.0))
    assert "fast path ≥ 2× HF eager: **met** (3.50×)" in a
    assert "fast path ≥ 80 % of the bandwidth bound: **met**" in a
    assert "simulator ≤ 3× slower than the fast path: **met**" in a
    assert "is faster than the backend defaults here (70.0 vs 50.0 tok/s)" in a
    assert "below what every path here does" in a
    assert "within what the GEMV kernels reach" in a
    # B: the other way round
    b = decode.prose(_decode_fig(hf=40.0, ort=45.0, plain=50.0, sim=10.0, read_gbps=37.0, sum_gbps=40.0))
    assert "fast path ≥ 2× HF eager: **not met** (1.12×)" in b
    assert "fast path ≥ 80 % of the bandwidth bound: **not met**" in b
    assert "simulator ≤ 3× slower than the fast path: **not met**" in b
    assert "is not faster than the backend defaults here (45.0 vs 50.0 tok/s)" in b
    assert "below what every path here does" not in b and "above the measured paths" in b
    assert "above what the GEMV kernels reach" in b
    # no figure in the text that the figures do not produce: the probes paragraph has none
    assert not any(ch.isdigit() for ch in decode.TRIED)


@pytest.mark.parametrize("grown, verdict", [(0.70e9, "the figure covers the growth with 0.04 GB to spare"),
                                             (0.80e9, "the growth exceeds the figure by 0.06 GB (8 % of it)")])
def test_calib_memory_prose_follows_the_figures(grown, verdict):
    import argparse

    b = {"elapsed_s": 120.0, "peak_rss": 1.21e9, "peak_anon": 0.29e9 + grown, "anon_at_check": 0.29e9,
         "figure": 0.74e9, "tokens": 256, "parts": {"resident": 0.3e9, "golden": 0.2e9, "search_temp": 0.24e9}}
    text = calib_memory._section(argparse.Namespace(alpha="0.5", whole=False), b, int(grown))
    assert verdict in text and "layer-streamed, the default" in text
    assert f"| growth after the check | {grown / 1e9:.2f} GB |" in text and "| search_temp | 0.24 GB |" in text


def test_performance_doc_has_no_hand_written_prose_outside_the_benches():
    """Every section of docs/PERFORMANCE.md is one a bench writes (title = its script)."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "PERFORMANCE.md").read_text()
    titles = [ln[3:] for ln in doc.splitlines() if ln.startswith("## ")]
    benches = {p.name for p in (Path(__file__).resolve().parents[1] / "tools" / "bench").glob("*.py")}
    for t in titles:
        assert t.endswith(".py)") and t.rsplit("tools/bench/", 1)[-1][:-1] in benches, t
