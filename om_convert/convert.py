"""`ascend-adapt convert`: HF checkpoint or ONNX → OM (with ATC) or simulator artifact, verified.

Steps, each reported:
1. **export** — an HF checkpoint directory is built into static prefill / decode ONNX graphs
   (`om_convert.builder`); an `.onnx` file is taken as it is.
2. **analyze** — every op against the target's ATC table (`om_convert.analyze`).
3. **rewrite** — for ONNX files we did not build, the registered rewrite rules
   (`operators.rewrites`) until the graph is accepted; a graph still refused stops here, naming
   the ops.
4. **compile** — the exact `atc` command per graph (always written as a script under `atc/`);
   with `atc` on PATH (or `ASCEND_TOOLKIT_HOME`) it runs and writes `<graph>.om`; without it, the
   simulator artifact `model.omsim` (never named `.om`), checked for acceptance like ATC.
5. **verify** — the artifact on the simulator (or the card) against the fp32 golden on sample
   inputs: max |Δ|, cosine per output and per layer, greedy-token parity for LLMs, and the
   simulated per-token latency on the target.
6. **report** — `convert_report.json` and `convert_report.txt` in the output directory.

Output directory layout (written under a temporary name, renamed when complete):

    OUT/convert.json          what was converted, how; read by `generate` / `run` / `compare`
    OUT/export/               prefill.onnx, decode.onnx, weights.bin, export.json (HF input)
    OUT/model.onnx            the rewritten graph (ONNX input)
    OUT/atc/                  <graph>.sh (exact atc commands), keep_dtype files, ATC logs
    OUT/<graph>.om            ATC's output, when ATC ran
    OUT/model.omsim/          the simulator artifact (always: it is what `--backend sim` runs)
    OUT/config.json, tokenizer files (HF input), convert_report.{json,txt}
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

    @property
    def passed(self) -> bool:
        return bool(self.verify.get("passed", False))

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("source", "kind", "target", "soc_version", "precision_mode", "out",
                                               "steps", "analysis", "rewrite", "atc", "artifact", "verify")} | {
            "passed": self.passed}

    def to_text(self) -> str:
        v, a = self.verify, self.artifact
        lines = [f"convert {self.source} -> {self.out}",
                 f"  target {self.target} (soc_version {self.soc_version}), precision_mode {self.precision_mode}"]
        for s in self.steps:
            lines.append(f"  [{s['step']:<8}] {s['summary']}  ({s['seconds']:.1f} s)")
        if self.atc.get("commands"):
            lines.append("  atc commands, run in the output directory (also in atc/*.sh):")
            lines += [f"    {c}" for c in self.atc["commands"].values()]
        if a.get("simulated"):
            lines.append(f"  artifact: {a.get('omsim')} (simulated: no ATC on this machine)")
        for g, om in (a.get("om") or {}).items():
            lines.append(f"  artifact: {om} (built by ATC)")
        if v:
            lines.append(f"  verify ({v.get('runner', '?')} vs {v.get('golden', '?')}): "
                         f"{'PASSED' if v.get('passed') else 'FAILED'} — {v.get('summary', '')}")
        return "\n".join(lines)


def _metrics(name: str, ref, got) -> dict:
    """max |Δ|, cosine, min passing atol and non-finite counts (ascend_adapt.compare.metrics)."""
    from ascend_adapt.compare.metrics import tensor_stats

    st = tensor_stats(name, ref, got, atol=0.0, rtol=0.0)
    d = st.to_dict()
    d["finite"] = st.nonfinite_got == 0 and st.nonfinite_mismatch == 0
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


def _atc_options(model: Path, output: Path, target, precision_mode: str, keep_file: Path | None,
                 input_shape: Mapping[str, Sequence[int]], dynamic_dims: Sequence[Sequence[int]] | None = None,
                 log: str = "error"):
    from ascend_adapt.om_convert.atc import AtcOptions

    kw: dict[str, Any] = dict(framework=5, model=str(model), output=str(output), soc_version=target.soc_version,
                              input_format="ND", input_shape={k: tuple(v) for k, v in input_shape.items()},
                              precision_mode=precision_mode, log=log)
    if keep_file is not None and precision_mode != "must_keep_origin_dtype":
        kw["keep_dtype"] = str(keep_file)
    if dynamic_dims:
        kw["dynamic_dims"] = tuple(tuple(int(x) for x in g) for g in dynamic_dims)
    return AtcOptions(**kw)


def _compile(report: ConvertReport, out: Path, graphs: Mapping[str, Path], options: Mapping[str, Any],
             use_atc: str, on_line: Callable[[str], None] | None) -> dict[str, Path]:
    """Write every atc script; run ATC when asked / available. Returns {graph: .om path}."""
    from ascend_adapt.om_convert.atc import find_atc, run_atc, validate, write_atc_script
    from ascend_adapt.om_convert.atc.driver import script_options

    atc_dir = out / "atc"
    atc_dir.mkdir(exist_ok=True)
    commands, oms = {}, {}
    atc = find_atc() if use_atc != "never" else None
    if use_atc == "always" and atc is None:
        raise UnsupportedError("--atc always: no 'atc' found on PATH or under $ASCEND_TOOLKIT_HOME",
                               "source CANN's set_env.sh first, or drop --atc always to build the simulator artifact")
    for name, opts in options.items():
        validate(opts)
        write_atc_script(opts, atc_dir / f"{name}.sh")
        commands[name] = script_options(opts, out).to_command()  # paths relative to OUT
    report.atc = {"found": atc, "commands": commands, "scripts": {n: f"atc/{n}.sh" for n in options}}
    if atc is not None:
        for name, opts in options.items():
            res = run_atc(opts, log_path=atc_dir / f"{name}.log", on_line=on_line, atc=atc, script=False)
            oms[name] = Path(res.om_path)
        report.atc["ran"] = True
    else:
        report.atc["ran"] = False
    return oms


# ----------------------------------------------------------------------------------------- HF
def _convert_hf(report: ConvertReport, src: Path, out: Path, target, *, precision_mode: str, seq_len: int,
                max_len: int, batch: int, keep_dtype: list[str], weight_dtype: str, use_atc: str,
                verify: bool, verify_tokens: int, progress: bool, on_step, on_line,
                gears: Sequence[int] | None = None, cann_version: str | None = None) -> None:
    from ascend_adapt.om_convert.analyze import analyze_model
    from ascend_adapt.om_convert.artifact import omsim_from_export
    from ascend_adapt.om_convert.builder import build_llm_onnx
    from ascend_adapt.om_convert.builder.contract import graph_input_shapes
    from ascend_adapt.operators.rewrites import write_keep_dtype

    t0 = time.perf_counter()
    exp = out / "export"
    from ascend_adapt.om_convert.builder.llm import MIN_OPSET

    # the highest opset this CANN parses, up to 17 (LayerNormalization is fused from 17)
    opset = min(17, target.max_opset(cann_version))
    if opset < MIN_OPSET:
        raise UnsupportedError(f"{target.name} with CANN {cann_version} parses ONNX opsets up to {opset}; "
                               f"the LLM builder needs ≥ {MIN_OPSET}", "use CANN 6.0 or newer")
    res = build_llm_onnx(src, exp, batch=batch, seq_len=seq_len, max_len=max_len, target=target, opset=opset,
                         weight_dtype=weight_dtype, progress=progress, gears=gears)
    graphs = dict(res.paths)
    shape_doc = (f"step.onnx with gears {res.manifest['gears']} (decode = 1; one OM, weights loaded once)"
                 if res.manifest.get("gears") else f"prefill.onnx + decode.onnx (S={seq_len})")
    _step(report, "export", t0,
          f"{shape_doc}, B={batch}, M={max_len}; {res.num_tensors} weights "
          f"{res.weights_bytes / 2**20:.1f} MiB in weights.bin, ops: {', '.join(res.op_types)}", on_step)

    t0 = time.perf_counter()
    analyses = {k: analyze_model(p, target, cann_version, rules=False,
                                 input_shapes={n: [int(x) for x in d] for n, d in
                                               graph_input_shapes(res.manifest, k)[0].items()}
                                 if k != "step" else None)
                for k, p in graphs.items()}
    report.analysis = {k: {"accepted": a.accepted_as_is, "blocking": a.blocking, "nodes": a.node_count}
                       for k, a in analyses.items()}
    refused = {k: a.blocking for k, a in analyses.items() if not a.accepted_as_is}
    if refused:
        raise UnsupportedError(
            f"{target.name} refuses the built graphs: " + "; ".join(f"{k}: {', '.join(b)}" for k, b in refused.items()),
            "the builder should only emit supported ops for this target: report it with `ascend-adapt analyze`")
    _step(report, "analyze", t0, f"{' and '.join(graphs)} accepted by {target.name} as built "
          f"({sum(a.node_count for a in analyses.values())} nodes)", on_step)
    report.rewrite = {"rules": "not needed: the graphs are built for the target"}

    t0 = time.perf_counter()
    manifest = res.manifest
    options = {}
    for kind, path in graphs.items():
        keep = list(manifest.get("keep_dtype", {}).get(kind, [])) + keep_dtype
        keep_file = out / "atc" / f"keep_dtype_{kind}.cfg"
        keep_file.parent.mkdir(exist_ok=True)
        write_keep_dtype(keep_file, keep)
        shapes, dims = graph_input_shapes(manifest, kind, target.soc_version)
        options[kind] = _atc_options(path, out / kind, target, precision_mode, keep_file, shapes, dims)
    oms = _compile(report, out, graphs, options, use_atc, on_line)
    omsim_from_export(exp, out / OMSIM, target, atc_options=options)
    report.artifact = {"omsim": OMSIM, "simulated": not oms, "om": {k: p.name for k, p in oms.items()},
                       "graphs": list(graphs)}
    _step(report, "compile", t0, (f"ATC built {', '.join(p.name for p in oms.values())}" if oms else
                                  f"no ATC here: wrote {OMSIM} (simulated) and atc/*.sh to run on a CANN host"),
          on_step)
    for f in src.iterdir():  # config + tokenizer beside the artifacts, for generate/run
        if f.is_file() and f.suffix in (".json", ".model", ".txt") and not f.name.endswith(".index.json"):
            shutil.copy2(f, out / f.name)
    if verify:
        t0 = time.perf_counter()
        report.verify = verify_llm(src, out / OMSIM, n_tokens=verify_tokens)
        _step(report, "verify", t0, report.verify["summary"], on_step)


def verify_llm(golden_dir, omsim, *, n_tokens: int = 16, prompt: str | None = None, min_cosine: float = 0.999,
               precision_mode: str | None = None, keep_dtype: Any = "export") -> dict:
    """Golden (torch fp32) vs the simulator: prefill logits and layers, greedy parity, cost.

    Passes when the greedy tokens are identical, or (for fp16 modes, where the card itself may
    flip a near-tie) when every layer's cosine ≥ `min_cosine`.
    """
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer
    from ascend_adapt.runtime.backends import get_backend
    from ascend_adapt.runtime.generate import greedy_tokens

    golden = get_backend("torch", golden_dir)
    # an override keeps the export's fp32 islands (RMSNorm / LayerNorm / softmax), as convert passes them to ATC
    sim = get_backend("sim", omsim, **({"precision_mode": precision_mode, "keep_dtype": keep_dtype}
                                       if precision_mode else {}))
    tok = load_tokenizer(golden_dir)
    text = prompt or ("你好" if golden.spec.arch == "chatglm" else "Hello world")
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
    same = bool(np.array_equal(g_tok, s_tok))
    first_diff = None if same else int(np.argmax(g_tok[0] != s_tok[0]))
    min_cos = min((r["cosine"] for r in layers), default=float("nan"))
    logit_m = _metrics("logits", g_logits, s_logits)
    cost = sim.cost_summary()
    bad = [r["name"] for r in layers if r["nonfinite"]]
    passed = (same or min_cos >= min_cosine) and logit_m["finite"] and not bad
    nonfinite = (f"NON-FINITE values (inf/NaN) in {', '.join(bad)} — fp16 overflow? try "
                 "`ascend-adapt compare --layerwise` and --keep-dtype; " if bad else "")
    summary = (f"{nonfinite}greedy tokens {'identical' if same else f'differ from step {first_diff}'} over {n} steps; "
               f"logits max|Δ| {logit_m['max_abs']:.3g} (finite part), min layer cosine {min_cos:.6f}; "
               f"simulated {cost['decode_ms_per_token']:.3f} ms/token on {cost['target']} "
               f"({cost['precision_mode']})")
    sim.close()
    return {"runner": f"sim ({cost['precision_mode']}, simulated)", "golden": "torch fp32", "prompt": text,
            "prompt_ids": ids[0].tolist(), "golden_tokens": g_tok[0].tolist(), "sim_tokens": s_tok[0].tolist(),
            "tokens_identical": same, "first_token_difference": first_diff, "logits": logit_m, "layers": layers,
            "min_layer_cosine": min_cos, "cost": cost, "passed": passed, "summary": summary}


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
                  on_step, on_line) -> None:
    import onnx

    from ascend_adapt.om_convert.analyze import analyze_model
    from ascend_adapt.om_convert.artifact import write_omsim
    from ascend_adapt.operators.rewrites import apply_rules, write_keep_dtype

    t0 = time.perf_counter()
    try:
        model = onnx.load(str(src))
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError / OSError / ValueError
        raise ConfigError(f"{src}: not a readable ONNX model ({type(exc).__name__}: {exc})",
                          "check the file; external data must sit beside it") from None
    static = {k: v for k, v in input_shape.items() if all(d > 0 for d in v)}
    before = analyze_model(model, target, cann_version, rules=False, input_shapes=static or None)
    _step(report, "analyze", t0, f"{before.node_count} nodes, "
          f"{'accepted as is' if before.accepted_as_is else 'blocked: ' + '; '.join(before.blocking[:4])}", on_step)

    t0 = time.perf_counter()
    model, rw = apply_rules(model, target, input_shapes=static or None, cann_version=cann_version)
    fired = {k: v for k, v in rw.fired.items() if v}
    after = analyze_model(model, target, cann_version, rules=False, input_shapes=static or None)
    report.analysis = {"before": {"accepted": before.accepted_as_is, "blocking": before.blocking},
                       "after": {"accepted": after.accepted_as_is, "blocking": after.blocking}}
    report.rewrite = {"fired": fired, "report": rw.to_dict()}
    if not after.accepted_as_is:
        raise UnsupportedError(
            f"{src.name}: {target.name} would still refuse the graph after the rewrite rules: "
            + "; ".join(after.blocking[:6]),
            "run `ascend-adapt analyze` for details, `ascend-adapt debug reduce` to isolate the op, "
            "or add a rewrite rule (docs/rewrite_rules.md)")
    onnx_path = out / "model.onnx"
    big = model.ByteSize() > 1_500_000_000
    onnx.save(model, str(onnx_path), save_as_external_data=big, location="model.onnx.data" if big else None)
    _step(report, "rewrite", t0, (f"rules fired: {', '.join(f'{k}×{v}' for k, v in fired.items())}" if fired
                                  else "no rule needed") + f"; accepted by {target.name}", on_step)

    t0 = time.perf_counter()
    keep_file = None
    if keep_dtype:
        keep_file = out / "atc" / "keep_dtype.cfg"
        keep_file.parent.mkdir(exist_ok=True)
        write_keep_dtype(keep_file, keep_dtype)
    shapes = dict(input_shape)
    if not shapes:
        shapes = {i.name: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim)
                  for i in model.graph.input}
    opts = _atc_options(onnx_path, out / "model", target, precision_mode, keep_file, shapes, gears)
    oms = _compile(report, out, {"model": onnx_path}, {"model": opts}, use_atc, on_line)
    write_omsim(out / OMSIM, {"model": onnx_path}, target, opts)
    report.artifact = {"omsim": OMSIM, "simulated": not oms, "om": {k: p.name for k, p in oms.items()},
                       "graphs": ["model"]}
    _step(report, "compile", t0, (f"ATC built {', '.join(p.name for p in oms.values())}" if oms else
                                  f"no ATC here: wrote {OMSIM} (simulated) and atc/model.sh"), on_step)
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
    outputs = {k: _metrics(k, a[k], b[k]) for k in a
               if np.asarray(a[k]).dtype.kind == "f"}
    worst = min((m["cosine"] for m in outputs.values()), default=1.0)
    bad = [k for k, m in outputs.items() if not m["finite"]]
    passed = not bad and worst >= min_cosine
    summary = ((f"NON-FINITE values (inf/NaN) in {', '.join(bad)}; " if bad else "")
               + f"{len(outputs)} outputs, min cosine {worst:.6f}, max|Δ| "
               f"{max((m['max_abs'] for m in outputs.values()), default=0):.3g}"
               + (f"; simulated {sim_ms:.3f} ms per inference" if sim_ms is not None else ""))
    return {"runner": f"sim ({precision}, simulated)", "golden": "onnxruntime fp32", "outputs": outputs,
            "passed": passed, "summary": summary}


# ------------------------------------------------------------------------------------- entry
def convert(source, out, *, soc: str, precision_mode: str = "force_fp16", seq_len: int = 32, max_len: int = 96,
            batch: int = 1, input_shape: str | Mapping | None = None, gears: Sequence[Sequence[int]] | None = None,
            keep_dtype: Sequence[str] | str | None = None, cann_version: str | None = None,
            weight_dtype: str = "float32", use_atc: str = "auto", verify: bool = True, verify_tokens: int = 16,
            force: bool = False, progress: bool = False, on_step: Callable[[str], None] | None = None,
            on_line: Callable[[str], None] | None = None) -> ConvertReport:
    """Convert an HF checkpoint directory or an .onnx file for `soc`; see the module docstring.

    Args:
        source: HF model directory or .onnx file.
        out: output directory (must not exist unless `force`).
        soc: target name or soc_version (Ascend310P3, Ascend310, Ascend310B1, Ascend910B, …).
        precision_mode: ATC --precision_mode (force_fp16 is ATC's inference default).
        seq_len, max_len, batch: LLM prefill length S, KV-cache slots M, batch B.
        input_shape: ONNX input: ATC --input_shape text or {name: dims} (-1 = gear-bound dim).
        gears: ONNX input: --dynamic_dims gears (one tuple per gear, a value per -1). HF input:
            prefill lengths; the LLM is then built as ONE step graph (decode = gear 1) compiled
            with --dynamic_dims into one OM, so the card holds one copy of the weights.
        keep_dtype: extra ops to keep in fp32 (node names / OpType::<Type>, or a file).
        cann_version: the CANN version to check opsets against (default: the target's).
        weight_dtype: LLM export weights ("float32" or "float16").
        use_atc: "auto" (use ATC when found), "never", "always".
        verify: run the verification against the golden.
        force: replace `out`.
    """
    from ascend_adapt.sim.settings import normalize_precision_mode
    from ascend_adapt.targets import load_target

    src = Path(source)
    if not src.exists():
        raise ConfigError(f"{src}: no such file or directory",
                          "pass an HF model directory (with config.json) or an .onnx file")
    target = load_target(soc)
    mode = normalize_precision_mode(precision_mode)
    if mode not in target.precision_modes:
        raise ConfigError(f"precision mode '{precision_mode}' is not supported on {target.name}",
                          f"use one of: {', '.join(target.precision_modes)}")
    if isinstance(input_shape, str):
        input_shape = _parse_input_shape(input_shape)
    keep = _load_keep_dtype(keep_dtype)
    out = Path(out)
    check_output(out, force)
    kind = "onnx" if src.is_file() else "hf"
    report = ConvertReport(source=str(src), kind=kind, target=target.name, soc_version=target.soc_version,
                           precision_mode=mode, out=str(out))
    with atomic_output(out, force=force, is_dir=True) as tmp:
        report_out = report.out
        if kind == "hf":
            if input_shape:
                raise ConfigError("--input-shape applies to ONNX input; for an HF checkpoint use --seq-len "
                                  "(prefill length), --max-len (KV-cache slots) or --gears (prefill lengths)")
            flat = [int(g[0]) if isinstance(g, (tuple, list)) else int(g) for g in gears] if gears else None
            _convert_hf(report, src, tmp, target, precision_mode=mode, seq_len=seq_len, max_len=max_len,
                        batch=batch, keep_dtype=keep, weight_dtype=weight_dtype, use_atc=use_atc, verify=verify,
                        verify_tokens=verify_tokens, progress=progress, on_step=on_step, on_line=on_line,
                        gears=flat, cann_version=cann_version)
        else:
            _convert_onnx(report, src, tmp, target, precision_mode=mode, input_shape=input_shape or {},
                          gears=gears, keep_dtype=keep, cann_version=cann_version, use_atc=use_atc,
                          verify=verify, on_step=on_step, on_line=on_line)
        report.out = report_out
        (tmp / MANIFEST).write_text(json.dumps({
            "format": "ascend-adapt convert 1", "kind": kind, "source": str(src.resolve()),
            "target": target.name, "soc_version": target.soc_version, "precision_mode": mode,
            "omsim": OMSIM, "om": report.artifact.get("om", {}), "export": "export" if kind == "hf" else None,
            "model": "model.onnx" if kind == "onnx" else None}, indent=2))
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
    source checkpoint recorded in convert.json. Any other path is returned unchanged.
    """
    p = Path(path)
    m = p / MANIFEST
    if not m.is_file():
        return p
    info = json.loads(m.read_text())
    if backend == "sim":
        return p / info["omsim"]
    if backend == "onnxruntime" and info.get("export"):
        return p / info["export"]
    if backend == "torch":
        return Path(info["source"])
    return p
