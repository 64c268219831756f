#!/usr/bin/env python
"""Decode speed of the MindSpore backend (graph / PyNative, fp32 / fp16) vs the torch golden.

Builds a random 125M-parameter Llama-2-shaped checkpoint (hidden 768, 12 layers, 12 heads,
4 KV heads, inter 2048, vocab 32000) and a ChatGLM-6B-shaped one of similar size in a temporary
directory; for each backend one warm-up generation with the measured shapes (compiles the
graphs), then `--repeat` timed runs of prefill (32 tokens) + `--new` greedy decode steps, batch 1,
round-robin over the backends (so load from other processes hits each alike). Prints a Markdown
table of medians (decode tokens/s excludes the prefill).

Usage:  python tools/bench/ms_decode_speed.py --new 64 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = {
    "llama": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12,
              "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 1024},
    "chatglm": {"hidden_size": 768, "inner_hidden_size": 3072, "num_layers": 12, "num_attention_heads": 12,
                "vocab_size": 32000, "max_sequence_length": 1024},
}


def timed(backend, ids, new: int) -> tuple[float, float]:
    s = backend.new_session(1, ids.shape[1] + new + 1)
    t0 = time.perf_counter()
    logits = s.prefill(ids)
    t1 = time.perf_counter()
    for _ in range(new):
        logits = s.decode(logits.argmax(-1))
    t2 = time.perf_counter()
    if hasattr(s, "close"):
        s.close()
    return t1 - t0, new / (t2 - t1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--archs", default="llama,chatglm")
    a = ap.parse_args(argv)
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint
    from ascend_adapt.backends import get_backend

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in a.archs.split(","):
            d = make_tiny_checkpoint(Path(tmp) / arch, arch, config_overrides=CONFIGS[arch])
            variants = [("torch", {}), ("mindspore", {"mode": "graph"}), ("mindspore", {"mode": "pynative"}),
                        ("mindspore", {"mode": "graph", "dtype": "float16"})]
            backends = []
            for name, opts in variants:
                b = get_backend(name, d, **opts)
                spec = b.spec
                body = np.random.default_rng(0).integers(10, 500, a.prompt - 2).tolist()
                ids = np.array([body + [spec.gmask_token_id, spec.bos_token_id]] if arch == "chatglm"
                               else [[1] + body + [11]])
                t = time.perf_counter()
                timed(b, ids, a.new)  # warm-up with the measured shapes: compiles the graphs
                label = name + (f" {opts.get('mode')}" if opts else "") + (f" {opts['dtype']}" if "dtype" in opts else "")
                backends.append((label, b, ids, time.perf_counter() - t, []))
            # round-robin repeats: load from other processes hits every backend alike
            for _ in range(a.repeat):
                for label, b, ids, _, runs in backends:
                    runs.append(timed(b, ids, a.new))
            for label, b, ids, warm, runs in backends:
                rows.append((arch, f"{b.spec.param_count() / 1e6:.0f}M", label, warm,
                             statistics.median(r[0] for r in runs) * 1000, statistics.median(r[1] for r in runs)))
                print(rows[-1], flush=True)
            del backends
    print(f"\nload average (1/5/15 min) at the end: {os.getloadavg()}")
    print("\n| model | params | backend | first run (compile) | prefill 32 tok | decode tok/s |")
    print("|---|---|---|---|---|---|")
    for arch, p, label, warm, pre, tps in rows:
        print(f"| {arch} | {p} | {label} | {warm:.1f} s | {pre:.0f} ms | {tps:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
