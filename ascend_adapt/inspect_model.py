"""`ascend-adapt inspect`: what a checkpoint is, and whether its weights match its config,
without reading tensor data."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import open_checkpoint
from .checkpoint.dtypes import ITEMSIZE
from .errors import AscendAdaptError, CheckpointError

_MAX_LISTED = 20  # problem lines in the text report


@dataclass
class InspectReport:
    """What `inspect` read, and every way the weights and the config disagree.

    Attributes:
        problems: one line per problem (an invalid or missing config, an unsupported
            architecture, each tensor mismatch); empty when the weights match the config.
        mismatches: the tensor mismatches, structured: `kind` ("shape", "missing",
            "unexpected"), `name`, `expected` and `actual` shapes (None where not applicable),
            `file`.
    """

    path: Path
    layout: str
    architecture: str
    adapter: str | None
    spec: dict | None
    num_tensors: int
    num_params: int
    dtype_counts: dict[str, int]
    dtype_params: dict[str, int]
    shards: list[tuple[str, int, int]]  # file, tensors, bytes
    stored_bytes: int
    problems: list[str] = field(default_factory=list)
    mismatches: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def bytes_at(self, bits: int) -> int:
        return self.num_params * bits // 8

    def failure(self) -> AscendAdaptError | None:
        """The error `ascend-adapt inspect` exits with (status 2) after printing, or None."""
        if self.ok:
            return None
        return InspectError(
            f"{self.path}: {len(self.problems)} problem{'s' if len(self.problems) != 1 else ''} "
            f"(listed above): the config and the weights do not describe one model",
            "each line names the key or tensor (expected vs actual); use the config.json that came "
            "with these weights, or re-download the shards")

    def to_dict(self) -> dict:
        return {
            "path": str(self.path), "layout": self.layout, "architecture": self.architecture,
            "adapter": self.adapter, "num_tensors": self.num_tensors, "num_params": self.num_params,
            "dtype_counts": self.dtype_counts, "dtype_params": self.dtype_params,
            "shards": [{"file": f, "tensors": n, "bytes": b} for f, n, b in self.shards],
            "stored_bytes": self.stored_bytes,
            "bytes_fp32": self.bytes_at(32), "bytes_fp16": self.bytes_at(16), "bytes_int8": self.bytes_at(8),
            "spec": self.spec, "ok": self.ok, "problems": self.problems,
            "mismatches": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in m.items()}
                           for m in self.mismatches],
        }


class InspectError(CheckpointError):
    """`inspect` found the config and the weights disagree (or the config is unusable)."""


def _one_line(exc: AscendAdaptError) -> str:
    return exc.message + (f" (fix: {exc.hint})" if exc.hint else "")


def mismatch_line(m: dict, config_name: str = "config.json") -> str:
    """One problem line for a tensor mismatch: name, expected, actual."""
    shape = lambda s: "(" + ", ".join(map(str, s)) + ("," if len(s) == 1 else "") + ")"  # noqa: E731
    if m["kind"] == "shape":
        return (f"{m['name']}: expected shape {shape(m['expected'])} from {config_name}, "
                f"actual {shape(m['actual'])} in {m['file']}")
    if m["kind"] == "missing":
        return f"{m['name']}: expected shape {shape(m['expected'])} from {config_name}, actual: missing"
    return (f"{m['name']}: expected: not part of this architecture per {config_name}, "
            f"actual {shape(m['actual'])} in {m['file']}")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def inspect_checkpoint(path) -> InspectReport:
    """Describe a model directory and check its weights against the shapes its config implies.

    Reads headers only. The weights are listed first; a config that is missing, invalid or of an
    unsupported architecture, and every tensor whose shape differs from the config's, is missing
    or does not belong to the architecture, is recorded in `problems` (`mismatches` for the
    tensors) instead of stopping, so the report shows what could be read.

    Raises:
        CheckpointError: the weights themselves cannot be listed (no weights, corrupt headers).
    """
    from ascend_adapt.checkpoint.config import check_identity_keys
    from ascend_adapt.model_zoo import adapter_for_config

    reader = open_checkpoint(path, read_config=False)
    infos = reader.infos()
    meta = reader.layout == "meta"
    arch, adapter_name, spec_dict, problems, mismatches = "?", None, None, [], []
    try:
        config = reader.load_config(required=True)
        config_name = Path(config.source).name
        archs, model_type = check_identity_keys(config)
        arch = (archs or [model_type or ("llama (Meta layout)" if meta else "?")])[0]
        adapter = adapter_for_config(config, config.source)
        adapter_name = adapter.name
        spec = adapter.spec_from_config(config)
        spec_dict = spec.to_dict()
        layout = "meta" if meta else "hf"
        mismatches = adapter.tensor_problems(infos, adapter.entries(spec, layout),
                                             adapter.source_shapes(spec, layout), strict=True)
        problems += [mismatch_line(m, config_name) for m in mismatches]
    except AscendAdaptError as exc:
        problems.append(_one_line(exc))
    counts, params = Counter(), Counter()
    for info in infos.values():
        counts[info.dtype] += 1
        params[info.dtype] += info.numel
    return InspectReport(
        path=Path(path), layout=reader.layout, architecture=str(arch), adapter=adapter_name,
        spec=spec_dict, num_tensors=len(infos), num_params=sum(params.values()),
        dtype_counts=dict(counts), dtype_params=dict(params),
        shards=[(f.name, n, b) for f, n, b in reader.shard_summary()],
        stored_bytes=sum(i.nbytes for i in infos.values()), problems=problems, mismatches=mismatches,
    )


def format_report(r: InspectReport) -> str:
    lines = [
        f"model        {r.path}",
        f"layout       {r.layout} ({len(r.shards)} file{'s' if len(r.shards) != 1 else ''})",
        f"architecture {r.architecture}  (adapter: {r.adapter or 'none'})",
    ]
    if r.spec:
        s = r.spec
        lines.append(
            f"shape        hidden {s['hidden_size']}, layers {s['num_layers']}, heads {s['num_heads']} "
            f"(kv {s['num_kv_heads']}, head_dim {s['head_dim']}), ffn {s['ffn']} {s['intermediate_size']}, "
            f"vocab {s['vocab_size']}")
        lines.append(f"numerics     norm {s['norm']} eps {s['norm_eps']}, residual {s['residual']}, "
                     f"rotary {s['rotary']} (table {s['rotary_table_dtype']}), tied embeddings {s['tie_word_embeddings']}")
    lines.append(f"parameters   {r.num_params:,} in {r.num_tensors} tensors")
    for dt in sorted(r.dtype_counts):
        lines.append(f"  {dt:<10} {r.dtype_counts[dt]:>6} tensors  {r.dtype_params[dt]:>16,} params  "
                     f"{human_bytes(r.dtype_params[dt] * ITEMSIZE[dt])}")
    lines.append("shards")
    for f, n, b in r.shards:
        lines.append(f"  {f:<40} {n:>6} tensors  {human_bytes(b)}")
    lines.append(f"size         stored {human_bytes(r.stored_bytes)}; at fp32 {human_bytes(r.bytes_at(32))}, "
                 f"fp16 {human_bytes(r.bytes_at(16))}, int8 {human_bytes(r.bytes_at(8))}")
    if r.problems:
        lines.append(f"problems     {len(r.problems)}")
        lines += [f"  - {p}" for p in r.problems[:_MAX_LISTED]]
        if len(r.problems) > _MAX_LISTED:
            lines.append(f"  … and {len(r.problems) - _MAX_LISTED} more (--json lists every one)")
    else:
        lines.append("check        every tensor matches the shapes config.json implies")
    return "\n".join(lines)
