"""Debugging tools: reduce a failing ONNX graph to a minimal failing subgraph.

    >>> from ascend_adapt.debug import reduce_model
    >>> r = reduce_model("prefill.onnx", "sim-rejects", target="Ascend310")
    >>> r.node_labels
    ['layers.0/mlp/act (GroupNormalization)']

Modules: `subgraph` (GraphIndex: topological order, extraction by node set), `checks` (what
"fails" means: sim-rejects / atc-fails / accuracy / a user command), `reduce` (bisect + linear).
"""

from .checks import CHECKS, Accuracy, AtcFails, Check, CheckOutcome, CommandCheck, SimRejects, make_check
from .reduce import ReduceResult, ReduceStep, reduce_model, write_reduced
from .subgraph import GraphIndex, fold_constants, random_feeds

__all__ = [
    "CHECKS", "Accuracy", "AtcFails", "Check", "CheckOutcome", "CommandCheck", "SimRejects", "make_check",
    "ReduceResult", "ReduceStep", "reduce_model", "write_reduced", "GraphIndex", "fold_constants",
    "random_feeds",
]
