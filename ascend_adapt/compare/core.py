"""`compare(a, b)`: run two artifacts on the same inputs and compare them, Polygraphy style.

For every output (and with `layerwise` every intermediate tensor matched by name) it reports
max / mean absolute error, max relative error, cosine similarity, p90 / p99 of the absolute
error, the minimum atol and rtol that would have passed, the first tensor (and layer) that
diverges, and PASSED / FAILED with the full command. `a` is the reference. Without atol / rtol
the tolerance of each tensor is derived (`tolerance`: the sides' compute dtypes, the model's spec,
the tensor's depth) at LM level; graph level keeps `DEFAULT_ATOL` / `DEFAULT_RTOL`.

When the comparison fails at graph level and one side is the simulator in a reduced precision
(force_fp16, mixed, ...) while the other is an fp32 run of the same graph, the failure is
diagnosed as an fp16 range / precision problem where it is one (`fp16fix`): the ops to keep in
fp32 are proposed, `keep_dtype.cfg` / `modify_mixlist.json` are written and the simulator
re-checks the graph with them. An LM-level comparison against an `.omsim` does the same on the
artifact's prefill graph with the feeds the host built.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ascend_adapt.errors import ConfigError

from .fp16fix import FixProposal, propose_fix
from .metrics import TensorStats, layer_of, tensor_stats
from .sources import GraphSide, LMSide, compare_level, graph_feeds, parse_spec
from .tolerance import DEFAULT_ATOL, DEFAULT_RTOL, tensor_tolerance


@dataclass
class CompareReport:
    """Result of `compare`.

    Attributes:
        a, b: the sides as given (a = reference).
        label_a, label_b: the runners used. precision_a, precision_b: how each side computed.
        level: "graph" or "lm". atol, rtol: the tolerances of the outputs (logits); each tensor's
            own are in its stats (`TensorStats.atol` / `.rtol`).
        tolerance: where they came from ("given", "derived: fp16 compute vs fp32, 2 layers: ...",
            or the default and why).
        outputs: stats per compared output (graph outputs, or logits).
        tensors: stats per matched intermediate tensor (layerwise), in execution order.
        first_divergent: the first tensor (in order) outside the tolerance; None when all pass.
        first_divergent_layer: the layer it belongs to ("layers.3").
        passed: every compared tensor within tolerance.
        only_in_a / only_in_b: layerwise names present on one side only.
        min_atol / min_rtol: the tolerances every compared tensor would have passed with.
        inputs: what was fed (names and shapes, or the token ids).
        fix: the fp16 diagnosis and re-check, when one ran.
        command: the full command line (CLI) or the call (library).
        plot: the PNG written, if any.
    """

    a: str
    b: str
    label_a: str
    label_b: str
    precision_a: str
    precision_b: str
    level: str
    atol: float
    rtol: float
    layerwise: bool
    outputs: list[TensorStats]
    tensors: list[TensorStats]
    first_divergent: str | None
    first_divergent_layer: str | None
    passed: bool
    only_in_a: list[str]
    only_in_b: list[str]
    min_atol: float
    min_rtol: float
    inputs: dict
    fix: FixProposal | None = None
    command: str = ""
    plot: str | None = None
    notes: list[str] = field(default_factory=list)
    tolerance: str = ""

    def per_layer(self) -> list[tuple[str, float, float]]:
        """(layer, max abs error, min cosine) per layer in order (layerwise tensors grouped)."""
        rows: dict[str, list[float]] = {}
        for s in self.tensors or self.outputs:
            lay = layer_of(s.name)
            r = rows.setdefault(lay, [0.0, 1.0])
            r[0] = max(r[0], s.max_abs if math.isfinite(s.max_abs) else float("inf"))
            r[1] = min(r[1], s.cosine if math.isfinite(s.cosine) else 0.0)
        return [(k, v[0], v[1]) for k, v in rows.items()]

    def to_dict(self) -> dict:
        def f(x):
            return x if (not isinstance(x, float) or math.isfinite(x)) else str(x)

        return {
            "a": self.a, "b": self.b, "label_a": self.label_a, "label_b": self.label_b,
            "precision_a": self.precision_a, "precision_b": self.precision_b, "level": self.level,
            "atol": self.atol, "rtol": self.rtol, "tolerance": self.tolerance, "layerwise": self.layerwise,
            "passed": self.passed, "verdict": "PASSED" if self.passed else "FAILED",
            "min_atol": f(self.min_atol), "min_rtol": f(self.min_rtol),
            "first_divergent": self.first_divergent, "first_divergent_layer": self.first_divergent_layer,
            "outputs": [s.to_dict() for s in self.outputs], "tensors": [s.to_dict() for s in self.tensors],
            "per_layer": [{"layer": k, "max_abs": f(m), "min_cosine": f(c)} for k, m, c in self.per_layer()],
            "only_in_a": self.only_in_a, "only_in_b": self.only_in_b, "inputs": self.inputs,
            "fix": None if self.fix is None else self.fix.to_dict(), "command": self.command,
            "plot": self.plot, "notes": self.notes,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# ------------------------------------------------------------------------------------ inputs
def load_inputs(inputs: Any) -> Any:
    """`inputs` as given: None, a dict of arrays, an .npz / .npy path, or token ids "1,2,3"."""
    if inputs is None or isinstance(inputs, Mapping):
        return inputs
    if isinstance(inputs, (list, tuple, np.ndarray)):
        return np.asarray(inputs)
    s = str(inputs)
    p = Path(s)
    if p.suffix == ".npz" and p.is_file():
        with np.load(p) as z:
            return {k: z[k] for k in z.files}
    if p.suffix == ".npy" and p.is_file():
        return np.load(p)
    try:
        return np.array([[int(t) for t in s.replace(" ", "").split(",") if t]], dtype=np.int64)
    except ValueError:
        raise ConfigError(f"compare: cannot read --inputs '{s}'",
                          "give an .npz (arrays by input name), an .npy of token ids, or ids like 1,15,27") from None


def _lm_inputs(sides, inputs, seed: int):
    batch, lens, vocab, spec = 1, [], None, None
    for s in sides:
        if getattr(s.backend, "batch", None):
            batch = int(s.backend.batch)
        if s.prefill_len:
            lens.append(int(s.prefill_len))
        if s.model_spec is not None:
            vocab, spec = s.model_spec.vocab_size, s.model_spec
    if isinstance(inputs, Mapping):
        ids = np.asarray(inputs["input_ids"], np.int64)
        mask = inputs.get("attention_mask")
        return ids, (None if mask is None else np.asarray(mask, np.int64))
    if inputs is not None:
        ids = np.asarray(inputs, np.int64)
        ids = ids[None] if ids.ndim == 1 else ids
        if ids.shape[0] == 1 and batch > 1:
            ids = np.repeat(ids, batch, 0)
        return ids, None
    n = min([8] + lens)
    rng = np.random.default_rng(seed)
    lo = 3 if (vocab or 0) > 8 else 0  # skip unk/bos/eos of Llama-style vocabularies
    ids = rng.integers(lo, vocab or 32, size=(batch, n)).astype(np.int64)
    suffix = spec.position_scheme.prompt_suffix(spec) if spec is not None else ()
    if suffix:  # the tokens the model's prompts end with (ChatGLM-6B: [gMASK] <sop>)
        ids[:, -len(suffix):] = suffix
    return ids, None


# ------------------------------------------------------------------------------------ compare
def _compare_dicts(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], order, outputs,
                   atol: float, rtol: float, layerwise: bool, tol=None):
    """Stats of the outputs (and with `layerwise` of every matched tensor). `tol(name)` gives a
    tensor's (atol, rtol) where they differ per tensor (derived), else `atol` / `rtol` apply."""
    tol = tol or (lambda n: (atol, rtol))
    out_stats = [tensor_stats(n, ref[n], got[n], *tol(n)) for n in outputs if n in ref and n in got]
    tens = []
    only_a, only_b = [], []
    if layerwise:
        names = [n for n in order if n in ref]
        names += [n for n in ref if n not in set(names)]
        for n in names:
            if n not in got:
                only_a.append(n)
                continue
            ra, gb = ref[n], got[n]
            if not (np.issubdtype(np.asarray(ra).dtype, np.number) and np.issubdtype(np.asarray(gb).dtype, np.number)):
                continue
            tens.append(out_stats[[s.name for s in out_stats].index(n)] if n in outputs and n in
                        [s.name for s in out_stats] else tensor_stats(n, ra, gb, *tol(n)))
        only_b = [n for n in got if n not in ref]
    return out_stats, tens, only_a, only_b


def _summary(outs, tens):
    allst = tens or outs
    first = next((s for s in allst if not s.passed), None)
    passed = all(s.passed for s in outs) and all(s.passed for s in tens)
    min_atol = max((s.min_atol for s in allst), default=0.0)
    min_rtol = max((s.min_rtol for s in allst), default=0.0)
    return first, passed, min_atol, min_rtol


def compare(a: str | os.PathLike, b: str | os.PathLike, *, inputs: Any = None, atol: float | None = None,
            rtol: float | None = None, layerwise: bool = False, target: str | None = None,
            precision_mode: str | None = None, keep_dtype=None, seed: int = 0, fix: bool = True,
            fix_dir: str | os.PathLike | None = None, command: str = "", plot: str | os.PathLike | None = None,
            dtype: str = "float32") -> CompareReport:
    """Compare artifact `b` against the reference `a` on the same inputs.

    Args:
        a, b: artifacts (see `sources` for what each can be).
        inputs: None (deterministic random), a dict / .npz of arrays by input name, or token ids
            (LM level: "1,15,27", a list, or an .npy).
        atol, rtol: pass when |b − a| ≤ atol + rtol·|a| everywhere. None (default): derived per
            tensor at LM level from the two sides' compute precisions, the model's spec and the
            tensor's depth (`tolerance`); at graph level, or where a side's precision has no
            derivation (quantized, unknown), `DEFAULT_ATOL` / `DEFAULT_RTOL` (1e-3). A given one
            replaces the derived one for every tensor.
        layerwise: also compare every intermediate tensor matched by name (graph level: every
            node output; LM level: embed, layers.{i}, final_norm, logits).
        target: simulator target for `sim:FILE.onnx` sides (an .omsim names its own).
        precision_mode / keep_dtype: override the simulator side's precision settings.
        seed: seed of the random inputs.
        fix: diagnose an fp16-only failure and re-check with the proposed keep_dtype.
        fix_dir: where to write keep_dtype.cfg / modify_mixlist.json (default: beside b).
        command: the command line to echo in the report.
        plot: write a PNG of the error per layer here.
        dtype: compute dtype of torch / MindSpore sides.

    Returns:
        CompareReport.
    """
    sa, sb = parse_spec(os.fspath(a)), parse_spec(os.fspath(b))
    level = compare_level(sa, sb)
    loaded = load_inputs(inputs)
    notes: list[str] = []
    both = dict(atol=atol, rtol=rtol, layerwise=layerwise, fix=fix, fix_dir=fix_dir, notes=notes)
    if level == "graph":
        found = _compare_graphs(sa, sb, loaded, seed, target=target, precision_mode=precision_mode,
                                keep_dtype=keep_dtype, **both)
    else:
        found = _compare_lms(sa, sb, loaded, seed, dtype=dtype, precision_mode=precision_mode,
                             keep_dtype=keep_dtype, **both)
    report = CompareReport(a=str(a), b=str(b), level=level, layerwise=layerwise, command=command, notes=notes,
                           **found)
    if plot:
        from .plot import plot_report

        report.plot = plot_report(report, plot)
    return report


def _findings(A, B, stats, in_desc: dict, fixp, atol: float, rtol: float, tolerance: str) -> dict:
    """The report's fields from the two active sides and `_compare_dicts`' statistics."""
    out_stats, tens, only_a, only_b = stats
    first, passed, min_atol, min_rtol = _summary(out_stats, tens)
    return dict(atol=atol, rtol=rtol, tolerance=tolerance, label_a=A.label, label_b=B.label,
                precision_a=str(A.precision), precision_b=str(B.precision),
                outputs=out_stats, tensors=tens, first_divergent=first.name if first else None,
                first_divergent_layer=layer_of(first.name) if first else None, passed=passed,
                only_in_a=only_a, only_in_b=only_b, min_atol=min_atol, min_rtol=min_rtol, inputs=in_desc, fix=fixp)


def _compare_graphs(sa, sb, loaded, seed: int, *, atol: float | None, rtol: float | None, layerwise: bool,
                    fix: bool, fix_dir, notes: list[str], target, precision_mode, keep_dtype) -> dict:
    """Graph level: both sides run the same feeds; every node output is dumped (for the fp16 fix
    even without `layerwise`), and a failure of a low-precision simulator side gets its diagnosis.
    Without --atol / --rtol the default applies: a graph has no ModelSpec to derive one from."""
    given = atol is not None or rtol is not None
    tolerance = "given" if atol is not None and rtol is not None else (
        f"default {DEFAULT_ATOL:g} / {DEFAULT_RTOL:g} where not given (graph level: no ModelSpec to derive from; "
        "it holds for fp32 vs fp32, give --atol / --rtol for an fp16 / bf16 / int8 side)")
    atol = DEFAULT_ATOL if atol is None else atol
    rtol = DEFAULT_RTOL if rtol is None else rtol
    sides = []
    for s in (sa, sb):
        if not s.runs_graphs:
            raise ConfigError(f"compare: '{s.text}' ({s.kind}) cannot be compared with a graph",
                              "compare two graphs (.onnx, sim:FILE.onnx, DIR.omsim#graph), or two "
                              "model-level artifacts (HF dir, export dir, .omsim, ...)")
        sim_over = dict(target=target, precision_mode=precision_mode, keep_dtype=keep_dtype) if s.simulated else {}
        sides.append(GraphSide(s, layerwise=True if (fix or layerwise) else False, **sim_over))
    A, B = sides
    try:
        A.activate()
        B.activate()
        feeds = _graph_feeds(A, loaded, seed)
        ref = A.run(feeds)
        got = B.run(feeds)
        order = A.order()
        pos = {n: i for i, n in enumerate(order)}
        outputs = sorted(A.output_names(), key=lambda n: pos.get(n, len(pos)))
        stats = _compare_dicts(ref, got, order, outputs, atol, rtol, layerwise)
        first, passed, _, _ = _summary(stats[0], stats[1])
        first_dump = first if layerwise else _first_in_dump(ref, got, order, outputs, atol, rtol, first, notes)
        fixp = _maybe_fix(A, B, feeds, ref, outputs, atol, rtol, passed, fix, fix_dir,
                          first_dump.name if first_dump else None, notes)
        in_desc = {k: [list(np.shape(v)), str(np.asarray(v).dtype)] for k, v in feeds.items()}
        if not given and (_low_precision_sim(A) or _low_precision_sim(B)):
            notes.append("the default tolerance is for fp32 vs fp32 and a side computes in low precision: "
                         "give --atol / --rtol (at LM level they are derived)")
        return _findings(A, B, stats, in_desc, fixp, atol, rtol, tolerance)
    finally:
        A.close()
        B.close()


def _graph_feeds(A, loaded, seed: int) -> dict:
    """The feeds as given (arrays by input name, or token ids for `input_ids`), else random ones
    shaped by the reference graph's inputs."""
    if isinstance(loaded, Mapping):
        return {k: np.asarray(v) for k, v in loaded.items()}
    if loaded is not None:
        return {"input_ids": np.asarray(loaded)}
    return graph_feeds(A.input_metadata(), seed, _vocab_near(A.model_path))


def _first_in_dump(ref, got, order, outputs, atol, rtol, first, notes: list[str]):
    """Without `layerwise` the report shows the outputs only, but every tensor was dumped for the
    fix: the first intermediate tensor outside the tolerance (noted when it is not `first`)."""
    _, dump_tens, _, _ = _compare_dicts(ref, got, order, outputs, atol, rtol, True)
    first_dump = next((s for s in dump_tens if not s.passed), None)
    if first_dump is not None and (first is None or first_dump.name != first.name):
        notes.append(f"first intermediate tensor outside the tolerance (from the dump): {first_dump.name} "
                     f"(layer {layer_of(first_dump.name)}); --layerwise shows every tensor")
    return first_dump


def _compare_lms(sa, sb, loaded, seed: int, *, atol: float | None, rtol: float | None, layerwise: bool, fix: bool,
                 fix_dir, notes: list[str], dtype: str, precision_mode, keep_dtype) -> dict:
    """LM level: both sides prefill the same token ids and their logits (with `layerwise` also
    embed, layers.{i}, final_norm) are compared; a failing simulated side gets the fp16 diagnosis."""
    A = LMSide(sa, layerwise=layerwise, dtype=dtype)
    B = LMSide(sb, layerwise=layerwise, dtype=dtype, keep_dtype=keep_dtype if sb.simulated else None,
               precision_mode=precision_mode if sb.simulated else None)
    try:
        A.activate()
        B.activate()
        ids, mask = _lm_inputs((A, B), loaded, seed)
        ref = A.run(ids, mask)
        got = B.run(ids, mask)
        tol, tolerance = _lm_tolerance(A, B, ref, ids, atol, rtol)
        stats = _compare_dicts(ref, got, list(ref), ["logits"], atol, rtol, layerwise, tol=tol)
        in_desc = {"input_ids": ids.tolist()}
        if mask is not None:
            in_desc["attention_mask"] = mask.tolist()
        passed = _summary(stats[0], stats[1])[1]
        out_atol, out_rtol = tol("logits")
        fixp = (_lm_sim_fix(B, ids, mask, out_atol, out_rtol, fix_dir, notes)
                if (not passed and fix and B.simulated) else None)
        return _findings(A, B, stats, in_desc, fixp, out_atol, out_rtol, tolerance)
    finally:
        A.close()
        B.close()


def _compute_dtype(side: LMSide) -> tuple[str | None, str]:
    """The dtype an active LM side computes in ("float32", "float16", "bfloat16"), or None with the
    reason when no tolerance can be derived for it: the simulator's precision mode (a lowering
    mode computes in its low dtype, must_keep_origin_dtype in the export's), an export on
    onnxruntime in its activation dtype, torch / MindSpore in the --dtype they ran with."""
    be = side.backend
    manifest = getattr(be, "manifest", None)
    manifest = manifest if isinstance(manifest, Mapping) else {}
    if manifest.get("quantization"):
        return None, f"{side.label} is quantized"
    settings = getattr(be, "settings", None)
    if isinstance(settings, Mapping) and settings:
        settings = settings.get("prefill") or next(iter(settings.values()))
    if settings is not None and hasattr(settings, "low_dtype"):
        return (settings.low_dtype or str(manifest.get("activation_dtype", "float32"))), ""
    if side.spec.backend == "onnxruntime" and manifest.get("activation_dtype"):
        return str(manifest["activation_dtype"]), ""
    if side._be.filter_options({"dtype": side.dtype}):
        return side.dtype, ""
    return None, f"{side.label} computes in an unknown precision ({side.precision})"


def _lm_tolerance(A: LMSide, B: LMSide, ref: Mapping[str, np.ndarray], ids, atol, rtol):
    """(tol(name) → (atol, rtol), description) of an LM-level comparison: the given values, else
    derived per tensor (`tolerance.tensor_tolerance`) from the sides' compute dtypes, the model's
    spec and the key length (the prompt, or the longest padded prefill of a side)."""
    if atol is not None and rtol is not None:
        return (lambda n: (atol, rtol)), "given"
    (da, why_a), (db, why_b) = _compute_dtype(A), _compute_dtype(B)
    spec = A.model_spec or B.model_spec
    why = why_a or why_b or ("no ModelSpec on either side" if spec is None else "")
    if why:
        fa, fr = (DEFAULT_ATOL if atol is None else atol), (DEFAULT_RTOL if rtol is None else rtol)
        return (lambda n: (fa, fr)), (f"default {DEFAULT_ATOL:g} / {DEFAULT_RTOL:g} where not given "
                                      f"(not derived: {why}; give --atol / --rtol)")
    keys = max([int(np.shape(ids)[-1])] + [int(s.prefill_len) for s in (A, B) if s.prefill_len])
    cache: dict = {}

    def tol(name: str) -> tuple[float, float]:
        if name not in cache:
            t = tensor_tolerance(spec, da, db, keys, name, ref) if name in ref else None
            cache[name] = t
        t = cache[name]
        if t is None:
            return (DEFAULT_ATOL if atol is None else atol), (DEFAULT_RTOL if rtol is None else rtol)
        return (t.atol if atol is None else atol), (t.rtol if rtol is None else rtol)

    t = tensor_tolerance(spec, da, db, keys, "logits", ref) if "logits" in ref else None
    desc = t.source if t is not None else "derived"
    if atol is not None or rtol is not None:
        desc += f"; given {'atol' if atol is not None else 'rtol'} {atol if atol is not None else rtol:g} replaces it"
    return tol, desc + f" [logits; every tensor its own at its depth, keys {keys}]"


def _vocab_near(model_path) -> int | None:
    for d in (Path(model_path).parent, Path(model_path).parent.parent):
        f = d / "export.json"
        if f.is_file():
            try:
                return int(json.loads(f.read_text())["spec"]["vocab_size"])
            except (KeyError, ValueError, json.JSONDecodeError):
                return None
    return None


def _fp32_reference(side) -> bool:
    if side.spec.kind == "onnx":
        return True
    s = side.settings
    return s is not None and s.keeps_origin


def _low_precision_sim(side) -> bool:
    s = side.settings
    return side.spec.simulated and s is not None and not s.keeps_origin


def _maybe_fix(A, B, feeds, ref, outputs, atol, rtol, passed, fix, fix_dir, first_failing, notes):
    if passed or not fix:
        return None
    if not (_low_precision_sim(B) and _fp32_reference(A)):
        if _low_precision_sim(A) and _fp32_reference(B):
            notes.append("the simulated fp16 side is A: put the fp32 reference first to get a keep_dtype proposal")
        return None
    if Path(A.model_path).resolve() != Path(B.model_path).resolve() and A.order() != B.order():
        notes.append("no fp16 diagnosis: the two sides are different graphs")
        return None
    kw = dict(target=B.settings.target, precision_mode=B.settings.precision_mode, graph=getattr(B, "graph", None),
              keep_dtype=list(B.settings.keep_dtype), graph_file=B.model_path, settings=B.settings)
    src = B.spec.path
    out_dir = Path(fix_dir) if fix_dir else Path(src).with_name(Path(src).stem.replace(".omsim", "") + ".fp16fix")
    return propose_fix(src, kw, feeds, ref, outputs, atol, rtol, out_dir=out_dir, first_failing=first_failing)


def _lm_sim_fix(B: LMSide, ids, mask, atol, rtol, fix_dir, notes):
    """LM-level failure of a simulated artifact: diagnose its prefill graph, fed as the host feeds it,
    against an fp32 onnxruntime run of the same graph."""
    from ascend_adapt.runtime.runners import OrtRunner

    be = B.backend
    pre = getattr(be, "runners", {}).get("prefill")
    if pre is None:
        notes.append("no fp16 diagnosis for this simulator backend")
        return None
    captured: dict = {}
    from ascend_adapt.runtime.graph_session import GraphLMSession

    def run(feeds):
        captured.update(feeds)
        return pre.infer(feeds)

    GraphLMSession(be.spec, run, run, be.batch, be.max_len, be.seq_len,
                   cache_dtype=getattr(be, "cache_dtype", np.float32)).prefill_all(ids, mask)
    graph_file = pre.model_path if pre.artifact is None else pre.artifact.graph_path("prefill")
    with OrtRunner(str(graph_file), dump=True, optimize=False) as r:
        ref = r.infer(captured)
    s = pre.settings
    src = be.path if pre.artifact is not None else graph_file
    kw = dict(target=s.target, precision_mode=s.precision_mode, keep_dtype=list(s.keep_dtype),
              graph_file=graph_file, settings=s)
    if pre.artifact is not None:
        kw["graph"] = "prefill"
    out_dir = Path(fix_dir) if fix_dir else Path(be.path).with_name(Path(be.path).stem + ".fp16fix")
    notes.append("fp16 diagnosis ran on the artifact's prefill graph against its own fp32 run "
                 "(same host-built feeds)")
    return propose_fix(src, kw, captured, ref, ["logits"], atol, rtol, out_dir=out_dir)


# ------------------------------------------------------------------------------------ output
def _g(x: float) -> str:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.4g}"


def format_report(r: CompareReport) -> str:
    """Polygraphy-style text: per tensor stats, first divergence, min tolerances, verdict, command."""
    lines = [f"[I] compare ({r.level} level): A = {r.a} [{r.label_a}, {r.precision_a}]",
             f"[I]                  B = {r.b} [{r.label_b}, {r.precision_b}]",
             "[I] inputs: " + ", ".join(f"{k} {v[0]} {v[1]}" if isinstance(v, list) and len(v) == 2
                                          and isinstance(v[0], list) and isinstance(v[1], str)
                                          else f"{k}={v}" for k, v in r.inputs.items())]
    def row(s: TensorStats, tag: str) -> str:
        if s.shape_mismatch:
            return f"[E] {tag} {s.name}: shape {list(s.shape)} vs {list(s.got_shape or ())} FAILED"
        nf = f" | non-finite ref {s.nonfinite_ref} / got {s.nonfinite_got} (mismatch {s.nonfinite_mismatch})" \
            if (s.nonfinite_got or s.nonfinite_ref) else ""
        verdict = "PASSED" if s.passed else "FAILED"
        return (f"[{'I' if s.passed else 'E'}] {tag} {s.name} {list(s.shape)}: max abs {_g(s.max_abs)} | mean abs "
                f"{_g(s.mean_abs)} | max rel {_g(s.max_rel)} | p90 {_g(s.p90_abs)} | p99 {_g(s.p99_abs)} | cosine "
                f"{s.cosine:.6f}{nf} | min atol {_g(s.min_atol)}, min rtol {_g(s.min_rtol)}{tol_of(s)} -> {verdict}")

    def tol_of(s: TensorStats) -> str:  # a tensor judged with its own (derived) tolerance says so
        return "" if (s.atol, s.rtol) == (r.atol, r.rtol) else f" | tol atol {_g(s.atol)} rtol {_g(s.rtol)}"

    if r.layerwise:
        lines.append(f"[I] layer-wise: {len(r.tensors)} tensors matched by name"
                     + (f", {len(r.only_in_a)} only in A, {len(r.only_in_b)} only in B"
                        if r.only_in_a or r.only_in_b else ""))
        lines += [row(s, "   ") for s in r.tensors]
    lines.append("[I] outputs:")
    lines += [row(s, "   ") for s in r.outputs]
    if r.first_divergent:
        lines.append(f"[E] first divergence: {r.first_divergent} (layer {r.first_divergent_layer})")
    lines.append(f"[I] minimum tolerance that would have passed: atol {_g(r.min_atol)} (rtol 0) OR "
                 f"rtol {_g(r.min_rtol)} (atol {r.atol:g})")
    for n in r.notes:
        lines.append(f"[I] {n}" if n.startswith("first intermediate") else f"[W] {n}")
    if r.fix is not None:
        f = r.fix
        if f.keep_nodes:
            lines.append(f"[W] cause: {f.cause}; keep in fp32 ({len(f.keep_nodes)} ops, {', '.join(f.keep_types)}):")
            items = list(f.reasons.items())
            lines += [f"[W]   {n}: {why}" for n, why in items[:8]]
            if len(items) > 8:
                lines.append(f"[W]   ... and {len(items) - 8} more (all listed in the keep_dtype file)")
            if f.keep_dtype_file:
                lines.append(f"[I] wrote {f.keep_dtype_file} and {f.mixlist_file}")
                lines.append(f"[I] ATC: {f.atc_flags}")
            verdict = "PASSED" if f.recheck_passed else "FAILED"
            lines.append(f"[{'I' if f.recheck_passed else 'E'}] re-check on the simulator with keep_dtype: {verdict}"
                         + ("" if not f.recheck_outputs else " (" + ", ".join(
                             f"{s.name} max abs {_g(s.max_abs)}" for s in f.recheck_outputs) + ")"))
            if f.mixlist_recheck_passed is not None:
                lines.append(f"[I] re-check with allow_mix_precision + modify_mixlist: "
                             f"{'PASSED' if f.mixlist_recheck_passed else 'FAILED'}")
        else:
            lines.append("[W] not an fp16 range / precision problem the simulator can pin to ops")
    if r.plot:
        lines.append(f"[I] plot: {r.plot}")
    if r.tolerance and r.tolerance != "given":
        lines.append(f"[I] tolerance: {r.tolerance}")
    how = "" if r.tolerance in ("given", "") else f" ({r.tolerance.split(':')[0].split(' ')[0]})"
    lines.append(f"[{'I' if r.passed else 'E'}] {'PASSED' if r.passed else 'FAILED'} | atol {r.atol:.4g} "
                 f"rtol {r.rtol:.4g}{how} | "
                 f"Command: {r.command or '(library call)'}")
    return "\n".join(lines)
