"""opset_downconvert: lower the model's ONNX opset to what the target's toolchain parses.

CANN 7.0+ parses opsets 9-18 and CANN 5.0 / 6.0 opsets 9-13, so opset 19-21 exports (torch's
dynamo exporter, recent optimum) and opset 14-18 exports for old CANN need lowering. First
`onnx.version_converter`; where it has no adapter (it lacks many down-conversions, e.g. Identity
16 -> 14) a small built-in adapter handles the cases LLM graphs hit:

- ops whose newer versions only widened types or added attributes left at their defaults;
- Reduce* `axes` input -> attribute (below 18; ReduceSum below 13), Squeeze / Unsqueeze `axes`
  input -> attribute (below 13), Split `num_outputs` / `split` input (below 18 / 13);
- Reshape `allowzero=0` dropped (below 14); Softmax / LogSoftmax / Hardmax over the last axis
  (below 13, where the axis semantics changed).

An op that exists only in newer opsets (LayerNormalization < 17, Gelu < 20, …) or an adaptation
that is not possible is reported in the error, naming the op and the rule that rewrites it first.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import defs, helper

from .base import RULES, RewriteContext, RewriteError, Rule, register_rule
from ._graph import attrs_of, skeleton

_REDUCE = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
           "ReduceLogSumExp", "ReduceSumSquare")
# ops whose newer versions changed meaning in ways the attribute / arity / type check cannot see
_NO_ADAPTER = {"Resize", "Upsample", "GridSample", "DFT", "STFT", "Col2Im"}
_TYPE_STR = {1: "float", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string",
             9: "bool", 10: "float16", 11: "double", 12: "uint32", 13: "uint64", 16: "bfloat16"}


def _schema(op: str, opset: int, domain: str = "") -> defs.OpSchema | None:
    try:
        return defs.get_schema(op, opset, domain)
    except defs.SchemaError:
        return None


def _fixing_rule(op: str) -> str:
    for name, rule in RULES.items():
        if op in rule.op_types:
            return name
    return ""


def blockers(model: onnx.ModelProto, to: int) -> list[str]:
    """Ops of the default domain that have no definition at opset `to` (with the rule that fixes them)."""
    out = []
    for op in sorted({n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")}):
        if _schema(op, to) is None:
            first = _schema(op, 1000)
            since = f" (first in opset {first.since_version})" if first else ""
            rule = _fixing_rule(op)
            out.append(f"{op}{since}" + (f": apply rule {rule} first" if rule else ""))
    return out


def _const_list(ctx: RewriteContext, name: str, what: str) -> list[int]:
    v = ctx.const_value(name)
    if v is None:
        raise RewriteError(f"cannot lower {what}: input '{name}' is not a constant",
                           "fold it first (fold_shape_chains)")
    return [int(x) for x in np.asarray(v).reshape(-1)]


def _typed_ok(ctx: RewriteContext, node: onnx.NodeProto, schema: defs.OpSchema) -> str | None:
    """None if attributes, arity and known input types fit `schema`, else the reason."""
    extra = set(attrs_of(node)) - set(schema.attributes)
    if extra:
        return f"attribute(s) {sorted(extra)} do not exist in opset {schema.since_version}"
    formal = list(schema.inputs)
    n_in = len(node.input)
    if formal and formal[-1].option != defs.OpSchema.FormalParameterOption.Variadic and n_in > len(formal):
        return f"{n_in} inputs, opset {schema.since_version} takes {len(formal)}"
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    for k, name in enumerate(node.input):
        if not name or not formal:
            continue
        f = formal[min(k, len(formal) - 1)]
        dt = ctx.dtype(name)
        if not dt or dt not in _TYPE_STR:
            continue
        ts = f"tensor({_TYPE_STR[dt]})"
        ok = allowed.get(f.type_str, {f.type_str})
        if ts not in ok:
            return f"input {k} of type {_TYPE_STR[dt]} is not allowed in opset {schema.since_version}"
    return None


def manual_downconvert(ctx: RewriteContext, to: int) -> list[str]:
    """Lower every default-domain node to opset `to` in place; returns the problems (empty = done)."""
    frm = ctx.opset()
    problems: list[str] = []
    for node in list(ctx.g.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        cur, tgt = _schema(node.op_type, frm), _schema(node.op_type, to)
        if tgt is None:
            problems.append(f"{node.op_type} has no definition at opset {to}")
            continue
        if cur is not None and cur.since_version == tgt.since_version:
            continue
        a = attrs_of(node)
        op = node.op_type
        try:
            if (op in _REDUCE and to < 18) or (op == "ReduceSum" and to < 13) or \
                    (op in ("Squeeze", "Unsqueeze") and to < 13):
                if a.get("noop_with_empty_axes", 0):
                    raise RewriteError(f"{op} '{node.name}': noop_with_empty_axes=1 has no form at opset {to}")
                for x in [x for x in node.attribute if x.name == "noop_with_empty_axes"]:
                    node.attribute.remove(x)
                if len(node.input) > 1 and node.input[1]:
                    axes = _const_list(ctx, node.input[1], f"{op} '{node.name}' axes")
                    del node.input[1:]
                    node.attribute.append(helper.make_attribute("axes", axes))
            elif op == "Split" and (to < 18 and "num_outputs" in a or to < 13 and len(node.input) > 1):
                axis = int(a.get("axis", 0))
                if "num_outputs" in a:
                    shape = ctx.static_shape(node.input[0])
                    if shape is None:
                        raise RewriteError(f"Split '{node.name}' num_outputs needs a static input shape")
                    dim, n = shape[axis], int(a["num_outputs"])
                    size = -(-dim // n)
                    sizes = [min(size, dim - size * i) for i in range(n)]
                    for x in [x for x in node.attribute if x.name == "num_outputs"]:
                        node.attribute.remove(x)
                elif len(node.input) > 1 and node.input[1]:
                    sizes = _const_list(ctx, node.input[1], f"Split '{node.name}' split")
                    del node.input[1:]
                else:
                    sizes = None
                if sizes is not None:
                    if to < 13:
                        node.attribute.append(helper.make_attribute("split", sizes))
                    else:
                        node.input.append(ctx.add_initializer(f"{node.name}_split", np.array(sizes, np.int64)))
            elif op == "Reshape" and to < 14:
                if a.get("allowzero", 0):
                    raise RewriteError(f"Reshape '{node.name}': allowzero=1 has no form below opset 14")
                for x in [x for x in node.attribute if x.name == "allowzero"]:
                    node.attribute.remove(x)
            elif op in ("Softmax", "LogSoftmax", "Hardmax") and to < 13:
                axis = int(a.get("axis", -1))
                shape = ctx.shape(node.input[0])
                rank = len(shape) if shape is not None else None
                if not (axis == -1 or (rank is not None and axis == rank - 1)):
                    raise RewriteError(f"{op} '{node.name}' over axis {axis} changes meaning below opset 13")
                for x in [x for x in node.attribute if x.name == "axis"]:
                    node.attribute.remove(x)
                node.attribute.append(helper.make_attribute("axis", -1))
            elif op in _NO_ADAPTER:
                raise RewriteError(f"{op} '{node.name}': no built-in adapter from opset "
                                   f"{cur.since_version if cur else frm} to {tgt.since_version}")
            else:
                why = _typed_ok(ctx, node, tgt)
                if why:
                    raise RewriteError(f"{op} '{node.name}': {why}")
        except RewriteError as exc:
            problems.append(exc.message)
    return problems


@register_rule
class OpsetDownconvert(Rule):
    name = "opset_downconvert"
    summary = "Lower the ONNX opset to the target's maximum (onnx.version_converter, then built-in adapters)."
    fixes = ("opset",)
    when = "needed"
    order = 90

    def _to(self, ctx: RewriteContext) -> int:
        return ctx.target.max_opset(ctx.cann_version) if ctx.target is not None else 18

    def candidates(self, ctx: RewriteContext):
        return [ctx.opset()]

    def label(self, cand) -> str:
        return f"opset {cand}"

    def needed(self, ctx: RewriteContext, opset: int) -> str | None:
        to = self._to(ctx)
        if opset <= to:
            return f"opset {opset} is within {ctx.target.name}'s range (max {to} for " \
                   f"{ctx.target.toolchain_label(ctx.cann_version)})"
        return None

    def check(self, ctx: RewriteContext, opset: int) -> str | None:
        to = self._to(ctx)
        if opset <= to:
            return f"opset {opset} is not above {to}"
        return None

    def rewrite(self, ctx: RewriteContext, opset: int) -> str:
        to = self._to(ctx)
        blocked = blockers(ctx.model, to)
        if blocked:
            raise RewriteError(f"cannot lower opset {opset} to {to}: {'; '.join(blocked)}",
                               "rewrite or remove those ops first")
        try:
            self._version_converter(ctx, to)
            return f"opset {opset} -> {to} (onnx.version_converter)"
        except Exception as exc:  # version_converter raises RuntimeError / ValidationError
            first_error = str(exc).strip().splitlines()[-1][:200]
        saved_nodes = [onnx.NodeProto() for _ in ctx.g.node]
        for dst, src in zip(saved_nodes, ctx.g.node):
            dst.CopyFrom(src)
        saved_inits = {t.name for t in ctx.g.initializer}
        problems = manual_downconvert(ctx, to)
        if problems:  # leave the model as it was
            del ctx.g.node[:]
            ctx.g.node.extend(saved_nodes)
            extra = [t for t in ctx.g.initializer if t.name not in saved_inits]
            for t in extra:
                ctx.g.initializer.remove(t)
            ctx.invalidate(types=True)
            raise RewriteError(f"cannot lower opset {opset} to {to}: {'; '.join(problems[:5])}"
                               f"{' …' if len(problems) > 5 else ''} (onnx.version_converter: {first_error})",
                               "rewrite those nodes first or export at a lower opset")
        ctx.set_opset(to)
        ctx.invalidate(types=True)
        return f"opset {opset} -> {to} (built-in adapters; onnx.version_converter: {first_error})"

    @staticmethod
    def _version_converter(ctx: RewriteContext, to: int) -> None:
        from onnx import version_converter

        sk = skeleton(ctx.model)
        conv = version_converter.convert_version(sk, to)
        g = ctx.g
        keep = {t.name for t in g.initializer}
        new_inits = [t for t in conv.graph.initializer if t.name not in keep]
        conv_names = {t.name for t in conv.graph.initializer}
        drop = [t for t in g.initializer if t.name not in conv_names]
        for t in drop:
            g.initializer.remove(t)
        g.initializer.extend(new_inits)
        del g.node[:]
        g.node.extend(conv.graph.node)
        del g.value_info[:]
        del ctx.model.opset_import[:]
        ctx.model.opset_import.extend(conv.opset_import)
        ctx.invalidate(types=True)
