#!/usr/bin/env python
"""Peak RSS and wall time of building the ONNX graphs of a 7B-shaped Llama-2 checkpoint.

Writes a Llama-2-7B-shaped checkpoint (hidden 4096, 32 layers, 32 heads, intermediate 11008,
vocab 32000; random fp16 weights, two safetensors shards + index, as the HF repo ships them)
quickly by tiling one random block, then runs `build_llm_onnx(..., weight_dtype="float16")` in a
child process that reports its own peak RSS (`ru_maxrss`) and time. Target: peak RSS ≤ 4 GB.
Everything written is deleted afterwards.

Usage: python tools/bench/build_memory.py [--workdir DIR] [--layers 32] [--keep]
Writes the "ONNX build memory" section of docs/PERFORMANCE.md (full 32-layer runs only).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import ROOT, write_section  # noqa: E402

TITLE = "ONNX build memory (tools/bench/build_memory.py)"
CONFIG_7B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 32, "hidden_act": "silu", "max_position_embeddings": 4096,
    "initializer_range": 0.02, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "rope_scaling": None,
    "attention_bias": False, "pretraining_tp": 1, "tie_word_embeddings": False, "use_cache": True,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None, "vocab_size": 32000,
    "torch_dtype": "float16", "transformers_version": "4.31.0",
}
BLOCK_ELEMS = 1 << 22  # one 8 MiB random fp16 block, tiled into every tensor


def llama_tensors(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    H, I, V, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    out = [("model.embed_tokens.weight", (V, H))]
    for i in range(L):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (H, H)), (p + "self_attn.k_proj.weight", (H, H)),
                (p + "self_attn.v_proj.weight", (H, H)), (p + "self_attn.o_proj.weight", (H, H)),
                (p + "mlp.gate_proj.weight", (I, H)), (p + "mlp.up_proj.weight", (I, H)),
                (p + "mlp.down_proj.weight", (H, I)), (p + "input_layernorm.weight", (H,)),
                (p + "post_attention_layernorm.weight", (H,))]
    return out + [("model.norm.weight", (H,)), ("lm_head.weight", (V, H))]


def write_checkpoint(d: Path, cfg: dict, n_shards: int = 2) -> int:
    """Sharded fp16 safetensors + index + config.json; returns the bytes of tensor data."""
    rng = np.random.default_rng(0)
    block = (rng.standard_normal(BLOCK_ELEMS) * 0.02).astype(np.float16).tobytes()
    ones = np.ones(cfg["hidden_size"], np.float16).tobytes()
    tensors = llama_tensors(cfg)
    total = sum(math.prod(s) * 2 for _, s in tensors)
    shards, size = [[]], 0
    for name, shape in tensors:
        nbytes = math.prod(shape) * 2
        if size and size + nbytes > total / n_shards + 1 and len(shards) < n_shards:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    weight_map = {}
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for fname, shard in zip(names, shards):
        header, off = {}, 0
        for name, shape in shard:
            n = math.prod(shape) * 2
            header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        hb = json.dumps(header).encode()
        hb += b" " * ((-len(hb)) % 8)
        with open(d / fname, "wb") as f:
            f.write(struct.pack("<Q", len(hb)) + hb)
            for name, shape in shard:
                n = math.prod(shape) * 2
                if len(shape) == 1:
                    f.write(ones)
                    continue
                while n:
                    chunk = block[: min(n, len(block))]
                    f.write(chunk)
                    n -= len(chunk)
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    tok = ROOT.parent / "shared" / "assets" / "llama2_tokenizer.model"
    if tok.is_file():
        shutil.copy2(tok, d / "tokenizer.model")
    return total


def child(ckpt: str, out: str, seq_len: int, max_len: int) -> None:
    """Run in the child process: build, then print the figures as JSON."""
    from ascend_adapt.om_convert.builder import build_llm_onnx

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    r = build_llm_onnx(ckpt, out, seq_len=seq_len, max_len=max_len, weight_dtype="float16",
                       target="Ascend310P3", progress=False)
    elapsed = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_bytes": peak_kib * 1024, "rss_before_build_bytes": base * 1024,
                      "elapsed_s": elapsed, "weights_bytes": r.weights_bytes, "num_tensors": r.num_tensors,
                      "max_tensor_bytes": r.max_tensor_bytes, "proto_bytes": r.proto_bytes,
                      "nodes": {k: len(__import__("onnx").load(str(p), load_external_data=False).graph.node)
                                for k, p in (("prefill", r.prefill_path), ("decode", r.decode_path))}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=None, help="where to write the checkpoint and the export")
    ap.add_argument("--layers", type=int, default=32, help="layers (32 = Llama-2-7B)")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--keep", action="store_true", help="keep the files")
    ap.add_argument("--child", nargs=2, metavar=("CKPT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child, args.seq_len, args.max_len)

    cfg = dict(CONFIG_7B, num_hidden_layers=args.layers)
    need = sum(math.prod(s) * 2 for _, s in llama_tensors(cfg)) * 2.1
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ascend-adapt-bench-", dir=str(ROOT.parent)))
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    print(f"disk: {free / 2**30:.1f} GiB free at {work}, need {need / 2**30:.1f} GiB", flush=True)
    if free < need:
        sys.exit(f"not enough disk at {work}: {free / 2**30:.1f} GiB free, {need / 2**30:.1f} GiB needed")
    ckpt, out = work / "llama2-7b-shaped", work / "export"
    try:
        ckpt.mkdir(exist_ok=True)
        t0 = time.perf_counter()
        total = write_checkpoint(ckpt, cfg)
        write_s = time.perf_counter() - t0
        print(f"checkpoint: {total / 1e9:.2f} GB in {write_s:.0f} s", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--child", str(ckpt), str(out),
                               "--seq-len", str(args.seq_len), "--max-len", str(args.max_len)],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"build failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        fig = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    body = prose(fig, total=total, write_s=write_s, layers=args.layers, seq_len=args.seq_len,
                 max_len=args.max_len)
    print(body)
    if args.layers == 32:
        write_section(TITLE, body, dists=("numpy", "onnx"))


TARGET_RSS_BYTES = 4e9


def prose(fig: dict, *, total: int, write_s: float, layers: int, seq_len: int, max_len: int) -> str:
    """The section body from the figures alone (the child's JSON, the checkpoint size and times)."""
    gb = lambda n: f"{n / 1e9:.2f} GB"  # noqa: E731
    ok = fig["peak_rss_bytes"] <= TARGET_RSS_BYTES
    lines = [
        f"Llama-2-7B-shaped checkpoint ({layers} layers, hidden 4096, intermediate 11008, vocab 32000; "
        f"random fp16 weights, 2 safetensors shards, {gb(total)}) → `build_llm_onnx(weight_dtype=\"float16\", "
        f"seq_len={seq_len}, max_len={max_len}, target=\"Ascend310P3\")` in a child process.",
        "",
        f"Target: peak RSS ≤ {gb(TARGET_RSS_BYTES)} — {'met' if ok else 'MISSED'} "
        f"({gb(fig['peak_rss_bytes'])}, {100 * fig['peak_rss_bytes'] / total:.1f} % of the checkpoint).",
        "",
        "| figure | value |", "|---|---|",
        f"| peak RSS of the build process (ru_maxrss) | {gb(fig['peak_rss_bytes'])} |",
        f"| RSS after imports, before the build | {gb(fig['rss_before_build_bytes'])} |",
        f"| largest single tensor | {gb(fig['max_tensor_bytes'])} |",
        f"| build wall time | {fig['elapsed_s']:.0f} s |",
        f"| weights.bin (shared by both graphs) | {gb(fig['weights_bytes'])}, {fig['num_tensors']} tensors |",
        f"| prefill.onnx / decode.onnx protos | {fig['proto_bytes']['prefill'] / 1e3:.0f} kB / "
        f"{fig['proto_bytes']['decode'] / 1e3:.0f} kB ({fig['nodes']['prefill']} / {fig['nodes']['decode']} nodes) |",
        f"| writing the random checkpoint (not part of the build) | {write_s:.0f} s |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
