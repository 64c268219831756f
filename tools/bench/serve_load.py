#!/usr/bin/env python
"""Serving under load: N requests at concurrency C through the `openai` client, against the same
requests one at a time, on one `ascend-adapt serve` process (127.0.0.1) — or, with --devices 0,1,
on `ascend-adapt serve --devices 0,1` (one Ray Serve replica per device id, B rows each).

The model: a converted artifact given with --model, or (default) a random Llama written here
(`make_tiny_checkpoint` with the --hidden / --layers sizes, the tiny tokenizer; nothing
downloaded), exported as static graphs with batch B (--batch), prefill length S = 64 and M = S +
--max-tokens, and made an `.omsim` for the simulator (target Ascend310P3).

The server runs as a subprocess (`ascend-adapt serve … --port 0`), so the client threads do not
share its interpreter. Every request is a streamed greedy completion (temperature 0) of
--max-tokens tokens at most; prompts are N distinct sequences of 2–8 words.

1. one at a time: requests in order, each after the previous one finished;
2. under load: the same requests from C client threads at once.

The machine may be shared, so the two phases alternate in --rounds blocks of N / rounds requests
(one at a time, then the same block under load), and each phase's figures are over all its
blocks: a slow stretch of the machine falls on both phases alike.

Per phase: requests lost (an error, a 429, or a stream without finish_reason), TTFT (request sent
→ first token) and TPOT ((last token − first token) ÷ (tokens − 1)) p50 / p99, and aggregate
tokens/s = completion tokens ÷ wall time of the phase. Answers of phase 2 are compared with phase
1 token for token (`token_ids` of each choice).

Usage:  python tools/bench/serve_load.py [-n 200] [-c 16] [--batch 4] [--max-tokens 48] [--rounds 5]
        [--model DIR --backend sim] [--hidden 256 --layers 4] [--devices 0,1] [--no-write]
Writes the "Serving under load (tools/bench/serve_load.py)" section of docs/PERFORMANCE.md (with
--devices: the "… Ray Serve replicas …" section).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _report import write_section  # noqa: E402

TITLE = "Serving under load (tools/bench/serve_load.py)"
TITLE_REPLICAS = "Serving under load, Ray Serve replicas (tools/bench/serve_load.py --devices)"
SPEEDUP_TARGET = 2.5
SEQ_LEN = 64
WORDS = ("the quick brown fox jumps over a lazy dog while seven wise owls watch from an old oak tree near "
         "the river bank where small fish swim in cold clear water").split()


def make_model(root: Path, batch: int, max_tokens: int, hidden: int, layers: int) -> Path:
    """A random Llama (tiny tokenizer) → static graphs (B, S=32, M=32+max_tokens) → .omsim."""
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint
    from ascend_adapt.backends.sim.artifact import omsim_from_export
    from ascend_adapt.om_convert.builder import build_llm_onnx

    heads = max(1, hidden // 64)
    src = make_tiny_checkpoint(root / "ckpt", "llama", "safetensors", seed=0, config_overrides={
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": heads, "intermediate_size": int(hidden * 8 / 3) // 32 * 32})
    build_llm_onnx(src, root / "export", batch=batch, seq_len=SEQ_LEN, max_len=SEQ_LEN + max_tokens,
                   target="Ascend310P3", progress=False)
    return Path(omsim_from_export(root / "export", root / "m.omsim", "Ascend310P3", link=False).path)


def prompts(n: int) -> list[str]:
    """n distinct prompts of 2–8 words (deterministic; the tiny tokenizer spends up to ~6 tokens a word)."""
    out = []
    for i in range(n):
        k = 2 + (i * 5) % 7
        out.append(" ".join(WORDS[(i * 3 + j * (1 + i % 5)) % len(WORDS)] for j in range(k)) + f" {i}")
    return out


def start_server(model: Path, backend: str, batch: int | None, max_queue: int, devices: str | None = None):
    cmd = [sys.executable, "-m", "ascend_adapt", "serve", str(model), "--backend", backend, "--port", "0",
           "--model-name", "bench", "--max-queue", str(max_queue)] + (["--batch", str(batch)] if batch else [])
    cmd += ["--devices", devices] if devices else []
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while True:
        line = p.stderr.readline()
        if not line or time.monotonic() > deadline:
            p.kill()
            raise RuntimeError(f"the server did not start: {line}")
        if line.startswith("serving"):
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()  # keep the pipe drained
            return p, line.rsplit(" on ", 1)[1].strip()


def one(client, prompt: str, max_tokens: int) -> dict:
    """One streamed greedy completion: token ids, finish reason, TTFT and TPOT in seconds."""
    t0 = time.perf_counter()
    ids, finish, t_first, t_last = [], None, None, None
    try:
        for ch in client.completions.create(model="bench", prompt=prompt, max_tokens=max_tokens, temperature=0,
                                            stream=True):
            c = ch.choices[0]
            new = (c.model_extra or {}).get("token_ids", [])
            if new:
                t_last = time.perf_counter()
                t_first = t_first or t_last
                ids += new
            finish = c.finish_reason or finish
    except Exception as exc:  # lost: counted, with the reason
        return {"lost": f"{type(exc).__name__}: {exc}"[:200]}
    if finish is None or t_first is None:
        return {"lost": "stream ended without a finish_reason"}
    n = len(ids)
    return {"ids": ids, "finish": finish, "ttft_s": t_first - t0,
            "tpot_s": (t_last - t_first) / (n - 1) if n > 1 else None}


def run_block(url: str, texts: list[str], concurrency: int, max_tokens: int) -> tuple[list[dict], float]:
    """The requests of one block at `concurrency`: (results in order, wall seconds)."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda p: one(client, p, max_tokens), texts))
    return results, time.perf_counter() - t0


def phase(results: list[dict], wall: float) -> dict:
    """A phase's figures from its results and summed wall time."""
    ok = [r for r in results if "lost" not in r]
    tokens = sum(len(r["ids"]) for r in ok)
    return {"results": results, "wall_s": wall, "tokens": tokens, "lost": len(results) - len(ok),
            "lost_reasons": sorted({r["lost"] for r in results if "lost" in r})[:2],
            "tokens_per_s": tokens / wall if wall else 0.0,
            "ttft_s": _pcts([r["ttft_s"] for r in ok]), "tpot_s": _pcts([r["tpot_s"] for r in ok if r["tpot_s"]])}


def _pcts(xs: list[float]) -> dict:
    if not xs:
        return {"p50": None, "p99": None}
    xs = sorted(xs)
    return {"p50": statistics.median(xs), "p99": xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]}


def figures(seq: dict, load: dict, n: int, c: int, batch: int, max_tokens: int, model: str, rounds: int,
            devices: str | None = None) -> dict:
    """The figures the section is made from (no per-request lists)."""
    same = sum(1 for a, b in zip(seq["results"], load["results"])
               if "lost" not in a and "lost" not in b and a["ids"] == b["ids"])
    strip = ("results",)
    return {"n": n, "concurrency": c, "batch": batch, "max_tokens": max_tokens, "model": model, "rounds": rounds,
            "devices": devices,
            "one_at_a_time": {k: v for k, v in seq.items() if k not in strip},
            "load": {k: v for k, v in load.items() if k not in strip},
            "equal_answers": same, "speedup": load["tokens_per_s"] / seq["tokens_per_s"] if seq["tokens_per_s"] else 0}


def _ms(x) -> str:
    return "—" if x is None else f"{1e3 * x:.1f}"


def prose(f: dict) -> str:
    """The section's text: a pure function of the figures."""
    s, ld = f["one_at_a_time"], f["load"]
    lost = s["lost"] + ld["lost"]
    met_lost = ld["lost"] == 0
    met_equal = f["equal_answers"] == f["n"]
    met_speed = f["speedup"] >= SPEEDUP_TARGET
    verdict = "met" if (met_lost and met_equal and met_speed) else "NOT met"
    devices = f.get("devices")
    where = (f"`ascend-adapt serve --devices {devices}` ({len(devices.split(','))} Ray Serve replicas, B = "
             f"{f['batch']} rows each)" if devices else f"`ascend-adapt serve` with B = {f['batch']} rows")
    rows = f"{len(devices.split(','))} × {f['batch']} rows" if devices else f"{f['batch']} rows"
    lines = [
        f"{f['n']} streamed greedy completions (at most {f['max_tokens']} tokens each) of {f['model']} on "
        f"{where}, through the `openai` client: one at a time, then "
        f"{f['concurrency']} at once, alternating in {f['rounds']} blocks.",
        "",
        "| phase | lost | TTFT p50 / p99 (ms) | TPOT p50 / p99 (ms) | tokens | wall (s) | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, p in (("one at a time", s), (f"concurrency {f['concurrency']}", ld)):
        lines.append(f"| {name} | {p['lost']} | {_ms(p['ttft_s']['p50'])} / {_ms(p['ttft_s']['p99'])} | "
                     f"{_ms(p['tpot_s']['p50'])} / {_ms(p['tpot_s']['p99'])} | {p['tokens']} | {p['wall_s']:.1f} | "
                     f"{p['tokens_per_s']:.1f} |")
    lines += [
        "",
        f"Target: {f['n']} requests at concurrency {f['concurrency']} with B = {f['batch']}: none lost, every "
        f"greedy answer equal to its one-at-a-time answer, aggregate tokens/s ≥ {SPEEDUP_TARGET:g}× one at a time "
        f"— {verdict}.",
        f"- lost: {ld['lost']} under load ({'met' if met_lost else 'NOT met'}), {s['lost']} one at a time"
        + (f"; reasons: {'; '.join(ld['lost_reasons'] + s['lost_reasons'])}" if lost else "") + ".",
        f"- equal answers: {f['equal_answers']} of {f['n']} ({'met' if met_equal else 'NOT met'}).",
        f"- aggregate tokens/s: {ld['tokens_per_s']:.1f} vs {s['tokens_per_s']:.1f} one at a time = "
        f"{f['speedup']:.2f}× ({'met' if met_speed else 'NOT met'}).",
    ]
    if ld["ttft_s"]["p50"] is not None and s["ttft_s"]["p50"] is not None:
        ratio = ld["ttft_s"]["p50"] / s["ttft_s"]["p50"] if s["ttft_s"]["p50"] else float("inf")
        lines.append(f"- TTFT p50 under load is {ratio:.1f}× the one-at-a-time TTFT: with {f['concurrency']} "
                     f"clients and {rows}, a request waits in the queue for a free row.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="requests")
    ap.add_argument("-c", type=int, default=16, help="concurrency under load")
    ap.add_argument("--batch", type=int, default=4, help="B of the graphs written here (or --batch of serve)")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--model", default=None, help="a converted artifact instead of the random Llama")
    ap.add_argument("--backend", default="sim")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5, help="alternating blocks (one at a time, then under load)")
    ap.add_argument("--devices", default=None, help="serve with one Ray Serve replica per device id (e.g. 0,1)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if a.model:
            model, desc, batch = Path(a.model), f"`{a.model}` ({a.backend})", None
        else:
            model = make_model(Path(tmp), a.batch, a.max_tokens, a.hidden, a.layers)
            desc = (f"a random Llama (hidden {a.hidden}, {a.layers} layers, tiny tokenizer; static graphs B = "
                    f"{a.batch}, S = {SEQ_LEN}, M = {SEQ_LEN + a.max_tokens}) on the simulator (Ascend310P3, "
                    "force_fp16)")
            batch = a.batch
        server, url = start_server(model, a.backend, batch, max_queue=max(64, a.c), devices=a.devices)
        try:
            texts = prompts(a.n)
            run_block(url, texts[:4], 1, a.max_tokens)  # warm-up
            got = {1: ([], 0.0), a.c: ([], 0.0)}
            size = -(-a.n // max(1, a.rounds))
            for start in range(0, a.n, size):
                for c in (1, a.c):
                    res, wall = run_block(url, texts[start:start + size], c, a.max_tokens)
                    got[c] = (got[c][0] + res, got[c][1] + wall)
            seq, load = phase(*got[1]), phase(*got[a.c])
        finally:
            server.terminate()
            server.wait(120)
    f = figures(seq, load, a.n, a.c, a.batch, a.max_tokens, desc, a.rounds, a.devices)
    text = prose(f)
    print(text)
    if a.json:
        Path(a.json).write_text(json.dumps(f, indent=1))
    if not a.no_write:
        write_section(TITLE_REPLICAS if a.devices else TITLE, text,
                      dists=("numpy", "onnxruntime", "fastapi", "uvicorn", "openai") + (("ray",) if a.devices else ()))
    return 0 if f["load"]["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
