"""Rewrite rules for ONNX files ascend-adapt did not build (traced exports, users' models).

    >>> from ascend_adapt.operators.rewrites import apply_rules, RULES
    >>> model, report = apply_rules(model, "Ascend310P3")   # doctest: +SKIP
    >>> print(report)                                       # doctest: +SKIP

A rule is pattern / check / rewrite (`base.Rule`, `base.NodeRule`); `RULES` maps rule names to
rule objects (registering a name twice raises). `apply_rules` reports per rule how often it fired
and, for each candidate it left alone, why. See docs/rewrite_rules.md to add one.
"""

from .base import (RULES, SKIP, Miss, NodeRule, RewriteContext, RewriteError, RewriteReport, Rule, RuleResult,
                   apply_rules, register_rule)
from .precision_files import ascend_op_types, write_keep_dtype, write_modify_mixlist

__all__ = [
    "RULES", "SKIP", "Miss", "NodeRule", "Rule", "RuleResult", "RewriteContext", "RewriteError", "RewriteReport",
    "apply_rules", "register_rule", "write_keep_dtype", "write_modify_mixlist", "ascend_op_types",
]
