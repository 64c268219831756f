"""`ascend-adapt inspect`: what a checkpoint is, without reading tensor data."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import open_checkpoint
from .checkpoint.dtypes import ITEMSIZE


@dataclass
class InspectReport:
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

    def bytes_at(self, bits: int) -> int:
        return self.num_params * bits // 8

    def to_dict(self) -> dict:
        return {
            "path": str(self.path), "layout": self.layout, "architecture": self.architecture,
            "adapter": self.adapter, "num_tensors": self.num_tensors, "num_params": self.num_params,
            "dtype_counts": self.dtype_counts, "dtype_params": self.dtype_params,
            "shards": [{"file": f, "tensors": n, "bytes": b} for f, n, b in self.shards],
            "stored_bytes": self.stored_bytes,
            "bytes_fp32": self.bytes_at(32), "bytes_fp16": self.bytes_at(16), "bytes_int8": self.bytes_at(8),
            "spec": self.spec, "problems": self.problems,
        }


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def inspect_checkpoint(path) -> InspectReport:
    """Describe a model directory: layout, architecture, parameters, dtypes, shards, sizes."""
    from ascend_adapt.errors import AscendAdaptError
    from ascend_adapt.model_zoo import adapter_for_config

    reader = open_checkpoint(path)
    infos = reader.infos()
    arch = (reader.config.get("architectures") or [reader.config.get("model_type") or
                                                   ("llama (Meta layout)" if reader.layout == "meta" else "?")])[0]
    adapter_name, spec_dict, problems = None, None, []
    try:
        adapter = adapter_for_config(reader.config, str(Path(path) / "config.json"))
        adapter_name = adapter.name
        spec = adapter.spec_from_config(reader.config)
        spec_dict = spec.to_dict()
        expected = adapter.source_shapes(spec, "meta" if reader.layout == "meta" else "hf")
        for name, shape in expected.items():
            if name in infos and tuple(infos[name].shape) != tuple(shape):
                problems.append(f"{name}: shape {infos[name].shape}, config implies {shape}")
            elif name not in infos and not name.startswith("lm_head"):
                problems.append(f"{name}: missing")
    except AscendAdaptError as exc:
        problems.append(str(exc).splitlines()[0])
    counts, params = Counter(), Counter()
    for info in infos.values():
        counts[info.dtype] += 1
        params[info.dtype] += info.numel
    return InspectReport(
        path=Path(path), layout=reader.layout, architecture=str(arch), adapter=adapter_name,
        spec=spec_dict, num_tensors=len(infos), num_params=sum(params.values()),
        dtype_counts=dict(counts), dtype_params=dict(params),
        shards=[(f.name, n, b) for f, n, b in reader.shard_summary()],
        stored_bytes=sum(i.nbytes for i in infos.values()), problems=problems,
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
        lines += [f"  - {p}" for p in r.problems[:20]]
    return "\n".join(lines)
