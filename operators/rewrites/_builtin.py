"""Imports every built-in rule module so that each registers itself in RULES."""

from . import (  # noqa: F401
    einsum_to_matmul,
    fix_input_shapes,
    float64_to_float32,
    fold_shape_chains,
    gelu20_to_tanh_or_erf,
    int64_to_int32,
    layernorm_to_primitives,
    opset_downconvert,
    remove_dead_isnan_where,
    trilu_to_const,
)
