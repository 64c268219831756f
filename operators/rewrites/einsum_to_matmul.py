"""einsum_to_matmul: batched-matmul Einsum equations -> Transpose + MatMul (+ Transpose).

ATC parses Einsum, but MatMul maps to BatchMatMulV2 on the Cube unit while Einsum's coverage of
equations is not documented, so the common attention / projection forms are rewritten:

    "bhqd,bhkd->bhqk"  ->  MatMul(A, Transpose(B, perm=[0,1,3,2]))
    "bhqk,bhkd->bhqd"  ->  MatMul(A, B)
    "bij,bjk->bik", "ij,jk->ik", "bij,jk->bik" (implicit output too)

An equation matches when it has two operands, no ellipsis, no repeated letter inside one operand,
no letter summed inside one operand, exactly one contracted letter, exactly one free letter in the
second operand, and either shared batch letters with one free letter in the first operand, or no
shared batch letters (the first operand's extra letters then broadcast against a 2-D second
operand). Batch letters may come in any order: Transposes fix it. Anything else is reported as a
miss with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from .base import NodeRule, RewriteContext, register_rule
from ._graph import attrs_of


@dataclass(frozen=True)
class MatMulPlan:
    """How an equation maps to MatMul: input permutations and the output permutation (None = as is)."""

    perm_a: tuple[int, ...] | None
    perm_b: tuple[int, ...] | None
    perm_out: tuple[int, ...] | None


def plan_einsum(equation: str) -> MatMulPlan | str:
    """Return a MatMulPlan for `equation`, or the reason it is not a batched matmul we rewrite."""
    eq = equation.replace(" ", "")
    if "..." in eq:
        return "ellipsis ('...') not handled"
    lhs, arrow, out = eq.partition("->")
    ops = lhs.split(",")
    if len(ops) != 2:
        return f"{len(ops)} operands (only 2-operand equations are rewritten)"
    a, b = ops
    if not arrow:
        out = "".join(sorted(c for c in set(a + b) if (a + b).count(c) == 1))
    for what, s in (("first operand", a), ("second operand", b), ("output", out)):
        if s and not s.isalpha():
            return f"bad subscripts '{s}'"
        if len(set(s)) != len(s):
            return f"repeated letter in the {what} '{s}' (diagonal / trace)"
    if any(c not in a and c not in b for c in out):
        return "an output letter is in no operand"
    if any(c not in out and c not in (b if c in a else a) for c in a + b):
        return "a letter is summed away inside one operand (a reduction, not a matmul)"
    contracted = [c for c in a if c in b and c not in out]
    if len(contracted) != 1:
        return f"{len(contracted)} contracted letters (exactly 1 is rewritten)"
    k = contracted[0]
    batch = [c for c in out if c in a and c in b]
    a_free = [c for c in out if c in a and c not in b]
    b_free = [c for c in out if c in b and c not in a]
    if len(b_free) != 1:
        return f"{len(b_free)} free letters in the second operand (exactly 1 is rewritten)"
    if not a_free:
        return "no free letter in the first operand (matrix-vector form not rewritten)"
    if batch and len(a_free) != 1:
        return "the first operand has extra dims the second lacks, besides shared batch dims"
    lead, m, n = a_free[:-1], a_free[-1], b_free[0]
    want_a = batch + lead + [m, k]
    want_b = batch + [k, n]
    natural = batch + lead + [m, n]

    def perm(src: str, want: list[str]) -> tuple[int, ...] | None:
        p = tuple(src.index(c) for c in want)
        return None if p == tuple(range(len(src))) else p

    return MatMulPlan(perm(a, want_a), perm(b, want_b), perm("".join(natural), list(out)))


@register_rule
class EinsumToMatMul(NodeRule):
    name = "einsum_to_matmul"
    summary = "Batched-matmul Einsum equations (bhqd,bhkd->bhqk, bij,bjk->bik, …) -> Transpose + MatMul."
    op_type = "Einsum"
    op_types = ("Einsum",)
    order = 40

    def check(self, ctx: RewriteContext, node: onnx.NodeProto) -> str | None:
        eq = attrs_of(node).get("equation", "")
        plan = plan_einsum(eq)
        if isinstance(plan, str):
            return f"equation '{eq}': {plan}"
        return None

    def rewrite(self, ctx: RewriteContext, node: onnx.NodeProto) -> None:
        plan = plan_einsum(attrs_of(node)["equation"])
        base = node.name or "einsum"
        a, b = node.input[0], node.input[1]
        nodes = []
        if plan.perm_a:
            t = ctx.node("Transpose", [a], name=f"{base}_ta", perm=list(plan.perm_a))
            nodes.append(t)
            a = t.output[0]
        if plan.perm_b:
            t = ctx.node("Transpose", [b], name=f"{base}_tb", perm=list(plan.perm_b))
            nodes.append(t)
            b = t.output[0]
        if plan.perm_out:
            mm = ctx.node("MatMul", [a, b], name=f"{base}_matmul")
            nodes += [mm, ctx.node("Transpose", [mm.output[0]], [node.output[0]], name=f"{base}_tout",
                                   perm=list(plan.perm_out))]
        else:
            nodes.append(ctx.node("MatMul", [a, b], [node.output[0]], name=f"{base}_matmul"))
        ctx.insert(nodes, before=node)
        ctx.remove([node])
