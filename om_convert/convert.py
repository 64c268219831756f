"""`ascend-adapt convert`: HF checkpoint or ONNX → OM (with ATC) or simulator artifact, verified.

Steps, each reported:
0. **fit** (HF input) — from config.json alone, in the dtype the card will store and the graph
   layout about to be built: weights + KV cache + workspace against the target's usable memory
   per chip (`ascend_adapt.estimate.fit`, estimate's formula). A model that cannot fit is refused
   here, before anything is written, with what would fit.
1. **export** — an HF checkpoint directory is built into static ONNX graphs (`om_convert.builder`):
   by default ONE step graph (prefill gears up to S, decode = gear 1: one OM holding the weights
   once), or prefill.onnx + decode.onnx with `layout="two-graph"`; an `.onnx` file is taken as it is.
2. **analyze** — every op against the target's ATC table (`om_convert.analyze`).
3. **rewrite** — for ONNX files we did not build, the registered rewrite rules
   (`operators.rewrites`) until the graph is accepted; a graph still refused stops here, naming
   the ops.
4. **compile** — the target's toolchain (`om_convert.toolchains`, by `target.toolchain`) compiles
   every graph, HF-built or a plain ONNX file alike. ATC: the exact `atc` command per graph
   (always written as a script under `atc/`); with `atc` on PATH (or `ASCEND_TOOLKIT_HOME`) it
   runs and writes `<graph>.om`. MagicMind: `magicmind/build_<graph>.py` and a torch_mlu run
   script. Always the simulator artifact `model.omsim` (never named `.om`), checked for
   acceptance like the toolchain. A toolchain that cannot compile the input (`inputs`,
   `multi_chip`, `keep_dtype`) refuses before anything is written.
5. **verify** — the artifact on the simulator (or the card) against the fp32 golden on sample
   inputs: max |Δ|, cosine per output and per layer, greedy-token parity for LLMs, and the
   simulated per-token latency on the target. For LLMs the golden's memory is checked against
   MemAvailable first (`golden_plan`): fp32, else the checkpoint's 16-bit dtype (said in the
   report), else the verify is skipped with the reason as a report step.
   With `quantize`, an **accuracy** step follows on the same two backends (`_accuracy_hf`:
   `quant.accuracy.accuracy_report` of the quantized artifact against the unquantized golden:
   per-layer error, greedy agreement, perplexity for real weights); skipped with verify.
6. **report** — `convert_report.json` and `convert_report.txt` in the output directory.

Output directory layout (written under a temporary name, renamed when complete):

    OUT/convert.json          what was converted, how; read by `generate` / `run` / `compare`
    OUT/export/               step.onnx (or prefill.onnx + decode.onnx), weights.bin, export.json (HF input)
    OUT/model.onnx            the rewritten graph (ONNX input)
    OUT/atc/                  <graph>.sh (exact atc commands), keep_dtype files, ATC logs (ATC targets)
    OUT/<graph>.om            ATC's output, when ATC ran
    OUT/magicmind/            build_<graph>.py, run_torch_mlu.py (MagicMind targets)
    OUT/model.omsim/          the simulator artifact (always: it is what `--backend sim` runs); its
                              weights.bin is a hard link of export/weights.bin (one copy on disk)
    OUT/config.json, tokenizer files (HF input), convert_report.{json,txt}

With `chips=N > 1` (`--chips N`, HF input) the layers are split over N chips (`om_convert.split`):
export/ holds stage{i}_{kind}.onnx, atc/ one script per stage graph (→ OUT/stage{i}_{kind}.om),
model.omsim/ a pipeline.json and one stage{i}.omsim per chip, and the fit check is per chip.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ascend_adapt.errors import ConfigError, UnsupportedError
from ascend_adapt.fsutil import atomic_output, check_output

MANIFEST = "convert.json"
OMSIM = "model.omsim"


@dataclass
class ConvertReport:
    """What `convert` did. `to_dict()` is written as convert_report.json."""

    source: str
    kind: str                       # "hf" | "onnx"
    target: str
    soc_version: str
    precision_mode: str
    out: str
    steps: list[dict] = field(default_factory=list)
    analysis: dict = field(default_factory=dict)
    rewrite: dict = field(default_factory=dict)
    atc: dict = field(default_factory=dict)
    artifact: dict = field(default_factory=dict)
    verify: dict = field(default_factory=dict)
    accuracy: dict = field(default_factory=dict)  # --quantize: the quantized artifact vs the unquantized golden

    @property
    def checks(self) -> dict:
        """Every sub-verdict of the verify step: {name: {"passed", "counts", "detail"}}."""
        return dict(self.verify.get("checks") or {})

    @property
    def passed(self) -> bool:
        """The overall verdict: the conjunction of the verify checks that count (`verdict`)."""
        if not self.checks:
            return False
        return verdict(self.checks)[0]

    @property
    def outcome(self) -> str:
        """"passed", "failed", or "unverified" (verify skipped or not asked for: nothing was checked)."""
        if not self.verify:
            return "unverified"
        return "passed" if self.passed else "failed"

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("source", "kind", "target", "soc_version", "precision_mode", "out",
                                               "steps", "analysis", "rewrite", "atc", "artifact", "verify",
                                               "accuracy")} | {
            "passed": self.passed, "outcome": self.outcome}

    def to_text(self) -> str:
        v, a = self.verify, self.artifact
        lines = [f"convert {self.source} -> {self.out}",
                 f"  target {self.target} (soc_version {self.soc_version}), precision_mode {self.precision_mode}"]
        for s in self.steps:
            lines.append(f"  [{s['step']:<8}] {s['summary']}  ({s['seconds']:.1f} s)")
            lines += [f"      {d}" for d in s.get("detail") or ()]  # e.g. the W8A8 keep-fp16 rule
        # the compile step's toolchain wrote its name, label and script place into the report
        label = self.atc.get("label") or self.atc.get("toolchain", "the toolchain")
        if self.atc.get("commands"):
            where = f" (also in {self.atc['script_glob']})" if self.atc.get("script_glob") else ""
            lines.append(f"  {self.atc.get('toolchain', label)} commands, run in the output directory{where}:")
            lines += [f"    {c}" for c in self.atc["commands"].values()]
        if a.get("simulated"):
            lines.append(f"  artifact: {a.get('omsim')} (simulated: no {label} on this machine)")
        for c in a.get("chips") or ():  # a multi-chip split: each chip's stage and memory
            f, gib = c["fit"], (lambda b: f"{b / 2**30:.2f} GiB")
            lines.append(f"  chip {c['chip']} (device {c['device_id']}): layers {c['layers'][0]}-{c['layers'][1] - 1}"
                         f"{' + embedding' if f['embed'] else ''}{' + head' if f['head'] else ''}, needs "
                         f"{gib(f['needed_bytes'])} of {gib(f['usable_bytes'])} (weights {gib(f['weights_bytes'])}, "
                         f"KV {gib(f['kv_cache_bytes'])}, workspace {gib(f['workspace_bytes'])}); {c['omsim']}")
        for g, om in (a.get("om") or {}).items():
            lines.append(f"  artifact: {om} (built by {label})")
        if not v:
            skipped = next((s for s in self.steps if s.get("step") == "verify" and s.get("skipped")), None)
            lines.append("  verdict: UNVERIFIED — " + ("the verify step was skipped (see above); run "
                                                       "`ascend-adapt compare` on a machine with more memory"
                                                       if skipped else "--no-verify: nothing was checked"))
        if v:
            ok, failed = verdict(self.checks) if self.checks else (False, [])
            head = "PASSED" if ok else ("FAILED (" + ", ".join(failed) + ")" if failed else "FAILED")
            lines.append(f"  verify ({v.get('runner', '?')} vs {v.get('golden', '?')}): {head} — {v.get('summary', '')}")
            for name, c in self.checks.items():
                mark = "passed" if c.get("passed") else "FAILED"
                lines.append(f"    {name}: {mark}{'' if c.get('counts', True) else ' (not counted)'} — "
                             f"{c.get('detail', '')}")
        if self.accuracy:  # measured, not judged: the verdict stays the verify's
            lines += [f"  {ln}" for ln in self.accuracy["lines"]]
        return "\n".join(lines)


def _prefill_gears(gears) -> list[int] | None:
    """HF input: `gears` are prefill lengths, each an int or a 1-tuple (the CLI parser's form)."""
    if not gears:
        return None
    flat = []
    for g in gears:
        if isinstance(g, (tuple, list)):
            if len(g) != 1:
                raise ConfigError(f"gear {tuple(g)}: for an HF checkpoint a gear is one prefill length",
                                  "pass lengths, e.g. gears=[16, 32, 64] (CLI: --gears \"16;32;64\")")
            g = g[0]
        if isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g < 1:
            raise ConfigError(f"gear {g!r}: a prefill length must be a positive integer",
                              "pass lengths, e.g. gears=[16, 32, 64]")
        flat.append(int(g))
    return flat


def _metrics(name: str, ref, got, min_cosine: float = 0.999) -> dict:
    """max |Δ|, cosine, min passing atol and non-finite counts (ascend_adapt.compare.metrics).

    `passed` is this report's verdict for the tensor: finite and cosine ≥ `min_cosine` (`rule`
    says so); compare's own atol-0 verdict is not used.
    """
    from ascend_adapt.compare.metrics import tensor_stats

    st = tensor_stats(name, ref, got, atol=0.0, rtol=0.0)
    d = st.to_dict()
    d["nonfinite"] = int(st.nonfinite_got)  # inf / NaN values in the tested output
    d["finite"] = st.nonfinite_got == 0 and st.nonfinite_mismatch == 0
    d["passed"] = bool(d["finite"] and st.cosine >= min_cosine)
    d["rule"] = f"finite and cosine >= {min_cosine}"
    return d


def _step(report: ConvertReport, name: str, t0: float, summary: str, on_step: Callable[[str], None] | None) -> None:
    rec = {"step": name, "summary": summary, "seconds": round(time.perf_counter() - t0, 3)}
    report.steps.append(rec)
    if on_step:
        on_step(f"[{name}] {summary}")


def _load_keep_dtype(entries: Sequence[str] | str | None) -> list[str]:
    """--keep-dtype: a file (one entry per line) or comma-separated node names / OpType::<Type>."""
    if not entries:
        return []
    if isinstance(entries, str):
        entries = [entries]
    out: list[str] = []
    for e in entries:
        p = Path(e)
        if p.is_file():
            out += [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        else:
            out += [x.strip() for x in e.split(",") if x.strip()]
    return out


def _parse_input_shape(text: str | None) -> dict[str, tuple[int, ...]]:
    from ascend_adapt.om_convert.atc.options import AtcOptions

    if not text:
        return {}
    opts = AtcOptions.from_argv([f"--input_shape={text}"])
    return {k: tuple(int(d) if isinstance(d, int) else -1 for d in v) for k, v in opts.input_shape.items()}


def _built_names(built: Mapping[str, Path], out: Path) -> dict[str, str]:
    """{graph: the compiled file, relative to the output directory} ("step.om", "magicmind/step.mm")."""
    root = Path(out).resolve()
    return {k: (Path(p).resolve().relative_to(root).as_posix() if Path(p).resolve().is_relative_to(root)
                else Path(p).name) for k, p in built.items()}


# ----------------------------------------------------------------------------------------- HF
def _convert_hf(report: ConvertReport, src: Path, out: Path, target, *, precision_mode: str, seq_len: int,
                max_len: int, batch: int, keep_dtype: list[str], weight_dtype: str, use_atc: str,
                verify: bool, verify_tokens: int, progress: bool, on_step, on_line,
                gears: Sequence[int] | None = None, cann_version: str | None = None,
                src_dtype: str = "float32", num_params: int = 0, split=None, quant: dict | None = None,
                toolchain=None, accuracy: dict | None = None) -> None:
    """The HF steps after the fit check: export → analyze → compile → verify (→ accuracy with
    --quantize; `accuracy` = {"mode", "ppl"}, None: no accuracy step) (module docstring)."""
    from ascend_adapt.om_convert.toolchains import get_toolchain

    res = _export_hf(report, src, out / "export", target, seq_len=seq_len, max_len=max_len, batch=batch,
                     weight_dtype=weight_dtype, progress=progress, on_step=on_step, gears=gears,
                     cann_version=cann_version, split=split, quant=quant)
    _analyze_built(report, res, target, cann_version, on_step)
    _compile_hf(report, res, out, target, toolchain or get_toolchain(target), precision_mode=precision_mode,
                keep_dtype=keep_dtype, use_atc=use_atc, split=split, on_step=on_step, on_line=on_line)
    for f in src.iterdir():  # config + tokenizer beside the artifacts, for generate/run
        if f.is_file() and f.suffix in (".json", ".model", ".txt") and not f.name.endswith(".index.json"):
            shutil.copy2(f, out / f.name)
    if verify:
        _verify_hf(report, src, out, res, batch=batch, max_len=max_len, seq_len=seq_len, verify_tokens=verify_tokens,
                   src_dtype=src_dtype, num_params=num_params, on_step=on_step, accuracy=accuracy)


def _export_hf(report: ConvertReport, src: Path, exp: Path, target, *, seq_len: int, max_len: int, batch: int,
               weight_dtype: str, progress: bool, on_step, gears, cann_version, split, quant):
    """The export step (and --quantize's calibration): the graphs built into `exp`; a BuildResult."""
    from ascend_adapt.om_convert.builder import build_llm_onnx
    from ascend_adapt.om_convert.builder.llm import MIN_OPSET

    t0 = time.perf_counter()
    # the highest opset this CANN parses, up to 17 (LayerNormalization is fused from 17)
    opset = min(17, target.max_opset(cann_version))
    if opset < MIN_OPSET:
        raise UnsupportedError(f"{target.name} with CANN {cann_version} parses ONNX opsets up to {opset}; "
                               f"the LLM builder needs ≥ {MIN_OPSET}", "use CANN 6.0 or newer")
    stages = [{"layers": list(c.layers), "device_id": c.device_id} for c in split.chips] if split else None
    qkw = {}
    if quant and quant.get("quantize"):  # --quantize: W8A8 calibrates here (om_convert.builder.quantize)
        from ascend_adapt.om_convert.builder.quantize import prepare

        tq = time.perf_counter()
        qkw = prepare(src, **quant, note=on_step)
        if qkw["w8a8_plan"] is not None:
            lines = qkw["w8a8_plan"].summary()
            _step(report, "quantize", tq, lines[0], on_step)
            report.steps[-1]["detail"] = lines[1:]
            if on_step:
                for line in lines[1:]:
                    on_step(f"    {line}")
    res = build_llm_onnx(src, exp, batch=batch, seq_len=seq_len, max_len=max_len, target=target, opset=opset,
                         weight_dtype=weight_dtype, progress=progress, gears=gears, stages=stages, **qkw)
    if "quantization" in res.manifest and qkw.get("quantize") == "w8a16":
        q = res.manifest["quantization"]
        _step(report, "quantize", t0, f"W8A16: {len(q['quantized'])} Linears int8 ({q['granularity']}) "
              f"through AscendAntiQuant; scales {q['scale_bytes'] / 2**20:.2f} MiB", on_step)
    shape_doc = (f"step.onnx with gears {res.manifest['gears']} (decode = 1; one OM, weights loaded once)"
                 if res.manifest.get("gears") else f"prefill.onnx + decode.onnx (S={seq_len})")
    _step(report, "export", t0,
          f"{shape_doc}, B={batch}, M={max_len}; {res.num_tensors} weights "
          f"{res.weights_bytes / 2**20:.1f} MiB in weights.bin, ops: {', '.join(res.op_types)}", on_step)
    return res


def _analyze_built(report: ConvertReport, res, target, cann_version, on_step) -> None:
    """The analyze step of built graphs, each as it will be compiled; a refusal stops here."""
    from ascend_adapt.om_convert.analyze import analyze_model
    from ascend_adapt.om_convert.split import input_shapes_of

    t0 = time.perf_counter()
    graphs = dict(res.paths)
    analyses = {}
    for k, p in graphs.items():
        # analysed as it will be built: a step graph with its gear profiles (-1 dims + --dynamic_dims)
        shapes_k, dims_k = input_shapes_of(res.manifest, k, target.soc_version)
        analyses[k] = analyze_model(p, target, cann_version, rules=False,
                                    input_shapes={n: [int(x) for x in d] for n, d in shapes_k.items()},
                                    # a target without gears (MLU370) builds the -1 dims as a shape range
                                    gears=dims_k if target.gear_min is not None else None)
    report.analysis = {k: {"accepted": a.accepted_as_is, "blocking": a.blocking, "nodes": a.node_count}
                       for k, a in analyses.items()}
    refused = {k: a.blocking for k, a in analyses.items() if not a.accepted_as_is}
    if refused:
        hints = list(dict.fromkeys(f.hint for a in analyses.values() for f in a.findings
                                   if f.level == "error" and f.hint))
        raise UnsupportedError(
            f"{target.name} refuses the built graphs: " + "; ".join(f"{k}: {', '.join(b)}" for k, b in refused.items()),
            "; ".join(hints) if hints else
            "the builder should only emit supported ops for this target: report it with `ascend-adapt analyze`")
    _step(report, "analyze", t0, f"{' and '.join(graphs)} accepted by {target.name} as built "
          f"({sum(a.node_count for a in analyses.values())} nodes)", on_step)
    report.rewrite = {"rules": "not needed: the graphs are built for the target"}


def _compile_hf(report: ConvertReport, res, out: Path, target, toolchain, *, precision_mode: str,
                keep_dtype: list[str], use_atc: str, split, on_step, on_line) -> None:
    """The compile step of built graphs: the target's toolchain, then the simulator artifact
    (one per chip of a split)."""
    from ascend_adapt.backends.sim.artifact import omsim_from_export
    from ascend_adapt.om_convert.split import input_shapes_of
    from ascend_adapt.om_convert.toolchains import CompileJob

    t0 = time.perf_counter()
    exp, manifest, graphs = res.out_dir, res.manifest, dict(res.paths)
    # one job per graph, with the shapes and gears it is built with and its fp32 islands (+ --keep-dtype)
    jobs = {}
    for kind, path in graphs.items():
        shapes, dims = input_shapes_of(manifest, kind, target.soc_version)
        jobs[kind] = CompileJob(path, shapes, dims, list(manifest.get("keep_dtype", {}).get(kind, [])) + list(keep_dtype),
                                manifest.get("gears"))
    build = toolchain.compile(report, out, jobs, target, precision_mode, use_atc, on_line)
    oms, options = build.built, build.atc_options
    report.atc = build.info
    # link=True: the artifact's weights.bin is a hard link of export/weights.bin (one copy on disk;
    # a copy only where the filesystem refuses links); both stay valid when OUT is moved
    if split is None:
        # without ATC options the simulator takes the mode, and the fp32 islands where the
        # toolchain keeps them (`keep_dtype` capability)
        omsim_from_export(exp, out / OMSIM, target, atc_options=options, link=True,
                          **({} if options is not None else {
                              "precision_mode": precision_mode,
                              "keep_dtype": {k: j.keep_dtype for k, j in jobs.items()} if toolchain.keep_dtype else None}))
    else:  # one simulator artifact per chip, each accepted (and its memory checked) on its own
        from ascend_adapt.om_convert.split import write_split_omsim

        pipeline = write_split_omsim(exp, out / OMSIM, target, options)
    report.artifact = {"omsim": OMSIM, "simulated": not oms, "om": _built_names(oms, out),
                       "graphs": list(graphs)}
    if split is not None:
        report.artifact["chips"] = [{"chip": st["index"], "device_id": st["device_id"], "layers": st["layers"],
                                     "omsim": f"{OMSIM}/{st['omsim']}", "graphs": st["graphs"],
                                     "fit": c.to_dict(), "simulated_memory": st["memory"]}
                                    for st, c in zip(pipeline["stages"], split.chips)]
    _step(report, "compile", t0, toolchain.summary(build, OMSIM), on_step)


def _verify_hf(report: ConvertReport, src: Path, out: Path, res, *, batch: int, max_len: int, seq_len: int,
               verify_tokens: int, src_dtype: str, num_params: int, on_step, accuracy: dict | None = None) -> None:
    """The verify step (and, with `accuracy`, the accuracy step on the same golden and simulator
    backends, loaded once): the golden this machine can afford (`golden_plan`), else SKIPPED
    steps with the reason."""
    t0 = time.perf_counter()
    spec = res.manifest["spec"]
    host_kv = 2 * spec["num_layers"] * batch * max_len * spec["num_kv_heads"] * spec["head_dim"] * 4
    plan = golden_plan(num_params, src_dtype, available_memory_bytes(),
                       other_bytes=res.weights_bytes + host_kv, max_tokens=seq_len + verify_tokens,
                       spec=spec)
    if plan["dtype"] is None:  # never silently: the reason is a report step
        for name in ("verify", "accuracy") if accuracy else ("verify",):
            report.steps.append({"step": name, "summary": f"SKIPPED: {plan['reason']}",
                                 "seconds": round(time.perf_counter() - t0, 3), "skipped": True, "plan": plan})
            if on_step:
                on_step(f"[{name}] SKIPPED: {plan['reason']}")
        return
    from ascend_adapt.backends import get_backend

    golden = get_backend("torch", src, dtype=plan["dtype"])  # golden_plan picks it when fp32 does not fit
    sim = get_backend("sim", out / OMSIM)
    try:
        report.verify = verify_llm(src, out / OMSIM, n_tokens=verify_tokens, golden_dtype=plan["dtype"],
                                   golden=golden, sim=sim)
        if plan["dtype"] != "float32":
            report.verify["golden"] = f"torch {plan['dtype']}"
            report.verify["golden_plan"] = plan
            report.verify["summary"] += f" [{plan['reason']}]"
        _step(report, "verify", t0, report.verify["summary"], on_step)
        if accuracy:
            _accuracy_hf(report, src, golden, sim, plan, steps=verify_tokens, on_step=on_step, **accuracy)
    finally:
        sim.close()


def _accuracy_hf(report: ConvertReport, src: Path, golden, sim, plan: Mapping, *, steps: int, mode: str,
                 ppl: bool | None, on_step) -> None:
    """The accuracy step of --quantize: `accuracy_report(golden, sim)` — the quantized artifact on
    the simulator against the model without quantization, i.e. the torch golden verify loaded
    (fp32, or the checkpoint's 16-bit dtype per `golden_plan`). It adds no arithmetic of its own.

    Greedy prompts: the family's verify prompt + `ACCURACY_PROMPTS` (those whose teacher-forced
    sequence fits the prefill length), `steps` tokens each (fewer where the KV cache or the prefill
    length is shorter). Perplexity on `PPL_TEXT` in windows of min(256, prefill length), when
    `ppl` (None: when `real_weights(src)`)."""
    from ascend_adapt.model_zoo import ADAPTERS
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer
    from ascend_adapt.quant.accuracy import PPL_TEXT, accuracy_prompts, accuracy_report, ppl_text_ids, real_weights

    t0 = time.perf_counter()
    tok = load_tokenizer(src)
    # teacher-forced: one forward over prompt + steps - 1 tokens, within the prefill length
    texts, prompts = accuracy_prompts(tok, ADAPTERS.get(golden.spec.arch).verify_prompt, max_len=sim.seq_len - 1)
    longest = max((len(p) for p in prompts), default=0)
    n = max(1, min(int(steps), sim.seq_len - longest + 1, sim.max_len - longest))
    if ppl is None:
        ppl, why = real_weights(src)
    else:
        why = "--accuracy-ppl" if ppl else "--no-accuracy-ppl"
    window = min(256, int(sim.seq_len))
    ids = ppl_text_ids(tok) if ppl else None
    reference = f"the model without quantization: the torch {plan['dtype']} golden of verify"
    label = f"{mode.upper()} artifact (simulator, {sim.cost_summary()['precision_mode']})"
    rep = accuracy_report(golden, sim, prompts=prompts, steps=n, ppl_ids=ids, label=label, window=window)
    lines = rep.lines()
    lines.insert(1, f"  reference: {reference}")
    if ids is None:
        lines.append(f"  perplexity: not measured — {why}")
    took = time.perf_counter() - t0
    lines.append(f"  ({took:.1f} s; prompts {texts!r}, {n} greedy tokens each"
                 + (f"; perplexity over {len(ids)} tokens of {PPL_TEXT.name}, windows of {window})" if ids else ")"))
    report.accuracy = rep.to_dict() | {
        "reference": reference, "test": label, "prompts": texts, "prompt_ids": prompts, "steps": n,
        "perplexity_text": PPL_TEXT.name if ids else None, "perplexity_tokens": len(ids) if ids else 0,
        "perplexity_window": window if ids else None, "perplexity_reason": why, "seconds": round(took, 3),
        "lines": lines}
    logit = rep.layers.get("logits")
    parts = [f"{mode.upper()} vs torch {plan['dtype']} golden"]
    if logit:
        parts.append(f"logits cosine {logit['cosine']:.5f}")
    if rep.greedy:
        parts.append(f"greedy {rep.greedy['equal']}/{rep.greedy['total']} equal free-running, "
                     f"{100 * rep.greedy['teacher_forced_rate']:.1f} % teacher-forced")
    parts.append(f"perplexity {100 * rep.ppl_rise:+.2f} %" if rep.ppl_rise is not None else "no perplexity")
    _step(report, "accuracy", t0, "; ".join(parts), on_step)


def verify_llm(golden_dir, omsim, *, n_tokens: int = 16, prompt: str | None = None, min_cosine: float = 0.999,
               precision_mode: str | None = None, keep_dtype: Any = "export", golden_dtype: str = "float32",
               golden=None, sim=None) -> dict:
    """Golden (torch fp32) vs the simulator: prefill logits and layers, greedy parity, cost.

    Four checks, each with its own verdict in `checks` (text and JSON); `passed` is their
    conjunction (`verdict`):

    - tokens: the greedy tokens are identical, or they first differ at a step where the golden's
      top-2 logit gap is within the fp16 error bound of the logits (`token_check`): the bound is
      2 × the largest |Δ| of the prompt logits (sim vs golden), since a flip needs the top-1 and
      top-2 logits to move towards each other by the gap and each moves by at most that error.
      A difference at a step with a larger gap (e.g. the first generated token with a clear
      winner) fails. Only the first difference is judged: after it the contexts differ.
    - logits: the prompt logits are finite and their cosine ≥ `min_cosine`.
    - layers: every layer output is finite and its cosine ≥ `min_cosine`.

    `golden` / `sim`: backends already loaded for these paths (convert shares them with its
    accuracy step); the caller then closes `sim`.
    """
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer
    from ascend_adapt.backends import get_backend
    from ascend_adapt.runtime.generate import greedy_tokens

    if golden is None:
        golden = get_backend("torch", golden_dir, dtype=golden_dtype)  # golden_plan picks it when fp32 does not fit
    own_sim = sim is None
    if own_sim:
        # an override keeps the export's fp32 islands (RMSNorm / LayerNorm / softmax), as convert passes them to ATC
        sim = get_backend("sim", omsim, **({"precision_mode": precision_mode, "keep_dtype": keep_dtype}
                                           if precision_mode else {}))
    tok = load_tokenizer(golden_dir)
    from ascend_adapt.model_zoo import ADAPTERS

    text = prompt or ADAPTERS.get(golden.spec.arch).verify_prompt  # the family's hook ("Hello world", "你好")
    ids = np.asarray([tok.encode(text)], dtype=np.int64)
    mask = np.ones_like(ids)
    g_logits, g_layers = golden.full_logits(ids, mask, layer_outputs=True)
    s_logits, s_layers = sim.full_logits(ids, mask, layer_outputs=True)
    layers = []
    for name in g_layers:
        if name in s_layers:
            m = _metrics(name, g_layers[name], s_layers[name])
            layers.append({"name": name, "max_abs": m["max_abs"], "cosine": m["cosine"],
                           "nonfinite": m["nonfinite_got"] + m["nonfinite_mismatch"]})
    n = min(n_tokens, sim.max_len - sim.seq_len)
    g_tok = greedy_tokens(golden.new_session, ids, n)
    s_tok = greedy_tokens(sim.new_session, ids, n)
    # the golden's logits at every generated step (its own context): the top-2 gap per step
    ctx = np.concatenate([ids, g_tok[:, :-1]], axis=1) if n > 1 else ids
    g_steps = np.asarray(golden.full_logits(ctx, np.ones_like(ctx)), dtype=np.float64)[0, ids.shape[1] - 1:]
    logit_m = _metrics("logits", g_logits, s_logits, min_cosine)
    toks = token_check(g_tok[0], s_tok[0], top2_gaps(g_steps), 2.0 * logit_m["max_abs"])
    min_cos = min((r["cosine"] for r in layers), default=float("nan"))
    cost = sim.cost_summary()
    bad = [r["name"] for r in layers if r["nonfinite"]]
    low = [r["name"] for r in layers if not r["cosine"] >= min_cosine]
    checks = {
        "tokens": {"passed": toks["passed"], "counts": True, "detail": toks["detail"]},
        "logits": {"passed": logit_m["passed"], "counts": True,
                   "detail": f"cosine {logit_m['cosine']:.6f} (needs ≥ {min_cosine})"
                             + ("" if logit_m["finite"] else f", {logit_m['nonfinite']} non-finite values")},
        "layers": {"passed": not bad and not low, "counts": True,
                   "detail": f"min cosine {min_cos:.6f} (needs ≥ {min_cosine})"
                             + (f"; NON-FINITE values (inf/NaN) in {', '.join(bad)}" if bad else "")
                             + (f"; below: {', '.join(low[:4])}" if low else "")},
    }
    passed, failed = verdict(checks)
    nonfinite = (f"NON-FINITE values (inf/NaN) in {', '.join(bad)} — fp16 overflow? try "
                 "`ascend-adapt compare --layerwise` and --keep-dtype; " if bad else "")
    finite_note = finite_note_for(logit_m)
    summary = (f"{nonfinite}greedy tokens {toks['detail']}; "
               f"logits max|Δ| {logit_m['max_abs']:.3g}{finite_note}, min layer cosine {min_cos:.6f}; "
               f"simulated {cost['decode_ms_per_token']:.3f} ms/token on {cost['target']} "
               f"({cost['precision_mode']})")
    if own_sim:
        sim.close()
    return {"runner": f"sim ({cost['precision_mode']}, simulated)", "golden": "torch fp32", "prompt": text,
            "prompt_ids": ids[0].tolist(), "golden_tokens": g_tok[0].tolist(), "sim_tokens": s_tok[0].tolist(),
            "tokens_identical": toks["identical"], "first_token_difference": toks["first_difference"],
            "token_rule": toks, "logits": logit_m, "layers": layers, "min_layer_cosine": min_cos, "cost": cost,
            "checks": checks, "failed": failed, "passed": passed, "summary": summary}


def finite_note_for(metrics: Mapping[str, Any]) -> str:
    """" (finite part; N non-finite values)" after a max|Δ| when some values are inf/NaN, else ""."""
    n = int(metrics.get("nonfinite", 0))
    return f" (finite part; {n} non-finite values)" if n else ""


def verdict(checks: Mapping[str, Mapping[str, Any]]) -> tuple[bool, list[str]]:
    """The one verdict rule: passed = every check that counts passed. Returns (passed, failed names)."""
    failed = [k for k, c in checks.items() if c.get("counts", True) and not c.get("passed")]
    return (not failed and any(c.get("counts", True) for c in checks.values())), failed


def top2_gaps(step_logits) -> np.ndarray:
    """Top-1 minus top-2 logit per step of a [steps, vocab] array (float64)."""
    a = np.sort(np.asarray(step_logits, dtype=np.float64), axis=-1)
    return a[:, -1] - a[:, -2]


def token_check(golden_tokens, sim_tokens, golden_gaps, bound: float) -> dict:
    """Greedy-token parity with the fp16 near-tie rule (see `verify_llm`).

    Args:
        golden_tokens / sim_tokens: the generated tokens (same length).
        golden_gaps: the golden's top-1 minus top-2 logit at each generated step.
        bound: the fp16 error bound of the logits: a flip is legitimate only where the gap ≤ it.

    Returns:
        {"passed", "identical", "first_difference" (step or None), "gap", "bound", "detail"}.
    """
    g, s = np.asarray(golden_tokens), np.asarray(sim_tokens)
    diff = np.nonzero(g != s)[0]
    if diff.size == 0:
        return {"passed": True, "identical": True, "first_difference": None, "gap": None, "bound": float(bound),
                "detail": f"identical over {len(g)} steps"}
    k = int(diff[0])
    gap = float(golden_gaps[k])
    ok = bool(gap <= bound)
    why = (f"a near-tie: golden top-2 gap {gap:.3g} ≤ fp16 bound {bound:.3g}" if ok else
           f"NOT a near-tie: golden top-2 gap {gap:.3g} > fp16 bound {bound:.3g}")
    return {"passed": ok, "identical": False, "first_difference": k, "gap": gap, "bound": float(bound),
            "detail": f"differ from step {k} of {len(g)} ({why})"}


# --------------------------------------------------------------------------------------- ONNX
def _random_feeds(meta: Mapping[str, tuple], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, (dtype, shape) in meta.items():
        shape = tuple(int(d) if isinstance(d, int) and d > 0 else 1 for d in shape)
        dt = np.dtype(dtype)
        if dt.kind in "iu":
            feeds[name] = rng.integers(0, 2, size=shape).astype(dt)
        elif dt.kind == "b":
            feeds[name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            feeds[name] = rng.standard_normal(shape).astype(dt)
    return feeds


def _convert_onnx(report: ConvertReport, src: Path, out: Path, target, *, precision_mode: str,
                  input_shape: Mapping[str, Sequence[int]], gears: Sequence[Sequence[int]] | None,
                  keep_dtype: list[str], cann_version: str | None, use_atc: str, verify: bool,
                  on_step, on_line, toolchain=None) -> None:
    import onnx

    from ascend_adapt.om_convert.analyze import analyze_model
    from ascend_adapt.backends.sim.artifact import write_omsim
    from ascend_adapt.operators.rewrites import apply_rules

    t0 = time.perf_counter()
    try:
        model = onnx.load(str(src))
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError / OSError / ValueError
        raise ConfigError(f"{src}: not a readable ONNX model ({type(exc).__name__}: {exc})",
                          "check the file; external data must sit beside it") from None
    static = {k: v for k, v in input_shape.items() if all(d > 0 for d in v)}
    if gears:  # ATC's gear rules first, with ATC's own code (the one implementation validate() uses)
        from ascend_adapt.om_convert.atc.validate import gear_problems

        for err in gear_problems(dict(input_shape), "dynamic_dims", gears, soc_version=target.soc_version,
                                 check_format=False):
            raise err
    # with gears the graph is analysed as ATC builds it: -1 dims bound to the --dynamic_dims profiles
    gear_kw = {"input_shapes": dict(input_shape), "gears": gears} if gears else {"input_shapes": static or None}
    before = analyze_model(model, target, cann_version, rules=False, **gear_kw)
    _step(report, "analyze", t0, f"{before.node_count} nodes, "
          f"{'accepted as is' if before.accepted_as_is else 'blocked: ' + '; '.join(before.blocking[:4])}", on_step)

    t0 = time.perf_counter()
    model, rw = apply_rules(model, target, input_shapes=static or None, cann_version=cann_version)
    fired = {k: v for k, v in rw.fired.items() if v}
    after = analyze_model(model, target, cann_version, rules=False, **gear_kw)
    report.analysis = {"before": {"accepted": before.accepted_as_is, "blocking": before.blocking},
                       "after": {"accepted": after.accepted_as_is, "blocking": after.blocking}}
    report.rewrite = {"fired": fired, "report": rw.to_dict()}
    if not after.accepted_as_is:
        shape_fix = list(dict.fromkeys(f.hint for f in after.findings if f.level == "error" and f.hint
                                       and not any(r.status != "supported" for r in after.rows)))
        raise UnsupportedError(
            f"{src.name}: {target.name} would still refuse the graph after the rewrite rules: "
            + "; ".join(after.blocking[:6]),
            "; ".join(shape_fix) if shape_fix else
            "run `ascend-adapt analyze` for details, `ascend-adapt debug reduce` to isolate the op, "
            "or add a rewrite rule (docs/rewrite_rules.md)")
    onnx_path = out / "model.onnx"
    big = model.ByteSize() > 1_500_000_000
    onnx.save(model, str(onnx_path), save_as_external_data=big, location="model.onnx.data" if big else None)
    _step(report, "rewrite", t0, (f"rules fired: {', '.join(f'{k}×{v}' for k, v in fired.items())}" if fired
                                  else "no rule needed") + f"; accepted by {target.name}", on_step)

    t0 = time.perf_counter()
    shapes = dict(input_shape)
    if not shapes:
        shapes = {i.name: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim)
                  for i in model.graph.input}
    from ascend_adapt.om_convert.toolchains import CompileJob, get_toolchain

    toolchain = toolchain or get_toolchain(target)
    job = CompileJob(onnx_path, shapes, [tuple(g) for g in gears] if gears else None, list(keep_dtype) or None,
                     [tuple(g) for g in gears] if gears else None)
    build = toolchain.compile(report, out, {"model": job}, target, precision_mode, use_atc, on_line)
    oms = build.built
    report.atc = build.info
    if build.atc_options is not None:
        write_omsim(out / OMSIM, {"model": onnx_path}, target, build.atc_options["model"])
    else:  # the simulator takes the mode, the shapes and gears (and the keep list where the toolchain has one)
        from ascend_adapt.sim.settings import GearSpec, SimSettings

        write_omsim(out / OMSIM, {"model": onnx_path}, target, settings=SimSettings(
            target=target.name, soc_version=target.soc_version, precision_mode=precision_mode,
            keep_dtype=tuple(keep_dtype) if toolchain.keep_dtype else (), input_shape=shapes,
            gears=GearSpec("dynamic_dims", tuple(tuple(int(x) for x in g) for g in gears)) if gears else None))
    report.artifact = {"omsim": OMSIM, "simulated": not oms, "om": _built_names(oms, out),
                       "graphs": ["model"]}
    _step(report, "compile", t0, toolchain.summary(build, OMSIM), on_step)
    if verify:
        t0 = time.perf_counter()
        report.verify = verify_graph(onnx_path, out / OMSIM, gears=gears, input_shape=shapes)
        _step(report, "verify", t0, report.verify["summary"], on_step)


def verify_graph(onnx_path, omsim, *, gears=None, input_shape=None, min_cosine: float = 0.999) -> dict:
    """onnxruntime fp32 vs the simulator on random inputs (each output: max |Δ|, cosine)."""
    from ascend_adapt.runtime.runners import OrtRunner, SimRunner

    with SimRunner(omsim) as sim, OrtRunner(onnx_path) as ref:
        meta = dict(ref.get_input_metadata())
        if input_shape:
            gear = list(gears[0]) if gears else []
            for name, dims in input_shape.items():
                if name in meta:
                    dims = [d if d > 0 else (gear.pop(0) if gear else 1) for d in dims]
                    meta[name] = (meta[name][0], tuple(dims))
        feeds = _random_feeds(meta)
        a, b = ref.infer(feeds), sim.infer(feeds)
        sim_ms = sim.last_simulated_time_ms
        precision = sim.settings.precision_mode
    outputs = {k: _metrics(k, a[k], b[k], min_cosine) for k in a
               if np.asarray(a[k]).dtype.kind == "f"}
    worst = min((m["cosine"] for m in outputs.values()), default=1.0)
    bad = [k for k, m in outputs.items() if not m["finite"]]
    checks = {f"output {k}": {"passed": m["passed"], "counts": True,
                              "detail": f"cosine {m['cosine']:.6f} (needs ≥ {min_cosine})"
                                        + ("" if m["finite"] else f", {m['nonfinite']} non-finite values")}
              for k, m in outputs.items()}
    passed, failed = verdict(checks)
    summary = ((f"NON-FINITE values (inf/NaN) in {', '.join(bad)}; " if bad else "")
               + f"{len(outputs)} outputs, min cosine {worst:.6f}, max|Δ| "
               f"{max((m['max_abs'] for m in outputs.values()), default=0):.3g}"
               + (f"; simulated {sim_ms:.3f} ms per inference" if sim_ms is not None else ""))
    return {"runner": f"sim ({precision}, simulated)", "golden": "onnxruntime fp32", "outputs": outputs,
            "checks": checks, "failed": failed, "passed": passed, "summary": summary}


# ---------------------------------------------------------------------------------- defaults
LAYOUTS = ("step", "two-graph")
DEFAULT_CONTEXT = 2048      # KV-cache slots M when --max-len is not given (capped by the model's maximum)
DEFAULT_MAX_PROMPT = 512    # the largest prefill gear when --seq-len is not given (capped at M / 2)
MIN_GEAR = 16               # the smallest prefill gear of the default plan (powers of two up to S)
# host memory the verify needs besides the weights and caches it counts: the Python process with
# torch, onnxruntime and numpy loaded, and the golden's activations for a short prompt
VERIFY_RUNTIME_BYTES = 1 << 30


def source_dtype(src: Path) -> str:
    """The checkpoint's weight dtype: the floating dtype holding most parameters (headers only),
    else config.json `torch_dtype`, else float32."""
    from collections import Counter

    from ascend_adapt.checkpoint import open_checkpoint

    counts: Counter = Counter()
    try:
        for info in open_checkpoint(src).infos().values():
            if str(info.dtype).startswith(("float", "bfloat")):
                counts[str(info.dtype)] += info.numel
    except Exception:  # noqa: BLE001 - the build reports an unreadable checkpoint with its own error
        counts.clear()
    if counts:
        return counts.most_common(1)[0][0]
    try:
        cfg = json.loads((src / "config.json").read_text())
        return {"float16": "float16", "bfloat16": "bfloat16"}.get(str(cfg.get("torch_dtype")), "float32")
    except (OSError, ValueError):
        return "float32"


def default_weight_dtype(precision_mode: str, src_dtype: str) -> str:
    """The export's weight (and activation) dtype that the card will store under `precision_mode`.

    fp16 for every mode that lowers to fp16 (force_fp16, allow_fp32_to_fp16, cube_fp16in_fp32out,
    allow_mix_precision*_fp16): ATC would store fp32 weights in fp16 anyway, so exporting them in
    fp16 halves the file without changing what the card computes. must_keep_origin_dtype keeps
    the checkpoint's dtype: float16 stays float16; float32 and bfloat16 export as float32 (the
    graph builder emits no bfloat16; the widening is exact). bf16 modes export float32.
    """
    from ascend_adapt.sim.settings import POLICIES

    policy, low = POLICIES.get(precision_mode, ("force", "float16"))
    if low == "float16":
        return "float16"
    if policy == "origin":
        return "float16" if src_dtype == "float16" else "float32"
    return "float32"


def card_bytes(precision_mode: str, weight_dtype: str) -> tuple[int, int]:
    """(bytes per weight element the card stores, bytes per activation / KV element it computes in)."""
    from ascend_adapt.sim.settings import POLICIES

    policy, low = POLICIES.get(precision_mode, ("force", "float16"))
    export_b = 2 if weight_dtype in ("float16", "fp16") else 4
    weights_b = 2 if (export_b == 2 or low is not None) else 4
    compute_b = 2 if (export_b == 2 or policy in ("force", "mixed")) else 4
    return weights_b, compute_b


def default_context(spec, max_len: int | None, seq_len: int | None) -> tuple[int, int]:
    """(max_len M, seq_len S) with the defaults filled in.

    M defaults to min(DEFAULT_CONTEXT, the model's maximum positions): 2048 holds a chat turn
    with its history for Llama-2 (4096) and ChatGLM-6B (2048) while the KV cache stays 1 GiB in
    fp16 for a 7B; the static cache is read whole every decode step, so a larger M costs decode
    speed even when unused. S (the longest prompt, the largest prefill gear) defaults to
    min(DEFAULT_MAX_PROMPT, M // 2), leaving at least half the slots for generated tokens.
    """
    m = int(max_len) if max_len else min(DEFAULT_CONTEXT, int(spec.max_position))
    s = int(seq_len) if seq_len else max(1, min(DEFAULT_MAX_PROMPT, m // 2))
    return m, s


def default_gears(seq_len: int, target) -> list[int]:
    """Prefill gears of the default step-graph build: powers of two from MIN_GEAR up to `seq_len`
    (the decode gear 1 is added by the builder)."""
    from ascend_adapt.om_convert.atc import plan_gears

    if seq_len < 2:
        raise ConfigError(f"--seq-len {seq_len} leaves no prefill gear besides the decode gear 1",
                          "use --seq-len 2 or more, or --layout two-graph")
    lo = min(MIN_GEAR, seq_len)
    if seq_len <= lo:
        return [seq_len]
    return plan_gears(lo, seq_len, max_gears=min(target.gear_max or 100, 100) - 1, soc_version=target.soc_version)


def available_memory_bytes() -> int:
    """This machine's available memory: /proc/meminfo MemAvailable, else free physical pages."""
    import os

    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def golden_plan(num_params: int, src_dtype: str, available_bytes: int, *, other_bytes: int = 0,
                max_tokens: int = 64, spec: Mapping | None = None,
                runtime_bytes: int = VERIFY_RUNTIME_BYTES) -> dict:
    """Which torch golden the verify can afford on this machine (a pure function of the figures).

    The golden and the simulator are loaded side by side, so the need is the golden's weights
    (4 B × params in fp32, 2 B × params in a 16-bit checkpoint dtype) + its activations for
    `max_tokens` tokens + `other_bytes` (the simulator's weights and host KV cache) +
    `runtime_bytes`. fp32 is used when it fits `available_bytes`; else the checkpoint's own
    float16 / bfloat16 when that fits (the comparison then sets two 16-bit computations side by
    side, see the reason text); else nothing, and the reason says why.

    Returns:
        {"dtype": "float32" | "float16" | "bfloat16" | None, "reason", "need_bytes" per dtype,
         "available_bytes"}.
    """
    spec = spec or {}
    T = int(max_tokens)
    h, i, v, layers = (int(spec.get(k, 0)) for k in ("hidden_size", "intermediate_size", "vocab_size", "num_layers"))
    heads = int(spec.get("num_heads", 0))
    # fp32 activations: every layer's output kept for the layer-wise compare, the logits of every
    # position, one layer's scratch (Q, K, V, MLP) and its attention scores
    act = 4 * T * ((layers + 3) * h + 2 * v + 3 * h + 2 * i + heads * T)
    gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
    cands = [("float32", 4)] + ([(src_dtype, 2)] if src_dtype in ("float16", "bfloat16") else [])
    need = {d: b * int(num_params) + act + int(other_bytes) + int(runtime_bytes) for d, b in cands}
    out = {"available_bytes": int(available_bytes), "need_bytes": need, "dtype": None}
    if need["float32"] <= available_bytes:
        return out | {"dtype": "float32", "reason": f"fp32 golden: needs {gib(need['float32'])} of "
                                                    f"{gib(available_bytes)} available"}
    head = (f"the fp32 torch golden needs {gib(need['float32'])} (4 B × {num_params / 1e9:.2f} B params + the "
            f"simulator's {gib(other_bytes)} + activations and runtime), MemAvailable is {gib(available_bytes)}")
    if len(cands) > 1 and need[src_dtype] <= available_bytes:
        eps = "2^-11 ≈ 4.9e-4" if src_dtype == "float16" else "2^-8 ≈ 3.9e-3"
        return out | {"dtype": src_dtype, "reason": (
            f"{head}: golden run in the checkpoint's {src_dtype} ({gib(need[src_dtype])}). Tolerance consequence: "
            f"the golden rounds every op at {src_dtype}'s unit roundoff ({eps}) like the card, so the check shows "
            "agreement of two 16-bit computations, not the error against exact arithmetic, and a greedy near-tie "
            "may flip on either side")}
    alt = f"; in {src_dtype} it needs {gib(need[src_dtype])}" if len(cands) > 1 else ""
    return out | {"reason": f"{head}{alt}: verification skipped. Run it on a machine with more memory: "
                            "`ascend-adapt compare` or verify_llm(checkpoint, OUT/model.omsim)"}


def check_memory_fit(src: Path, target, *, precision_mode: str, weight_dtype: str, layout: str, batch: int,
                     max_len: int, seq_len: int, spec=None, quantize: str | None = None,
                     group_size: int | None = None):
    """The fit check of `convert` (estimate's formula, from config.json): a FitCheck; raises
    ModelDoesNotFitError before anything is written when the model cannot fit one chip.
    `group_size`: --group-size of --quantize w8a16 (its scales per G input channels are priced)."""
    from ascend_adapt.estimate.core import spec_for
    from ascend_adapt.estimate.fit import check_fit

    spec = spec if spec is not None else spec_for(src)[0]
    w_b, c_b = card_bytes(precision_mode, weight_dtype)
    if quantize:  # int8 Linears + scales (estimate's "w8a16" arithmetic; W8A8 keeps a few fp16)
        w_b = 1
    fc = check_fit(spec, target, weight_bytes_per_elem=w_b, compute_bytes=c_b, batch=batch, max_len=max_len,
                   prompt_len=seq_len, weight_copies=2 if layout == "two-graph" else 1, layout=layout,
                   group_size=group_size if quantize else None)
    if not fc.fits:
        raise fc.error(f"{src} ({spec.arch}, {spec.param_count() / 1e9:.2f} B params)")
    return fc


def check_split_memory_fit(src: Path, target, chips: int, device_ids=None, *, precision_mode: str,
                           weight_dtype: str, layout: str, batch: int, max_len: int, seq_len: int, spec=None,
                           quantize: str | None = None, group_size: int | None = None):
    """The per-chip fit check of a split (`convert --chips N`): a SplitFit whose chips carry
    the layer ranges and device ids; raises ModelDoesNotFitError naming the chip that does not
    fit, before anything is written. Bad --chips / --device-ids values raise ConfigError."""
    from ascend_adapt.estimate.core import spec_for
    from ascend_adapt.estimate.fit import check_split_fit

    spec = spec if spec is not None else spec_for(src)[0]
    w_b, c_b = card_bytes(precision_mode, weight_dtype)
    if quantize:
        w_b = 1
    sf = check_split_fit(spec, target, chips, device_ids, weight_bytes_per_elem=w_b, compute_bytes=c_b, batch=batch,
                         max_len=max_len, prompt_len=seq_len, weight_copies=2 if layout == "two-graph" else 1,
                         layout=layout, group_size=group_size if quantize else None)
    if not sf.fits:
        raise sf.error(f"{src} ({spec.arch}, {spec.param_count() / 1e9:.2f} B params)")
    return sf


# ------------------------------------------------------------------------------------- entry
def convert(source, out, *, soc: str, precision_mode: str | None = None, seq_len: int | None = None,
            max_len: int | None = None, batch: int = 1, input_shape: str | Mapping | None = None,
            gears: Sequence[Sequence[int]] | None = None, keep_dtype: Sequence[str] | str | None = None,
            cann_version: str | None = None, weight_dtype: str | None = None, layout: str | None = None,
            use_atc: str = "auto", verify: bool = True, verify_tokens: int = 16,
            force: bool = False, progress: bool = False, on_step: Callable[[str], None] | None = None,
            on_line: Callable[[str], None] | None = None, chips: int = 1,
            device_ids: Sequence[int] | str | None = None, quantize: str | None = None,
            group_size: int | None = None, calib: str | None = None, smooth_alpha: float | None = None,
            keep_fp16: str | None = None, accuracy: bool = True, accuracy_ppl: bool | None = None) -> ConvertReport:
    """Convert an HF checkpoint directory or an .onnx file for `soc`; see the module docstring.

    Args:
        source: HF model directory or .onnx file.
        out: output directory (must not exist unless `force`).
        soc: target name or soc_version (Ascend310P3, Ascend310, Ascend310B1, Ascend910B, …).
        precision_mode: the target toolchain's precision mode (ATC --precision_mode, MagicMind
            precision_config); None: the toolchain's default (force_fp16 for ATC, its inference
            default; force_float16 for MagicMind).
        seq_len, max_len, batch: LLM prefill length S (the largest prefill gear of a step-graph
            build; default min(512, M // 2)), KV-cache slots M (default min(2048, the model's
            maximum positions)), batch B. See `default_context`.
        input_shape: ONNX input: ATC --input_shape text or {name: dims} (-1 = gear-bound dim).
        gears: ONNX input: --dynamic_dims gears (one tuple per gear, a value per -1). HF input:
            prefill lengths; the LLM is then built as ONE step graph (decode = gear 1) compiled
            with --dynamic_dims into one OM, so the card holds one copy of the weights.
        keep_dtype: extra ops to keep in fp32 (node names / OpType::<Type>, or a file).
        cann_version: the CANN version to check opsets against (default: the target's).
        weight_dtype: LLM export weights ("float32" or "float16"); default: the dtype the card
            stores under `precision_mode` (`default_weight_dtype`: float16 for the fp16 modes,
            the checkpoint's dtype for must_keep_origin_dtype).
        layout: HF input: "step" (default: one step graph, prefill gears up to S plus the decode
            gear 1, one OM holding the weights once) or "two-graph" (prefill.onnx + decode.onnx,
            two OMs that each hold the weights).
        use_atc: "auto" (run the target's compiler, ATC or another toolchain's, when found),
            "never", "always" (fail without it).
        verify: run the verification against the golden.
        force: replace `out`.
        chips: HF input: split the layers over this many chips (`om_convert.split`): one stage
            graph and one OM per chip, each holding its layers' weights and KV cache (embedding
            on the first, head on the last); the fit check is then per chip. 1 (default): one chip.
        device_ids: the NPU of each chip ("0,1" or a list; default 0..chips-1).
        quantize: HF input: None, "w8a16" (int8 Linears, AscendAntiQuant) or "w8a8" (SmoothQuant,
            AscendQuant → int8 MatMul → AscendDequant); docs/quantization.md. The fit check then
            counts int8 Linear bytes + scales.
        group_size: w8a16 scales per group of input channels (None: per output channel).
        calib: w8a8 calibration set, "builtin" (default) or a prompts file.
        smooth_alpha: w8a8 SmoothQuant α (default "auto": searched per input group).
        keep_fp16: w8a8 keep-fp16 rule (`KeepRule.parse`; default: lm_head and the edge layers' down_proj).
        accuracy: with `quantize` and `verify`: the accuracy step after verify (`_accuracy_hf`).
        accuracy_ppl: its perplexity: None (default) when the checkpoint has real weights
            (`quant.accuracy.real_weights`), True / False always / never.

    Raises:
        ModelDoesNotFitError: (HF input) the model as it would be built needs more memory than a
            chip of `soc` has — raised from config.json before anything is written.
    """
    from ascend_adapt.targets import load_target

    src = Path(source)
    if not src.exists():
        raise ConfigError(f"{src}: no such file or directory",
                          "pass an HF model directory (with config.json) or an .onnx file")
    target = load_target(soc)
    from ascend_adapt.om_convert.toolchains import get_toolchain

    toolchain = get_toolchain(target)
    mode = toolchain.precision_mode(precision_mode, target)  # ATC: --precision_mode; MagicMind: precision_config
    if mode not in target.precision_modes:
        raise ConfigError(f"precision mode '{precision_mode or mode}' is not supported on {target.name}",
                          f"use one of: {', '.join(target.precision_modes)}")
    if isinstance(input_shape, str):
        input_shape = _parse_input_shape(input_shape)
    keep = _load_keep_dtype(keep_dtype)
    out = Path(out)
    check_output(out, force, inputs=[src])
    kind = "onnx" if src.is_file() else "hf"
    fit = split = None
    from ascend_adapt.om_convert.builder.quantize import check_quantize_options

    quantize = check_quantize_options(quantize, group_size, calib)
    if quantize != "w8a8" and (smooth_alpha is not None or keep_fp16 is not None):
        raise ConfigError("--smooth-alpha / --keep-fp16 apply to --quantize w8a8", "add --quantize w8a8, or drop them")
    if kind == "onnx" and quantize:
        raise ConfigError("--quantize applies to HF checkpoints (the weights are quantized as they stream)",
                          "convert the HF checkpoint directory with --quantize")
    if accuracy_ppl is not None and not quantize:
        raise ConfigError("--accuracy-ppl / --no-accuracy-ppl apply to the accuracy step of --quantize",
                          "add --quantize w8a16|w8a8, or drop the option")
    if quantize == "w8a8" and calib is not None and calib != "builtin" and not Path(calib).is_file():
        raise ConfigError(f"--calib: calibration file '{calib}' does not exist",
                          "pass a file of prompts, or --calib builtin")
    if isinstance(chips, bool) or not isinstance(chips, (int, np.integer)) or chips < 1:
        raise ConfigError(f"--chips {chips!r}: the number of chips must be a positive integer",
                          "pass --chips 1 (one chip, the default) or the chips to split the layers over, e.g. 2")
    if kind == "onnx" and (chips != 1 or device_ids):
        raise ConfigError("--chips / --device-ids split an HF checkpoint's layers; an ONNX file is converted whole",
                          "convert the HF checkpoint directory with --chips N")
    # what the target's toolchain cannot compile (an input kind, a split, --keep-dtype) is refused
    # here, naming the target, the toolchain and what to do, before anything is written
    toolchain.check_request(target, kind=kind, chips=int(chips), keep_dtype=keep)
    if kind == "hf":
        from ascend_adapt.estimate.core import spec_for

        if input_shape:
            raise ConfigError("--input-shape applies to ONNX input; for an HF checkpoint use --seq-len "
                              "(prefill length), --max-len (KV-cache slots) or --gears (prefill lengths)")
        if layout not in (None, *LAYOUTS):
            raise ConfigError(f"unknown layout '{layout}'", f"use one of: {', '.join(LAYOUTS)}")
        if gears and layout == "two-graph":
            raise ConfigError("--gears builds the step-graph layout; it cannot be combined with --layout two-graph",
                              "drop --gears (the two-graph layout has one static prefill length, --seq-len)")
        layout = layout or "step"
        t_fit = time.perf_counter()
        spec, _ = spec_for(src)
        max_len, seq_len = default_context(spec, max_len, seq_len)
        src_dtype = source_dtype(src)
        weight_dtype = weight_dtype or default_weight_dtype(mode, src_dtype)
        flat = _prefill_gears(gears)
        if layout == "step" and not flat:
            flat = default_gears(seq_len, target)
        prompt = max(flat) if flat else seq_len
        # the fit check from the spec, in seconds, before any byte is written
        if chips == 1 and device_ids:
            raise ConfigError(f"--device-ids {device_ids}: device ids place the chips of a split (--chips N, N > 1)",
                              "drop --device-ids for one chip (the runtime picks the device), or pass --chips N")
        if chips == 1:
            fit = check_memory_fit(src, target, precision_mode=mode, weight_dtype=weight_dtype, layout=layout,
                                   batch=batch, max_len=max_len, seq_len=prompt, spec=spec, quantize=quantize,
                                   group_size=group_size)
        else:  # the per-chip fit of the split, before anything is written
            fit = split = check_split_memory_fit(src, target, int(chips), device_ids, precision_mode=mode,
                                                 weight_dtype=weight_dtype, layout=layout, batch=batch,
                                                 max_len=max_len, seq_len=prompt, spec=spec, quantize=quantize,
                                                 group_size=group_size)
        t_fit = time.perf_counter() - t_fit
    elif layout is not None:
        raise ConfigError("--layout applies to HF checkpoints", "for an ONNX file use --input-shape and --gears")
    report = ConvertReport(source=str(src), kind=kind, target=target.name, soc_version=target.soc_version,
                           precision_mode=mode, out=str(out))
    with atomic_output(out, force=force, is_dir=True, inputs=[src]) as tmp:
        report_out = report.out
        if kind == "hf":
            report.steps.append({"step": "fit", "summary": fit.summary(), "seconds": round(t_fit, 3), "fit": fit.to_dict()})
            if on_step:
                on_step(f"[fit] {fit.summary()}")
            _convert_hf(report, src, tmp, target, precision_mode=mode, seq_len=seq_len, max_len=max_len,
                        batch=batch, keep_dtype=keep, weight_dtype=weight_dtype, use_atc=use_atc, verify=verify,
                        verify_tokens=verify_tokens, progress=progress, on_step=on_step, on_line=on_line,
                        gears=flat, cann_version=cann_version, src_dtype=src_dtype,
                        num_params=spec.param_count(), split=split,
                        quant={"quantize": quantize, "group_size": group_size, "calib": calib,
                               "smooth_alpha": smooth_alpha, "keep_fp16": keep_fp16} if quantize else None,
                        toolchain=toolchain,
                        accuracy={"mode": quantize, "ppl": accuracy_ppl} if quantize and accuracy else None)
        else:
            _convert_onnx(report, src, tmp, target, precision_mode=mode, input_shape=input_shape or {},
                          gears=gears, keep_dtype=keep, cann_version=cann_version, use_atc=use_atc,
                          verify=verify, on_step=on_step, on_line=on_line, toolchain=toolchain)
        report.out = report_out
        (tmp / MANIFEST).write_text(json.dumps({
            "format": "ascend-adapt convert 1", "kind": kind, "source": str(src.resolve()),
            "target": target.name, "soc_version": target.soc_version, "precision_mode": mode,
            "omsim": OMSIM, "om": report.artifact.get("om", {}), "export": "export" if kind == "hf" else None,
            "model": "model.onnx" if kind == "onnx" else None,
            **({"chips": len(split.chips), "device_ids": split.device_ids,
                "layers": [list(c.layers) for c in split.chips]} if split else {})}, indent=2))
        (tmp / "convert_report.json").write_text(json.dumps(report.to_dict(), indent=2, default=_jsonable))
        (tmp / "convert_report.txt").write_text(report.to_text() + "\n")
    return report


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def resolve_artifact(path, backend: str) -> Path:
    """The path a backend should load for `path`: a convert output directory maps to its parts.

    sim → OUT/model.omsim; onnxruntime → OUT/export; acl → OUT (the .om files); torch → the
    source checkpoint recorded in convert.json. Any other path is returned unchanged. Each
    backend package says where its part is (`ascend_adapt.backends`, `Backend.locate`).
    """
    from ascend_adapt.backends import convert_output_path

    return convert_output_path(path, backend)[0]
