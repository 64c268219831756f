#!/usr/bin/env python
"""Host memory of the W8A8 calibration (`plan_w8a8`) against its `calib_memory` figure.

Writes a random Llama-shaped fp16 checkpoint (default: hidden 2048, intermediate 5632, 16 layers,
32 heads, vocab 32 000: 0.95 B parameters, 1.9 GB) with `make_tiny_checkpoint`, then runs
`plan_w8a8(CKPT, alpha=A, max_tokens=N)` in a fresh child process that samples its own
/proc/self/status every 2 ms and reports: peak RSS (VmHWM), peak anonymous memory (RssAnon,
sampled), the anonymous memory when `plan_w8a8` checks the host (`check_calib_memory`: the
host's MemAvailable is read then, so what the process already holds is not part of the figure),
the growth from there to the peak, and `calib_memory`'s figure and parts. `--whole` calibrates
the whole fp32 golden instead (a backend passed in). The checkpoint is deleted unless --keep.

With --write-doc the figures go to docs/PERFORMANCE.md ("W8A8 calibration memory" section).

Usage: python tools/bench/calib_memory.py [--workdir DIR] [--alpha 0.5] [--tokens 256] [--whole] [--keep] [--write-doc]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIG = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=32,
              num_key_value_heads=32, vocab_size=32000, max_position_embeddings=2048)

CHILD = r"""
import json, sys, threading, time
ckpt, alpha, tokens, whole = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
alpha = alpha if alpha == "auto" else float(alpha)

def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmHWM", "RssAnon"):
            out[k] = int(v.split()[0]) * 1024
    return out

peak, stop = [0], [False]
def sample():
    while not stop[0]:
        peak[0] = max(peak[0], status()["RssAnon"])
        time.sleep(0.002)
threading.Thread(target=sample, daemon=True).start()
from ascend_adapt.quant import smoothquant as sq
seen = {}
check = sq.check_calib_memory
def checked(model, spec, need, available):
    seen.update(need=need, anon=status()["RssAnon"])
    return check(model, spec, need, available)
sq.check_calib_memory = checked
t0 = time.perf_counter()
backend = None
if whole:
    from ascend_adapt.backends.torch.session import TorchBackend
    backend = TorchBackend(ckpt, dtype="float32")
plan = sq.plan_w8a8(ckpt, alpha=alpha, max_tokens=tokens, backend=backend)
elapsed = time.perf_counter() - t0
stop[0] = True
time.sleep(0.01)
need, s = seen["need"], status()
print(json.dumps({"elapsed_s": elapsed, "peak_rss": s["VmHWM"], "peak_anon": max(peak[0], s["RssAnon"]),
                  "anon_at_check": seen["anon"], "figure": need.total, "tokens": plan.tokens,
                  "parts": {k: getattr(need, k) for k in ("resident", "golden", "load_peak", "activations",
                                                          "samples", "search_temp")}}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None, help="where the checkpoint goes (default: a temp dir)")
    ap.add_argument("--alpha", default="0.5", help="SmoothQuant α, or auto (default 0.5)")
    ap.add_argument("--tokens", type=int, default=256, help="calibration tokens at most (default 256)")
    ap.add_argument("--whole", action="store_true", help="calibrate the whole fp32 golden (a backend passed in)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint")
    ap.add_argument("--write-doc", action="store_true", help="write the section of docs/PERFORMANCE.md")
    args = ap.parse_args(argv)
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint

    work = args.workdir or Path(tempfile.mkdtemp(prefix="calib_memory_"))
    ckpt = work / "llama"
    try:
        make_tiny_checkpoint(ckpt, "llama", dtype="float16", force=True, config_overrides=CONFIG)
        r = subprocess.run([sys.executable, "-c", CHILD, str(ckpt), args.alpha, str(args.tokens),
                            "1" if args.whole else "0"], capture_output=True, text=True)
        if r.returncode:
            sys.stderr.write(r.stderr)
            return r.returncode
        b = json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        if not args.keep:
            shutil.rmtree(ckpt, ignore_errors=True)
            if args.workdir is None:
                shutil.rmtree(work, ignore_errors=True)
    gb = lambda n: f"{n / 1e9:.2f} GB"  # noqa: E731
    grown = b["peak_anon"] - b["anon_at_check"]
    print(f"plan_w8a8 ({'whole golden' if args.whole else 'streamed'}, α = {args.alpha}, {b['tokens']} tokens): "
          f"{b['elapsed_s']:.0f} s, peak RSS {gb(b['peak_rss'])}, peak anonymous {gb(b['peak_anon'])} "
          f"({gb(b['anon_at_check'])} held at the memory check, {gb(grown)} grown after it); "
          f"calib_memory figure {gb(b['figure'])} ({', '.join(f'{k} {gb(v)}' for k, v in b['parts'].items())}); "
          f"growth − figure {gb(grown - b['figure'])}")
    if args.write_doc:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _report import write_section

        write_section("W8A8 calibration memory (tools/bench/calib_memory.py)", _section(args, b, grown),
                      dists=("numpy", "torch", "transformers"))
    return 0


def _section(args, b: dict, grown: int) -> str:
    """The PERFORMANCE.md section: every figure and verdict made from the measured ones."""
    gb = lambda n: f"{n / 1e9:.2f} GB"  # noqa: E731
    short = grown - b["figure"]
    verdict = (f"the figure covers the growth with {gb(-short)} to spare" if short <= 0 else
               f"the growth exceeds the figure by {gb(short)} ({100 * short / b['figure']:.0f} % of it): "
               "that much is not accounted for by `calib_memory`")
    rows = "\n".join(f"| {k} | {gb(v)} |" for k, v in b["parts"].items())
    shape = ", ".join(f"{k} {v}" for k, v in CONFIG.items())
    return f"""`plan_w8a8` ({'the whole fp32 golden, a backend passed in' if args.whole else 'layer-streamed, the default'};
α = {args.alpha}; {b['tokens']} calibration tokens) on a random Llama-shaped fp16 checkpoint ({shape}),
in a fresh child process sampling its /proc/self/status every 2 ms. The host's free memory is read at
the memory check (`check_calib_memory`), so what the process already holds then is outside the
figure; what grows after it is what the figure must cover.

| measured | |
|---|---|
| wall time | {b['elapsed_s']:.0f} s |
| peak RSS (VmHWM) | {gb(b['peak_rss'])} |
| peak anonymous memory (RssAnon, sampled) | {gb(b['peak_anon'])} |
| anonymous memory at the memory check | {gb(b['anon_at_check'])} |
| growth after the check | {gb(grown)} |
| `calib_memory` figure | {gb(b['figure'])} |

| figure's part (figure = resident + max(load_peak, golden + activations + samples + search_temp)) | bytes |
|---|---|
{rows}

Growth against the figure: {verdict}."""


if __name__ == "__main__":
    sys.exit(main())
