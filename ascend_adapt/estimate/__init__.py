"""Estimate an LLM's memory, decode tokens/s, prefill latency and ATC compile cost on targets.

    >>> from ascend_adapt.estimate import estimate
    >>> r = estimate("path/to/Llama-2-7b-hf", precision="fp16", seq_len=2048)
    >>> r.target("Ascend310P3").fits_one_chip, round(r.weights_bytes / 1e9, 1)
    (True, 13.5)

Works from config.json alone. See `core.py` for the model and `published.py` for the published
figures the cost model's efficiencies are fitted on (listed in the target data files);
docs/ESTIMATES.md compares the two.
"""

from .core import (PRECISIONS, CompileCost, EstimateReport, MemoryFootprint, TargetEstimate,
                   TargetFigures, WeightBytes, estimate, format_report, load_config, memory_footprint,
                   default_targets, prefill_flops, target_figures, weight_bytes, workspace_bytes)
from .published import PublishedFigure, calibration_statement, fit_memory_efficiency

__all__ = [
    "DEFAULT_TARGETS", "PRECISIONS", "CompileCost", "EstimateReport", "TargetEstimate", "TargetFigures",
    "WeightBytes", "estimate", "format_report", "load_config", "prefill_flops", "target_figures",
    "weight_bytes", "workspace_bytes", "MemoryFootprint", "memory_footprint", "CALIBRATION", "PUBLISHED", "PublishedFigure",
    "calibration_statement", "fit_memory_efficiency", "default_targets",
]


def __getattr__(name: str):
    """PUBLISHED, CALIBRATION and DEFAULT_TARGETS come from the target data files when asked for."""
    if name in ("PUBLISHED", "CALIBRATION"):
        from . import published

        return getattr(published, name)
    if name == "DEFAULT_TARGETS":
        return default_targets()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
