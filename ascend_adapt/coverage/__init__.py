"""Op coverage for the torch_npu / torch_mlu routes, computed on the CPU.

`record_model_ops(model_dir, dtype)` runs a prefill and decode steps of the model's torch golden
(transformers' Llama / Qwen2, our ChatGLM) under a `TorchDispatchMode` that records every ATen
op overload it reaches, with the input dtypes and the phase. `coverage_report(trace, "torch_npu",
soc)` checks each op against the kernel lists of the package's releases (data files built from
the public op lists by `tools/build_op_coverage_data.py`, each with its branch, commit and date)
and gives a verdict per op and release: supported / falls back to CPU / unsupported, with the
dtype notes of the SoC (no bf16 on 310P) and what to do.

Nothing here imports torch at module level.
"""

from .oplists import PACKAGES, Release, load_releases
from .record import OpRecord, OpTrace, record_model_ops, record_ops
from .report import (CoverageReport, FALLBACK, SUPPORTED, UNSUPPORTED, coverage_report, dtype_policy,
                     format_report, write_report)

__all__ = ["PACKAGES", "Release", "load_releases", "OpRecord", "OpTrace", "record_model_ops", "record_ops",
           "CoverageReport", "coverage_report", "format_report", "write_report", "dtype_policy",
           "SUPPORTED", "FALLBACK", "UNSUPPORTED"]
