"""What the simulator needs to know about one ATC build: target, precision, shapes, gears.

`SimSettings` is the simulator's view of an ATC command line. Build it directly, or from an
`AtcOptions` (`SimSettings.from_atc_options`), which reads the keep_dtype and modify_mixlist
files the options name. It serializes to the `.omsim` manifest (`to_dict` / `from_dict`).

Precision modes (reference sheet §1.1): `--precision_mode` values and the `--precision_mode_v2`
names that map onto them:

| v1 (`--precision_mode`)                     | v2 (`--precision_mode_v2`) | emulated policy        |
|---------------------------------------------|----------------------------|------------------------|
| force_fp16 (inference default)              | fp16                       | fp16 everywhere        |
| allow_fp32_to_fp16                          | —                          | Cube fp16, vector fp32 |
| force_fp32 = cube_fp16in_fp32out            | cube_fp16in_fp32out        | Cube fp16 in/fp32 out  |
| must_keep_origin_dtype                      | origin                     | graph dtypes unchanged |
| allow_mix_precision = allow_mix_precision_fp16 | mixed_float16           | white/black/grey lists |
| allow_mix_precision_bf16                    | mixed_bfloat16             | as above in bf16       |
| allow_fp32_to_bf16                          | —                          | Cube bf16, vector fp32 |
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ascend_adapt.errors import ConfigError

PRECISION_MODES = ("force_fp16", "force_fp32", "cube_fp16in_fp32out", "allow_fp32_to_fp16",
                   "must_keep_origin_dtype", "allow_mix_precision", "allow_mix_precision_fp16",
                   "allow_mix_precision_bf16", "allow_fp32_to_bf16")
PRECISION_MODES_V2 = {
    "fp16": "force_fp16",
    "origin": "must_keep_origin_dtype",
    "cube_fp16in_fp32out": "cube_fp16in_fp32out",
    "mixed_float16": "allow_mix_precision_fp16",
    "mixed_bfloat16": "allow_mix_precision_bf16",
    "cube_hif8": None,      # HiFloat8: not emulated
    "mixed_hif8": None,
}
# v1 aliases (reference sheet §1.1: force_fp32 = cube_fp16in_fp32out, allow_mix_precision = _fp16)
_ALIASES = {"force_fp32": "cube_fp16in_fp32out", "allow_mix_precision": "allow_mix_precision_fp16"}

# canonical mode -> (policy, low dtype)
#   policy: "origin" | "force" | "cube" (Cube low in/out, vector origin) |
#           "cube_in" (Cube low in, fp32 out; vector origin) | "mixed"
POLICIES: dict[str, tuple[str, str | None]] = {
    "must_keep_origin_dtype": ("origin", None),
    "force_fp16": ("force", "float16"),
    "allow_fp32_to_fp16": ("cube", "float16"),
    "cube_fp16in_fp32out": ("cube_in", "float16"),
    "allow_mix_precision_fp16": ("mixed", "float16"),
    "allow_mix_precision_bf16": ("mixed", "bfloat16"),
    "allow_fp32_to_bf16": ("cube", "bfloat16"),
}

DEFAULT_PRECISION_MODE = "force_fp16"

# MagicMind `precision_config.precision_mode` values (Cambricon MLU; reference sheet §8) -> the
# emulated policy; None = not emulated (the qint* modes need MagicMind's Calibrator).
# force_float16: fp16 storage and compute, as "force" (fp32 accumulation inside MatMul: assumed,
# MagicMind does not document its accumulator); force_float32: the fp32 graph unchanged.
MAGICMIND_MODES: dict[str, tuple[str, str | None] | None] = {
    "force_float32": ("origin", None),
    "force_float16": ("force", "float16"),
    "qint8_mixed_float16": None, "qint16_mixed_float16": None,
    "qint8_mixed_float32": None, "qint16_mixed_float32": None,
}
POLICIES.update({k: v for k, v in MAGICMIND_MODES.items() if v is not None})


def normalize_precision_mode(precision_mode: str | None = None,
                             precision_mode_v2: str | None = None) -> str:
    """The canonical v1 mode name for a `--precision_mode` or `--precision_mode_v2` value.

    Args:
        precision_mode: a v1 value (or a v2 name, accepted for convenience), None = default.
        precision_mode_v2: a v2 value; exclusive with `precision_mode` (ATC E10056).

    Returns:
        One of the keys of `POLICIES` ("force_fp16", "must_keep_origin_dtype", ...).

    Raises:
        ConfigError: unknown name, both given, or a mode the simulator does not emulate (hif8).
    """
    if precision_mode and precision_mode_v2:
        raise ConfigError(
            "E10056: Cannot configure both parameters --precision_mode and --precision_mode_v2 simultaneously.",
            "keep one of them (precision_mode_v2 is the newer spelling)")
    if precision_mode_v2 is None and precision_mode in PRECISION_MODES_V2 and precision_mode not in PRECISION_MODES:
        precision_mode_v2, precision_mode = precision_mode, None
    if precision_mode_v2 is not None:
        if precision_mode_v2 not in PRECISION_MODES_V2:
            raise ConfigError(
                f"E10001: Value {precision_mode_v2} for parameter --precision_mode_v2 is invalid.",
                f"use one of {', '.join(PRECISION_MODES_V2)}")
        mode = PRECISION_MODES_V2[precision_mode_v2]
        if mode is None:
            raise ConfigError(f"precision_mode_v2={precision_mode_v2} (HiFloat8) is not emulated by the simulator",
                              "simulate with mixed_float16 or fp16 instead")
        return mode
    mode = precision_mode or DEFAULT_PRECISION_MODE
    if mode in MAGICMIND_MODES:  # a Cambricon target's mode; convert checks it against the target
        if MAGICMIND_MODES[mode] is None:
            raise ConfigError(f"MagicMind precision mode {mode} is quantized (needs MagicMind's Calibrator) "
                              "and is not emulated by the simulator",
                              "simulate with force_float16 or force_float32")
        return mode
    if mode not in PRECISION_MODES:
        raise ConfigError(f"E10001: Value {mode} for parameter --precision_mode is invalid.",
                          f"use one of {', '.join(PRECISION_MODES)}")
    return _ALIASES.get(mode, mode)


def read_keep_dtype(path: str | os.PathLike) -> tuple[str, ...]:
    """Entries of an ATC `--keep_dtype` file: one op name or `OpType::<Type>` per line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"E10001: Value {path} for parameter --keep_dtype is invalid. "
                          f"Reason: File defined by keep_dtype is not found.",
                          "write the keep_dtype file (one op name or OpType::<Type> per line)") from exc
    return tuple(ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#"))


def read_mixlist(path: str | os.PathLike) -> dict:
    """An ATC `--modify_mixlist` JSON: {"black-list"|"white-list"|"gray-list": {"to-add": [...],
    "to-remove": [...]}} with op types."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read --modify_mixlist file '{path}': {exc}",
                          'write {"black-list": {"to-add": ["Softmax"]}}') from exc
    return validate_mixlist(data, str(path))


def validate_mixlist(data: Any, where: str = "modify_mixlist") -> dict:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: must be a JSON object", 'write {"black-list": {"to-add": ["Softmax"]}}')
    out: dict[str, dict[str, list[str]]] = {}
    for key, val in data.items():
        k = key.replace("grey", "gray")
        if k not in ("black-list", "white-list", "gray-list"):
            raise ConfigError(f"{where}: unknown key '{key}'", "keys are black-list, white-list, gray-list")
        if not isinstance(val, Mapping) or set(val) - {"to-add", "to-remove"}:
            raise ConfigError(f"{where}: '{key}' must be {{\"to-add\": [...], \"to-remove\": [...]}}", "fix it")
        out[k] = {op: [str(t) for t in val.get(op, [])] for op in ("to-add", "to-remove") if op in val}
    return out


@dataclass(frozen=True)
class GearSpec:
    """ATC gears: which option, and the profiles.

    Attributes:
        flag: "dynamic_dims", "dynamic_batch_size" or "dynamic_image_size".
        values: one tuple per gear: dynamic_dims gives one value per -1 of --input_shape (in
            order); dynamic_batch_size one value (the N of every -1 input); dynamic_image_size (h, w).
    """

    flag: str
    values: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return len(self.values)

    def to_dict(self) -> dict:
        return {"flag": self.flag, "values": [list(v) for v in self.values]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "GearSpec":
        return cls(str(d["flag"]), tuple(tuple(int(x) for x in v) for v in d["values"]))


def _dim(d: Any) -> int | tuple[int, int]:
    """An --input_shape dim: int (-1 = dynamic) or (lo, hi) for a lo~hi range."""
    if isinstance(d, tuple) and len(d) == 2:       # DimRange is a NamedTuple(lo, hi)
        return (int(d[0]), int(d[1]))
    if isinstance(d, list) and len(d) == 2:
        return (int(d[0]), int(d[1]))
    if isinstance(d, str):  # the one --input_shape grammar (om_convert.atc.gearspec), ATC's E10002 on bad text
        from ascend_adapt.om_convert.atc.gearspec import parse_dim

        return _dim(parse_dim(d))
    return int(d)


def _input_shape(value: Any) -> dict[str, tuple] | None:
    if value is None:
        return None
    if isinstance(value, str):
        from ascend_adapt.om_convert.atc.gearspec import parse_input_shape

        value = parse_input_shape(value)
    return {str(k): tuple(_dim(x) for x in v) for k, v in dict(value).items()}


@dataclass(frozen=True)
class SimSettings:
    """The ATC settings the simulator enforces and emulates.

    Attributes:
        target: target profile name ("Ascend310P3"); resolved with `ascend_adapt.targets.load_target`.
        precision_mode: canonical v1 precision mode (see `normalize_precision_mode`).
        keep_dtype: --keep_dtype entries: node names or `OpType::<Type>` (ONNX or Ascend IR type).
        modify_mixlist: --modify_mixlist content (allow_mix_precision modes only).
        input_shape: --input_shape: {input: dims}; a dim is int (-1 = gear-bound/dynamic) or (lo, hi).
        gears: the gear option, if any.
        output_type: --output_type ("FP16", or {"node:0": "FP16"}), None = original dtypes.
        cann_version: toolchain version for opset checks (None = the target's default).
        soc_version: the --soc_version string (None = the target's).
        atc_command: the exact ATC command line this build corresponds to (for reports).
    """

    target: str = "Ascend310P3"
    precision_mode: str = DEFAULT_PRECISION_MODE
    keep_dtype: tuple[str, ...] = ()
    modify_mixlist: Mapping[str, Any] | None = None
    input_shape: Mapping[str, tuple] | None = None
    gears: GearSpec | None = None
    output_type: Any = None
    cann_version: str | None = None
    soc_version: str | None = None
    atc_command: str | None = None
    precision_mode_v2: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision_mode",
                           normalize_precision_mode(None if self.precision_mode_v2 else self.precision_mode,
                                                    self.precision_mode_v2))
        object.__setattr__(self, "keep_dtype", tuple(str(k) for k in (self.keep_dtype or ())))
        object.__setattr__(self, "input_shape", _input_shape(self.input_shape))
        if self.modify_mixlist is not None:
            object.__setattr__(self, "modify_mixlist", validate_mixlist(self.modify_mixlist))
        if isinstance(self.gears, Mapping):
            object.__setattr__(self, "gears", GearSpec.from_dict(self.gears))

    # ------------------------------------------------------------------ derived
    @property
    def policy(self) -> str:
        """"origin", "force", "cube", "cube_in" or "mixed" (see `POLICIES`)."""
        return POLICIES[self.precision_mode][0]

    @property
    def low_dtype(self) -> str | None:
        """"float16", "bfloat16", or None for must_keep_origin_dtype."""
        return POLICIES[self.precision_mode][1]

    @property
    def keeps_origin(self) -> bool:
        return self.policy == "origin"

    def replace(self, **changes: Any) -> "SimSettings":
        d = self.to_dict()
        d.update(changes)
        if "precision_mode" in changes and "precision_mode_v2" not in changes:
            d["precision_mode_v2"] = None
        return SimSettings.from_dict(d)

    def gear_shapes(self, graph_inputs: Mapping[str, Sequence[Any]] | None = None) -> list[dict[str, tuple[int, ...]]]:
        """The concrete input shapes of every gear (one dict per gear), or [] without gears.

        Only inputs with a -1 in --input_shape appear; the others keep their static shape.
        """
        if self.gears is None or not self.input_shape:
            return []
        out = []
        for gear in self.gears.values:
            shapes: dict[str, tuple[int, ...]] = {}
            it = iter(gear)
            for name, dims in self.input_shape.items():
                if -1 not in dims:
                    continue
                if self.gears.flag == "dynamic_dims":
                    shapes[name] = tuple(next(it, -1) if d == -1 else d for d in dims)
                elif self.gears.flag == "dynamic_batch_size":
                    shapes[name] = tuple(gear[0] if d == -1 else d for d in dims)
                else:  # dynamic_image_size: h, w in order
                    hw = iter(gear)
                    shapes[name] = tuple(next(hw, -1) if d == -1 else d for d in dims)
            out.append(shapes)
        return out

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict:
        def dims(v):
            return [list(d) if isinstance(d, tuple) else d for d in v]

        return {
            "target": self.target,
            "soc_version": self.soc_version,
            "precision_mode": self.precision_mode,
            "precision_mode_v2": self.precision_mode_v2,
            "keep_dtype": list(self.keep_dtype),
            "modify_mixlist": self.modify_mixlist,
            "input_shape": None if self.input_shape is None else {k: dims(v) for k, v in self.input_shape.items()},
            "gears": None if self.gears is None else self.gears.to_dict(),
            "output_type": self.output_type,
            "cann_version": self.cann_version,
            "atc_command": self.atc_command,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SimSettings":
        d = dict(d)
        if d.get("precision_mode_v2"):
            d["precision_mode"] = None
        gears = d.get("gears")
        if isinstance(gears, Mapping):
            d["gears"] = GearSpec.from_dict(gears)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_atc_options(cls, options: Any, *, target: str | None = None, cann_version: str | None = None,
                         keep_dtype: Sequence[str] | None = None,
                         modify_mixlist: Mapping | None = None) -> "SimSettings":
        """Settings from an `AtcOptions` (om_convert.atc) or any object with the same fields.

        The keep_dtype / modify_mixlist files the options name are read unless the entries are
        given directly.

        Args:
            options: the ATC options (precision_mode[_v2], keep_dtype, modify_mixlist,
                input_shape, dynamic_dims / dynamic_batch_size / dynamic_image_size, output_type,
                soc_version).
            target: target profile name (default: the options' soc_version).
        """
        g = lambda name: getattr(options, name, None)  # noqa: E731
        gears = None
        for flag in ("dynamic_dims", "dynamic_batch_size", "dynamic_image_size"):
            v = g(flag)
            if v:
                vals = tuple((int(x),) if not isinstance(x, (tuple, list)) else tuple(int(y) for y in x) for x in v)
                gears = GearSpec(flag, vals)
                break
        if keep_dtype is None and g("keep_dtype"):
            keep_dtype = read_keep_dtype(g("keep_dtype"))
        if modify_mixlist is None and g("modify_mixlist"):
            modify_mixlist = read_mixlist(g("modify_mixlist"))
        command = None
        if hasattr(options, "to_command"):
            command = options.to_command()
        soc = g("soc_version")
        if not (target or soc):
            raise ConfigError("the ATC options have no --soc_version and no target was given",
                              "set soc_version (e.g. Ascend310P3) or pass target=")
        return cls(
            target=target or soc, soc_version=soc,
            precision_mode=None if g("precision_mode_v2") else g("precision_mode"),
            precision_mode_v2=g("precision_mode_v2"),
            keep_dtype=tuple(keep_dtype or ()), modify_mixlist=modify_mixlist,
            input_shape=g("input_shape"), gears=gears, output_type=g("output_type"),
            cann_version=cann_version, atc_command=command,
        )
