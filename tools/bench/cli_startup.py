#!/usr/bin/env python
"""Wall time of `ascend-adapt --help` and of each `ascend-adapt <cmd> --help` (median of N runs).

Usage: python tools/bench/cli_startup.py [--runs 15]
Writes the "CLI start-up" section of docs/PERFORMANCE.md.
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _report import write_section  # noqa: E402


def timed(argv, runs):
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        out.append(time.perf_counter() - t)
    return statistics.median(out) * 1000, max(out) * 1000


TARGET_MS = 500


def prose(rows, python_only) -> str:
    """The section body from the figures alone: rows of (command, median ms, max ms), and the
    (median, max) ms of the bare interpreter."""
    top = next(m for c, m, _ in rows if c == "--help")
    worst = max(rows, key=lambda r: r[1])
    lines = ["| command | median ms | max ms |", "|---|---|---|"]
    lines += [f"| `ascend-adapt {c}` | {m:.0f} | {x:.0f} |" for c, m, x in rows]
    lines.append(f"| `python -c pass` (interpreter alone) | {python_only[0]:.0f} | {python_only[1]:.0f} |")
    verdict = "met" if top <= TARGET_MS else "NOT met"
    return (f"Target: `ascend-adapt --help` ≤ {TARGET_MS} ms — {verdict} ({top:.0f} ms median; the slowest "
            f"command's `--help` is `{worst[0]}` at {worst[1]:.0f} ms). No command's `--help` imports torch, "
            "mindspore or onnxruntime (tests/test_cli_lazy.py).\n\n" + "\n".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    exe = shutil.which("ascend-adapt") or sys.exit("ascend-adapt is not on PATH (run tools/test.sh once)")
    from ascend_adapt.cli.main import LazyGroup

    rows = [("--help", *timed([exe, "--help"], args.runs))]
    for name in LazyGroup().list_commands(None):
        rows.append((f"{name} --help", *timed([exe, name, "--help"], max(3, args.runs // 3))))
    python_only = timed([sys.executable, "-c", "pass"], args.runs)
    body = prose(rows, python_only)
    print(body)
    write_section("CLI start-up (tools/bench/cli_startup.py)", body, dists=("click",))


if __name__ == "__main__":
    main()
