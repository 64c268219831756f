"""Check `AtcOptions` the way ATC does, before ATC runs (or where there is no ATC at all).

Every rule raises `AtcValidationError` with ATC's own error code and the message template of
`ge_error_codes.txt`, plus a `fix:` hint. The rules and their codes (docs/atc.md has the table):

| code   | rule |
|--------|------|
| E10007 | --model / --output / --soc_version / --framework required for a build (mode 0) |
| E10008 | --framework=0 (Caffe) needs --weight |
| E10001 | a value outside the flag's valid set; dynamic_dims needs --input_format=ND; ... |
| E10010 | --log value |
| E10005 / E10006 | a true/false or 1/0 flag with another value |
| E10056 | --precision_mode and --precision_mode_v2 together |
| E10011 | a shape value that is not positive (-1 excepted) |
| E10009 | more than one of dynamic_batch_size / dynamic_image_size / dynamic_dims / input_shape_range |
| E10004 | gears without --input_shape |
| E10040 | gears, but --input_shape has no -1 or has a `~` range |
| E10035 / E10036 | fewer than 2 / more than 100 gears (256 on Ascend950: the chip's limits, target data) |
| E10037 | gears with different value counts |
| E10038 | a gear value ≤ 0 |
| E10039 | duplicate gears |
| E10045 / E10003 | --dynamic_dims values per gear ≠ number of -1 in --input_shape |
| E10018 / E10012 | dynamic_batch_size: -1 elsewhere than N / on a scalar input |
| E10019 | dynamic_image_size: -1 elsewhere than H and W |
| E10047 | --dynamic_dims with --insert_op_conf (AIPP) |
| E10055 | a dynamic-shape model (range or -1 without gears) on Ascend310 / Ascend310B* |
| E10410 | a file named by a flag does not exist (with `check_files=True`) |

The gear rules (E10004 ... E10047) and the per-chip limits (gear counts, shape ranges) are
defined once, in the core: `ascend_adapt.targets.gear_rules`, which reads them from the target
data; `gear_problems` here turns its violations into `AtcValidationError`s.
"""

from __future__ import annotations

import os
from typing import Iterator

from ascend_adapt.targets.gear_rules import (GEAR_FLAGS, gear_violations, max_gears_for,  # noqa: F401 (re-exported)
                                             supports_shape_range)

from .errors import AtcValidationError
from .options import (
    BUFFER_OPTIMIZE,
    CORE_TYPES,
    EXTERNAL_WEIGHT,
    FRAMEWORKS,
    HOST_ENV_CPU,
    HOST_ENV_OS,
    INPUT_FORMATS,
    JIT_COMPILE,
    LOG_LEVELS,
    MIX_PRECISION_MODES,
    MIX_PRECISION_MODES_V2,
    MODES,
    OP_COMPILER_CACHE_MODES,
    OP_DEBUG_LEVELS,
    OP_SELECT_IMPLMODES,
    OUTPUT_TYPES,
    PRECISION_MODES,
    PRECISION_MODES_V2,
    SHAPE_BUILD_MODES,
    AtcOptions,
    DimRange,
    count_dynamic_dims,
    format_input_shape,
    has_ranges,
)

_GEAR_FLAGS = GEAR_FLAGS
_RANGE_REASON = "The current value is not within the valid range."


def validate(options: AtcOptions, *, check_files: bool = False) -> None:
    """Raise the first problem ATC would report for these options.

    Args:
        options: the options to check.
        check_files: also check that the files the flags name exist (E10410) and that an AIPP
            config parses and fits the inputs.

    Raises:
        AtcValidationError: with ATC's code, ATC's wording and a fix.
    """
    for problem in iter_problems(options, check_files=check_files):
        raise problem


def problems(options: AtcOptions, *, check_files: bool = False) -> list[AtcValidationError]:
    """Every problem found (the CLI prints them all); empty when ATC would accept the options."""
    return list(iter_problems(options, check_files=check_files))


def _invalid(value, flag: str, reason: str, hint: str) -> AtcValidationError:
    return AtcValidationError.from_code("E10001", value, f"--{flag}", reason, hint=hint, flag=flag)


def _choices(values) -> str:
    return ", ".join(str(v) for v in values)


def iter_problems(options: AtcOptions, *, check_files: bool = False) -> Iterator[AtcValidationError]:
    """Yield the problems in the order ATC checks them (parameters, then shapes, then gears)."""
    o = options
    mode = 0 if o.mode is None else o.mode
    if mode not in MODES:
        yield _invalid(o.mode, "mode", f"{_RANGE_REASON} Valid values: {_choices(MODES)}.",
                       "use --mode=0 to build an OM, 3 to pre-check, 1 to dump an OM to JSON")
        return
    yield from _required(o, mode)
    yield from _enums(o)
    yield from _precision(o)
    shape_ok = True
    for problem in _shape_values(o):
        shape_ok = False
        yield problem
    dyn = [f for f in _GEAR_FLAGS if getattr(o, f) is not None]
    if len(dyn) + (o.input_shape_range is not None) > 1:
        yield AtcValidationError.from_code(
            "E10009", flag=dyn[0] if dyn else "input_shape_range",
            hint="keep one gear option; for an LLM prefill graph use --dynamic_dims only")
    elif dyn and shape_ok:
        yield from _gears(o, dyn[0])
    if shape_ok:
        yield from _dynamic_shape_support(o, dyn)
    if check_files:
        yield from _files(o)


def _required(o: AtcOptions, mode: int) -> Iterator[AtcValidationError]:
    if mode == 1:
        if not (o.om or o.model):
            yield AtcValidationError.from_code(
                "E10007", "om", "the OM file to convert to JSON (or --model with --framework)",
                flag="om", hint="atc --mode=1 --om=model.om --json=model.json")
        if not o.json:
            yield AtcValidationError.from_code("E10007", "json", "the JSON file to write", flag="json",
                                               hint="atc --mode=1 --om=model.om --json=model.json")
        return
    if mode in (5, 6):
        return
    if o.framework is None:
        yield AtcValidationError.from_code(
            "E10007", "framework", "0(Caffe), 1(MindSpore), 3(TensorFlow) or 5(ONNX)",
            flag="framework", hint="pass --framework=5 for an ONNX model")
    elif o.framework not in FRAMEWORKS:
        yield _invalid(o.framework, "framework", "The value must be 0(Caffe), 1(MindSpore), "
                       "3(TensorFlow) or 5(ONNX).", "pass --framework=5 for an ONNX model")
    if not o.model and not o.singleop:
        yield AtcValidationError.from_code(
            "E10007", "model", "the path of the source model (.onnx, .pb, .prototxt or .air)",
            flag="model", hint="pass --model=path/to/model.onnx")
    if mode in (0, 30) and not o.output:
        yield AtcValidationError.from_code(
            "E10007", "output", "the output path prefix (ATC appends .om)", flag="output",
            hint="pass --output=out/model to get out/model.om")
    if not o.soc_version:
        yield AtcValidationError.from_code(
            "E10007", "soc_version", 'the target chip, e.g. Ascend310P3 ("Ascend" + the Name '
            "column of npu-smi info)", flag="soc_version",
            hint="pass --soc_version for the card that will run the OM (an OM runs only on its soc)")
    elif not o.soc_version.startswith("Ascend"):
        yield _invalid(o.soc_version, "soc_version", "Expected a chip name such as Ascend310P3.",
                       'use "Ascend" + the Name column of `npu-smi info`, e.g. Ascend310P3')
    if o.framework == 0 and not o.weight:
        yield AtcValidationError.from_code(
            "E10008", flag="weight", hint="pass --weight=model.caffemodel with --framework=0")


def _enums(o: AtcOptions) -> Iterator[AtcValidationError]:
    checks = [
        ("input_format", INPUT_FORMATS, "use ND for LLM graphs, NCHW/NHWC for images"),
        ("precision_mode", PRECISION_MODES, "force_fp16 is the inference default"),
        ("precision_mode_v2", PRECISION_MODES_V2, "fp16 is the default"),
        ("op_select_implmode", OP_SELECT_IMPLMODES, "high_performance is the default"),
        ("host_env_os", HOST_ENV_OS, "linux is the only host OS"),
        ("host_env_cpu", HOST_ENV_CPU, "aarch64 (default) or x86_64: the CPU of the host running the OM"),
        ("external_weight", EXTERNAL_WEIGHT, "0 weights inside the OM, 1 one file per Const, 2 one file"),
        ("jit_compile", JIT_COMPILE, "0 prebuilt binaries, 1 online compile (default), 2 mixed"),
        ("op_debug_level", OP_DEBUG_LEVELS, "0 (default) to 4"),
        ("op_compiler_cache_mode", OP_COMPILER_CACHE_MODES, "disable, enable or force"),
        ("buffer_optimize", BUFFER_OPTIMIZE, "l2_optimize (default) or off_optimize"),
        ("core_type", CORE_TYPES, "AiCore (default) or VectorCore"),
        ("shape_generalized_build_mode", SHAPE_BUILD_MODES, "shape_precise (default)"),
    ]
    for flag, allowed, hint in checks:
        value = getattr(o, flag)
        if value is not None and value not in allowed:
            yield _invalid(value, flag, f"{_RANGE_REASON} Valid values are: {{{_choices(allowed)}}}.",
                           f"--{flag}: {hint}")
    if o.log is not None and o.log not in LOG_LEVELS:
        yield AtcValidationError.from_code("E10010", o.log, flag="log",
                                           hint="--log takes debug, info, warning, error or null")
    if o.output_type is not None:
        types = o.output_type.values() if isinstance(o.output_type, dict) else [o.output_type]
        for t in types:
            if t not in OUTPUT_TYPES:
                yield _invalid(t, "output_type", f"{_RANGE_REASON} Only support {_choices(OUTPUT_TYPES)}.",
                               'use FP32 / FP16 / INT8 / UINT8, globally or per node "node:0:FP16"')
    for flag in ("allow_hf32", "enable_compress_weight"):
        value = getattr(o, flag)
        if value is not None and not isinstance(value, bool):
            yield AtcValidationError.from_code("E10005", value, flag, flag=flag,
                                               hint=f"--{flag} takes true or false")
    for flag in ("enable_small_channel", "disable_reuse_memory", "sparsity", "status_check", "deterministic"):
        value = getattr(o, flag)
        if value is not None and not isinstance(value, bool):
            yield AtcValidationError.from_code("E10006", value, flag, flag=flag,
                                               hint=f"--{flag} takes 1 or 0")


def _precision(o: AtcOptions) -> Iterator[AtcValidationError]:
    if o.precision_mode is not None and o.precision_mode_v2 is not None:
        yield AtcValidationError.from_code(
            "E10056", "--precision_mode", "--precision_mode_v2", flag="precision_mode_v2",
            hint="keep one: precision_mode_v2 is the newer spelling (fp16, origin, mixed_float16, ...)")
    if o.modify_mixlist is not None:
        mixed = o.precision_mode in MIX_PRECISION_MODES or o.precision_mode_v2 in MIX_PRECISION_MODES_V2
        if not mixed:
            yield _invalid(o.modify_mixlist, "modify_mixlist",
                           "modify_mixlist is assigned, Please ensure that precision_mode only can be "
                           "assigned to 'allow_mix_precision' or 'allow_mix_precision_fp16' or "
                           "'allow_mix_precision_bf16'(if available), precision_mode_v2 only can be "
                           "assigned to 'mixed_float16' or 'mixed_bfloat16' or 'mixed_hif8'(if available).",
                           "add --precision_mode=allow_mix_precision (or --precision_mode_v2=mixed_float16), "
                           "or use --keep_dtype to pin single ops")
    if o.optypelist_for_implmode is not None and o.op_select_implmode is None:
        yield _invalid("", "op_select_implmode", "Parameters --op_select_implmode and "
                       "--optypelist_for_implmode must be set at the same time.",
                       "add --op_select_implmode=high_precision (or high_performance)")


def _shape_values(o: AtcOptions) -> Iterator[AtcValidationError]:
    if not o.input_shape:
        return
    for name, dims in o.input_shape.items():
        text = f"{name}:{','.join(str(d) for d in dims)}"
        for d in dims:
            if isinstance(d, DimRange):
                if d.lo < 1 or d.hi < 1:
                    yield AtcValidationError.from_code(
                        "E10011", text, min(d.lo, d.hi), flag="input_shape",
                        hint="range bounds are positive integers, e.g. 1~8")
                elif d.lo > d.hi:
                    yield AtcValidationError.from_code(
                        "E10002", text, f"The range {d} has its lower bound above its upper bound",
                        '"input_name1:n1~n2,c1,h1,w1"', flag="input_shape",
                        hint="write ranges as lo~hi with lo <= hi")
            elif d != -1 and d <= 0:
                yield AtcValidationError.from_code(
                    "E10011", text, d, flag="input_shape",
                    hint="shape values are positive integers; -1 marks a gear-bound (or dynamic) dim")


def _gears(o: AtcOptions, flag: str) -> Iterator[AtcValidationError]:
    yield from gear_problems(o.input_shape, flag, getattr(o, flag), soc_version=o.soc_version,
                             input_format=o.input_format, insert_op_conf=o.insert_op_conf)


def gear_problems(input_shape, flag: str, gears, *, soc_version: str | None = None,
                  input_format: str | None = "ND", insert_op_conf: str | None = None,
                  min_gears: int | None = None, max_gears: int | None = None,
                  check_format: bool = True) -> Iterator[AtcValidationError]:
    """ATC's rules for one gear option (`ascend_adapt.targets.gear_rules.gear_violations`, the
    one definition) as `AtcValidationError`s with ATC's code and wording, in ATC's order.

    `validate()` (on AtcOptions), `analyze` and `convert` call it; the arguments are those of
    `gear_violations`.
    """
    for v in gear_violations(input_shape, flag, gears, soc_version=soc_version, input_format=input_format,
                             insert_op_conf=insert_op_conf, min_gears=min_gears, max_gears=max_gears,
                             check_format=check_format):
        yield AtcValidationError.from_code(v.code, *v.args, flag=v.flag, hint=v.hint)


def _dynamic_shape_support(o: AtcOptions, dyn: list[str]) -> Iterator[AtcValidationError]:
    shapes = o.input_shape or {}
    dynamic_shape = has_ranges(shapes) or (not dyn and count_dynamic_dims(shapes) > 0)
    dynamic_shape = dynamic_shape or (o.input_shape_range is not None)
    if dynamic_shape and not supports_shape_range(o.soc_version):
        yield AtcValidationError.from_code(
            "E10055", f"--input_shape {format_input_shape(shapes) or o.input_shape_range} declares a "
            f"dynamic-shape model (a lo~hi range or -1 without gears), which {o.soc_version} does not "
            "support", flag="input_shape",
            hint="pin every dim (static shapes) or use gears: -1 plus --dynamic_dims / "
                 "--dynamic_batch_size (plan them with plan_gears)")


_FILE_FLAGS = ("model", "weight", "keep_dtype", "modify_mixlist", "customize_dtypes", "op_precision_mode",
               "insert_op_conf", "fusion_switch_file", "compress_weight_conf", "om", "singleop")


def _files(o: AtcOptions) -> Iterator[AtcValidationError]:
    for flag in _FILE_FLAGS:
        path = getattr(o, flag)
        if path is None or os.path.exists(path):
            continue
        if flag == "keep_dtype":
            yield _invalid(path, "keep_dtype", "File defined by keep_dtype is not found.",
                           "write the keep_dtype file (one op name or OpType::<Type> per line)")
        else:
            yield AtcValidationError.from_code("E10410", path, flag=flag,
                                               hint=f"check the path given to --{flag}")
    if o.insert_op_conf is not None and os.path.isfile(o.insert_op_conf):
        from .aipp import check_aipp_against_options, parse_aipp

        try:
            with open(o.insert_op_conf, encoding="utf-8") as fh:
                configs = parse_aipp(fh.read())
            check_aipp_against_options(configs, o)
        except AtcValidationError as err:
            yield err
