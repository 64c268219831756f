"""Refuse what ATC or the card would refuse, in ATC's words, before anything runs.

`check_model(model, target, settings)` returns an `AcceptanceReport` with every problem found;
`accept_model(...)` raises `SimulatorRejection` (an `UnsupportedError`) on the first report
with problems. Checks, in ATC's order (parameters, parse, shapes, then load):

| code    | check |
|---------|-------|
| E10001  | --precision_mode not offered by the target (bf16 modes on 310/310P) |
| E10004 ... E10047 | ATC's gear rules (E10004 no --input_shape, E10040 no -1 or a lo~hi range, E10035 / E10036 fewer than the target's minimum (2) / more than its maximum (100) gears, E10037 / E10038 / E10039 / E10045 / E10003 profile values): one definition in the core, `ascend_adapt.targets.gear_rules`, shared with ATC's `validate()`, `analyze` and the gear planner |
| E10016  | an --input_shape / --keep_dtype name that is not in the model (keep_dtype: warning, as ATC) |
| E10049  | --input_shape dim count differs from the graph input's rank |
| E19010  | op type / opset with no ATC ONNX parser for the target (Loop, Gelu-20, opset 19+) |
| EZ3003  | an attribute / dtype / rank restriction of the target's op table (no kernel for it); a tensor of a dtype the SoC has no kernels for (its `unsupported_dtypes` fact: bf16 on 310 / 310P); under must_keep_origin_dtype, an op the SoC has only in fp16 (its `fp16_only_ops` fact: Conv on Ascend310) |
| E10055  | a dynamic-shape model (unpinned dims, ranges, data-dependent ops) on a target without shape ranges (Ascend310, Ascend310B*), or data-dependent ops under gears |
| 207001  | (load time) weights + I/O (KV cache) + workspace exceed the chip's memory: aclmdlLoadFromFile fails with ACL_ERROR_RT_MEMORY_ALLOCATION |

Messages use the templates of ATC's error-code table (`om_convert.atc.codes`) where it is
installed, else the same wording kept here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import onnx

from ascend_adapt.errors import UnsupportedError
from ascend_adapt.targets import resolve_target

from .graph import TensorInfo, attrs_of, graph_inputs, infer_tensor_infos, iter_nodes, load_model, node_label
from .settings import SimSettings

SIMULATED = "simulated"

# ATC's own templates (om_convert/atc/data/ge_error_codes.json, reference sheet §3), used when
# the ATC driver package is not importable: every code the checks below (the gear rules included) raise.
_TEMPLATES = {
    "E10001": "Value %s for parameter %s is invalid. Reason: %s",
    "E10003": "Value %s for parameter --%s is invalid. Reason: %s",
    "E10004": "Value for --%s is empty.",
    "E10012": "--dynamic_batch_size is included, but the dimension count of the dynamic-shape input configured in "
              "--input_shape is less than 1.",
    "E10018": "Value %s for shape %s is invalid. When --dynamic_batch_size is included, only batch size N can be -1 "
              "in --input_shape.",
    "E10019": "When --dynamic_image_size is included, only the height and width axes can be -1 in --input_shape.",
    "E10031": "--dynamic_batch_size is included, but none of the nodes specified in --input_shape has a batch size "
              "equaling -1.",
    "E10037": "The profiles configured in --dynamic_batch_size, --dynamic_image_size, or --dynamic_dims have "
              "inconsistent dimension counts. A profile has %s dimensions while another has %s dimensions.",
    "E10038": "Dimension size %s is invalid. The value must be greater than 0.",
    "E10039": "The --dynamic_batch_size, --dynamic_image_size, or --dynamic_dims argument has duplicate profiles.",
    "E10045": "The number of -1 axes in the --input_shape argument exceeds the dimension count per profile in "
              "--dynamic_dims.",
    "E10047": "--%s and --%s are mutually exclusive.",
    "E10016": "Op name %s specified in --%s is not found in the model. Confirm whether this node name exists, "
              "or whether the node is not split with the specified delimiter ';'.",
    "E10035": "--dynamic_batch_size, --dynamic_image_size, or --dynamic_dims has %s profiles, which is less "
              "than the minimum %s.",
    "E10036": "--dynamic_batch_size, --dynamic_image_size, or --dynamic_dims has %s profiles, which is greater "
              "than the maximum %s.",
    "E10040": "As the --dynamic_batch_size, --dynamic_image_size, or --dynamic_dims argument is included, the "
              "corresponding nodes specified in --input_shape must have -1 axes and cannot have '~'.",
    "E10049": "Dimension count %s configured in --input_shape does not match dimension count %s of the node.",
    "E10055": "The operation is not supported. Reason: %s.",
    "E19010": "No parser is registered for Op [%s, optype [%s]].",
    "EZ3003": "No supported Ops kernel and engine are found for [%s], optype [%s].",
}


def _format(code: str, *args: object) -> str:
    try:
        from ascend_adapt.om_convert.atc.codes import format_ge_message, ge_code

        if ge_code(code) is not None:
            return format_ge_message(code, *args)
    except Exception:  # noqa: BLE001 - the ATC driver is optional here
        pass
    pieces = _TEMPLATES[code].split("%s")
    out = [pieces[0]]
    for i, piece in enumerate(pieces[1:]):
        out.append(str(args[i]) if i < len(args) else "%s")
        out.append(piece)
    return "".join(out)


@dataclass(frozen=True)
class Problem:
    """One thing ATC or the card would refuse.

    Attributes:
        code: ATC / GE error code ("E19010") or the ACL return code ("207001") at load time.
        message: the message in ATC's wording, without the code.
        hint: what to do.
        kind: "precision", "gears", "shape", "op", "dtype", "memory".
        node / op_type: the node at fault, when there is one.
        graph: which graph of an artifact.
    """

    code: str
    message: str
    hint: str
    kind: str
    node: str | None = None
    op_type: str | None = None
    graph: str | None = None

    def __str__(self) -> str:
        where = f"[{self.graph}] " if self.graph else ""
        return f"{where}{self.code}: {self.message}"

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class SimulatorRejection(UnsupportedError):
    """The simulator refuses a model as ATC or the card would (simulated ATC run failed).

    Attributes:
        problems: every Problem found (the message shows the first few).
        code: the first problem's code.
        target: the target name.
    """

    def __init__(self, problems: Sequence[Problem], target: str, graph: str | None = None, limit: int = 8):
        self.problems = list(problems)
        self.target = target
        self.code = self.problems[0].code if self.problems else ""
        what = f"'{graph}' " if graph else ""
        lines = [f"simulated ATC run failed: model {what}rejected for {target} ({SIMULATED}; "
                 f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''})"]
        for p in self.problems[:limit]:
            lines.append(f"  {p}")
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        hints = []
        for p in self.problems:
            if p.hint not in hints:
                hints.append(p.hint)
        super().__init__("\n".join(lines), "; ".join(hints[:3]))


@dataclass
class AcceptanceReport:
    """Result of `check_model` / `check_artifact`.

    Attributes:
        target: target name. problems: what would be refused. warnings: accepted with caveats.
        memory: the MemoryEstimate used for the memory check (None when skipped).
    """

    target: str
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    memory: Any = None

    @property
    def accepted(self) -> bool:
        return not self.problems

    def raise_if_rejected(self, graph: str | None = None) -> "AcceptanceReport":
        if self.problems:
            raise SimulatorRejection(self.problems, self.target, graph)
        return self

    def extend(self, other: "AcceptanceReport") -> None:
        self.problems.extend(other.problems)
        self.warnings.extend(w for w in other.warnings if w not in self.warnings)

    def to_text(self) -> str:
        head = "accepted" if self.accepted else "REJECTED"
        lines = [f"[{SIMULATED}] ATC / card acceptance for {self.target}: {head}"]
        lines += [f"  {p}\n    fix: {p.hint}" for p in self.problems]
        lines += [f"  warning: {w}" for w in self.warnings]
        if self.memory is not None:
            lines.append("  " + self.memory.to_text())
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"simulated": True, "target": self.target, "accepted": self.accepted,
                "problems": [p.to_dict() for p in self.problems], "warnings": list(self.warnings),
                "memory": None if self.memory is None else self.memory.to_dict()}


# ---------------------------------------------------------------------------- checks
def _check_precision(settings: SimSettings, target: Any, graph: str | None) -> list[Problem]:
    if settings.precision_mode in target.precision_modes:
        return []
    given = settings.precision_mode_v2 or settings.precision_mode
    flag = "--precision_mode_v2" if settings.precision_mode_v2 else "--precision_mode"
    return [Problem("E10001", _format("E10001", given, flag,
                                      f"{target.name} does not support it (no bf16 / not in its precision modes)"),
                    f"use one of {', '.join(target.precision_modes)}", "precision", graph=graph)]


def _check_gears(settings: SimSettings, target: Any, graph: str | None) -> list[Problem]:
    """ATC's gear rules: the one definition, `ascend_adapt.targets.gear_rules`."""
    g = settings.gears
    if g is None:
        return []
    from ascend_adapt.targets.gear_rules import gear_violations

    return [Problem(v.code, _format(v.code, *v.args), v.hint, "gears", graph=graph)
            for v in gear_violations(settings.input_shape or {}, g.flag, g.values, soc_version=settings.soc_version
                                     or target.soc_version, min_gears=target.gear_min,
                                     max_gears=target.gear_max, check_format=False)]


def _check_shapes(model: onnx.ModelProto, settings: SimSettings, target: Any, graph: str | None,
                  warnings: list[str]) -> list[Problem]:
    out: list[Problem] = []
    ins = graph_inputs(model)
    pinned = settings.input_shape or {}
    for name in pinned:
        if name not in ins:
            out.append(Problem("E10016", _format("E10016", name, "input_shape"),
                               f"the model's inputs are: {', '.join(ins)}", "shape", graph=graph))
    dynamic: list[str] = []
    for name, info in ins.items():
        dims = info.shape
        if name in pinned:
            p = pinned[name]
            if dims is not None and len(p) != len(dims):
                out.append(Problem("E10049", _format("E10049", len(p), len(dims)),
                                   f"give {len(dims)} dims for input {name} in --input_shape", "shape",
                                   node=name, graph=graph))
                continue
            if any(isinstance(d, tuple) for d in p):
                dynamic.append(f"{name}:{','.join(f'{d[0]}~{d[1]}' if isinstance(d, tuple) else str(d) for d in p)} "
                               "(a lo~hi range)")
            elif -1 in p and settings.gears is None:
                dynamic.append(f"{name}:{','.join(map(str, p))} (-1 without gears)")
            elif dims is not None and any(isinstance(d, int) and isinstance(q, int) and q > 0 and d != q
                                          for d, q in zip(dims, p)):
                warnings.append(f"--input_shape {name}:{','.join(map(str, p))} overrides the graph's static "
                                f"shape {list(dims)}; ATC re-infers every shape from it")
            continue
        if dims is None:
            dynamic.append(f"{name} (unknown rank)")
        elif not all(isinstance(d, int) for d in dims):
            dynamic.append(f"{name}:[{','.join(map(str, dims))}] (symbolic dims not pinned by --input_shape)")
    if dynamic:
        reason = ("dynamic-shape model: " + "; ".join(dynamic) +
                  f" — {target.name} takes no shape ranges, only static shapes or gears")
        if not target.allows_shape_ranges:
            out.append(Problem(
                "E10055", _format("E10055", reason),
                "pin every dim with --input_shape (static shapes), or mark gear-bound dims -1 and give "
                "--dynamic_dims / --dynamic_batch_size (2-100 gears, see om_convert.atc.plan_gears)",
                "shape", graph=graph))
        else:
            warnings.append(f"dynamic-shape model ({'; '.join(dynamic)}): runs as a dynamic-shape model "
                            "(ops compiled at run time, slow first run)")
    return out


def _check_ops(model: onnx.ModelProto, settings: SimSettings, target: Any, graph: str | None,
               infos: Mapping[str, TensorInfo], warnings: list[str]) -> list[Problem]:
    out: list[Problem] = []
    opsets = {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import}
    ddso = target.op_table.data_dependent_shape_ops
    for node, prefix, idx in iter_nodes(model.graph):
        domain = node.domain or "ai.onnx"
        opset = opsets.get(domain, opsets.get("ai.onnx", 0))
        label = prefix + node_label(node, idx)
        dtypes = [infos[n].elem_type if n in infos else None for n in node.input]
        ranks = [len(infos[n].shape) if n in infos and infos[n].shape is not None else None for n in node.input]
        v = target.op_support(node.op_type, opset, attrs_of(node), dtypes, domain=domain,
                              cann_version=settings.cann_version, num_inputs=len(node.input),
                              num_outputs=len([o for o in node.output if o]), input_ranks=ranks)
        optype = f"{domain}::{opset}::{node.op_type}"
        for w in v.warnings:
            warnings.append(f"{label}: {w}")
        if not v.supported and v.reason.startswith("dtype ") and v.reason.endswith(f"not supported on {target.name}"):
            continue  # reported once for the model by _check_dtypes, with what to do
        if v.supported:
            if settings.gears is not None and node.op_type in ddso:
                out.append(Problem(
                    "E10055", _format("E10055", f"{node.op_type} ({label}) has a data-dependent output shape, which "
                                                f"gears do not support"),
                    "remove the data-dependent op (e.g. replace NonZero masks by a static mask) or drop the gears",
                    "op", label, node.op_type, graph))
            continue
        spec = target.op_table.get(node.op_type, domain)
        lo, hi = target.opset_range(settings.cann_version)
        no_parser = (spec is None or opset not in spec.opsets or
                     (domain == "ai.onnx" and not lo <= opset <= hi))
        if no_parser:
            hint = (f"re-export at an opset {target.name}'s ATC parses ({lo}-{hi}), rewrite {node.op_type} with the "
                    "om_convert rewrite rules, or register a custom ONNX plugin")
            why = "" if v.reason.startswith("no ") else f" ({v.reason})"
            out.append(Problem("E19010", _format("E19010", label, optype) + why, hint, "op",
                               label, node.op_type, graph))
        elif node.op_type in ddso and "dynamic shape" in v.reason:
            out.append(Problem("E10055", _format("E10055", v.reason),
                               "replace the data-dependent op by static-shape ops (e.g. a mask instead of NonZero)",
                               "op", label, node.op_type, graph))
        else:
            out.append(Problem("EZ3003", _format("EZ3003", label, node.op_type) + f" ({v.reason})",
                               "change the attribute / dtype to one the target supports, or rewrite the op",
                               "op", label, node.op_type, graph))
    return out


def _has_dtype_hint(target: Any, dtype: str) -> str:
    """What to do about a tensor of `dtype` the target has no kernels for."""
    try:
        from ascend_adapt.targets import list_targets, load_target

        others = [n for n in list_targets() if dtype not in load_target(n).unsupported_dtypes
                  and load_target(n).toolchain == target.toolchain]
    except Exception:  # noqa: BLE001 - a broken profile elsewhere must not hide this problem
        others = []
    to = "float32" if dtype == "float64" else "float16 or float32"
    where = f", or build for a target that has {dtype} ({', '.join(others)})" if others else ""
    return (f"cast the {dtype} tensors to {to} before export (for a checkpoint: convert / export with "
            f"--weight-dtype float16 or float32){where}")


def _check_dtypes(model: onnx.ModelProto, target: Any, graph: str | None,
                  infos: Mapping[str, TensorInfo]) -> list[Problem]:
    """Tensors of a dtype the target has no kernels for (its `unsupported_dtypes` fact), once per dtype."""
    from ascend_adapt.targets.profile import dtype_name

    found: dict[str, list[str]] = {}
    names = [vi.name for vi in list(model.graph.input) + list(model.graph.output)]
    names += [t.name for t in model.graph.initializer] + list(infos)
    seen = set()
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        info = infos.get(name)
        elem = info.elem_type if info is not None else None
        if elem is None:
            elem = next((t.data_type for t in model.graph.initializer if t.name == name), None)
        d = dtype_name(elem)
        if d in target.unsupported_dtypes:
            found.setdefault(d, []).append(name)
    out = []
    for d, tensors in found.items():
        shown = ", ".join(tensors[:5]) + (f" and {len(tensors) - 5} more" if len(tensors) > 5 else "")
        src = target.dtype_source("unsupported_dtypes")
        out.append(Problem("EZ3003", f"No supported Ops kernel is found for {d} tensors ({shown}): {target.name} "
                                     f"has no {d} kernels (source: {src})",
                           _has_dtype_hint(target, d), "dtype", graph=graph))
    return out


def _check_fp16_only(model: onnx.ModelProto, settings: SimSettings, target: Any, graph: str | None,
                     infos: Mapping[str, TensorInfo]) -> list[Problem]:
    """Ops with no fp32 kernel on the chip (its `fp16_only_ops` fact), kept in fp32 by must_keep_origin_dtype."""
    ops = target.fp16_only_ops
    if not settings.keeps_origin or not ops:
        return []
    out = []
    src = target.dtype_source("fp16_only_ops")
    for node, prefix, idx in iter_nodes(model.graph):
        if node.op_type not in ops:
            continue
        if not any(n in infos and infos[n].elem_type == onnx.TensorProto.FLOAT for n in node.input if n):
            continue
        label = prefix + node_label(node, idx)
        mode = settings.precision_mode_v2 or settings.precision_mode
        out.append(Problem(
            "EZ3003", _format("EZ3003", label, node.op_type) +
            f" ({target.name} has no float32 {node.op_type} kernel, and {mode} keeps it in float32; source: {src})",
            f"use --precision_mode allow_fp32_to_fp16 or force_fp16 (the op then runs in fp16), or cast "
            f"{node.op_type}'s inputs and weights to float16 in the graph", "dtype", label, node.op_type, graph))
    return out


def _check_keep_dtype(model: onnx.ModelProto, settings: SimSettings, target: Any, warnings: list[str]) -> None:
    if not settings.keep_dtype or settings.keeps_origin:
        if settings.keep_dtype and settings.keeps_origin:
            warnings.append("--keep_dtype is ignored with must_keep_origin_dtype (every op keeps its dtype)")
        return
    from .numerics import plan_precision

    plan = plan_precision(model, settings, target=target)
    for entry in plan.unmatched_keep:
        warnings.append(f"--keep_dtype entry '{entry}' matches no node in the model (ignored, as ATC does)")


def check_memory(models: Sequence[onnx.ModelProto] | onnx.ModelProto, target: Any, settings: SimSettings | Sequence[SimSettings],
                 *, graphs: Sequence[str] | None = None, input_shapes: Sequence[Mapping | None] | None = None):
    """Load-time memory check for one graph or several loaded side by side (prefill + decode).

    Returns:
        (list of Problem, combined MemoryEstimate).
    """
    from .cost import combine_memory, estimate_memory

    target = resolve_target(target)
    ms = [models] if isinstance(models, onnx.ModelProto) else list(models)
    ss = [settings] * len(ms) if isinstance(settings, SimSettings) else list(settings)
    shapes = list(input_shapes) if input_shapes is not None else [None] * len(ms)
    mems = [estimate_memory(m, target, s, input_shapes=sh) for m, s, sh in zip(ms, ss, shapes)]
    total = combine_memory(mems)
    total.limit_bytes = getattr(target, "usable_memory_bytes", None) or target.memory_bytes
    problems = []
    if total.total_bytes > total.limit_bytes:
        gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
        names = ", ".join(graphs) if graphs else "the model"
        problems.append(Problem(
            "207001",
            f"aclmdlLoadFromFile failed: ACL_ERROR_RT_MEMORY_ALLOCATION. {names} needs {gib(total.total_bytes)} of "
            f"device memory (weights {gib(total.weights_bytes)} + I/O and KV cache {gib(total.io_bytes)} + "
            f"workspace {gib(total.workspace_bytes)}), {target.name} has {gib(total.limit_bytes)} per chip",
            "use a lower-precision mode (force_fp16 halves fp32 weights), quantize the weights, shorten "
            "max_len / batch (KV cache), or pick a target with more memory (ascend-adapt estimate)",
            "memory", graph=", ".join(graphs) if graphs else None))
    return problems, total


def check_model(model: Any, target: Any, settings: SimSettings | None = None, *, graph: str | None = None,
                memory: bool = True, input_shapes: Mapping[str, Sequence[int]] | None = None) -> AcceptanceReport:
    """Everything ATC (and loading on the card) would refuse for one graph.

    Args:
        model: path to an .onnx file or a ModelProto (weights are not read).
        target: Target or target name.
        settings: the ATC settings (default: force_fp16, no --input_shape).
        graph: name used in messages ("prefill", "decode").
        memory: also run the load-time memory check for this graph alone.
        input_shapes: concrete shapes for the memory check (default: the largest gear / pinned).

    Returns:
        AcceptanceReport; `.raise_if_rejected()` raises SimulatorRejection.
    """
    target = resolve_target(target)
    settings = settings or SimSettings(target=target.name)
    m = load_model(model)
    report = AcceptanceReport(target.name)
    report.problems += _check_precision(settings, target, graph)
    report.problems += _check_gears(settings, target, graph)
    infos = infer_tensor_infos(m)
    report.problems += _check_dtypes(m, target, graph, infos)
    report.problems += _check_ops(m, settings, target, graph, infos, report.warnings)
    report.problems += _check_fp16_only(m, settings, target, graph, infos)
    if settings.keeps_origin and target.fp16_only_ops is None:
        report.warnings.append(f"which ops lack a float32 kernel on {target.name} is not known "
                               f"({target.dtype_source('fp16_only_ops') or 'no fact in its profile'}): "
                               f"{settings.precision_mode_v2 or settings.precision_mode} may still fail "
                               "for such ops on the card")
    report.problems += _check_shapes(m, settings, target, graph, report.warnings)
    if not report.problems:
        _check_keep_dtype(m, settings, target, report.warnings)
    if memory and not any(p.kind in ("shape", "gears") for p in report.problems):
        from .cost import resolve_input_shapes

        shapes, unknown = resolve_input_shapes(m, settings, input_shapes)
        if unknown:
            report.warnings.append(f"memory not checked: unknown dims of {', '.join(unknown)}")
        else:
            probs, report.memory = check_memory(m, target, settings, graphs=[graph] if graph else None,
                                                input_shapes=[shapes])
            report.problems += probs
    return report


def accept_model(model: Any, target: Any, settings: SimSettings | None = None, **kw) -> AcceptanceReport:
    """`check_model` that raises SimulatorRejection when anything would be refused."""
    return check_model(model, target, settings, **kw).raise_if_rejected(kw.get("graph"))


def check_graphs(models: Mapping[str, Any], target: Any, settings: Mapping[str, SimSettings] | SimSettings
                 ) -> AcceptanceReport:
    """Check several graphs of one artifact (each alone, then their memory side by side)."""
    target = resolve_target(target)
    report = AcceptanceReport(target.name)
    loaded = {}
    for name, model in models.items():
        s = settings[name] if isinstance(settings, Mapping) else settings
        loaded[name] = (load_model(model), s)
        r = check_model(loaded[name][0], target, s, graph=name, memory=False)
        report.extend(r)
    if not any(p.kind in ("shape", "gears") for p in report.problems):
        from .cost import resolve_input_shapes

        shapes = []
        for name, (m, s) in loaded.items():
            sh, unknown = resolve_input_shapes(m, s)
            if unknown:
                report.warnings.append(f"memory not checked: unknown dims of {', '.join(unknown)} in {name}")
                return report
            shapes.append(sh)
        probs, report.memory = check_memory([m for m, _ in loaded.values()], target,
                                            [s for _, s in loaded.values()], graphs=list(loaded),
                                            input_shapes=shapes)
        report.problems += probs
    return report
