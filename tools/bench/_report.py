"""Shared by the benchmarks: machine/version header and section replacement in docs/PERFORMANCE.md."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PERF = ROOT / "docs" / "PERFORMANCE.md"


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def versions(*dists: str) -> str:
    out = [f"Python {platform.python_version()}"]
    for d in dists:
        try:
            out.append(f"{d} {metadata.version(d)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(out)


def write_section(title: str, body: str, dists=("numpy",)) -> None:
    """Replace (or append) the `## title` section of docs/PERFORMANCE.md."""
    cmd = shlex.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    stamp = datetime.date.today().isoformat()
    section = (f"## {title}\n\n- date: {stamp}\n- machine: {machine()}\n- versions: {versions(*dists)}\n"
               f"- command: `python {cmd}`\n\n{body.strip()}\n\n")
    text = PERF.read_text() if PERF.exists() else "# Performance\n\nFigures written by `tools/bench/*`. Medians of repeated runs, measured side by side in one run.\n\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    PERF.write_text(text)
