"""The ATC driver: typed options, ATC-faithful validation, gears, AIPP, E-code decoding, running.

Everything here uses the standard library only (plus `ascend_adapt.errors` / `fsutil`), so it is
cheap to import from the CLI. See docs/atc.md.

Typical use:
    >>> from ascend_adapt.om_convert.atc import (AtcOptions, find_atc, plan_gears,
    ...     prefill_gear_shapes, run_atc, validate, write_atc_script)
    >>> gears = plan_gears(16, 1024, strategy="pow2")
    >>> shapes = prefill_gear_shapes({"input_ids": [1, "seq"], "attention_mask": [1, "seq+1024"]}, gears)
    >>> opts = shapes.apply(AtcOptions(model="prefill.onnx", output="out/prefill", soc_version="Ascend310P3"))
    >>> validate(opts)                 # raises AtcValidationError with ATC's code
    >>> write_atc_script(opts)         # out/atc_command.sh, always
    >>> if find_atc(): run_atc(opts, log_path="out/atc.log", on_line=print)
"""

from .aipp import AippConfig, aipp_to_prototxt, check_aipp_against_options, parse_aipp, write_aipp
from .codes import format_ge_message, ge_code, ge_error_table
from .driver import (
    AtcResult,
    find_atc,
    find_om,
    render_atc_script,
    report_diagnostics,
    run_atc,
    write_atc_script,
)
from .errors import AtcError, AtcNotFoundError, AtcValidationError
from .gears import (
    CompileCostEstimate,
    GearShapes,
    estimate_compile_cost,
    plan_gears,
    prefill_gear_shapes,
)
from .logparse import AtcDiagnostic, AtcLogDecoder, atc_status, decode_atc_log, fix_for
from .options import AtcOptions, DimRange, format_input_shape, om_path_for, parse_input_shape
from .validate import max_gears_for, problems, supports_shape_range, validate

__all__ = [
    "AippConfig", "AtcDiagnostic", "AtcError", "AtcLogDecoder", "AtcNotFoundError", "AtcOptions",
    "AtcResult", "AtcValidationError", "CompileCostEstimate", "DimRange", "GearShapes",
    "aipp_to_prototxt", "atc_status", "check_aipp_against_options", "decode_atc_log",
    "estimate_compile_cost", "find_atc", "find_om", "fix_for", "format_ge_message",
    "format_input_shape", "ge_code", "ge_error_table", "max_gears_for", "om_path_for", "parse_aipp",
    "parse_input_shape", "plan_gears", "prefill_gear_shapes", "problems", "render_atc_script",
    "report_diagnostics", "run_atc", "supports_shape_range", "validate", "write_aipp",
    "write_atc_script",
]
