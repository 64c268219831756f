"""AIPP (AI pre-processing) config for `--insert_op_conf`: write, parse, check.

AIPP runs image pre-processing on the chip in this order: channel swap → crop → colour-space
conversion (CSC) → resize → mean / min / var_reci normalisation → padding. It takes UINT8 image
inputs only and cannot be combined with `--dynamic_dims` (reference sheet §1.4). LLM graphs do
not use it; vision encoders do.

Example:
    >>> cfg = AippConfig(input_format="RGB888_U8", src_image_size_w=256, src_image_size_h=256,
    ...                  crop=True, load_start_pos_w=16, load_start_pos_h=16,
    ...                  crop_size_w=224, crop_size_h=224,
    ...                  min_chn=(123.675, 116.28, 103.53), var_reci_chn=(0.0171, 0.0175, 0.0174))
    >>> parse_aipp(cfg.to_prototxt()) == [cfg]
    True
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .errors import AtcValidationError

AIPP_MODES = ("static", "dynamic")
AIPP_INPUT_FORMATS = ("YUV420SP_U8", "XRGB8888_U8", "RGB888_U8", "YUV400_U8",
                      "ARGB8888_U8", "YUYV_U8", "YUV422SP_U8", "AYUV444_U8")
"""The first four are in the reference sheet; the others are other AIPP formats of the same enum."""

_MATRIX_KEYS = tuple(f"matrix_r{r}c{c}" for r in range(3) for c in range(3))
_VECTORS = {  # field -> (prototxt prefix, count, type)
    "matrix": ("matrix_r", 9, int),
    "input_bias": ("input_bias_", 3, int),
    "output_bias": ("output_bias_", 3, int),
    "mean_chn": ("mean_chn_", 4, int),
    "min_chn": ("min_chn_", 4, float),
    "var_reci_chn": ("var_reci_chn_", 4, float),
}


def _err(reason: str, hint: str) -> AtcValidationError:
    return AtcValidationError.from_code("E10052", reason, flag="insert_op_conf", hint=hint)


@dataclass
class AippConfig:
    """One `aipp_op { ... }` block.

    Attributes:
        aipp_mode: "static" (parameters fixed in the OM) or "dynamic" (set at run time).
        related_input_rank: which model input (0-based) the AIPP is applied to.
        input_edge_idx: which output edge of that Data node, when it feeds several.
        max_src_image_size: dynamic mode: the largest source image in bytes.
        input_format: source image format (YUV420SP_U8, XRGB8888_U8, RGB888_U8, YUV400_U8, ...).
        src_image_size_w / src_image_size_h: source image size in pixels (0 = the model's).
        crop: crop enabled; load_start_pos_w/h the top-left corner, crop_size_w/h the size.
        csc_switch: colour-space conversion enabled; `matrix` (9 ints, r0c0..r2c2),
            `input_bias` / `output_bias` (3 ints each) its coefficients.
        rbuv_swap_switch: swap R/B (or U/V); ax_swap_switch: move the alpha channel.
        mean_chn: per-channel mean (up to 4 ints); min_chn: per-channel min (up to 4 floats);
            var_reci_chn: per-channel 1/std (up to 4 floats). Output = (x - mean - min) * var_reci.
        padding: padding enabled; left/right/top/bottom_padding_size in pixels.
    """

    aipp_mode: str = "static"
    related_input_rank: int = 0
    input_edge_idx: int | None = None
    max_src_image_size: int | None = None
    input_format: str | None = None
    src_image_size_w: int | None = None
    src_image_size_h: int | None = None
    crop: bool = False
    load_start_pos_w: int = 0
    load_start_pos_h: int = 0
    crop_size_w: int = 0
    crop_size_h: int = 0
    csc_switch: bool = False
    rbuv_swap_switch: bool = False
    ax_swap_switch: bool = False
    matrix: tuple | None = None
    input_bias: tuple | None = None
    output_bias: tuple | None = None
    mean_chn: tuple = ()
    min_chn: tuple = ()
    var_reci_chn: tuple = ()
    padding: bool = False
    left_padding_size: int = 0
    right_padding_size: int = 0
    top_padding_size: int = 0
    bottom_padding_size: int = 0

    def __post_init__(self) -> None:
        for name, (_, _, typ) in _VECTORS.items():
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(typ(v) for v in value))

    # -- text ------------------------------------------------------------------------------------

    def to_prototxt(self) -> str:
        """The `aipp_op { ... }` block ATC reads (fields at their defaults are left out)."""
        lines = ["aipp_op {", f"  aipp_mode: {self.aipp_mode}", f"  related_input_rank: {self.related_input_rank}"]

        def put(key: str, value: Any) -> None:
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, float):
                value = repr(value)
            lines.append(f"  {key}: {value}")

        for key in ("input_edge_idx", "max_src_image_size", "input_format", "src_image_size_w",
                    "src_image_size_h"):
            if getattr(self, key) is not None:
                put(key, getattr(self, key))
        # hardware order: swap -> crop -> CSC -> normalisation -> padding
        for key in ("rbuv_swap_switch", "ax_swap_switch"):
            if getattr(self, key):
                put(key, True)
        if self.crop:
            for key in ("crop", "load_start_pos_w", "load_start_pos_h", "crop_size_w", "crop_size_h"):
                put(key, getattr(self, key))
        if self.csc_switch:
            put("csc_switch", True)
        if self.matrix is not None:
            for key, v in zip(_MATRIX_KEYS, self.matrix):
                put(key, v)
        for name in ("output_bias", "input_bias", "mean_chn", "min_chn", "var_reci_chn"):
            prefix = _VECTORS[name][0]
            for i, v in enumerate(getattr(self, name) or ()):
                put(f"{prefix}{i}", v)
        if self.padding:
            for key in ("padding", "left_padding_size", "right_padding_size", "top_padding_size",
                        "bottom_padding_size"):
                put(key, getattr(self, key))
        lines.append("}")
        return "\n".join(lines) + "\n"

    # -- checks ----------------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise AtcValidationError (E10052, ATC's "AIPP configuration is invalid") on a bad block."""
        if self.aipp_mode not in AIPP_MODES:
            raise _err(f"aipp_mode {self.aipp_mode} is not static or dynamic", "set aipp_mode: static")
        if self.related_input_rank < 0:
            raise _err(f"related_input_rank {self.related_input_rank} is negative", "inputs count from 0")
        if self.aipp_mode == "dynamic":
            if not self.max_src_image_size or self.max_src_image_size <= 0:
                raise _err("dynamic AIPP needs max_src_image_size > 0",
                           "set max_src_image_size to the largest source image in bytes")
            return
        if self.max_src_image_size is not None:
            raise _err("max_src_image_size is for aipp_mode dynamic only", "drop it, or use aipp_mode: dynamic")
        if self.input_format is None:
            raise _err("static AIPP needs input_format", f"set input_format to one of {', '.join(AIPP_INPUT_FORMATS)}")
        if self.input_format not in AIPP_INPUT_FORMATS:
            raise _err(f"input_format {self.input_format} is not an AIPP image format",
                       f"use one of {', '.join(AIPP_INPUT_FORMATS)} (AIPP takes UINT8 images only)")
        w, h = self.src_image_size_w or 0, self.src_image_size_h or 0
        if w < 0 or h < 0:
            raise _err(f"src_image_size {w}x{h} is negative", "sizes are pixels, 0 = the model input's")
        yuv420 = self.input_format == "YUV420SP_U8"
        if yuv420 and (w % 2 or h % 2):
            raise _err(f"YUV420SP_U8 needs even src_image_size_w/h, got {w}x{h}", "use an even image size")
        if self.crop:
            if self.crop_size_w <= 0 or self.crop_size_h <= 0:
                raise _err("crop is on but crop_size_w/h is not positive", "set crop_size_w and crop_size_h")
            if self.load_start_pos_w < 0 or self.load_start_pos_h < 0:
                raise _err("load_start_pos_w/h is negative", "crop offsets count from 0")
            if w and self.load_start_pos_w + self.crop_size_w > w:
                raise _err(f"crop load_start_pos_w {self.load_start_pos_w} + crop_size_w {self.crop_size_w} "
                           f"exceeds src_image_size_w {w}", "keep the crop inside the source image")
            if h and self.load_start_pos_h + self.crop_size_h > h:
                raise _err(f"crop load_start_pos_h {self.load_start_pos_h} + crop_size_h {self.crop_size_h} "
                           f"exceeds src_image_size_h {h}", "keep the crop inside the source image")
            if yuv420 and (self.load_start_pos_w % 2 or self.load_start_pos_h % 2):
                raise _err("YUV420SP_U8 needs even load_start_pos_w/h", "move the crop to an even offset")
        for name, (_, count, _) in _VECTORS.items():
            value = getattr(self, name)
            if value is not None and len(value) > count or (name == "matrix" and value is not None
                                                             and len(value) != 9):
                raise _err(f"{name} has {len(value)} values, expected {'9' if name == 'matrix' else f'<= {count}'}",
                           f"give {name} as a tuple of {count if name == 'matrix' else f'up to {count}'} numbers")
        if self.padding and min(self.left_padding_size, self.right_padding_size, self.top_padding_size,
                                self.bottom_padding_size) < 0:
            raise _err("a padding size is negative", "padding sizes are pixels >= 0")


def aipp_to_prototxt(configs: Sequence[AippConfig]) -> str:
    """The text of an --insert_op_conf file holding these blocks (one per image input)."""
    return "".join(c.to_prototxt() for c in configs)


def write_aipp(configs: AippConfig | Sequence[AippConfig], path) -> str:
    """Validate the blocks and write them to `path` (atomically). Returns the path as str."""
    from ascend_adapt.fsutil import atomic_output

    blocks = [configs] if isinstance(configs, AippConfig) else list(configs)
    for c in blocks:
        c.validate()
    with atomic_output(path, force=True) as tmp:
        tmp.write_text(aipp_to_prototxt(blocks), encoding="utf-8")
    return str(path)


_BLOCK = re.compile(r"aipp_op\s*\{(?P<body>[^{}]*)\}", re.S)
_ITEM = re.compile(r"(?P<key>\w+)\s*:\s*(?P<value>\"[^\"]*\"|[^\s#]+)")
_SCALARS = {f.name: f for f in dataclasses.fields(AippConfig) if f.name not in _VECTORS}


def _value(text: str, key: str) -> Any:
    text = text.strip('"')
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        if re.fullmatch(r"[A-Za-z_]\w*", text):
            return text
    raise _err(f"value {text!r} of {key} is not a number, true/false or a name", "fix the AIPP file")


def parse_aipp(text: str) -> list[AippConfig]:
    """Parse an --insert_op_conf prototxt into AippConfig blocks (inverse of `aipp_to_prototxt`).

    Raises:
        AtcValidationError: E10052 when there is no `aipp_op` block or a key is unknown.
    """
    text = re.sub(r"#[^\n]*", "", text)
    configs = []
    for block in _BLOCK.finditer(text):
        kwargs: dict[str, Any] = {}
        vectors: dict[str, dict[int, Any]] = {}
        for item in _ITEM.finditer(block.group("body")):
            key, value = item.group("key"), _value(item.group("value"), item.group("key"))
            if key in _MATRIX_KEYS:
                vectors.setdefault("matrix", {})[_MATRIX_KEYS.index(key)] = value
                continue
            m = re.fullmatch(r"(input_bias|output_bias|mean_chn|min_chn|var_reci_chn)_(\d)", key)
            if m:
                vectors.setdefault(m.group(1), {})[int(m.group(2))] = value
            elif key in _SCALARS:
                kwargs[key] = value
            else:
                raise _err(f"unknown AIPP field {key}", "check the field names against the AIPP template")
        for name, values in vectors.items():
            kwargs[name] = tuple(values[i] for i in sorted(values))
        configs.append(AippConfig(**kwargs))
    if not configs:
        raise _err("no aipp_op block found", "the file holds one or more `aipp_op { ... }` blocks")
    return configs


def check_aipp_against_options(
    configs: Sequence[AippConfig],
    options,
    input_dtypes: Mapping[str, str] | None = None,
) -> None:
    """Check AIPP blocks against the ATC options (and the model's input dtypes when known).

    Rules: not with --dynamic_dims (E10047); each block's related_input_rank names an input of
    --input_shape that is a 4-D image (E10052); that input is UINT8 (E10052) and is not in
    --input_fp16_nodes (E10034).

    Args:
        configs: the AIPP blocks.
        options: AtcOptions.
        input_dtypes: {input name: dtype name} from the model, e.g. {"images": "uint8"}.
    """
    for c in configs:
        c.validate()
    if options.dynamic_dims is not None:
        raise AtcValidationError.from_code(
            "E10047", "dynamic_dims", "insert_op_conf", flag="insert_op_conf",
            hint="AIPP cannot be combined with --dynamic_dims: preprocess on the host instead")
    names = list(options.input_shape or {})
    for c in configs:
        if not names:
            break
        if c.related_input_rank >= len(names):
            raise _err(f"related_input_rank {c.related_input_rank} but --input_shape has {len(names)} inputs",
                       "related_input_rank counts the model inputs from 0")
        name = names[c.related_input_rank]
        dims = options.input_shape[name]
        if len(dims) != 4:
            raise _err(f"AIPP input {name} has {len(dims)} dims; AIPP takes 4-D images (NCHW/NHWC)",
                       "apply AIPP to an image input only")
        if input_dtypes and str(input_dtypes.get(name, "uint8")).lower() not in ("uint8", "u8", "dt_uint8"):
            raise _err(f"AIPP input {name} is {input_dtypes[name]}; AIPP takes UINT8 image inputs only",
                       "export the model with a uint8 image input, or preprocess on the host")
        if options.input_fp16_nodes and name in options.input_fp16_nodes:
            raise AtcValidationError.from_code("E10034", name, flag="input_fp16_nodes",
                                               hint="remove the AIPP input from --input_fp16_nodes")
