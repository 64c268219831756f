"""`ascend-adapt ops list | show NAME`: rewrite rules and custom operators (light at import)."""

from __future__ import annotations

import sys

import click

from ..errors import RegistryError


def _operators():
    """The custom-operator registry, or None where it is not available."""
    try:
        from ascend_adapt.operators.registry import OPERATORS
    except ImportError:
        return None
    return OPERATORS


@click.group("ops")
def ops_group():
    """List and show custom operators and rewrite rules."""


@ops_group.command("list")
@click.option("--kind", type=click.Choice(["all", "rules", "operators"]), default="all", show_default=True)
def ops_list(kind):
    """One line per rewrite rule and custom operator."""
    from ascend_adapt.operators.rewrites import RULES

    if kind in ("all", "rules"):
        click.echo("rewrite rules (ascend_adapt.operators.rewrites; applied in this order):")
        for name, rule in sorted(RULES.items(), key=lambda kv: (kv[1].order, kv[0])):
            click.echo(f"  {name:26s} {rule.when:7s} {rule.summary}")
    ops = _operators() if kind in ("all", "operators") else None
    if kind in ("all", "operators"):
        if ops is None:
            click.echo("custom operators: (registry not available)")
        else:
            click.echo("custom operators (ascend_adapt.operators):")
            for name, spec in ops.items():
                doc = (getattr(spec, "doc", "") or type(spec).__doc__ or "").strip().splitlines()
                click.echo(f"  {name:26s} {doc[0] if doc else ''}")


@ops_group.command("show")
@click.argument("name")
def ops_show(name):
    """Details of one rewrite rule or custom operator."""
    from ascend_adapt.operators.rewrites import RULES

    if name in RULES:
        rule = RULES.get(name)
        click.echo(f"{name}  (rewrite rule, runs {rule.when}, order {rule.order})")
        click.echo(f"  {rule.summary}")
        if rule.op_types:
            click.echo(f"  rewrites op types: {', '.join(rule.op_types)}")
        if rule.fixes:
            click.echo(f"  fixes findings: {', '.join(rule.fixes)}")
        doc = sys.modules[type(rule).__module__].__doc__ or ""
        if doc:
            click.echo("")
            click.echo(doc.strip())
        return
    ops = _operators()
    if ops is not None and name in ops:
        spec = ops.get(name)
        click.echo(f"{name}  (custom operator)")
        for attr in ("fused_op", "fp32_island"):
            if hasattr(spec, attr):
                click.echo(f"  {attr}: {getattr(spec, attr)}")
        doc = (getattr(spec, "doc", "") or type(spec).__doc__ or "").strip()
        if doc:
            click.echo("")
            click.echo(doc)
        return
    known = RULES.names() + (ops.names() if ops is not None else [])
    raise RegistryError(f"no rewrite rule or operator named '{name}'", f"use one of: {', '.join(sorted(known))}")
