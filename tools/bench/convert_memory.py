#!/usr/bin/env python
"""Peak memory and throughput of the streamed HF -> MindSpore port on a 7B-shaped Llama-2.

What it does (one run, all figures side by side):

1. writes a Llama-2-7B-shaped HF checkpoint (hidden 4096, 32 layers, 32 heads, inter 11008,
   vocab 32000; fp16; sharded safetensors of <= 4 GiB + index; ~13.5 GB) whose tensors are tiled
   from one random fp16 block (cheap to make, real bytes on disk: no sparse holes that would make
   reads free);
2. in a fresh child process per measurement (peak RSS = VmHWM of /proc/self/status), with the
   source evicted from the page cache first (posix_fadvise DONTNEED) and every output fsync'ed:
   - `copy`: shutil.copyfile of the same shard files (the I/O floor);
   - `port-ckpt`: `port_to_mindspore(..., fmt="ckpt")` (ours naming);
   - `port-safetensors`: `port_to_mindspore(..., fmt="safetensors", naming="mindformers")`;
   - `port-back`: `port_to_hf` of the ckpt output;
   repeated `--repeat` times, medians reported;
3. the usual converter for comparison — load the whole state dict, then `mindspore.save_checkpoint`
   of a list of `{"name", "data": Tensor}` (what MindFormers' convert_weight.py does) — at a
   scaled size (`--baseline-layers`, default 4 of 32 layers) because at full size it needs about
   twice the model in RAM (27 GB > this machine's 24 GB); our streamed port is measured on the
   same scaled checkpoint next to it;
4. prints a Markdown section and (with --write-doc) appends it to docs/PERFORMANCE.md; deletes
   everything it wrote unless --keep.

Usage:  python tools/bench/convert_memory.py --workdir /tmp/convbench --repeat 3 --write-doc
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHAPE_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000)


# ---- the checkpoint ---------------------------------------------------------------------------------
def llama_config(layers: int) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **SHAPE_7B,
            "num_hidden_layers": layers, "hidden_act": "silu", "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
            "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"}


def make_checkpoint(d: Path, layers: int, shard_bytes: int, config: dict | None = None) -> int:
    """Write the sharded fp16 safetensors checkpoint (Llama-2-7B shape, or `config`'s architecture
    and shape, in its HF tensor layout); returns its tensor bytes."""
    from ascend_adapt.checkpoint import SafetensorsWriter, plan_shards, shard_file_names
    from ascend_adapt.model_zoo.base import ADAPTERS, adapter_for_config

    cfg = config or llama_config(layers)
    adapter = adapter_for_config(cfg) if config else ADAPTERS.get("llama")
    spec = adapter.spec_from_config(cfg)
    shapes = adapter.source_shapes(spec, "hf")
    specs = [(n, s, "float16") for n, s in shapes.items()]
    shards = plan_shards(specs, shard_bytes)
    names = shard_file_names("model", len(shards), "safetensors")
    block = (np.random.default_rng(0).standard_normal(8 << 20) * 0.02).astype(np.float16)  # 16 MiB
    d.mkdir(parents=True, exist_ok=True)
    wmap = {}
    for fname, shard in zip(names, shards):
        with SafetensorsWriter(d / fname, shard, metadata={"format": "pt"}) as w:
            for n, s, _ in shard:
                a = np.empty(s, np.float16)
                flat = a.reshape(-1)
                for i in range(0, flat.size, block.size):
                    m = min(block.size, flat.size - i)
                    flat[i:i + m] = block[:m]
                w.write(n, a)
                wmap[n] = fname
                del a, flat
    total = sum(math.prod(s) * 2 for _, s, _ in specs)
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                "weight_map": wmap}))
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return total


# ---- child-process measurements ----------------------------------------------------------------------
def _evict(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _vm(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return -1


def child(task: str, src: str, out: str) -> dict:
    src_p, out_p = Path(src), Path(out)
    shards = sorted(src_p.glob("*.safetensors")) or sorted(src_p.glob("*.ckpt"))
    if task == "usual":
        import mindspore as ms  # imports before the clock starts
        from safetensors.numpy import load_file
    else:
        from ascend_adapt.port import port_to_hf, port_to_mindspore
    _evict(shards)
    start_rss = _vm("VmRSS")
    t0 = time.perf_counter()
    if task == "copy":
        out_p.mkdir()
        for f in shards:
            shutil.copyfile(f, out_p / f.name)
            fd = os.open(out_p / f.name, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    elif task == "port-ckpt":
        port_to_mindspore(src_p, out_p, fmt="ckpt", naming="ours", progress=False)
    elif task == "port-safetensors":
        port_to_mindspore(src_p, out_p, fmt="safetensors", naming="mindformers", progress=False)
    elif task == "port-back":
        port_to_hf(src_p, out_p, progress=False)
    elif task == "usual":
        # what MindFormers' convert_weight.py does: the whole state dict, then one save_checkpoint
        state = {}
        for f in shards:
            state.update(load_file(str(f)))
        params = [{"name": k, "data": ms.Tensor(v)} for k, v in state.items()]
        out_p.mkdir()
        ms.save_checkpoint(params, str(out_p / "model.ckpt"))
        fd = os.open(out_p / "model.ckpt", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    else:
        raise SystemExit(f"unknown task {task}")
    elapsed = time.perf_counter() - t0
    return {"task": task, "elapsed_s": elapsed, "peak_rss_bytes": _vm("VmHWM"), "start_rss_bytes": start_rss,
            "out_bytes": sum(p.stat().st_size for p in out_p.rglob("*") if p.is_file())}


def run_child(task: str, src: Path, out: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, __file__, "--child", task, str(src), str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{task} failed:\n{res.stderr[-3000:]}")
    r = json.loads(res.stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    return r


# ---- report -------------------------------------------------------------------------------------------
def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "mindspore", "safetensors", "torch", "ascend-adapt"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def machine() -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def summarize(runs: list[dict], src_bytes: int) -> dict:
    el = statistics.median(r["elapsed_s"] for r in runs)
    return {"median_s": el, "GBps": src_bytes / el / 1e9, "peak_rss_GiB": max(r["peak_rss_bytes"] for r in runs) / 2**30,
            "n": len(runs)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=3, metavar=("TASK", "SRC", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default="/tmp/ascend_adapt_convbench")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--baseline-layers", type=int, default=4)
    ap.add_argument("--shard-gib", type=float, default=4.0)
    ap.add_argument("--write-doc", action="store_true", help="append the section to docs/PERFORMANCE.md")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(*a.child)))
        return 0

    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    from ascend_adapt.model_zoo.base import ADAPTERS

    full_bytes = 2 * ADAPTERS.get("llama").spec_from_config(llama_config(a.layers)).param_count()
    need = 2.1 * full_bytes  # the source and one output at a time
    print(f"free disk at {work}: {free / 1e9:.1f} GB (need ~{need / 1e9:.1f} GB)", flush=True)
    if free < need:
        raise SystemExit("not enough free disk space")
    results: dict = {}
    try:
        big = "7B" if a.layers == 32 else f"{a.layers}-layer"
        for label, layers, tasks in ((big, a.layers, ("copy", "port-ckpt", "port-safetensors")),
                                     (f"{a.baseline_layers}-layer", a.baseline_layers, ("copy", "port-ckpt", "usual"))):
            src = work / f"src-{layers}"
            t = time.perf_counter()
            src_bytes = make_checkpoint(src, layers, int(a.shard_gib * 2**30))
            print(f"[{label}] wrote {src_bytes / 1e9:.2f} GB source in {time.perf_counter() - t:.1f} s", flush=True)
            results[label] = {"src_bytes": src_bytes, "shards": len(list(src.glob('*.safetensors')))}
            runs: dict[str, list] = {t: [] for t in tasks}
            for rep in range(a.repeat):  # round-robin: load from other processes hits every task alike
                for task in tasks:
                    if task == "usual" and rep >= 2:
                        continue
                    runs[task].append(run_child(task, src, work / f"out-{task}"))
                    print(f"[{label}] rep {rep} {task}: {runs[task][-1]['elapsed_s']:.1f} s", flush=True)
            for task in tasks:
                results[label][task] = summarize(runs[task], src_bytes)
                print(f"[{label}] {task}: {results[label][task]}", flush=True)
            if label == big:
                # the reverse direction from a kept ckpt port
                ms_dir = work / "ms-ckpt"
                if ms_dir.exists():
                    shutil.rmtree(ms_dir)
                from ascend_adapt.port import port_to_mindspore

                port_to_mindspore(src, ms_dir, fmt="ckpt", progress=False)
                runs = [run_child("port-back", ms_dir, work / "out-back") for _ in range(a.repeat)]
                results[label]["port-back"] = summarize(runs, src_bytes)
                print(f"[{label}] port-back: {results[label]['port-back']}", flush=True)
                shutil.rmtree(ms_dir)
            shutil.rmtree(src)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    section = report(results, a)
    print(section)
    if a.write_doc:  # replaces the section (a rerun rewrites every figure and the reading)
        sys.path.insert(0, str(Path(__file__).parent))
        from _report import write_section

        write_section(TITLE, section, dists=("numpy", "mindspore", "safetensors", "torch", "ascend-adapt"))
    return 0


TITLE = "HF → MindSpore conversion (tools/bench/convert_memory.py)"
TARGET_RSS_GIB = 2.0 * 1e9 / 2**30  # the port's peak-RSS goal: 2 GB


def report(res: dict, a) -> str:
    """The section body (write_section adds date, machine, versions and the command)."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return prose(res, repeat=a.repeat, load=tuple(round(x, 2) for x in os.getloadavg()), ram_bytes=ram)


def prose(res: dict, *, repeat: int, load: tuple, ram_bytes: int) -> str:
    """The section body from the figures alone: `res` = {label: {"src_bytes", "shards", task: summary}}."""
    lines = [f"- figures are medians of {repeat} runs, each in a fresh process, source evicted from the page "
             "cache first, outputs fsync'ed.",
             "- peak RSS = VmHWM of the child process (includes the interpreter and imports).",
             f"- load average at the end (1/5/15 min): {load} — the machine may be shared with other work; the "
             "tasks run round-robin so load hits each alike.", ""]
    names = {"copy": "plain file copy (shutil.copyfile + fsync)",
             "port-ckpt": "streamed port → model.ckpt (ours names)",
             "port-safetensors": "streamed port → model.safetensors (MindFormers names)",
             "port-back": "streamed port back: model.ckpt → HF safetensors",
             "usual": "usual converter: whole state dict, then ms.save_checkpoint"}
    for label, r in res.items():
        gb = r["src_bytes"] / 1e9
        lines += [f"**{label}** Llama-2 shape, fp16, {gb:.2f} GB in {r['shards']} safetensors shards:", "",
                  "| what | median time | throughput | peak RSS |", "|---|---|---|---|"]
        for task in ("copy", "port-ckpt", "port-safetensors", "port-back", "usual"):
            if task in r:
                s = r[task]
                lines.append(f"| {names[task]} | {s['median_s']:.1f} s | {s['GBps']:.2f} GB/s | {s['peak_rss_GiB']:.2f} GiB |")
        lines.append("")
    lines.append(reading(res, ram_bytes))
    return "\n".join(lines) + "\n"


def _speed(ratio: float) -> str:
    """The verb phrase for a time ratio (this one's time / the other's): 'takes 1.50× the time of',
    'is 1.50× faster than' or 'takes within 5 % of the time of'."""
    if abs(ratio - 1) < 0.05:
        return "takes within 5 % of the time of"
    return f"takes {ratio:.2f}× the time of" if ratio > 1 else f"is {1 / ratio:.2f}× faster than"


def reading(res: dict, ram_bytes: int) -> str:
    """The reading of the tables, every figure and comparison computed from `res`."""
    labels = list(res)
    big, small = res[labels[0]], res[labels[-1]]
    out = []
    if "copy" in big and "port-ckpt" in big:
        port, copy = big["port-ckpt"], big["copy"]
        rss = max(big[t]["peak_rss_GiB"] for t in ("port-ckpt", "port-safetensors", "port-back") if t in big)
        out.append(f"Reading: on the {labels[0]} model the streamed port {_speed(port['median_s'] / copy['median_s'])} "
                   f"a plain copy of the same bytes ({port['median_s']:.1f} s vs {copy['median_s']:.1f} s), with a peak "
                   f"RSS of at most {rss:.2f} GiB for {big['src_bytes'] / 1e9:.2f} GB of weights (target ≤ 2 GB: "
                   f"{'met' if rss <= TARGET_RSS_GIB else 'NOT met'}).")
    if "usual" in small and "port-ckpt" in small:
        u, p = small["usual"], small["port-ckpt"]
        per_byte = u["peak_rss_GiB"] * 2**30 / small["src_bytes"]
        at_big = per_byte * big["src_bytes"]
        fits = "more than" if at_big > ram_bytes else "within"
        out.append(f"The usual converter holds the whole model and more: {u['peak_rss_GiB']:.2f} GiB for a "
                   f"{small['src_bytes'] / 1e9:.2f} GB model (≈ {per_byte:.1f}× the weights; at that rate about "
                   f"{at_big / 1e9:.0f} GB for the {labels[0]} model, {fits} this machine's {ram_bytes / 2**30:.0f} GiB), "
                   f"and {_speed(u['median_s'] / p['median_s'])} the streamed port at that size "
                   f"({u['median_s']:.1f} s vs {p['median_s']:.1f} s).")
    if "copy" in big and "copy" in small and small is not big:
        a, b = small["copy"]["GBps"], big["copy"]["GBps"]
        cmp = "faster" if a > b * 1.05 else "slower" if a < b / 1.05 else "about as fast"
        out.append(f"The plain copy of the {labels[-1]} model runs {cmp} than at {labels[0]} size "
                   f"({a:.2f} vs {b:.2f} GB/s).")
    return " ".join(out)

if __name__ == "__main__":
    sys.exit(main())
