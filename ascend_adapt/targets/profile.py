"""Target profiles: a chip / card described by a data file, and the op-support check against it.

A profile is a JSON file (see `docs/targets.md`). Every figure in it is a *fact*: a value with the
`source` it came from and a `confidence` mark, as in the reference sheet:

- ``V`` read directly in source code or official docs;
- ``S`` secondary source (press, blogs, third-party repos);
- ``M`` recalled or estimated, NOT confirmed (estimates say "estimate:" in their source).

`Target` exposes the plain values as attributes (`target.fp16_tflops`) and the facts behind them
through `target.fact("fp16_tflops")`. All compute / memory figures are **per chip**; multiply by
`chips_per_card` for a card.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

from ..errors import ConfigError
from .optable import OpRow, format_opsets, parse_opsets, read_table
from .published import PublishedFigure, parse_published

CONFIDENCE = ("V", "S", "M")
DEFAULT_DOMAIN = "ai.onnx"

# figure name -> required?
_FIGURES: dict[str, bool] = {
    "fp16_tflops": True,
    "int8_tops": True,
    "fp32_tflops": True,
    "bf16_tflops": False,
    "memory_bytes": True,
    "usable_memory_bytes": False,
    "memory_bandwidth_gbps": True,
    "chips_per_card": True,
    "launch_overhead_us": True,
    # the cost model's transfer figures and calibrated efficiencies (ascend_adapt/cost_model.py)
    "pcie_gbps": False,
    "memcpy_latency_us": False,
    "memory_efficiency": False,
    "compute_efficiency": False,
    "tdp_watts": False,
    "allows_shape_ranges": True,
    "precision_modes": True,
    "unsupported_dtypes": False,
    "fp16_only_ops": False,
    # False where the chip has no weight-only int8/int4 kernel (W8A16 / W4A16 dequantizing MatMul)
    "weight_only_quant_kernels": False,
    # dtypes the PyTorch device plugin (torch_npu / torch_mlu) computes in, per plugin
    "torch_dtypes": False,
    "gears": True,
    "onnx_opsets": True,
}
_PLAIN = ("name", "vendor", "soc_version", "family", "toolchain", "products", "description",
          "default_toolchain_version", "aliases", "op_table", "extends", "schema_version", "notes",
          "published_decode", "estimate_rank", "toolkit")

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}

# ONNX TensorProto.DataType values -> names used everywhere in ascend-adapt
_ONNX_DTYPES = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string",
    9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 14: "complex64",
    15: "complex128", 16: "bfloat16", 17: "float8e4m3fn", 18: "float8e4m3fnuz", 19: "float8e5m2",
    20: "float8e5m2fnuz", 21: "uint4", 22: "int4", 23: "float4e2m1",
}
_DTYPE_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "fp16": "float16",
                  "fp32": "float32", "bf16": "bfloat16", "long": "int64", "int": "int32"}


def dtype_name(dtype: Any) -> str | None:
    """Normalize a dtype given as an ONNX enum int, numpy dtype or string to a name ("float32").

    Returns None for None / 0 (unknown).
    """
    if dtype is None:
        return None
    if isinstance(dtype, int) and not isinstance(dtype, bool):
        return _ONNX_DTYPES.get(dtype) if dtype else None
    name = getattr(dtype, "name", None) or str(dtype)
    name = name.lower().replace("torch.", "")
    return _DTYPE_ALIASES.get(name, name)


def parse_bytes(value: Any, where: str) -> int:
    """Parse 24 * 2**30, "24GiB", "21534 MiB" or "8 GB" into bytes."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a byte count, got {value!r}", 'write e.g. 25769803776 or "24GiB"')
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]i?b|b)\s*", str(value).lower())
    if not m:
        raise ConfigError(f"{where}: cannot read byte count {value!r}", 'write e.g. 25769803776 or "24GiB"')
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def parse_version(text: str) -> tuple[int, ...]:
    """Leading numeric components of a toolchain version: "8.0.RC2.2" -> (8, 0)."""
    nums: list[int] = []
    for part in str(text).split("."):
        if part.isdigit():
            nums.append(int(part))
        else:
            break
    if not nums:
        raise ConfigError(f"cannot read version '{text}'", 'write it like "7.0" or "8.0.RC2"')
    return tuple(nums)


@dataclass(frozen=True)
class Fact:
    """A figure with its provenance.

    Attributes:
        value: the figure (number, bool, list, mapping).
        source: where it comes from (doc page, repo path, "estimate: ...").
        confidence: "V", "S" or "M" (see the module docstring).
        note: optional caveat, e.g. conflicting sources.
    """

    value: Any
    source: str
    confidence: str
    note: str = ""


@dataclass(frozen=True)
class Verdict:
    """Answer of `Target.op_support`. Truthy when supported.

    Attributes:
        supported: whether the target's toolchain accepts the op as given.
        reason: why not (empty when supported), or a short note.
        warnings: accepted, but something is ignored or slow (e.g. an attribute ATC ignores).
    """

    supported: bool
    reason: str = ""
    warnings: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.supported


@dataclass(frozen=True)
class Restriction:
    """One attribute / arity / rank / dtype restriction of an op on a target.

    Exactly one kind applies, by which fields are set:
    `attr` with `allowed` / `forbidden` / `ignored` values; `max_inputs`; `max_outputs`;
    `input` with `ranks`; `input` with `dtypes`.
    """

    source: str
    confidence: str
    attr: str | None = None
    allowed: tuple | None = None
    forbidden: tuple | None = None
    ignored: tuple | None = None
    default: Any = None
    when_rank: int | None = None
    max_inputs: int | None = None
    max_outputs: int | None = None
    input: int | None = None
    ranks: tuple[int, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    why: str = ""

    def check(self, op_type: str, attrs: Mapping[str, Any], dtypes: Sequence[str | None],
              num_inputs: int | None, num_outputs: int | None,
              ranks: Sequence[int | None] | None) -> tuple[str | None, str | None]:
        """Return (error, warning); both None when the restriction is satisfied or unknowable."""
        why = f" ({self.why})" if self.why else ""
        if self.attr is not None:
            if self.when_rank is not None:
                r = ranks[0] if ranks else None
                if r != self.when_rank:
                    return None, None
            val = attrs.get(self.attr, self.default)
            if isinstance(val, bytes):
                val = val.decode()
            if self.allowed is not None and val not in self.allowed:
                return (f"attribute {self.attr}={val!r} not supported by ATC's {op_type} parser; "
                        f"allowed: {', '.join(map(repr, self.allowed))}{why}"), None
            if self.forbidden is not None and val in self.forbidden:
                return f"attribute {self.attr}={val!r} not supported by ATC's {op_type} parser{why}", None
            if self.ignored is not None and self.attr in attrs:
                if "*" in self.ignored or val in self.ignored:
                    return None, f"{op_type}: attribute {self.attr}={val!r} is ignored by ATC{why}"
            return None, None
        if self.max_inputs is not None and num_inputs is not None and num_inputs > self.max_inputs:
            return f"{op_type} with {num_inputs} inputs: ATC's parser takes at most {self.max_inputs}{why}", None
        if self.max_outputs is not None and num_outputs is not None and num_outputs > self.max_outputs:
            return f"{op_type} with {num_outputs} outputs: ATC's parser produces at most {self.max_outputs}{why}", None
        if self.input is not None and self.ranks is not None and ranks:
            r = ranks[self.input] if self.input < len(ranks) else None
            if r is not None and r not in self.ranks:
                return (f"{op_type} input {self.input} of rank {r}: supported ranks "
                        f"{', '.join(map(str, self.ranks))}{why}"), None
        if self.input is not None and self.dtypes is not None:
            d = dtypes[self.input] if self.input < len(dtypes) else None
            if d is not None and d not in self.dtypes:
                return (f"{op_type} input {self.input} of dtype {d}: supported "
                        f"{', '.join(self.dtypes)}{why}"), None
        return None, None


@dataclass(frozen=True)
class OpSpec:
    """An op as a target supports it: opsets from the table (or an override) plus restrictions."""

    op_type: str
    domain: str
    opsets: frozenset[int]
    ge_op_type: str = ""
    standard: bool = True
    restrictions: tuple[Restriction, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class OpTable:
    """A target's op table.

    Attributes:
        ops: {(domain, op_type): OpSpec}.
        data_dependent_shape_ops: ops whose output shape depends on input values (NonZero, Unique…).
        base: the shared table file it was built from.
        source / confidence: provenance of the table as a whole for this target.
    """

    ops: Mapping[tuple[str, str], OpSpec]
    data_dependent_shape_ops: frozenset[str]
    base: str
    source: str
    confidence: str
    note: str = ""

    def get(self, op_type: str, domain: str = DEFAULT_DOMAIN) -> OpSpec | None:
        return self.ops.get((_norm_domain(domain), op_type))

    @property
    def domains(self) -> frozenset[str]:
        return frozenset(d for d, _ in self.ops)


def _norm_domain(domain: str | None) -> str:
    return DEFAULT_DOMAIN if domain in (None, "", "ai.onnx") else domain


@dataclass(frozen=True)
class Target:
    """A hardware target (one chip) as described by its data file.

    Figures are per chip. `facts` holds the provenance of every figure; `fact(name)` returns one.

    Attributes:
        name: registry name ("Ascend310P3", "Atlas300IDuo").
        vendor / soc_version / family / toolchain: e.g. "Huawei", "Ascend310P3", "Ascend310P", "atc".
        fp16_tflops / int8_tops / fp32_tflops / bf16_tflops: dense peak compute per chip
            (bf16_tflops None when the chip has no bf16).
        memory_bytes: device memory per chip; usable_memory_bytes what the runtime reports, if known.
        memory_bandwidth_gbps: device memory bandwidth per chip, GB/s.
        chips_per_card: chips on one card (a Duo card has 2).
        precision_modes: the toolchain's precision modes (ATC `--precision_mode` values).
        launch_overhead_us: estimated per-op launch/dispatch overhead, microseconds.
        allows_shape_ranges: whether the toolchain takes shape ranges (`~` / -1 without gears).
        gear_min / gear_max: limits on the number of dynamic gears (None where not applicable).
        onnx_opsets: {toolchain version: (min_opset, max_opset)}.
        default_toolchain_version: the version assumed when none is given (CANN for Ascend).
        toolkit: the vendor toolkit that version numbers ("CANN", "MagicMind"; the data file's
            `toolkit`, else the toolchain's name), for messages.
        unsupported_dtypes: dtypes no op of the target takes ("float64", "bfloat16"); the fact
            (`fact("unsupported_dtypes")`) says where that comes from.
        fp16_only_ops: ONNX op types with no float32 kernel on this chip (refused under
            must_keep_origin_dtype / origin, which keep them in fp32); None where it is not known.
        op_table: which ONNX ops the converter parses, with restrictions.
        published: public decode measurements on this target (`published_decode`, not inherited
            through `extends`); `ascend_adapt.estimate.published` fits and checks on them.
        estimate_rank: position in `estimate`'s default target list (None: not in it; not
            inherited through `extends`).
    """

    name: str
    vendor: str
    soc_version: str
    family: str
    toolchain: str
    products: str
    description: str
    fp16_tflops: float
    int8_tops: float
    fp32_tflops: float
    bf16_tflops: float | None
    memory_bytes: int
    usable_memory_bytes: int | None
    memory_bandwidth_gbps: float
    chips_per_card: int
    precision_modes: tuple[str, ...]
    launch_overhead_us: float
    tdp_watts: float | None
    allows_shape_ranges: bool
    gear_min: int | None
    gear_max: int | None
    onnx_opsets: Mapping[str, tuple[int, int]]
    default_toolchain_version: str
    unsupported_dtypes: frozenset[str]
    op_table: OpTable
    facts: Mapping[str, Fact]
    aliases: tuple[str, ...] = ()
    source_file: str = ""
    notes: str = ""
    fp16_only_ops: frozenset[str] | None = None
    published: tuple[PublishedFigure, ...] = ()
    estimate_rank: int | None = None
    toolkit: str = ""

    def dtype_source(self, fact_name: str) -> str:
        """"source [confidence]" of a dtype fact, for messages ("" when the profile has none)."""
        f = self.facts.get(fact_name)
        return f"{f.source} [{f.confidence}]" if f is not None else ""

    # ------------------------------------------------------------------ facts and versions
    def fact(self, name: str) -> Fact:
        """The value of figure `name` with its source and confidence."""
        try:
            return self.facts[name]
        except KeyError:
            raise ConfigError(f"target {self.name} has no figure '{name}'",
                              f"known figures: {', '.join(sorted(self.facts))}") from None

    def toolchain_label(self, version: str | None = None) -> str:
        """"CANN 8.0" / "MagicMind 1.0": the toolchain and version used in messages."""
        return f"{self.toolkit or self.toolchain} {version or self.default_toolchain_version}"

    @property
    def card_memory_bytes(self) -> int:
        """Device memory of one card (per-chip memory × chips per card)."""
        return self.memory_bytes * self.chips_per_card

    def _version_key(self, version: str | None) -> str:
        wanted = parse_version(version or self.default_toolchain_version)
        keys = sorted(self.onnx_opsets, key=parse_version)
        chosen = None
        for k in keys:
            if parse_version(k) <= wanted:
                chosen = k
        if chosen is None:
            raise ConfigError(
                f"{self.toolchain} version {version} predates the versions {self.name} lists ({', '.join(keys)})",
                f"pass one of {', '.join(keys)} or newer",
            )
        return chosen

    def opset_range(self, cann_version: str | None = None) -> tuple[int, int]:
        """(min, max) ONNX opset the toolchain version accepts (the newest listed version ≤ it)."""
        return self.onnx_opsets[self._version_key(cann_version)]

    def max_opset(self, cann_version: str | None = None) -> int:
        """Highest ONNX opset the converter of `cann_version` (default: the target's default) parses."""
        return self.opset_range(cann_version)[1]

    def min_opset(self, cann_version: str | None = None) -> int:
        return self.opset_range(cann_version)[0]

    # ------------------------------------------------------------------ op support
    def op_support(self, op_type: str, opset: int, attrs: Mapping[str, Any] | None = None,
                   input_dtypes: Iterable[Any] | None = None, *, domain: str = DEFAULT_DOMAIN,
                   cann_version: str | None = None, num_inputs: int | None = None,
                   num_outputs: int | None = None,
                   input_ranks: Sequence[int | None] | None = None) -> Verdict:
        """Would the target's converter accept this op?

        Args:
            op_type: ONNX op type ("ScatterND").
            opset: the model's opset for the op's domain.
            attrs: attribute values by name (absent attributes take their ONNX default).
            input_dtypes: dtype of each input (ONNX enum ints, numpy dtypes or names; None = unknown).
            domain: op domain ("" / "ai.onnx" for standard ops).
            cann_version: toolchain version (default: the target's default).
            num_inputs / num_outputs: the node's input / output counts (for arity restrictions).
            input_ranks: rank of each input, None where unknown (for rank restrictions).

        Returns:
            Verdict(supported, reason, warnings).
        """
        dom = _norm_domain(domain)
        attrs = dict(attrs or {})
        dtypes = [dtype_name(d) for d in (input_dtypes or ())]
        if dom == DEFAULT_DOMAIN and op_type == "Constant":
            return Verdict(True, "handled by the ONNX parser itself")
        spec = self.op_table.get(op_type, dom)
        if spec is None:
            if dom not in self.op_table.domains:
                return Verdict(False, f"custom domain '{dom}': {self.toolchain} parses only "
                                      f"{', '.join(sorted(self.op_table.domains))} ops")
            return Verdict(False, f"no {self.toolchain} ONNX parser registered for {op_type} "
                                  f"({dom}::{opset}::{op_type}; ATC fails with E19010/EZ9010)")
        if dom == DEFAULT_DOMAIN:
            lo, hi = self.opset_range(cann_version)
            if not lo <= opset <= hi:
                return Verdict(False, f"opset {opset} outside {self.toolchain_label(cann_version)}'s "
                                      f"ONNX opset range {lo}-{hi}")
        if opset not in spec.opsets:
            return Verdict(False, f"{op_type} is registered for opsets {format_opsets(spec.opsets)}, not {opset}")
        bad = sorted({d for d in dtypes if d in self.unsupported_dtypes})
        if bad:
            return Verdict(False, f"dtype {', '.join(bad)} not supported on {self.name}")
        warnings: list[str] = []
        for r in spec.restrictions:
            err, warn = r.check(op_type, attrs, dtypes, num_inputs, num_outputs, input_ranks)
            if err:
                return Verdict(False, err, tuple(warnings))
            if warn:
                warnings.append(warn)
        if op_type in self.op_table.data_dependent_shape_ops:
            if not self.allows_shape_ranges:
                return Verdict(False, f"dynamic shape: {op_type}'s output shape depends on input values; "
                                      f"gears cannot express it and {self.name} takes no shape ranges",
                               tuple(warnings))
            warnings.append(f"{op_type}'s output shape depends on input values: the model runs as a "
                            f"dynamic-shape model (slow first run)")
        return Verdict(True, "", tuple(warnings))

    def ge_op_type(self, op_type: str, domain: str = DEFAULT_DOMAIN) -> str:
        """The Ascend IR type an ONNX op maps to ("" when unknown, "PartitionedCall" for subgraphs)."""
        spec = self.op_table.get(op_type, domain)
        return spec.ge_op_type if spec else ""


# ---------------------------------------------------------------------------- loading
def _merge(base: dict, over: dict, whole: Iterable[str] = ()) -> dict:
    """Deep-merge `over` into a copy of `base`: dicts merge, everything else is replaced; keys in
    `whole` (the figures, which carry their own source) are replaced as a unit."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in whole:
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def read_profile(path: Path, search_dirs: Sequence[Path], _seen: tuple[str, ...] = ()) -> dict:
    """Read a profile JSON and resolve its `extends` chain (files searched beside it, then `search_dirs`)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read target file '{path}': {exc}", "check the path") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"target file '{path}' is not valid JSON: {exc}", "fix the JSON syntax") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"target file '{path}' must hold a JSON object", "see docs/targets.md")
    parent = data.get("extends")
    if parent:
        if parent in _seen:
            raise ConfigError(f"target file '{path}': circular 'extends' ({' -> '.join(_seen + (parent,))})",
                              "remove the cycle")
        for d in (path.parent, *search_dirs):
            cand = d / f"{parent}.json"
            if cand.is_file():
                base = read_profile(cand, search_dirs, _seen + (parent,))
                break
        else:
            raise ConfigError(f"target file '{path}' extends '{parent}', which was not found",
                              f"put {parent}.json beside it or in {search_dirs[0] if search_dirs else '.'}")
        base.pop("name", None)
        base.pop("aliases", None)
        base.pop("published_decode", None)  # measurements belong to the file that lists them
        base.pop("estimate_rank", None)  # so does the place in estimate's default list
        data = _merge(base, {k: v for k, v in data.items() if k != "extends"}, whole=_FIGURES)
    return data


def _fact(data: dict, key: str, where: str) -> Fact | None:
    raw = data.get(key)
    if raw is None:
        if _FIGURES[key]:
            raise ConfigError(f"{where}: missing figure '{key}'",
                              f'add "{key}": {{"value": ..., "source": "...", "confidence": "V|S|M"}}')
        return None
    if not isinstance(raw, dict) or "value" not in raw:
        raise ConfigError(f"{where}: figure '{key}' must be an object with value, source and confidence",
                          f'write "{key}": {{"value": {json.dumps(raw)}, "source": "...", "confidence": "M"}}')
    src, conf = raw.get("source"), raw.get("confidence")
    if not src or conf not in CONFIDENCE:
        raise ConfigError(f"{where}: figure '{key}' needs a non-empty source and confidence V, S or M "
                          f"(got source={src!r}, confidence={conf!r})",
                          "say where the number comes from; mark estimates M")
    return Fact(raw["value"], str(src), conf, str(raw.get("note", "")))


def _restriction(op: str, raw: dict, where: str) -> Restriction:
    src, conf = raw.get("source"), raw.get("confidence")
    if not src or conf not in CONFIDENCE:
        raise ConfigError(f"{where}: restriction of {op} needs source and confidence V/S/M", "add them")
    known = {"attr", "allowed", "forbidden", "ignored", "default", "when_rank", "max_inputs", "max_outputs",
             "input", "ranks", "dtypes", "why", "source", "confidence"}
    extra = set(raw) - known
    if extra:
        raise ConfigError(f"{where}: restriction of {op} has unknown keys {sorted(extra)}",
                          f"use only {sorted(known)}")

    def tup(k):
        v = raw.get(k)
        return None if v is None else tuple(v) if isinstance(v, list) else (v,)

    r = Restriction(
        source=str(src), confidence=conf, attr=raw.get("attr"), allowed=tup("allowed"),
        forbidden=tup("forbidden"), ignored=tup("ignored"), default=raw.get("default"),
        when_rank=raw.get("when_rank"), max_inputs=raw.get("max_inputs"), max_outputs=raw.get("max_outputs"),
        input=raw.get("input"), ranks=tup("ranks"),
        dtypes=tuple(dtype_name(d) for d in raw["dtypes"]) if raw.get("dtypes") else None,
        why=str(raw.get("why", "")),
    )
    kinds = [r.attr is not None, r.max_inputs is not None, r.max_outputs is not None,
             r.input is not None and (r.ranks is not None or r.dtypes is not None)]
    if sum(kinds) != 1:
        raise ConfigError(f"{where}: restriction of {op} must be exactly one of attr / max_inputs / "
                          f"max_outputs / input+ranks / input+dtypes", "split it into several entries")
    return r


_TABLE_CACHE: dict[Path, dict[tuple[str, str], OpRow]] = {}


def _base_table(name: str, search_dirs: Sequence[Path]) -> dict[tuple[str, str], OpRow]:
    for d in search_dirs:
        p = (d / name).resolve()
        if p.is_file():
            if p not in _TABLE_CACHE:
                _TABLE_CACHE[p] = read_table(p)
            return _TABLE_CACHE[p]
    raise ConfigError(f"op table '{name}' not found in {', '.join(map(str, search_dirs))}",
                      "reference a table in ascend_adapt/targets/data/")


def _op_table(raw: dict, where: str, search_dirs: Sequence[Path]) -> OpTable:
    if not isinstance(raw, dict) or "base" not in raw:
        raise ConfigError(f"{where}: 'op_table' needs a 'base' table file", '"op_table": {"base": "atc_onnx_ops.csv"}')
    base = _base_table(raw["base"], search_dirs)
    include = raw.get("include", "all")
    if include not in ("all", "standard"):
        raise ConfigError(f"{where}: op_table.include must be 'all' or 'standard'", "fix it")
    exclude = set(raw.get("exclude", ()))
    domains = set(raw.get("domains", ("ai.onnx", "npu")))
    ops: dict[tuple[str, str], OpSpec] = {}
    for key, row in base.items():
        if row.domain not in domains or row.op_type in exclude:
            continue
        if include == "standard" and not row.standard:
            continue
        ops[key] = OpSpec(row.op_type, row.domain, row.opsets, row.ge_op_type, row.standard)
    for op, ov in (raw.get("overrides") or {}).items():
        if op.startswith("_"):
            continue
        domain = _norm_domain(ov.get("domain"))
        key = (domain, op)
        prev = ops.get(key)
        if prev is None and "opsets" not in ov:
            if op in exclude or (include == "standard" and (domain, op) in base):
                continue  # restriction for an op this target does not take at all
            raise ConfigError(f"{where}: override for {op}, which is not in the table",
                              "give it 'opsets' to add it, or fix the name")
        opsets = parse_opsets(str(ov["opsets"])) if "opsets" in ov else prev.opsets
        rs = tuple(_restriction(op, r, where) for r in ov.get("restrictions", ()))
        ops[key] = OpSpec(op, domain, opsets, ov.get("ge_op_type", prev.ge_op_type if prev else ""),
                          prev.standard if prev else True, rs, str(ov.get("note", "")))
    src, conf = raw.get("source"), raw.get("confidence")
    if not src or conf not in CONFIDENCE:
        raise ConfigError(f"{where}: op_table needs source and confidence V/S/M", "add them")
    return OpTable(MappingProxyType(ops), frozenset(raw.get("data_dependent_shape_ops", ())), raw["base"],
                   str(src), conf, str(raw.get("note", "")))


def _op_set(fact: Fact | None, where: str) -> frozenset[str] | None:
    """A list-of-op-types figure; None (unknown) when absent or null."""
    if fact is None or fact.value is None:
        return None
    if not isinstance(fact.value, list) or not all(isinstance(v, str) for v in fact.value):
        raise ConfigError(f"{where}: fp16_only_ops.value must be a list of ONNX op types or null (unknown)",
                          'write e.g. {"value": ["Conv"], "source": "...", "confidence": "M"}')
    return frozenset(fact.value)


def _rank(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: estimate_rank must be an integer, got {value!r}",
                          "give the position in estimate's default target list, or drop the key")
    return value


def target_from_dict(data: dict, where: str, search_dirs: Sequence[Path]) -> Target:
    """Build a Target from a resolved profile dict (after `extends`)."""
    for k in ("name", "vendor", "soc_version", "family", "toolchain", "default_toolchain_version", "op_table"):
        if not data.get(k):
            raise ConfigError(f"{where}: missing '{k}'", "see docs/targets.md for the fields")
    unknown = set(data) - set(_FIGURES) - set(_PLAIN)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}",
                          f"known keys: {sorted(set(_FIGURES) | set(_PLAIN))}")
    facts = {k: f for k in _FIGURES if (f := _fact(data, k, where)) is not None}

    def num(k, default=None):
        f = facts.get(k)
        if f is None or f.value is None:
            return default
        if not isinstance(f.value, (int, float)) or isinstance(f.value, bool):
            raise ConfigError(f"{where}: figure '{k}' must be a number, got {f.value!r}", "fix the value")
        return f.value

    gears = facts["gears"].value
    if gears is not None and not (isinstance(gears, dict) and {"min", "max"} <= set(gears)):
        raise ConfigError(f"{where}: gears.value must be {{\"min\": 2, \"max\": 100}} or null", "fix it")
    opsets_raw = facts["onnx_opsets"].value
    if not isinstance(opsets_raw, dict) or not opsets_raw:
        raise ConfigError(f"{where}: onnx_opsets.value must map versions to [min, max]", '{"7.0": [9, 18]}')
    opsets: dict[str, tuple[int, int]] = {}
    for ver, rng in opsets_raw.items():
        parse_version(ver)
        if not (isinstance(rng, list) and len(rng) == 2 and rng[0] <= rng[1]):
            raise ConfigError(f"{where}: onnx_opsets[{ver}] must be [min, max]", "fix it")
        opsets[ver] = (int(rng[0]), int(rng[1]))
    mem = parse_bytes(facts["memory_bytes"].value, f"{where}: memory_bytes")
    usable = facts.get("usable_memory_bytes")
    t = Target(
        name=data["name"], vendor=data["vendor"], soc_version=data["soc_version"], family=data["family"],
        toolchain=data["toolchain"], products=str(data.get("products", "")),
        description=str(data.get("description", "")),
        fp16_tflops=float(num("fp16_tflops")), int8_tops=float(num("int8_tops")),
        fp32_tflops=float(num("fp32_tflops")),
        bf16_tflops=None if num("bf16_tflops") is None else float(num("bf16_tflops")),
        memory_bytes=mem,
        usable_memory_bytes=parse_bytes(usable.value, f"{where}: usable_memory_bytes") if usable else None,
        memory_bandwidth_gbps=float(num("memory_bandwidth_gbps")), chips_per_card=int(num("chips_per_card")),
        precision_modes=tuple(facts["precision_modes"].value), launch_overhead_us=float(num("launch_overhead_us")),
        tdp_watts=num("tdp_watts"), allows_shape_ranges=bool(facts["allows_shape_ranges"].value),
        gear_min=gears["min"] if gears else None, gear_max=gears["max"] if gears else None,
        onnx_opsets=MappingProxyType(opsets), default_toolchain_version=str(data["default_toolchain_version"]),
        unsupported_dtypes=frozenset(dtype_name(d) for d in (facts["unsupported_dtypes"].value
                                                             if "unsupported_dtypes" in facts else ())),
        op_table=_op_table(data["op_table"], where, search_dirs), facts=MappingProxyType(facts),
        aliases=tuple(data.get("aliases", ())), source_file=where, notes=str(data.get("notes", "")),
        fp16_only_ops=_op_set(facts.get("fp16_only_ops"), where),
        published=parse_published(data.get("published_decode"), data["name"], where, search_dirs),
        estimate_rank=_rank(data.get("estimate_rank"), where), toolkit=str(data.get("toolkit") or data["toolchain"]),
    )
    t._version_key(None)  # the default version must resolve
    return t
