"""When a graph fails only under fp16: find the ops to keep in fp32, write the ATC files, re-check.

Diagnosis (the fp32 reference and the simulated fp16 run of the *same graph* on the same feeds,
every tensor dumped):

1. **range**: every node with a float input or output whose fp32 reference value exceeds the
   fp16 maximum (65504): stored in fp16 between ops it becomes inf (RMSNorm's x² of a large
   residual, a long ReduceSum, an unscaled QKᵀ ...);
2. **origin of inf/NaN**: every node whose simulated output is non-finite where the reference
   is finite while all its simulated inputs were finite: the op that created the inf/NaN;
3. **precision** (only when 1 and 2 find nothing): the producer of the first tensor that fails
   the tolerance, unless it only moves data (Reshape, Transpose, ...).

The proposal is re-checked on the simulator with `--keep_dtype` = those node names; if outputs
still fail, the diagnosis runs again on the new run and the set grows (at most `max_rounds`).
The files written are the ones ATC takes:

    keep_dtype.cfg        one node name per line             (--keep_dtype, any precision mode)
    modify_mixlist.json   {"black-list": {"to-add": [types]}} (--modify_mixlist, with
                                                              --precision_mode allow_mix_precision)

The mixlist works on op *types*, so it keeps every node of those types in fp32 (wider than the
keep_dtype list); it is re-checked too and both results are reported.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ascend_adapt.fsutil import atomic_output

from .metrics import FP16_MAX, tensor_stats

MOVE_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Gather",
                      "Slice", "Concat", "Split", "Expand", "Cast", "Shape", "Tile"})


@dataclass
class FixProposal:
    """What the fp16 diagnosis proposes and what the re-check found.

    Attributes:
        cause: "fp16 range (overflow)", "fp16 inf/NaN", "fp16 precision" or "" (not fp16).
        keep_nodes: node names to keep in their original dtype (keep_dtype entries).
        keep_types: their op types (the modify_mixlist black-list additions).
        reasons: {node: why it was picked}.
        keep_dtype_file / mixlist_file: the files written (None when not written).
        recheck_passed: the simulator with keep_dtype passes the same comparison.
        recheck_outputs: per-output stats of that re-check.
        mixlist_recheck_passed: allow_mix_precision + modify_mixlist passes (None: not run).
        rounds: diagnosis rounds used.
        atc_flags: what to add to the ATC command.
    """

    cause: str
    keep_nodes: list[str] = field(default_factory=list)
    keep_types: list[str] = field(default_factory=list)
    reasons: dict = field(default_factory=dict)
    keep_dtype_file: str | None = None
    mixlist_file: str | None = None
    recheck_passed: bool | None = None
    recheck_outputs: list = field(default_factory=list)
    mixlist_recheck_passed: bool | None = None
    rounds: int = 0
    atc_flags: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["recheck_outputs"] = [s.to_dict() if hasattr(s, "to_dict") else s for s in self.recheck_outputs]
        return d


def _graph_maps(model_path):
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    producer, nodes = {}, {}
    for i, n in enumerate(m.graph.node):
        name = n.name or f"{n.op_type}_{i}"
        nodes[name] = n
        for o in n.output:
            if o:
                producer[o] = name
    inits = {t.name for t in m.graph.initializer}
    order = [n.name or f"{n.op_type}_{i}" for i, n in enumerate(m.graph.node)]
    return nodes, producer, inits, order


def _is_float(a) -> bool:
    return a is not None and np.issubdtype(np.asarray(a).dtype, np.floating)


def diagnose(model_path, ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
             first_failing: str | None = None, exclude=()) -> tuple[str, dict[str, str]]:
    """(cause, {node name: reason}) from full dumps of the fp32 reference and the fp16 run.

    Nodes in `exclude` (already kept) are not proposed again; the precision fallback applies
    when range and inf/NaN find no new node.
    """
    exclude = set(exclude)
    nodes, producer, inits, order = _graph_maps(model_path)
    picks: dict[str, str] = {}
    causes = []
    for name in order:
        n = nodes[name]
        big = []
        for t in list(n.input) + list(n.output):
            a = ref.get(t)
            if _is_float(a):
                fa = np.asarray(a, np.float64)
                fin = fa[np.isfinite(fa)]
                if fin.size and float(np.abs(fin).max()) > FP16_MAX:
                    big.append(f"{t} reaches {float(np.abs(fin).max()):.3g} in fp32")
        if big and name not in exclude:
            picks[name] = "fp16 range: " + "; ".join(big[:2]) + f" (> {FP16_MAX:g})"
            causes.append("fp16 range (overflow)")
    for name in order:
        if name in picks or name in exclude:
            continue
        n = nodes[name]
        outs = [o for o in n.output if o and _is_float(got.get(o)) and _is_float(ref.get(o))]
        made = [o for o in outs if (~np.isfinite(np.asarray(got[o])) & np.isfinite(np.asarray(ref[o]))).any()]
        if not made:
            continue
        ins_ok = all(np.isfinite(np.asarray(got[i])).all() for i in n.input
                     if i and i not in inits and _is_float(got.get(i)))
        if ins_ok:
            picks[name] = f"creates inf/NaN in {made[0]} under fp16 (fp32 reference finite)"
            causes.append("fp16 inf/NaN")
    if not picks and first_failing and first_failing in producer:
        name = producer[first_failing]
        if nodes[name].op_type not in MOVE_OPS and name not in exclude:
            picks[name] = f"first tensor outside the tolerance: {first_failing}"
            causes.append("fp16 precision")
    cause = causes[0] if causes else ""
    return cause, picks


def write_fix_files(out_dir, keep_nodes: Sequence[str], keep_types: Sequence[str], *,
                    force: bool = True) -> tuple[Path, Path]:
    """Write keep_dtype.cfg and modify_mixlist.json into `out_dir` (created)."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    kd = d / "keep_dtype.cfg"
    mx = d / "modify_mixlist.json"
    with atomic_output(kd, force=force) as tmp:
        tmp.write_text("".join(f"{n}\n" for n in keep_nodes), encoding="utf-8")
    with atomic_output(mx, force=force) as tmp:
        tmp.write_text(json.dumps({"black-list": {"to-add": list(keep_types)}}, indent=2) + "\n", encoding="utf-8")
    return kd, mx


def _stats(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], names, atol, rtol):
    return [tensor_stats(n, ref[n], got[n], atol, rtol) for n in names if n in ref and n in got]


def propose_fix(model_path, sim_kwargs: dict, feeds: Mapping[str, np.ndarray], ref_dump: Mapping[str, np.ndarray],
                output_names: Sequence[str], atol: float, rtol: float, *, out_dir=None,
                first_failing: str | None = None, max_rounds: int = 4, mixlist_check: bool = True) -> FixProposal:
    """Diagnose, re-check with keep_dtype on the simulator (growing the set), write the files.

    Args:
        model_path: the graph (.onnx, or an .omsim with `graph` in sim_kwargs).
        sim_kwargs: SimRunner arguments of the failing side (target, precision_mode, graph, ...).
        feeds: the feeds of the comparison.
        ref_dump: every tensor of the fp32 reference run.
        output_names: the outputs compared.
        atol, rtol: the comparison's tolerances.
        out_dir: where to write keep_dtype.cfg / modify_mixlist.json (None: do not write).
        first_failing: the first tensor that failed (for the precision fallback).
    """
    from ascend_adapt.runtime.runners import SimRunner

    base_keep = list(sim_kwargs.get("keep_dtype") or [])
    graph_file = sim_kwargs.pop("graph_file", None) or model_path
    keep: dict[str, str] = {}
    cause = ""
    got = None
    recheck = []
    passed = False
    rounds = 0
    kw = {k: v for k, v in sim_kwargs.items() if k != "keep_dtype"}
    gnodes, _, _, gorder = _graph_maps(graph_file)
    tensor_order = [o for n in gorder for o in gnodes[n].output if o]
    with SimRunner(str(model_path), keep_dtype=base_keep or None, dump=True, cost=False, check=False, **kw) as r:
        got = r.infer(dict(feeds))
    for rounds in range(1, max_rounds + 1):
        c, new = diagnose(graph_file, ref_dump, got, first_failing, exclude=keep)
        if not new:
            break
        cause = cause or c
        keep.update(new)
        with SimRunner(str(model_path), keep_dtype=base_keep + list(keep), dump=True, cost=False, check=False,
                       **kw) as r:
            got = r.infer(dict(feeds))
        recheck = _stats(ref_dump, got, output_names, atol, rtol)
        passed = bool(recheck) and all(s.passed for s in recheck)
        if passed:
            break
        fails = [s for s in _stats(ref_dump, got, tensor_order, atol, rtol) if not s.passed]
        first_failing = fails[0].name if fails else first_failing
    nodes, _, _, _ = _graph_maps(graph_file)
    keep_nodes = list(keep)
    keep_types = sorted({nodes[n].op_type for n in keep_nodes if n in nodes})
    prop = FixProposal(cause, keep_nodes, keep_types, dict(keep), recheck_passed=passed if keep else None,
                       recheck_outputs=recheck, rounds=rounds)
    if keep and mixlist_check:
        mix = {"black-list": {"to-add": keep_types}}
        kw2 = {k: v for k, v in kw.items() if k != "precision_mode"}
        try:
            with SimRunner(str(model_path), precision_mode="allow_mix_precision", modify_mixlist=mix,
                           keep_dtype=base_keep or None, cost=False, check=False, **kw2) as r:
                out = r.infer(dict(feeds))
            st = _stats(ref_dump, out, output_names, atol, rtol)
            prop.mixlist_recheck_passed = bool(st) and all(s.passed for s in st)
        except Exception:  # noqa: BLE001 - the mixlist re-check is advisory
            prop.mixlist_recheck_passed = None
    if keep and out_dir is not None:
        kd, mx = write_fix_files(out_dir, keep_nodes, keep_types)
        prop.keep_dtype_file, prop.mixlist_file = str(kd), str(mx)
        prop.atc_flags = (f"--keep_dtype={kd}  (or --precision_mode=allow_mix_precision --modify_mixlist={mx})")
    return prop
