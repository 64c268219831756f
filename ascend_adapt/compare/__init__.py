"""Compare two runners / artifacts per output and layer by layer (Polygraphy style).

    >>> from ascend_adapt.compare import compare, format_report
    >>> r = compare("llama-hf", "out/llama.omsim", layerwise=True)
    >>> r.passed, r.first_divergent_layer, r.min_atol
    (False, 'layers.1', 0.83)

Modules: `metrics` (per-tensor errors and the tolerances that would have passed), `sources`
(what a path means: torch golden, export, MindSpore port, .onnx, .omsim, .om), `core`
(`compare`, the report), `tolerance` (the default tolerance per tensor, derived from the two sides'
compute precisions, the model and the tensor's depth), `fp16fix` (keep_dtype / modify_mixlist proposal and re-check),
`plot` (PNG of the error per layer).
"""

from .core import CompareReport, compare, format_report, load_inputs
from .fp16fix import FixProposal, diagnose, propose_fix, write_fix_files
from .metrics import FP16_MAX, TensorStats, layer_of, tensor_stats

__all__ = ["CompareReport", "compare", "format_report", "load_inputs", "FixProposal", "diagnose",
           "propose_fix", "write_fix_files", "FP16_MAX", "TensorStats", "layer_of", "tensor_stats"]
