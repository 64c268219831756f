"""Check an ONNX model against a target's op table, without CANN: what ATC would accept.

    >>> from ascend_adapt.om_convert.analyze import analyze_model
    >>> report = analyze_model("model.onnx", "Ascend310P3", cann_version="6.0")   # doctest: +SKIP
    >>> print(report.to_table()); report.exit_code                                # doctest: +SKIP

One row per (op type, domain, opset) with its node count and a status:

- ``supported``: the target's converter parses every node of the row;
- ``fixable``: it does not, but the registered rewrite rules remove the problem (they are run
  on a weightless copy to find out: `report.after` is the analysis of the rewritten copy);
- ``unsupported``: neither.

Reasons: opset outside the toolchain's range or the op's registered opsets, attribute / arity /
rank / dtype restrictions, custom domain, data-dependent output shapes. Model-level findings:
opset above / below the toolchain's range, dynamic graph inputs (an error where the target takes
no shape ranges, unless `gears` bind them), ATC's gear rules when `gears` are given, int64 inputs
(advice), float64 tensors.

The model is read with `onnx.load(path, load_external_data=False)`: weights are never loaded.
Everything here is a simulated check from data files; the real ATC may still disagree.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import onnx

from ascend_adapt.errors import ConfigError
from ascend_adapt.operators.rewrites._graph import Graph, attrs_of, is_external, skeleton
from ascend_adapt.targets import Target, resolve_target

STATUSES = ("unsupported", "fixable", "supported")
_INT64, _DOUBLE, _BF16 = onnx.TensorProto.INT64, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16


@dataclass
class OpRow:
    """All nodes of one (op type, domain, opset).

    Attributes:
        status: "supported", "fixable" or "unsupported".
        reason: why not supported (distinct reasons with node counts), "" when supported.
        category: reason kind: opset, no_parser, domain, attribute, arity, rank, dtype, dynamic.
        fixable_by: rules that remove the problem (status "fixable").
        rewritten_by: rules that would rewrite these nodes anyway (optional clean-ups).
        warnings: accepted, but something is ignored or slow.
        nodes: up to 5 node names, for finding them.
    """

    op_type: str
    domain: str
    opset: int
    count: int
    status: str
    reason: str = ""
    category: str = ""
    fixable_by: tuple[str, ...] = ()
    rewritten_by: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"op_type": self.op_type, "domain": self.domain, "opset": self.opset, "count": self.count,
                "status": self.status, "reason": self.reason, "category": self.category,
                "fixable_by": list(self.fixable_by), "rewritten_by": list(self.rewritten_by),
                "warnings": list(self.warnings), "nodes": list(self.nodes)}


@dataclass
class Finding:
    """A model-level finding. `level` is "error" (blocks), "warning" or "info" (advice)."""

    level: str
    code: str
    message: str
    hint: str = ""
    fixable_by: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "code": self.code, "message": self.message, "hint": self.hint,
                "fixable_by": list(self.fixable_by)}


@dataclass
class AnalysisReport:
    """The result of `analyze_model`.

    Attributes:
        accepted_as_is: no unsupported op and no blocking finding.
        accepted_after_rules: the same after the registered rules (None when rules were off).
        after: the analysis of the rewritten copy (None when rules were off).
        rewrite: the RewriteReport of that dry run.
    """

    model: str
    target: str
    soc_version: str
    toolchain: str
    opset_range: tuple[int, int]
    model_opset: int
    node_count: int
    rows: list[OpRow]
    findings: list[Finding]
    rules_applied: bool = False
    after: "AnalysisReport | None" = None
    rewrite: Any = None
    accepted_after_rules: bool | None = None

    @property
    def accepted_as_is(self) -> bool:
        return not any(r.status != "supported" for r in self.rows) and \
            not any(f.level == "error" for f in self.findings)

    @property
    def exit_code(self) -> int:
        """0 when accepted as is or after the available rules, else 1."""
        return 0 if self.accepted_as_is or self.accepted_after_rules else 1

    @property
    def blocking(self) -> list[str]:
        """Short lines naming what blocks acceptance as is."""
        out = [f"{r.op_type} (opset {r.opset}, {r.count}x): {r.reason}" for r in self.rows if r.status != "supported"]
        out += [f"{f.code}: {f.message}" for f in self.findings if f.level == "error"]
        return out

    def row(self, op_type: str, domain: str = "ai.onnx") -> OpRow:
        for r in self.rows:
            if r.op_type == op_type and r.domain == domain:
                return r
        raise KeyError(op_type)

    def verdict(self) -> str:
        if self.accepted_as_is:
            return "accepted as is"
        if self.accepted_after_rules:
            return "not accepted as is; accepted after the rewrite rules (apply_rules)"
        if self.accepted_after_rules is None:
            return "not accepted (rules not tried)"
        return "not accepted, even after the rewrite rules"

    # ------------------------------------------------------------------ rendering
    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "target": self.target, "soc_version": self.soc_version,
            "toolchain": self.toolchain, "opset_range": list(self.opset_range), "model_opset": self.model_opset,
            "node_count": self.node_count, "accepted_as_is": self.accepted_as_is,
            "accepted_after_rules": self.accepted_after_rules, "verdict": self.verdict(), "simulated": True,
            "rows": [r.to_dict() for r in self.rows], "findings": [f.to_dict() for f in self.findings],
            "rewrite": self.rewrite.to_dict() if self.rewrite is not None else None,
        }

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["op_type", "domain", "opset", "count", "status", "reason", "fixable_by", "rewritten_by",
                    "warnings"])
        for r in self.rows:
            w.writerow([r.op_type, r.domain, r.opset, r.count, r.status, r.reason, ";".join(r.fixable_by),
                        ";".join(r.rewritten_by), " | ".join(r.warnings)])
        for f in self.findings:
            w.writerow(["(model)", "", self.model_opset, "", f.level, f"{f.code}: {f.message}",
                        ";".join(f.fixable_by), "", f.hint])
        return buf.getvalue()

    def to_table(self) -> str:
        lo, hi = self.opset_range
        lines = [f"analyze {self.model} for {self.target} (--soc_version={self.soc_version}, {self.toolchain}, "
                 f"ONNX opsets {lo}-{hi}) [simulated: op tables, no CANN]",
                 f"model opset {self.model_opset}, {self.node_count} nodes, {len(self.rows)} op types"]
        w = max([len(r.op_type) for r in self.rows] + [7])
        lines.append(f"{'op type':{w}}  {'domain':8} {'opset':>5} {'nodes':>5}  {'status':11}  detail")
        for r in self.rows:
            detail = r.reason
            if r.fixable_by:
                detail += f"  [fix: {', '.join(r.fixable_by)}]"
            elif r.rewritten_by:
                detail += f"  [rewritten by: {', '.join(r.rewritten_by)}]"
            if r.warnings:
                detail += ("  " if detail else "") + "warning: " + "; ".join(r.warnings)
            lines.append(f"{r.op_type:{w}}  {r.domain:8} {r.opset:>5} {r.count:>5}  {r.status:11}  {detail}".rstrip())
        if self.findings:
            lines.append("findings:")
            for f in self.findings:
                fix = f"  [fix: {', '.join(f.fixable_by)}]" if f.fixable_by else ""
                lines.append(f"  {f.level:7} {f.code}: {f.message}{fix}")
                if f.hint:
                    lines.append(f"          hint: {f.hint}")
        if self.rewrite is not None:
            fired = self.rewrite.fired
            errs = self.rewrite.errors
            lines.append("rules (dry run on a weightless copy): "
                         + (", ".join(f"{k} x{v}" for k, v in fired.items()) or "none fired"))
            for k, v in errs.items():
                lines.append(f"  {k}: error: {v}")
        lines.append(f"verdict: {self.verdict()}")
        return "\n".join(lines)

    def render(self, fmt: str = "table") -> str:
        if fmt == "table":
            return self.to_table()
        if fmt == "json":
            return self.to_json()
        if fmt == "csv":
            return self.to_csv()
        raise ConfigError(f"unknown format '{fmt}'", "use table, json or csv")


# ---------------------------------------------------------------------------- analysis
def _category(reason: str) -> str:
    r = reason.lower()
    if r.startswith("opset") or "is registered for opsets" in r:
        return "opset"
    if r.startswith("custom domain"):
        return "domain"
    if r.startswith("no ") and "parser" in r:
        return "no_parser"
    if r.startswith("dtype") or " of dtype " in r:
        return "dtype"
    if r.startswith("dynamic"):
        return "dynamic"
    if "attribute" in r:
        return "attribute"
    if " inputs:" in r or " outputs:" in r:
        return "arity"
    if " of rank " in r:
        return "rank"
    return "other"


def _walk(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
    for n in graph.node:
        yield n
        for a in n.attribute:
            for sg in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                yield from _walk(sg)


def _dims(vi: onnx.ValueInfoProto) -> list[int | str] | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or -1) for d in tt.shape.dim]


def _gear_bound(dims: list[int | str] | None, pinned: Sequence[int] | None) -> bool:
    """True when --input_shape `pinned` marks exactly the graph's dynamic dims -1 and fixes the rest."""
    if dims is None or pinned is None or len(dims) != len(pinned) or -1 not in pinned:
        return False
    for d, p in zip(dims, pinned):
        static = isinstance(d, int) and d > 0
        if p == -1:
            continue
        if not isinstance(p, int) or p <= 0 or (static and d != p):
            return False
    return True


def _analyze(model: onnx.ModelProto, name: str, target: Target, cann: str | None,
             gear_shape: Mapping[str, Sequence[int]] | None = None,
             gears: Sequence[Sequence[int]] | None = None) -> AnalysisReport:
    g = Graph(model)
    lo, hi = target.opset_range(cann)
    groups: dict[tuple[str, str, int], list[tuple[onnx.NodeProto, Any]]] = defaultdict(list)
    count = 0
    for node in _walk(model.graph):
        count += 1
        dom = node.domain or "ai.onnx"
        opset = g.opset("" if dom == "ai.onnx" else dom)
        ranks = []
        for i in node.input:
            s = g.shape(i) if i else None
            ranks.append(len(s) if s is not None else None)
        v = target.op_support(node.op_type, opset, attrs_of(node),
                              [g.dtype(i) or None if i else None for i in node.input], domain=dom,
                              cann_version=cann, num_inputs=sum(1 for i in node.input if i),
                              num_outputs=sum(1 for o in node.output if o), input_ranks=ranks)
        groups[(node.op_type, dom, opset)].append((node, v))
    rows: list[OpRow] = []
    for (op, dom, opset), items in groups.items():
        bad = Counter(v.reason for _, v in items if not v.supported)
        warns = tuple(dict.fromkeys(w for _, v in items for w in v.warnings))
        names = tuple(n.name for n, _ in items[:5])
        if not bad:
            rows.append(OpRow(op, dom, opset, len(items), "supported", warnings=warns, nodes=names))
            continue
        nbad = sum(bad.values())
        parts = [r if c == len(items) else f"{c} of {len(items)} nodes: {r}" for r, c in bad.most_common()]
        rows.append(OpRow(op, dom, opset, len(items), "unsupported", "; ".join(parts),
                          _category(bad.most_common(1)[0][0]), warnings=warns,
                          nodes=tuple(n.name for n, v in items if not v.supported)[:5] if nbad else names))
    findings: list[Finding] = []
    mo = g.opset("")
    label = target.toolchain_label(cann)
    if mo > hi:
        findings.append(Finding("error", "opset", f"model opset {mo} is above {hi}, the highest {label} parses "
                                                  f"for {target.name}",
                                f"re-export at opset <= {hi} or apply rule opset_downconvert"))
    elif mo and mo < lo:
        findings.append(Finding("error", "opset_low", f"model opset {mo} is below {lo}, the lowest {label} parses",
                                f"re-export at opset {lo}-{hi} (onnx.version_converter can up-convert)"))
    inits = {t.name for t in model.graph.initializer}
    gear_ok = False
    if gears is not None:
        from ascend_adapt.om_convert.atc.validate import gear_problems

        bad_gears = list(gear_problems(dict(gear_shape or {}), "dynamic_dims", gears,
                                       soc_version=target.soc_version, min_gears=target.gear_min,
                                       max_gears=target.gear_max, check_format=False))
        findings += [Finding("error", e.code, e.atc_message, e.hint or "") for e in bad_gears]
        gear_ok = not bad_gears
        if target.gear_min is None:
            findings.append(Finding("error", "gears", f"{target.name}'s {target.toolchain_label(cann)} has no gears",
                                    "drop the gears: give shape ranges or static shapes"))
            gear_ok = False
        for node in _walk(model.graph):
            if node.op_type in target.op_table.data_dependent_shape_ops:
                findings.append(Finding("error", "E10055", f"{node.op_type} ({node.name or 'unnamed'}) has a "
                                        "data-dependent output shape, which gears do not support",
                                        "replace it by static-shape ops (e.g. a mask instead of NonZero) "
                                        "or drop the gears"))
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = _dims(vi)
        if dims is None or any(not isinstance(d, int) or d <= 0 for d in dims):
            shown = "unknown rank" if dims is None else "[" + ", ".join(str(d) for d in dims) + "]"
            if gears is not None and _gear_bound(dims, (gear_shape or {}).get(vi.name)):
                if gear_ok:
                    pinned = ",".join(str(d) for d in gear_shape[vi.name])
                    findings.append(Finding("info", "gears", f"input '{vi.name}' {shown}: gear-bound "
                                                             f"(--input_shape {vi.name}:{pinned}, {len(gears)} "
                                                             "--dynamic_dims profiles): one static graph per gear"))
                continue
            if gears is None:
                msg = f"input '{vi.name}' {shown}: dynamic: needs gears or fixed --input-shape"
            else:
                msg = (f"input '{vi.name}' {shown}: dynamic and not bound to the gears (its --input_shape entry "
                       "must mark exactly its dynamic dims -1)")
            if target.allows_shape_ranges:
                findings.append(Finding("warning", "dynamic_input", msg + f" (or a shape range, which {target.name} "
                                                                          "runs as a slower dynamic-shape model)"))
            else:
                gear_fix = (f"mark its dynamic dims -1 and give {target.gear_min}-{target.gear_max} gears "
                            "(--gears / --dynamic_dims)" if target.gear_min is not None else "")
                findings.append(Finding("error", "dynamic_input",
                                        msg + f" ({target.name} takes no shape ranges)",
                                        "pin every dim with --input-shape NAME:d0,d1 (input_shapes=...)"
                                        + (f", or {gear_fix}" if gear_fix else "")))
        if vi.type.tensor_type.elem_type == _INT64:
            findings.append(Finding("info", "int64", f"input '{vi.name}' is int64: the card prefers int32 "
                                                     "ids / positions", "rule int64_to_int32 converts the chain"))
    f64 = [vi.name for vi in list(model.graph.input) + list(model.graph.output)
           if vi.type.tensor_type.elem_type == _DOUBLE]
    f64 += [t.name for t in model.graph.initializer if t.data_type == _DOUBLE]
    f64 += [o for n in _walk(model.graph) for o in n.output if g.dtype(o) == _DOUBLE]
    if f64:
        shown = ", ".join(dict.fromkeys(f64[:5])) + (" …" if len(f64) > 5 else "")
        lvl = "error" if "float64" in target.unsupported_dtypes else "warning"
        findings.append(Finding(lvl, "float64", f"{len(set(f64))} float64 tensors ({shown})",
                                "rule float64_to_float32 casts them to float32"))
    bf16 = [vi.name for vi in list(model.graph.input) + list(model.graph.output)
            if vi.type.tensor_type.elem_type == _BF16]
    bf16 += [t.name for t in model.graph.initializer if t.data_type == _BF16]
    bf16 += [o for n in _walk(model.graph) for o in n.output if g.dtype(o) == _BF16]
    if bf16 and "bfloat16" in target.unsupported_dtypes:
        shown = ", ".join(dict.fromkeys(bf16[:5])) + (" …" if len(bf16) > 5 else "")
        f = target.facts.get("unsupported_dtypes")
        findings.append(Finding("error", "bfloat16", f"{len(set(bf16))} bfloat16 tensors ({shown}): {target.name} "
                                                     f"has no bfloat16 kernels ({f.source} [{f.confidence}])" if f else
                                f"{len(set(bf16))} bfloat16 tensors ({shown}): {target.name} has no bfloat16 kernels",
                                "cast them to float16 or float32 before export (--weight-dtype float16), or build "
                                "for a target with bfloat16 (Ascend910B)"))
    fp16_only = sorted({n.op_type for n in _walk(model.graph)} & (target.fp16_only_ops or frozenset()))
    if fp16_only:
        findings.append(Finding("info", "fp16_only", f"{', '.join(fp16_only)}: no float32 kernel on {target.name} "
                                                     "(must_keep_origin_dtype / origin cannot build it)",
                                "use force_fp16 or allow_fp32_to_fp16 for these ops"))
    if any(is_external(t) and not any(e.value == "__stripped__" for e in t.external_data)
           for t in model.graph.initializer):
        findings.append(Finding("info", "external_data", "weights live in external data files (not loaded)"))
    rank = {s: k for k, s in enumerate(STATUSES)}
    rows.sort(key=lambda r: (rank[r.status], r.op_type, r.domain, r.opset))
    return AnalysisReport(name, target.name, target.soc_version, label, (lo, hi), mo, count, rows, findings)


def analyze_model(path_or_model: str | os.PathLike | onnx.ModelProto, target: str | Target,
                  cann_version: str | None = None, rules: bool = True, *,
                  input_shapes: Mapping[str, Sequence[int]] | None = None,
                  gears: Sequence[Sequence[int]] | None = None) -> AnalysisReport:
    """Analyze an ONNX model for a target.

    Args:
        path_or_model: an .onnx path (read without external data) or a ModelProto (not modified;
            its weights are not copied).
        target: a Target or a target name ("Ascend310P3").
        cann_version: toolchain version, e.g. "6.0" (default: the target's default).
        rules: also run the registered rewrite rules on a weightless copy, marking what they fix.
        input_shapes: {input name: static shape} to fix dynamic inputs (as `--input-shape` does);
            with `gears`, the --input_shape of the gear build: -1 on the gear-bound dims.
        gears: --dynamic_dims profiles (one tuple per gear, one value per -1 of `input_shapes`).
            The graph is then checked as ATC builds it with gears: ATC's gear rules
            (`om_convert.atc.validate.gear_problems`), gear-bound inputs accepted on targets
            without shape ranges, data-dependent ops refused.

    Returns:
        An AnalysisReport (`accepted_as_is`, `accepted_after_rules`, `exit_code`, renderers).
    """
    if isinstance(path_or_model, onnx.ModelProto):
        name = path_or_model.graph.name or "<model>"
        model = skeleton(path_or_model)
    else:
        p = Path(path_or_model)
        if not p.is_file():
            raise ConfigError(f"ONNX model '{p}' not found", "check the path")
        try:
            model = skeleton(onnx.load(str(p), load_external_data=False))
        except Exception as exc:  # protobuf DecodeError and friends
            raise ConfigError(f"cannot read ONNX model '{p}': {exc}", "is it an .onnx file?") from exc
        name = p.name
    tgt = resolve_target(target)
    gear_shape = None
    if gears is not None:
        gears = tuple(tuple(int(v) for v in g) for g in gears)
        gear_shape = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
    report = _analyze(model, name, tgt, cann_version, gear_shape, gears)
    if input_shapes and gears is None:
        for f in report.findings:
            if f.code == "dynamic_input" and any(f"input '{k}'" in f.message for k in input_shapes):
                f.fixable_by = ("fix_input_shapes",)
    if not rules:
        return report
    from ascend_adapt.operators.rewrites import RULES, apply_rules

    work = onnx.ModelProto()
    work.CopyFrom(model)
    work, rw = apply_rules(work, tgt, None, input_shapes if gears is None else None, cann_version=cann_version,
                           check=False)
    after = _analyze(work, name, tgt, cann_version, gear_shape, gears)
    report.rules_applied, report.after, report.rewrite = True, after, rw
    report.accepted_after_rules = report.accepted_as_is or after.accepted_as_is
    still_bad = {(r.op_type, r.domain) for r in after.rows if r.status != "supported"}
    remaining = {f.code for f in after.findings if f.level == "error"}
    fired = [r for r in rw.results if r.fired and not r.error]
    left = Counter(n.op_type for n in _walk(work.graph))
    for row in report.rows:
        removers = tuple(r.name for r in fired if r.op_delta.get(row.op_type, 0) < 0)
        if row.status == "supported":
            row.rewritten_by = removers if row.op_type != "Constant" else ()
            continue
        if (row.op_type, row.domain) in still_bad:
            continue
        if not left[row.op_type]:  # the op is gone: the rules that removed it fixed it
            by = list(removers)
        else:  # the op remains, now accepted: the rules for this kind of problem fixed it
            by = [r.name for r in fired if row.op_type in RULES.get(r.name).op_types
                  or row.category in RULES.get(r.name).fixes]
        row.status, row.fixable_by = "fixable", tuple(dict.fromkeys(by)) or tuple(r.name for r in fired)
    for f in report.findings:
        if f.level == "error" and f.code not in remaining:
            by = tuple(r.name for r in fired if f.code in RULES.get(r.name).fixes)
            f.fixable_by = by or f.fixable_by
    rank = {s: k for k, s in enumerate(STATUSES)}
    report.rows.sort(key=lambda r: (rank[r.status], r.op_type, r.domain, r.opset))
    return report
