"""Typed ATC options: `AtcOptions` ⇄ the exact `atc --flag=value ...` command line.

Flags and value syntax follow `hicann/ge:api/atc/atc_flags.cc` as summarised in the reference
sheet §1.1. Structured values (input shapes, gears, per-node output types) are parsed with ATC's
own rules and its error codes (E10002, E10003, E10020, E10001), so a string that ATC would reject
is rejected here at construction. Rules that span several flags live in `validate.py`.

Example:
    >>> opts = AtcOptions(model="m.onnx", output="out/m", soc_version="Ascend310P3",
    ...                   input_format="ND", input_shape="input_ids:1,-1;attention_mask:1,-1",
    ...                   dynamic_dims="16,16;32,32")
    >>> opts.to_argv()[:5]
    ['atc', '--framework=5', '--model=m.onnx', '--output=out/m', '--soc_version=Ascend310P3']
    >>> opts.to_command().split()[-1]
    "'--dynamic_dims=16,16;32,32'"
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from .errors import AtcValidationError
from .gearspec import (Dim, DimRange, GearSyntaxError, _shape_error, count_dynamic_dims,  # noqa: F401 (re-exported)
                       format_input_shape, parse_dim, parse_input_shape, split_profiles)

# ---------------------------------------------------------------------------------------------
# value sets (reference sheet §1.1, atc_flags.cc / option_utils.cc)

FRAMEWORKS = {0: "Caffe", 1: "MindSpore", 3: "TensorFlow", 5: "ONNX"}
MODES = {0: "build OM", 1: "model to JSON", 3: "pre-check only", 5: "GE dump txt to JSON",
         6: "show model info", 30: "execute-om for nano"}
INPUT_FORMATS = ("NCHW", "NHWC", "ND", "NCDHW", "NDHWC")
PRECISION_MODES = ("force_fp16", "force_fp32", "cube_fp16in_fp32out", "allow_fp32_to_fp16",
                   "must_keep_origin_dtype", "allow_mix_precision", "allow_mix_precision_fp16",
                   "allow_mix_precision_bf16", "allow_fp32_to_bf16")
PRECISION_MODES_V2 = ("fp16", "origin", "cube_fp16in_fp32out", "mixed_float16", "mixed_bfloat16",
                      "cube_hif8", "mixed_hif8")
MIX_PRECISION_MODES = ("allow_mix_precision", "allow_mix_precision_fp16", "allow_mix_precision_bf16")
MIX_PRECISION_MODES_V2 = ("mixed_float16", "mixed_bfloat16", "mixed_hif8")
OUTPUT_TYPES = ("FP32", "FP16", "UINT8", "INT8", "INT16", "UINT16", "INT32", "INT64", "UINT32",
                "UINT64", "DOUBLE", "HIF8", "FP8E5M2", "FP8E4M3FN")
OP_SELECT_IMPLMODES = ("high_performance", "high_precision", "high_precision_for_all",
                       "high_performance_for_all", "enable_float_32_execution",
                       "enable_hi_float_32_execution")
LOG_LEVELS = ("debug", "info", "warning", "error", "null", "default")
HOST_ENV_OS = ("linux",)
HOST_ENV_CPU = ("aarch64", "x86_64")
EXTERNAL_WEIGHT = (0, 1, 2)
JIT_COMPILE = (0, 1, 2)
OP_DEBUG_LEVELS = (0, 1, 2, 3, 4)
OP_COMPILER_CACHE_MODES = ("disable", "enable", "force")
BUFFER_OPTIMIZE = ("l2_optimize", "l1_optimize", "off_optimize", "l1_and_l2_optimize")
CORE_TYPES = ("AiCore", "VectorCore")
SHAPE_BUILD_MODES = ("shape_precise", "shape_generalized")

# ---------------------------------------------------------------------------------------------
# input shapes: the grammar lives in gearspec.py (one parser for gear and shape text)

InputShape = dict  # dict[str, tuple[Dim, ...]]: input name -> dims; () is a scalar ("x:")
_parse_dim = parse_dim


def _coerce_dim(d: Any, name: str) -> Dim:
    if isinstance(d, DimRange):
        return d
    if isinstance(d, str):
        return _parse_dim(d, f"{name}:{d}")
    if isinstance(d, (tuple, list)) and len(d) == 2:
        return DimRange(int(d[0]), int(d[1]))
    if isinstance(d, bool) or not isinstance(d, int):
        if hasattr(d, "__index__"):
            return int(d)
        raise _shape_error(f"{name}:{d}", "It is not a digit", '"input_name1:1,3,224,224"')
    return d


def _coerce_shapes(value: Any) -> dict[str, tuple[Dim, ...]] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_input_shape(value)
    if isinstance(value, Mapping):
        return {str(k): tuple(_coerce_dim(d, str(k)) for d in v) for k, v in value.items()}
    raise TypeError(f"input_shape must be a str or a mapping name -> dims, not {type(value).__name__}")


def has_ranges(shapes: Mapping[str, Sequence[Dim]]) -> bool:
    """True when any dim is a `lo~hi` range."""
    return any(isinstance(d, DimRange) for dims in shapes.values() for d in dims)


# ---------------------------------------------------------------------------------------------
# gear values


def _strip_semicolon(text: str) -> str:
    text = text.strip()
    return text[:-1] if text.endswith(";") else text


def _coerce_batch(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().rstrip(",")
        if not text or any(not (c.isdigit() or c == ",") for c in text):
            raise AtcValidationError.from_code(
                "E10003", value, "dynamic_batch_size", 'It can only contain digits and ",".',
                flag="dynamic_batch_size", hint='write --dynamic_batch_size as "1,2,4,8"')
        return tuple(int(v) for v in text.split(","))
    return tuple(int(v) for v in value)


def _coerce_image(value: Any) -> tuple[tuple[int, int], ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = _strip_semicolon(value)
        if not text or any(not (c.isdigit() or c in ", ;") for c in text):
            raise AtcValidationError.from_code(
                "E10003", value, "dynamic_image_size", 'It can only contain digits, ",", " " and ";".',
                flag="dynamic_image_size", hint='write --dynamic_image_size as "h1,w1;h2,w2"')
        gears = [tuple(int(v) for v in g.split(",") if v.strip()) for g in text.split(";")]
    else:
        gears = [tuple(int(v) for v in g) for g in value]
    for g in gears:
        if len(g) != 2:
            raise AtcValidationError.from_code(
                "E10020", value if isinstance(value, str) else _format_gears(value),
                flag="dynamic_image_size", hint="each --dynamic_image_size profile is exactly 'h,w'")
    return tuple(gears)  # type: ignore[return-value]


def _coerce_dims(value: Any) -> tuple[tuple[int, ...], ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = _strip_semicolon(value)
        if not text:
            raise AtcValidationError.from_code("E10058", "--dynamic_dims", flag="dynamic_dims",
                                               hint='write --dynamic_dims as "d1,d2;d3,d4"')
        try:  # ATC's parser: digits only; 0, repeats and counts are validate()'s (E10038 / E10039 / E10037)
            return split_profiles(value, "--dynamic_dims", strict=False)
        except GearSyntaxError as exc:
            raise AtcValidationError.from_code(
                "E10001", exc.token or value, "--dynamic_dims", "Dynamic dims must be a positive integer.",
                flag="dynamic_dims", hint='write --dynamic_dims as "d1,d2;d3,d4" (integers)') from None
    if value and all(isinstance(v, int) for v in value):  # a flat list = one value per gear
        return tuple((int(v),) for v in value)
    return tuple(tuple(int(v) for v in g) for g in value)


def _format_gears(gears: Iterable[Sequence[int]]) -> str:
    return ";".join(",".join(str(v) for v in g) for g in gears)


# ---------------------------------------------------------------------------------------------
# output_type


def _coerce_output_type(value: Any) -> str | dict[str, str] | None:
    if value is None or isinstance(value, Mapping):
        return None if value is None else {str(k): str(v) for k, v in value.items()}
    text = str(value).strip().rstrip(";")
    if ":" not in text:
        return text
    per_node: dict[str, str] = {}
    for item in text.split(";"):
        node, _, dtype = item.rpartition(":")
        per_node[node.strip()] = dtype.strip()
    return per_node


def _format_output_type(value: str | Mapping[str, str]) -> str:
    if isinstance(value, Mapping):
        return ";".join(f"{node}:{dtype}" for node, dtype in value.items())
    return str(value)


# ---------------------------------------------------------------------------------------------
# the options


def _sep_list(sep: str):
    def coerce(value: Any) -> tuple[str, ...] | None:
        if value is None:
            return None
        if isinstance(value, str):
            return tuple(v.strip() for v in value.strip().rstrip(sep).split(sep) if v.strip())
        return tuple(str(v) for v in value)
    return coerce


def _bool(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true"):
        return True
    if text in ("0", "false"):
        return False
    return value  # left for validate() to report with ATC's code


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        return value  # left for validate() to report with ATC's code


def _path(value: Any) -> str | None:
    return None if value is None else os.fspath(value)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


# kind -> (coerce, format)
_KINDS = {
    "str": (_str, str),
    "path": (_path, str),
    "int": (_int, str),
    "bool01": (_bool, lambda v: ("1" if v else "0") if isinstance(v, bool) else str(v)),
    "booltf": (_bool, lambda v: ("true" if v else "false") if isinstance(v, bool) else str(v)),
    "shape": (_coerce_shapes, format_input_shape),
    "batch": (_coerce_batch, lambda v: ",".join(str(x) for x in v)),
    "image": (_coerce_image, _format_gears),
    "dims": (_coerce_dims, _format_gears),
    "semilist": (_sep_list(";"), ";".join),
    "commalist": (_sep_list(","), ",".join),
    "output_type": (_coerce_output_type, _format_output_type),
}


def _flag(kind: str, default: Any = None, doc: str = "") -> Any:
    return field(default=default, metadata={"kind": kind, "doc": doc})


@dataclass
class AtcOptions:
    """Every ATC flag ascend-adapt sets, typed. `None` means "not on the command line".

    Construct with keyword arguments; strings in ATC's own syntax are accepted for the
    structured fields and parsed (e.g. `input_shape="x:1,-1"`, `dynamic_dims="8;16"`). Flags not
    modelled here go to `extra` ({flag: value}) and are emitted last, unchanged.

    Fields (ATC flag = field name):
        framework: 0 Caffe, 1 MindSpore (.air), 3 TensorFlow, 5 ONNX (default 5).
        model: the source model path. weight: .caffemodel (Caffe only).
        output: output path prefix; ATC appends `.om` (see `om_path`).
        soc_version: target chip, e.g. "Ascend310P3" ("Ascend" + `npu-smi info` Name).
        mode: 0 build (ATC's default), 1 model→JSON, 3 pre-check, 5 dump→JSON, 6 info, 30 nano.
        om, json: the OM to dump and the JSON to write with mode 1.
        input_format: NCHW, NHWC, ND, NCDHW or NDHWC.
        input_shape: {input: dims}; a dim is int (-1 = dynamic) or DimRange(lo, hi); () = scalar.
        input_shape_range: deprecated raw string (use ranges in input_shape).
        dynamic_batch_size: batch gears, e.g. (1, 2, 4, 8).
        dynamic_image_size: (h, w) gears.
        dynamic_dims: gears, one value per -1 of input_shape in order, e.g. ((16, 16), (32, 32)).
        out_nodes: ("node:0", ...). input_fp16_nodes: input names fed as fp16.
        output_type: one dtype ("FP16") or per output {"node:0": "FP16"}.
        precision_mode / precision_mode_v2: mutually exclusive precision settings.
        keep_dtype, modify_mixlist, customize_dtypes, op_precision_mode: config file paths.
        op_select_implmode + optypelist_for_implmode: implementation mode and the op types.
        allow_hf32: bool. insert_op_conf: AIPP prototxt. enable_small_channel: bool.
        fusion_switch_file: path. log: debug/info/warning/error/null.
        host_env_os / host_env_cpu: linux / aarch64 or x86_64.
        external_weight: 0 inside OM, 1 one file per Const, 2 one file.
        jit_compile: 0/1/2. check_report: pre-check JSON path. op_debug_level: 0–4.
        extra: other flags, {name without dashes: value}.
    """

    framework: int | None = _flag("int", 5)
    model: str | None = _flag("path")
    weight: str | None = _flag("path")
    output: str | None = _flag("path")
    soc_version: str | None = _flag("str")
    mode: int | None = _flag("int")
    om: str | None = _flag("path")
    json: str | None = _flag("path")
    input_format: str | None = _flag("str")
    input_shape: dict | None = _flag("shape")
    input_shape_range: str | None = _flag("str")
    dynamic_batch_size: tuple | None = _flag("batch")
    dynamic_image_size: tuple | None = _flag("image")
    dynamic_dims: tuple | None = _flag("dims")
    out_nodes: tuple | None = _flag("semilist")
    input_fp16_nodes: tuple | None = _flag("semilist")
    is_input_adjust_hw_layout: str | None = _flag("str")
    is_output_adjust_hw_layout: str | None = _flag("str")
    output_type: str | dict | None = _flag("output_type")
    precision_mode: str | None = _flag("str")
    precision_mode_v2: str | None = _flag("str")
    keep_dtype: str | None = _flag("path")
    modify_mixlist: str | None = _flag("path")
    customize_dtypes: str | None = _flag("path")
    op_select_implmode: str | None = _flag("str")
    optypelist_for_implmode: tuple | None = _flag("commalist")
    op_precision_mode: str | None = _flag("path")
    allow_hf32: bool | None = _flag("booltf")
    insert_op_conf: str | None = _flag("path")
    enable_small_channel: bool | None = _flag("bool01")
    fusion_switch_file: str | None = _flag("path")
    log: str | None = _flag("str")
    host_env_os: str | None = _flag("str")
    host_env_cpu: str | None = _flag("str")
    external_weight: int | None = _flag("int")
    jit_compile: int | None = _flag("int")
    check_report: str | None = _flag("path")
    op_debug_level: int | None = _flag("int")
    debug_dir: str | None = _flag("path")
    op_compiler_cache_dir: str | None = _flag("path")
    op_compiler_cache_mode: str | None = _flag("str")
    disable_reuse_memory: bool | None = _flag("bool01")
    buffer_optimize: str | None = _flag("str")
    enable_compress_weight: bool | None = _flag("booltf")
    compress_weight_conf: str | None = _flag("path")
    sparsity: bool | None = _flag("bool01")
    core_type: str | None = _flag("str")
    aicore_num: str | None = _flag("str")
    status_check: bool | None = _flag("bool01")
    deterministic: bool | None = _flag("bool01")
    shape_generalized_build_mode: str | None = _flag("str")
    oo_level: str | None = _flag("str")
    singleop: str | None = _flag("path")
    extra: dict = field(default_factory=dict, metadata={"kind": "extra"})

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            kind = f.metadata.get("kind")
            if kind in _KINDS:
                setattr(self, f.name, _KINDS[kind][0](getattr(self, f.name)))
        self.extra = {str(k).lstrip("-"): str(v) for k, v in (self.extra or {}).items()}

    # -- derived -------------------------------------------------------------------------------

    @property
    def om_path(self) -> str | None:
        """The OM file ATC writes: `--output` with `.om` appended (None without --output)."""
        return om_path_for(self.output) if self.output else None

    def replace(self, **changes: Any) -> "AtcOptions":
        """A copy with some fields changed (values are parsed as in the constructor)."""
        return dataclasses.replace(self, **changes)

    def flags(self) -> list[tuple[str, str]]:
        """(flag, value) pairs in command-line order: framework, model, weight, output,
        soc_version first, then the rest in field order, then `extra`."""
        pairs: list[tuple[str, str]] = []
        for f in dataclasses.fields(self):
            kind = f.metadata.get("kind")
            value = getattr(self, f.name)
            if kind == "extra" or value is None:
                continue
            pairs.append((f.name, _KINDS[kind][1](value)))
        pairs.extend(self.extra.items())
        return pairs

    def to_argv(self, program: str = "atc") -> list[str]:
        """The exact argv: `[program, "--framework=5", "--model=...", ...]`.

        Every flag is one `--name=value` element, so the list is safe to pass to
        `subprocess` without a shell whatever the values contain.
        """
        return [program] + [f"--{name}={value}" for name, value in self.flags()]

    def to_command(self, program: str = "atc") -> str:
        """The command line as one shell-quoted string (`shlex.join` of `to_argv`)."""
        return shlex.join(self.to_argv(program))

    @classmethod
    def from_argv(cls, argv: str | Sequence[str]) -> "AtcOptions":
        """Parse a command line back (inverse of `to_argv` / `to_command`).

        Accepts a list or a shell string; a leading program name (anything not starting with
        `-`) is skipped. Both `--flag=value` and `--flag value` forms are read. Unknown flags go
        to `extra`.

        Raises:
            AtcValidationError: a structured value ATC would not parse (E10002, E10003, …).
        """
        args = shlex.split(argv) if isinstance(argv, str) else list(argv)
        if args and not args[0].startswith("-"):
            args = args[1:]
        known = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
        values: dict[str, Any] = {"framework": None}
        extra: dict[str, str] = {}
        i = 0
        while i < len(args):
            arg = args[i]
            if not arg.startswith("-"):
                raise AtcValidationError.from_code(
                    "E10001", arg, "argv", "Arguments must be written as --flag=value.",
                    hint="check the quoting of the command line")
            name, eq, value = arg.lstrip("-").partition("=")
            if not eq:
                if i + 1 < len(args) and not args[i + 1].startswith("--"):
                    value = args[i + 1]
                    i += 1
                else:
                    value = "true"
            if name in known:
                values[name] = value
            else:
                extra[name] = value
            i += 1
        return cls(**values, extra=extra)


def om_path_for(output: str | os.PathLike) -> str:
    """The file ATC writes for `--output=output`: ATC appends `.om` to the prefix.

    Newer CANN releases may add a platform suffix (`<output>_linux_x86_64.om`); the driver looks
    for that too (`driver.find_om`).
    """
    return os.fspath(output) + ".om"


PATH_FIELDS = tuple(f.name for f in dataclasses.fields(AtcOptions) if f.metadata.get("kind") == "path")
"""Fields that hold file or directory paths (rewritten by `write_atc_script`)."""
