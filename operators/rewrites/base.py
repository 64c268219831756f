"""Rewrite-rule framework: a rule is a pattern (candidates), a check and a rewrite.

A failed check returns a reason string, so every candidate that did not match is reported with why.
`apply_rules` runs the registered rules in their `order` and returns a `RewriteReport` with, per
rule, how often it fired and the misses.

Two kinds of rule, by `when`:

- ``"always"``: a clean-up that is safe and useful on any target (fold shape chains, drop dead
  IsNaN guards, int64 ids to int32, …);
- ``"needed"``: replaces something the target does not accept (LayerNormalization before opset 17,
  Gelu-20, opset > the target's max). In automatic mode (`rules=None`) it fires only where the
  target refuses the original; named explicitly (`rules=[...]`) it always fires.

Writing a rule: see `docs/rewrite_rules.md`.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import onnx

from ascend_adapt.errors import AscendAdaptError, UnsupportedError
from ascend_adapt.registry import Registry

from ._graph import Graph, attrs_of


class Skip(str):
    """A reason a `check` may return to leave a candidate alone *without* reporting a miss
    (for rules whose pattern is broad, e.g. "any node with constant inputs")."""


SKIP = Skip("not a candidate")


class RewriteError(UnsupportedError):
    """A rule cannot rewrite the model (the message names the op that blocks)."""


@dataclass
class Miss:
    """A candidate a rule looked at and left alone, and why."""

    where: str
    reason: str


@dataclass
class RuleResult:
    """What one rule did: `fired` rewrites, the `misses`, an `error` if it gave up."""

    name: str
    fired: int = 0
    misses: list[Miss] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    removed_nodes: int = 0
    seconds: float = 0.0
    op_delta: dict[str, int] = field(default_factory=dict)  # node count change per op type

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.name, "fired": self.fired, "error": self.error, "notes": list(self.notes),
                "removed_dead_nodes": self.removed_nodes, "op_delta": dict(self.op_delta),
                "misses": [{"where": m.where, "reason": m.reason} for m in self.misses]}


@dataclass
class RewriteReport:
    """All rules' results in the order they ran."""

    results: list[RuleResult] = field(default_factory=list)

    def __getitem__(self, name: str) -> RuleResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(r.name == name for r in self.results)

    @property
    def fired(self) -> dict[str, int]:
        """{rule name: times fired} for the rules that fired."""
        return {r.name: r.fired for r in self.results if r.fired}

    @property
    def total_fired(self) -> int:
        return sum(r.fired for r in self.results)

    @property
    def errors(self) -> dict[str, str]:
        return {r.name: r.error for r in self.results if r.error}

    def to_dict(self) -> dict[str, Any]:
        return {"rules": [r.to_dict() for r in self.results]}

    def __str__(self) -> str:
        lines = []
        for r in self.results:
            state = f"fired {r.fired}x" if r.fired else "no match"
            if r.error:
                state = f"error: {r.error}"
            lines.append(f"{r.name:28s} {state}")
            for m in r.misses[:5]:
                lines.append(f"    - {m.where}: {m.reason}")
            if len(r.misses) > 5:
                lines.append(f"    - … {len(r.misses) - 5} more")
            for n in r.notes:
                lines.append(f"    note: {n}")
        return "\n".join(lines)


class RewriteContext(Graph):
    """The graph being rewritten, plus what the rules need to decide.

    Attributes:
        target: the Target (or None: "needed" rules then skip in automatic mode).
        cann_version: the toolchain version, None for the target's default.
        input_shapes: {graph input name: static shape} fixed by the user, or None.
        explicit: True when the caller named the rules (skip the "is it needed" test).
    """

    def __init__(self, model: onnx.ModelProto, target=None, cann_version: str | None = None,
                 input_shapes: Mapping[str, Sequence[int]] | None = None, explicit: bool = False):
        super().__init__(model)
        self.target = target
        self.cann_version = cann_version
        self.input_shapes = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
        self.explicit = explicit
        self.ensure_node_names()

    def target_accepts(self, node: onnx.NodeProto) -> bool:
        """Whether the target takes `node` as it is (False without a target)."""
        if self.target is None:
            return False
        dom = node.domain or ""
        return bool(self.target.op_support(
            node.op_type, self.opset(dom), attrs_of(node), [self.dtype(i) if i else None for i in node.input],
            domain=dom, cann_version=self.cann_version, num_inputs=sum(1 for i in node.input if i),
            num_outputs=sum(1 for o in node.output if o)))


class Rule:
    """Base class of a rewrite rule.

    Subclasses set `name`, `summary`, `op_types` (the op types the rule rewrites away; used by
    analyze to mark ops fixable), `when` and `order`, and implement `candidates`, `check` and
    `rewrite`. `check` returns None to go ahead or a reason string.
    """

    name: str = ""
    summary: str = ""
    op_types: tuple[str, ...] = ()
    fixes: tuple[str, ...] = ()  # model-level finding codes the rule fixes ("opset", "float64", …)
    when: str = "always"
    order: int = 100

    def candidates(self, ctx: RewriteContext) -> Iterable[Any]:
        raise NotImplementedError

    def label(self, cand: Any) -> str:
        return getattr(cand, "name", None) or str(cand)

    def needed(self, ctx: RewriteContext, cand: Any) -> str | None:
        """For `when="needed"` rules: None if the target needs the rewrite, else why not."""
        return None

    def check(self, ctx: RewriteContext, cand: Any) -> str | None:
        return None

    def rewrite(self, ctx: RewriteContext, cand: Any) -> None:
        raise NotImplementedError

    def apply(self, ctx: RewriteContext) -> RuleResult:
        """Run over all candidates; rewrite those that pass the checks."""
        res = RuleResult(self.name)
        t0 = time.perf_counter()
        alive = ctx.alive()
        for cand in list(self.candidates(ctx)):
            if isinstance(cand, onnx.NodeProto) and cand.name not in alive:
                continue  # removed by an earlier rewrite of this pass
            where = self.label(cand)
            if self.when == "needed" and not ctx.explicit:
                why = "no target given" if ctx.target is None else self.needed(ctx, cand)
                if why:
                    res.misses.append(Miss(where, why))
                    continue
            why = self.check(ctx, cand)
            if why:
                if not isinstance(why, Skip):
                    res.misses.append(Miss(where, why))
                continue
            note = self.rewrite(ctx, cand)
            if note:
                res.notes.append(str(note))
            alive = ctx.alive()
            res.fired += 1
        if res.fired:
            res.removed_nodes = ctx.commit()
        res.seconds = time.perf_counter() - t0
        return res


class NodeRule(Rule):
    """A rule anchored on nodes of one op type (`op_type`, `domain`)."""

    op_type: str = ""
    domain: str = ""

    def candidates(self, ctx: RewriteContext) -> Iterable[onnx.NodeProto]:
        return [n for n in ctx.g.node if n.op_type == self.op_type and (n.domain or "") == self.domain]

    def needed(self, ctx: RewriteContext, node: onnx.NodeProto) -> str | None:
        if ctx.target_accepts(node):
            return (f"{ctx.target.name} accepts {node.op_type} at opset {ctx.opset(node.domain)} "
                    f"({ctx.target.toolchain_label(ctx.cann_version)}); kept")
        return None


def _load_builtin_rules() -> None:
    from . import _builtin  # noqa: F401  (imports register the rules)


RULES: Registry[Rule] = Registry("rewrite rule", loader=_load_builtin_rules)


def register_rule(cls: type[Rule]) -> type[Rule]:
    """Class decorator: instantiate the rule and register it under its `name` (duplicates raise)."""
    if not cls.name:
        raise ValueError(f"rule class {cls.__name__} has no name")
    RULES.register(cls.name, cls())
    return cls


def apply_rules(model: onnx.ModelProto, target=None, rules: Sequence[str] | None = None,
                input_shapes: Mapping[str, Sequence[int]] | None = None, *,
                cann_version: str | None = None, check: bool = True) -> tuple[onnx.ModelProto, RewriteReport]:
    """Apply rewrite rules to `model` (in place) for `target`.

    Args:
        model: the ONNX model; it is modified in place and returned.
        target: a Target, a target name, or None.
        rules: rule names to apply (explicit mode: "needed" rules fire even if the target would
            accept the original); None applies every registered rule in automatic mode.
        input_shapes: {input name: static shape} to fix dynamic graph inputs before the rules run.
        cann_version: toolchain version (default: the target's default).
        check: run `onnx.checker` on the result (weights stripped) and record a failure as an error.

    Returns:
        (model, RewriteReport). A rule that gives up records `error` in the report; the others
        still run.
    """
    if target is not None:
        from ascend_adapt.targets import resolve_target

        target = resolve_target(target)
    names = RULES.names() if rules is None else list(rules)
    selected = sorted((RULES.get(n) for n in names), key=lambda r: (r.order, r.name))
    ctx = RewriteContext(model, target, cann_version, input_shapes, explicit=rules is not None)
    report = RewriteReport()
    counts = Counter(n.op_type for n in ctx.g.node)
    for rule in selected:
        try:
            res = rule.apply(ctx)
        except AscendAdaptError as exc:
            ctx.invalidate(types=True)
            res = RuleResult(rule.name, error=exc.message if not exc.hint else f"{exc.message} ({exc.hint})")
        after = Counter(n.op_type for n in ctx.g.node)
        res.op_delta = {op: after[op] - counts[op] for op in set(after) | set(counts) if after[op] != counts[op]}
        counts = after
        report.results.append(res)
    if check and report.total_fired:
        from ._graph import skeleton

        try:
            onnx.checker.check_model(skeleton(model, strip_bytes=1 << 10, empty=True))
        except onnx.checker.ValidationError as exc:
            report.results.append(RuleResult("onnx.checker", error=str(exc).splitlines()[0]))
    return model, report
