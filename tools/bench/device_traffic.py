#!/usr/bin/env python
"""Host↔device traffic and pyACL calls per decoded token of the "acl" runtime, counted by the
strict fake pyACL (`ascend_adapt.testing.fake_acl`) for a Llama-2-7B-shaped decode at M=1024,
fp16 mode (issue 13, "Done when" bullet 2).

What runs: the exact "acl" backend code (`AclLMBackend` → `GraphLMSession` → `AclRunner`) on the
fake, which executes the graphs through onnxruntime and counts every pyACL call and every byte
copied per direction. The graph is the default convert layout (one step graph with gears; decode =
gear 1), fp16 weights (so an fp16 KV cache at the graph boundary), `--precision_mode force_fp16` in its simulator artifact (the stand-in OM).

How the 7B figure is obtained (measured, then scaled by layers — stated, not hidden): a full 7B
graph would need 13 GB of weights on this machine, so the benchmark builds two graphs with every
Llama-2-7B dimension (hidden 4096, 32 heads, 32 KV heads, head_dim 128, intermediate 11008, vocab
32000, M = 1024 cache slots, B = 1) but 1 and 2 layers, measures both, and takes

    per layer = count(2 layers) − count(1 layer);  fixed = count(1 layer) − per layer
    7B (32 layers) = fixed + 32 × per layer

for bytes and calls (both are affine in the layer count: the KV cache is [L, B, KVH, M, D] and
every other input / output is independent of L). The script also computes the bytes from the
graph contract (docs/graph_contract.md) and checks that the measurement equals it.

"before" is the runtime as it was (and still is with `kv_cache="host"`, the default that
`ascend_adapt.serve` drives): the KV cache in host memory, copied in whole to the device each
step, and every output copied back. "after" is `kv_cache="device"` (`AclDeviceKVCache`) with
greedy on the card, what `generate --backend acl` does for greedy decoding: the cache stays on
the card as the OM's past_* input buffers, each step's present K/V are written into their slots
with a strided device-to-device copy, the host sends ids, positions and the mask, and receives
only the graph's `next_token` (int32, ArgMax over the vocabulary in the graph) and `logits_sum`
(fp32, the finiteness check): 8 bytes per row (`session.decode_next`). The middle column,
"logits on request", is the same device cache when the host asks for the full logits
(`session.decode`: sampling, a repetition penalty, `--dump-logits`, compare): 128,000 B of fp32
logits per token. The cache crosses the graph boundary in the graph's activation dtype (fp16 for
this fp16 export, the builder's contract).

Usage:  python tools/bench/device_traffic.py [--tokens 4] [--max-len 1024] [--workdir DIR] [--no-write]
Writes the "Host↔device traffic per decoded token (tools/bench/device_traffic.py)" section of
docs/PERFORMANCE.md (unless --no-write). Takes about a minute here (2 cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

SEVEN_B = {"hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 11008,
           "vocab_size": 32000, "max_position_embeddings": 4096}
LAYERS_7B = 32
TITLE = "Host↔device traffic per decoded token (tools/bench/device_traffic.py)"


def build(workdir: Path, layers: int, max_len: int) -> Path:
    """A 7B-shaped Llama with `layers` layers: checkpoint → step graph (fp16 weights) → .omsim beside it."""
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint
    from ascend_adapt.backends.sim.artifact import omsim_from_export
    from ascend_adapt.om_convert.builder import build_llm_onnx

    ckpt = make_tiny_checkpoint(workdir / f"ckpt{layers}", "llama", dtype="float16", force=True,
                                config_overrides=dict(SEVEN_B, num_hidden_layers=layers))
    exp = workdir / f"exp{layers}"
    if (exp / "model.omsim" / "manifest.json").is_file() and (exp / "export.json").is_file():
        import json

        if json.loads((exp / "export.json").read_text())["max_len"] == max_len:
            return exp  # built by an earlier run in this --workdir
    build_llm_onnx(ckpt, exp, batch=1, max_len=max_len, gears=[16], weight_dtype="float16", force=True,
                   progress=False, target="Ascend310P3")
    omsim_from_export(exp, exp / "model.omsim", "Ascend310P3", precision_mode="force_fp16", force=True, cost=False)
    return exp


def measure(exp: Path, tokens: int, kv_cache: str, greedy: bool = False) -> dict:
    """Per decoded token: bytes per direction, memcpy calls per direction, pyACL calls (by name).

    With `greedy`, the session's `prefill_next` / `decode_next` (the token chosen in the graph)
    instead of `prefill` / `decode` and a host argmax over the logits."""
    from ascend_adapt.backends.acl.session import AclLMBackend
    from ascend_adapt.backends.acl.runtime import AclRuntime
    from ascend_adapt.testing.fake_acl import FakeAcl

    fake = FakeAcl()
    be = AclLMBackend(exp, acl=fake, kv_cache=kv_cache)
    s = be.new_session(1, be.max_len)
    prompt = np.array([[1, 450, 4996, 17354, 1701, 29916]], np.int64)
    if greedy:
        tok, _ = s.prefill_next(prompt)
    else:
        tok = np.argmax(s.prefill(prompt), -1)
    fake.reset_counters()
    t = time.perf_counter()
    chosen = []
    for _ in range(tokens):
        if greedy:
            tok, _ = s.decode_next(tok)
        else:
            tok = np.argmax(s.decode(tok[:, None]), -1)
        chosen.append(int(tok[0]))
    wall = time.perf_counter() - t
    tr = fake.traffic()
    be.close()
    AclRuntime.of(fake).shutdown()
    per = lambda v: v / tokens  # noqa: E731
    return {"h2d": per(tr["bytes"]["host_to_device"]), "d2h": per(tr["bytes"]["device_to_host"]),
            "d2d": per(tr["bytes"]["device_to_device"]), "calls": per(tr["calls"]),
            "by_call": {k: per(v) for k, v in sorted(tr["by_call"].items())}, "s_per_token": wall / tokens,
            "tokens": chosen}


def cache_itemsize(exp: Path) -> int:
    """Bytes per element of the graphs' KV cache (past_keys dtype in export.json)."""
    import json

    man = json.loads((exp / "export.json").read_text())
    return next(np.dtype(i["dtype"]).itemsize for g in man["graphs"].values() for i in g["inputs"]
                if i["name"] == "past_keys")


def contract_bytes(layers: int, max_len: int, kv: int, kvh: int = 32, head_dim: int = 128, vocab: int = 32000,
                   batch: int = 1) -> tuple[int, int]:
    """(host→device, device→host) bytes of one decode step with the cache on the host, from the
    graph contract: inputs ids, positions (int32 [B, 1]), mask fp32 [B, 1, 1, 1 + M], past K and V
    [L, B, KVH, M, D] of `kv` bytes per element; outputs logits fp32 [B, 1, V], present K and V
    [L, B, KVH, 1, D], next_token int32 [B, 1], logits_sum fp32 [B, 1]."""
    h2d = 4 * batch + 4 * batch + 4 * batch * (1 + max_len) + 2 * kv * layers * batch * kvh * max_len * head_dim
    d2h = 4 * batch * vocab + 2 * kv * layers * batch * kvh * head_dim + 8 * batch
    return h2d, d2h


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4, help="decode steps counted (per-token figures are their mean)")
    ap.add_argument("--max-len", type=int, default=1024, help="M, KV-cache slots")
    ap.add_argument("--workdir", type=Path, default=None, help="where to build (default: a temporary directory)")
    ap.add_argument("--no-write", action="store_true", help="do not write docs/PERFORMANCE.md")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="device-traffic-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        got: dict = {"host": {}, "device": {}, "greedy": {}}
        for L in (1, 2):
            t = time.perf_counter()
            exp = build(work, L, args.max_len)
            kv_bytes = cache_itemsize(exp)
            for mode in got:
                got[mode][L] = m = measure(exp, args.tokens, "host" if mode == "host" else "device", mode == "greedy")
                print(f"measured {L}-layer 7B-shaped graph, {mode}: {m['h2d']:.0f} B host→device, "
                      f"{m['d2h']:.0f} B device→host, {m['d2d']:.0f} B device→device, {m['calls']:.1f} pyACL calls "
                      f"per token ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    for L in (1, 2):  # the measurement equals the contract's arithmetic (to the byte)
        h2d, d2h = contract_bytes(L, args.max_len, kv_bytes)
        kv = 2 * kv_bytes * L * 32 * args.max_len * 128
        # device: no cache up, only the logits down; greedy: only next_token + logits_sum (8 B) down
        want = {"host": (h2d, d2h), "device": (h2d - kv, 4 * 32000), "greedy": (h2d - kv, 8)}
        if not (got["host"][L]["tokens"] == got["device"][L]["tokens"] == got["greedy"][L]["tokens"]):
            print(f"MISMATCH {L} layers: greedy tokens differ between the modes: "
                  f"{[got[m][L]['tokens'] for m in got]}", file=sys.stderr)
            return 1
        for mode, (wh, wd) in want.items():
            if (got[mode][L]["h2d"], got[mode][L]["d2h"]) != (wh, wd):
                print(f"MISMATCH kv_cache={mode}, {L} layers: measured {got[mode][L]['h2d']}, {got[mode][L]['d2h']}; "
                      f"contract {wh}, {wd}", file=sys.stderr)
                return 1

    def scale(mode, key):
        g = got[mode]
        per_layer = g[2][key] - g[1][key]
        return g[1][key] - per_layer + LAYERS_7B * per_layer, per_layer

    rows, total = [], {}
    for label, key in (("host→device bytes", "h2d"), ("device→host bytes", "d2h"),
                       ("device→device bytes (on the card)", "d2d"), ("pyACL calls", "calls")):
        (b, bl), (lg, lgl), (a, al) = scale("host", key), scale("device", key), scale("greedy", key)
        rows.append(f"| {label} | {b:,.0f} | {bl:,.0f} | {lg:,.0f} | {lgl:,.0f} | {a:,.0f} | {al:,.0f} |")
        total[key] = (b, lg, a)
    before = int(round(total["h2d"][0] + total["d2h"][0]))
    logits_on_request = int(round(total["h2d"][1] + total["d2h"][1]))
    after = int(round(total["h2d"][2] + total["d2h"][2]))
    calls = {mode: ", ".join(f"{k} {v:g}" for k, v in got[mode][1]["by_call"].items()) for mode in got}
    kv_name = {2: "fp16", 4: "fp32"}.get(kv_bytes, f"{kv_bytes}-byte")
    lines = [f"Llama-2-7B-shaped decode, B=1, M={args.max_len}, fp16 mode (force_fp16, fp16 weights, KV cache "
             f"{kv_name} at the graph boundary as the builder makes it, mask and logits fp32), default step-graph "
             "layout; counted by the strict fake pyACL over "
             f"{args.tokens} decode steps on 7B-shaped graphs of 1 and 2 layers, scaled to 32 layers "
             "(bytes and calls are affine in the layer count; the bytes equal the graph contract's arithmetic).",
             "before = `kv_cache=\"host\"` (the runtime before issue 13; still the default, which `serve` drives), "
             "logits on request = `kv_cache=\"device\"` with `session.decode` (the full fp32 logits come back: "
             "sampling, repetition penalty, `--dump-logits`, compare), "
             "after = `kv_cache=\"device\"` with greedy on the card (`session.decode_next`, what greedy "
             "`generate --backend acl` runs: the graph's ArgMax `next_token` int32 and `logits_sum` fp32 come back, "
             "8 B per row). The greedy tokens of the three runs are identical (checked).",
             "", "| per decoded token | before | of which per layer | logits on request | of which per layer "
                 "| after | of which per layer |",
             "|---|---:|---:|---:|---:|---:|---:|", *rows,
             "", f"pyACL calls per token, before: {calls['host']}.", f"Logits on request: {calls['device']}.",
             f"After: {calls['greedy']}.",
             "", f"What is left of the after figure: the fp32 additive mask [B, 1, 1, M + 1] ({4 * (args.max_len + 1):,} B "
                 "at M = " + f"{args.max_len}), ids and positions (4 B each) up; next_token and logits_sum (4 B each) down.",
             f"With full logits on request: {logits_on_request:,} B per token.",
             "", f"host<->device bytes per token: before {before}, after {after}"]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        from _report import write_section

        write_section(TITLE, body, dists=("numpy", "onnxruntime"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
