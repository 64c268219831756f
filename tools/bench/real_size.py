#!/usr/bin/env python
"""Real-size models on this machine: convert, then run on the simulator (Llama-2-7B / ChatGLM-6B shapes).

What it does (one run, all figures side by side):

1. makes (or reuses) a Llama-2-7B-shaped HF checkpoint (hidden 4096, 32 layers, 32 heads,
   inter 11008, vocab 32000; fp16 sharded safetensors, ~13.5 GB) — or with `--arch chatglm` a
   ChatGLM-6B-shaped one (hidden 4096, 28 layers, inner 16384, vocab 130528; ~12.3 GB, the original's
   config.json and tensor names) — whose tensors are tiled from one random fp16 block
   (`tools/bench/convert_memory.py::make_checkpoint`: real bytes on disk). It lives in `--workdir`
   (default /tmp/realsize/llama7b or /tmp/realsize/chatglm6b) and is kept for reuse: it is written under a
   temporary name, renamed, and marked complete by `COMPLETE.json`; a directory without the marker
   is another run's work in progress, waited for (`--wait-s`);
2. in a fresh child process per measurement (peak RSS = VmHWM of /proc/self/status, which
   includes the interpreter and its imports):
   - `convert`: `ascend-adapt convert CKPT --soc Ascend310P3 -o OUT --no-verify` plus the options
     of the run (`--options`, default the explicit fp16 / gears / context options; `--options ""`
     = the defaults of the installed convert): wall time, peak RSS, bytes on disk of OUT;
   - `sim`: the sim backend on OUT (what `generate OUT --backend sim` loads): set-up time, then a
     prefill of `--prompt-tokens` ids and `--new-tokens` greedy decode steps: peak RSS, seconds
     per decoded token (median of the steps), the peak of its anonymous memory (RssAnon sampled
     every 5 ms: what the simulator allocates, the mapped weights not counted) and how much of
     the weights file was resident at the end (below it, memory pressure evicted weight pages and
     the peak RSS reads low: the prose says so); the budget is the weights + `--budget-gib`
     (default 2 GB = 1.86 GiB, issue 11);
   - `baseline`: a child that imports what the `sim` child imports and loads nothing: the fixed
     cost of the interpreter, numpy, onnxruntime and the package;
   repeated `--repeat` times (round-robin), medians reported (peak RSS: the largest);
3. writes its section to docs/PERFORMANCE.md (`--write-doc`) through `_report.write_section`;
   the prose is computed from the figures. Converted outputs are deleted after measuring; never
   run two of these at once on a 24 GB machine.

`--verify` is not passed: verifying a 7B runs the fp32 torch golden (27 GB).

Usage:  python tools/bench/real_size.py --write-doc
        python tools/bench/real_size.py --options "" --label defaults --write-doc
        python tools/bench/real_size.py --arch chatglm --options "" --label defaults --write-doc
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MARKER = "COMPLETE.json"
EXPLICIT = '--weight-dtype fp16 --gears "16;32;64" --max-len 1024'
TITLE = "Real-size models (tools/bench/real_size.py)"
# ChatGLM-6B's config.json (reference model_architectures.md §1.1)
CHATGLM_6B = {
    "architectures": ["ChatGLMModel"], "model_type": "chatglm", "hidden_size": 4096, "num_layers": 28,
    "num_attention_heads": 32, "inner_hidden_size": 16384, "vocab_size": 130528,
    "max_sequence_length": 2048, "layernorm_epsilon": 1e-05, "position_encoding_2d": True,
    "bos_token_id": 130004, "eos_token_id": 130005, "mask_token_id": 130000, "gmask_token_id": 130001,
    "pad_token_id": 3, "use_cache": True, "torch_dtype": "float16",
}
SHAPES = {"llama": ("Llama-2-7B", "llama7b", "num_hidden_layers", None),
          "chatglm": ("ChatGLM-6B", "chatglm6b", "num_layers", CHATGLM_6B)}


def _vm(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return -1


class _AnonPeak:
    """The largest RssAnon (what the process allocated, not the file pages it maps) sampled every
    `period_s` in a thread: VmHWM alone cannot tell the simulator's own memory from the weights'
    pages, and it reads low when memory pressure evicts those pages."""

    def __init__(self, period_s: float = 0.005):
        import threading

        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period_s,), daemon=True)
        self._thread.start()

    def _run(self, period_s: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _vm("RssAnon"))
            self._stop.wait(period_s)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _vm("RssAnon"))


def _resident_bytes(paths) -> int:
    """Bytes of the files `paths` resident in this process's mappings now (/proc/self/smaps)."""
    want, total, inside = {str(p) for p in paths}, 0, False
    for line in open("/proc/self/smaps"):
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's header line
            inside = len(head) >= 6 and head[5] in want
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


# ---- the checkpoint ------------------------------------------------------------------------------------
def ensure_checkpoint(ckpt: Path, wait_s: float, layers: int = 32, arch: str = "llama") -> dict:
    """The real-size checkpoint of `arch` at `ckpt`, made once (temporary name, rename, marker)."""
    deadline = time.monotonic() + wait_s
    while ckpt.exists() and not (ckpt / MARKER).is_file():
        if time.monotonic() > deadline:
            raise SystemExit(f"{ckpt} exists without {MARKER} after {wait_s:.0f} s: another run is writing "
                             "it, or one was interrupted (delete it and run again)")
        print(f"waiting for {ckpt / MARKER} (another run is writing the checkpoint)", flush=True)
        time.sleep(15)
    if (ckpt / MARKER).is_file():
        return json.loads((ckpt / MARKER).read_text())
    sys.path.insert(0, str(HERE))
    from convert_memory import make_checkpoint  # noqa: E402 - tools/bench is not a package

    tmp = ckpt.with_name(f".{ckpt.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    t = time.perf_counter()
    shape, _, layers_key, config = SHAPES[arch]
    nbytes = make_checkpoint(tmp, layers, 4 << 30, config=dict(config, **{layers_key: layers}) if config else None)
    info = {"arch": arch, "shape": shape, "layers": layers, "tensor_bytes": nbytes, "dtype": "float16",
            "written_s": time.perf_counter() - t, "by": "tools/bench/real_size.py"}
    (tmp / MARKER).write_text(json.dumps(info, indent=1))
    os.replace(tmp, ckpt)
    print(f"wrote {nbytes / 1e9:.2f} GB checkpoint to {ckpt} in {info['written_s']:.0f} s", flush=True)
    return info


# ---- child-process measurements --------------------------------------------------------------------------
def _sim_imports():
    import numpy  # noqa: F401
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401

    import ascend_adapt.backends.sim.session  # noqa: F401
    from ascend_adapt.om_convert.convert import resolve_artifact  # noqa: F401


def child(task: str, args: list[str]) -> dict:
    if task == "baseline":
        _sim_imports()
        return {"task": task, "peak_rss_bytes": _vm("VmHWM")}
    if task == "convert":
        src, out, options = args
        from ascend_adapt.cli.main import main as cli_main

        argv = ["convert", src, "--soc", "Ascend310P3", "-o", out, "--no-verify", *shlex.split(options)]
        t0 = time.perf_counter()
        rc = cli_main(argv)
        elapsed = time.perf_counter() - t0
        if rc:
            raise SystemExit(f"convert exited {rc}")
        inodes = {}  # hard links counted once
        for p in Path(out).rglob("*"):
            if p.is_file() and not p.is_symlink():
                st = p.stat()
                inodes[(st.st_dev, st.st_ino)] = st
        return {"task": task, "elapsed_s": elapsed, "peak_rss_bytes": _vm("VmHWM"),
                "out_bytes": sum(st.st_size for st in inodes.values()),
                "out_disk_bytes": sum(st.st_blocks * 512 for st in inodes.values())}
    if task == "sim":
        out, prompt_tokens, new_tokens = args[0], int(args[1]), int(args[2])
        _sim_imports()
        import numpy as np

        from ascend_adapt.om_convert.convert import resolve_artifact
        from ascend_adapt.backends import get_backend

        path = resolve_artifact(out, "sim")
        anon = _AnonPeak()
        start_rss = _vm("VmRSS")
        t0 = time.perf_counter()
        backend = get_backend("sim", path)
        setup_s = time.perf_counter() - t0
        setup_peak = _vm("VmHWM")
        session = backend.new_session(backend.batch, backend.max_len)
        ids = np.arange(prompt_tokens) % 31000 + 100
        spec = backend.spec
        if spec.gmask_token_id is not None and spec.bos_token_id is not None:  # ChatGLM: … [gMASK] <sop>
            ids[-2:] = (spec.gmask_token_id, spec.bos_token_id)
        ids = ids[None]
        t0 = time.perf_counter()
        tok = int(np.argmax(session.prefill(ids)[0]))
        prefill_s = time.perf_counter() - t0
        steps = []
        for _ in range(new_tokens):
            t0 = time.perf_counter()
            tok = int(np.argmax(session.decode(np.array([tok]))[0]))
            steps.append(time.perf_counter() - t0)
        from ascend_adapt.sim.graph import external_data_files

        files = {}  # the external data files the graphs read (once each)
        for r in backend.runners.values():
            base = Path(r.model_path).parent
            for loc in external_data_files(r._light):
                files[(base / loc).resolve()] = (base / loc).stat().st_size
        weights = sum(files.values())
        peak, anon_peak = _vm("VmHWM"), anon.stop()
        return {"task": task, "setup_s": setup_s, "setup_peak_rss_bytes": setup_peak, "start_rss_bytes": start_rss,
                "prefill_s": prefill_s, "prompt_tokens": prompt_tokens, "decode_s": steps,
                "s_per_token": statistics.median(steps), "peak_rss_bytes": peak, "weights_bytes": weights,
                "anon_peak_bytes": anon_peak, "weights_resident_bytes": _resident_bytes(files),
                "kinds": list(backend.runners)}
    raise SystemExit(f"unknown task {task}")


def run_child(task: str, *args: str) -> dict:
    cmd = [sys.executable, __file__, "--child", task, *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{task} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---- report -------------------------------------------------------------------------------------------
def _gib(b: float) -> str:
    return f"{b / 2 ** 30:.2f} GiB"


def summarize(runs: dict[str, list[dict]]) -> dict:
    conv, sim, base = runs["convert"], runs["sim"], runs["baseline"]
    return {
        "convert_s": statistics.median(r["elapsed_s"] for r in conv),
        "convert_peak": max(r["peak_rss_bytes"] for r in conv),
        "out_bytes": conv[-1]["out_bytes"], "out_disk_bytes": conv[-1]["out_disk_bytes"],
        "setup_s": statistics.median(r["setup_s"] for r in sim),
        "prefill_s": statistics.median(r["prefill_s"] for r in sim),
        "s_per_token": statistics.median(r["s_per_token"] for r in sim),
        "sim_peak": max(r["peak_rss_bytes"] for r in sim),
        "anon_peak": max(r["anon_peak_bytes"] for r in sim),
        "resident": min(r["weights_resident_bytes"] for r in sim),
        "weights": sim[-1]["weights_bytes"], "kinds": sim[-1]["kinds"],
        "baseline": max(r["peak_rss_bytes"] for r in base), "n": len(sim),
        "prompt_tokens": sim[-1]["prompt_tokens"], "new_tokens": len(sim[-1]["decode_s"]),
    }


def report(results: dict[str, dict], ckpt_info: dict, budget_bytes: int) -> str:
    """Markdown body; every sentence is computed from the figures."""
    lines = [f"{ckpt_info.get('shape', 'Llama-2-7B')} shape ({ckpt_info.get('layers', 32)} layers), {ckpt_info['dtype']} HF checkpoint of {ckpt_info['tensor_bytes'] / 1e9:.2f} GB "
             "(tiled random bytes). Each figure from a fresh child process; peak RSS = its VmHWM "
             "(interpreter and imports included). `convert` runs with `--no-verify` (its golden holds the "
             f"model in fp32: {2 * ckpt_info['tensor_bytes'] / 1e9:.0f} GB).", "",
             "| run | convert options | convert wall | convert peak RSS | output on disk | sim set-up | "
             "sim peak RSS | fp16 weights | sim peak − weights | sim anonymous peak | s / decoded token | prefill |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, s in results.items():
        lines.append(f"| {label} | `{s['options'] or '(defaults)'}` | {s['convert_s']:.0f} s | {_gib(s['convert_peak'])} | "
                     f"{_gib(s['out_disk_bytes'])} | {s['setup_s']:.1f} s | {_gib(s['sim_peak'])} | "
                     f"{_gib(s['weights'])} | {_gib(s['sim_peak'] - s['weights'])} | {_gib(s['anon_peak'])} | "
                     f"{s['s_per_token']:.2f} s | {s['prefill_s']:.1f} s ({s['prompt_tokens']} tokens) |")
    lines.append("")
    for label, s in results.items():
        over = s["sim_peak"] - s["weights"]
        verdict = "within" if over <= budget_bytes else "above"
        lines.append(f"- {label}: the simulator ({' + '.join(s['kinds'])} graph) peaks {_gib(over)} "
                     f"({over / 1e9:.2f} GB) above its weight bytes, {verdict} the budget of weights + "
                     f"{_gib(budget_bytes)} ({budget_bytes / 1e9:.2f} GB); of that, "
                     f"{_gib(s['baseline'])} is the interpreter with numpy, onnx, onnxruntime and the package "
                     f"imported (baseline child).")
        bound = s["anon_peak"] + s["baseline"]
        lines.append(f"  Its anonymous memory (RssAnon, sampled every 5 ms: what it allocates, the mapped weights "
                     f"not counted) peaked at {_gib(s['anon_peak'])}: with every weight page resident, the peak "
                     f"is at most {_gib(bound)} ({bound / 1e9:.2f} GB) above the weights (anonymous peak + "
                     f"baseline), {'within' if bound <= budget_bytes else 'above'} the budget too. "
                     f"{_gib(s['resident'])} of the {_gib(s['weights'])} of weights were resident at the end (a "
                     "page counts once read: embedding rows of tokens never seen do not, nor pages that memory "
                     "pressure evicted).")
        lines.append(f"  Decode: median of {s['new_tokens']} steps × {s['n']} run(s); set-up and prefill: median "
                     f"of {s['n']} run(s).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default="/tmp/realsize")
    ap.add_argument("--options", action="append", default=None,
                    help=f"convert options of one run (repeatable; default: {EXPLICIT!r}); \"\" = the defaults")
    ap.add_argument("--label", action="append", default=None, help="label of each --options run")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--budget-gib", type=float, default=2e9 / 2 ** 30,
                    help="allowed sim peak RSS above the weight bytes, GiB (default: 2 GB, issue 11)")
    ap.add_argument("--wait-s", type=float, default=1800, help="wait this long for another run's checkpoint")
    ap.add_argument("--arch", choices=sorted(SHAPES), default="llama", help="the model shape")
    ap.add_argument("--layers", type=int, default=None, help="fewer layers: a smoke test of the bench itself")
    ap.add_argument("--write-doc", action="store_true")
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child[0], a.child[1:])))
        return 0
    options = a.options if a.options is not None else [EXPLICIT]
    labels = a.label or [("explicit options" if o == EXPLICIT else ("defaults" if not o.strip() else f"run {i + 1}"))
                         for i, o in enumerate(options)]
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    shape, dirname, layers_key, config = SHAPES[a.arch]
    full_layers = (config or {}).get(layers_key, 32)
    layers = a.layers or full_layers
    ckpt = work / (dirname if layers == full_layers else f"{dirname}-{layers}layers")
    info = ensure_checkpoint(ckpt, a.wait_s, layers, a.arch)
    free = shutil.disk_usage(work).free
    if free < 1.2 * info["tensor_bytes"]:
        raise SystemExit(f"{free / 1e9:.1f} GB free at {work}: a converted 7B needs about "
                         f"{1.2 * info['tensor_bytes'] / 1e9:.0f} GB")
    results: dict[str, dict] = {}
    for label, opts in zip(labels, options):
        out = work / f"out-{os.getpid()}"
        runs: dict[str, list] = {"convert": [], "sim": [], "baseline": []}
        try:
            for rep in range(a.repeat):
                shutil.rmtree(out, ignore_errors=True)
                runs["convert"].append(run_child("convert", str(ckpt), str(out), opts))
                print(f"[{label}] rep {rep} convert: {runs['convert'][-1]}", flush=True)
                runs["sim"].append(run_child("sim", str(out), str(a.prompt_tokens), str(a.new_tokens)))
                print(f"[{label}] rep {rep} sim: {runs['sim'][-1]}", flush=True)
                runs["baseline"].append(run_child("baseline"))
        finally:
            shutil.rmtree(out, ignore_errors=True)
        results[label] = {**summarize(runs), "options": opts}
        print(f"[{label}] {results[label]}", flush=True)
    body = report(results, info, int(a.budget_gib * 2 ** 30))
    print(body)
    if a.write_doc:
        sys.path.insert(0, str(HERE))
        from _report import write_section  # noqa: E402

        title = TITLE if a.arch == "llama" else f"Real-size models: {shape} shape (--arch {a.arch}, tools/bench/real_size.py)"
        write_section(title, body, dists=("numpy", "onnx", "onnxruntime"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
