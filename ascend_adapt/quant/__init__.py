"""Quantization for the Ascend 310 family: W8A16 (weight-only int8) and W8A8 (SmoothQuant).

- `weights`: symmetric int8 weight quantizers (per channel, group-wise) and their inverse;
- `smoothquant`: calibration statistics and the W8A8 plan (smoothing vectors, static activation
  scales, the keep-fp16 rule).

Importing this package imports numpy only. Guide: docs/quantization.md.
"""

from __future__ import annotations

QUANT_MODES = ("w8a16", "w8a8")

# ONNX op types (default domain) of ATC's quant ops, and the operators-registry tag of an int8
# MatMul: graph facts the simulator's cost model (core) and the quant operators (plugin) share
ASCEND_QUANT_OPS = ("AscendAntiQuant", "AscendQuant", "AscendDequant")
INT8_MATMUL_TAG = "int8_matmul"

__all__ = ["QUANT_MODES", "ASCEND_QUANT_OPS", "INT8_MATMUL_TAG"]
