"""The one cost model behind the simulator's per-op roofline and `estimate` (issue 13 item 5).

Both `ascend_adapt.sim.cost` (per op of a graph) and `ascend_adapt.estimate` (per op of the
weightless graph the builder would emit for a config, see `estimate.graph_cost`) turn FLOPs and
bytes into time here, with the figures of one target data file:

    op time    = max(FLOPs / (peak · compute_efficiency), bytes / (bandwidth · memory_efficiency))
                 + launch overhead                                    (a view op costs nothing)
    transfer   = memcpy latency + bytes / PCIe bandwidth              (one host↔device copy)
    hand-over  = 2 transfers of the hidden state (chip → host → chip)  (one chip boundary)
    all-reduce = 2 · (n − 1) hand-overs of bytes / n                   (ring, tensor parallel)
    step       = Σ op times + Σ transfers + Σ hand-overs

`peak` is the fp16 (bf16) Cube peak for Cube ops computed in fp16 (bf16), the int8 peak
(`int8_tops`) for int8 × int8 Cube ops (W8A8's quantized MatMul), the fp32 peak for Cube ops in
fp32, and `VECTOR_FP16_FRACTION` of the fp16 peak (half that in fp32) for vector ops.

Figures (`CostFigures.of(target)`) come from the target data files (`ascend_adapt/targets/data/
*.json`), each with its source and confidence: `fp16_tflops`, `fp32_tflops`, `bf16_tflops`,
`memory_bandwidth_gbps`, `launch_overhead_us`, `pcie_gbps`, `memcpy_latency_us`,
`memory_efficiency`, `compute_efficiency`. Where a file has no efficiency, the stated
uncalibrated defaults below are used and `CostFigures.basis` says so. The efficiencies are
*calibration* figures: `ascend_adapt.estimate.published` fits them on named published
measurements and reports the error on the measurements they were not fitted on.

The hand-over between chips (for the multi-chip split) — the signature other modules call:

    handover_ms(nbytes: int, figures: CostFigures) -> float
        time to move `nbytes` (e.g. the hidden state [B, seq, H] in the activation dtype) from
        one chip to the next, once per chip boundary per step: device → host → device over
        PCIe (no direct chip-to-chip link is assumed on 300I Duo / Atlas 300I cards).

    step_ms(op_ms, transfer_bytes=(), handover_bytes=(), figures) -> float
        the total of one step: Σ op times + a transfer per host↔device copy + a hand-over per
        chip boundary.

Pure Python (no numpy / onnx), so every caller can import it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

# The vector unit: 2048-bit = 128 fp16 lanes vs the Cube's 16×16×16 MACs per cycle → 1/32 of the
# Cube's fp16 FLOPs (an FMA counted as 2 FLOPs in both); fp32 vector ops run at half that.
VECTOR_FP16_FRACTION = 1 / 32
# Uncalibrated defaults where a target data file gives no efficiency / transfer figure.
DEFAULT_MEMORY_EFFICIENCY = 0.40
DEFAULT_COMPUTE_EFFICIENCY = 0.40
DEFAULT_PCIE_GBPS = 15.75  # PCIe 3.0 x16 per direction, the most common host link
DEFAULT_MEMCPY_LATENCY_US = 10.0

UNITS = ("cube", "vector", "move", "view", "fused")
# "fused": a node the card runs inside another op's kernel (W8A16's weight dequantization, fused
# into the MatMul that reads it: see `sim.cost.weight_dequant_chains`): no launch, no bytes of its own.
FREE_UNITS = ("view", "fused")


@dataclass(frozen=True)
class CostFigures:
    """The target figures the cost model uses (per chip).

    Attributes:
        name: target name.
        fp16_flops / fp32_flops / bf16_flops: Cube peaks, FLOP/s (bf16 None without bf16).
        int8_ops: int8 Cube peak, op/s (None: 2 × the fp16 peak, the 310 family's ratio).
        bandwidth_bytes_s: device memory bandwidth, bytes/s.
        launch_us: per-op launch / dispatch overhead.
        pcie_bytes_s: host↔device bandwidth per direction, bytes/s.
        memcpy_latency_us: fixed cost of one host↔device copy.
        memory_efficiency / compute_efficiency: fraction of the bandwidth / peak an op reaches.
        basis: {figure: "source [confidence]"} for every figure above (the report prints it).
    """

    name: str
    fp16_flops: float
    fp32_flops: float
    bf16_flops: float | None
    bandwidth_bytes_s: float
    launch_us: float
    pcie_bytes_s: float
    memcpy_latency_us: float
    memory_efficiency: float
    compute_efficiency: float
    basis: tuple[tuple[str, str], ...] = ()
    int8_ops: float | None = None

    @classmethod
    def of(cls, target: Any, *, memory_efficiency: float | None = None,
           compute_efficiency: float | None = None) -> "CostFigures":
        """The figures of a `Target` (or a target name), efficiencies overridable."""
        from ascend_adapt.targets import resolve_target

        target = resolve_target(target)
        facts = getattr(target, "facts", {}) or {}
        basis: dict[str, str] = {}

        def fact(key: str, default: float | None, default_why: str) -> float | None:
            f = facts.get(key)
            if f is not None and f.value is not None:
                basis[key] = f"{f.source} [{f.confidence}]"
                return float(f.value)
            basis[key] = default_why
            return default

        for key in ("fp16_tflops", "fp32_tflops", "int8_tops", "memory_bandwidth_gbps", "launch_overhead_us"):
            f = facts.get(key)
            if f is not None:
                basis[key] = f"{f.source} [{f.confidence}]"
        pcie = fact("pcie_gbps", DEFAULT_PCIE_GBPS, f"uncalibrated default {DEFAULT_PCIE_GBPS} GB/s (PCIe 3.0 x16)")
        lat = fact("memcpy_latency_us", DEFAULT_MEMCPY_LATENCY_US,
                   f"uncalibrated default {DEFAULT_MEMCPY_LATENCY_US:g} us")
        mem_eff = fact("memory_efficiency", DEFAULT_MEMORY_EFFICIENCY,
                       f"uncalibrated default {DEFAULT_MEMORY_EFFICIENCY} (no published figure for this target)")
        cmp_eff = fact("compute_efficiency", DEFAULT_COMPUTE_EFFICIENCY,
                       f"uncalibrated default {DEFAULT_COMPUTE_EFFICIENCY} (no published prefill figure)")
        if memory_efficiency is not None:
            mem_eff, basis["memory_efficiency"] = float(memory_efficiency), "given by the caller"
        if compute_efficiency is not None:
            cmp_eff, basis["compute_efficiency"] = float(compute_efficiency), "given by the caller"
        for k, v in (("memory_efficiency", mem_eff), ("compute_efficiency", cmp_eff)):
            if not 0 < v <= 1:
                from ascend_adapt.errors import ConfigError

                raise ConfigError(f"{getattr(target, 'name', target)}: {k} {v} must lie in (0, 1]",
                                  "fix the target data file's figure or the value passed in")
        bf16 = getattr(target, "bf16_tflops", None)
        int8 = getattr(target, "int8_tops", None)
        return cls(name=target.name, fp16_flops=target.fp16_tflops * 1e12, fp32_flops=target.fp32_tflops * 1e12,
                   bf16_flops=None if bf16 is None else bf16 * 1e12,
                   bandwidth_bytes_s=target.memory_bandwidth_gbps * 1e9, launch_us=float(target.launch_overhead_us),
                   pcie_bytes_s=pcie * 1e9, memcpy_latency_us=lat, memory_efficiency=mem_eff,
                   compute_efficiency=cmp_eff, basis=tuple(sorted(basis.items())),
                   int8_ops=None if not int8 else float(int8) * 1e12)

    def peak_flops(self, unit: str, dtype: str) -> float:
        """FLOP/s of `unit` ("cube" / "vector" / "move") computing in `dtype`, before efficiency."""
        if unit == "cube":
            if dtype == "float16":
                return self.fp16_flops
            if dtype == "bfloat16":
                return self.bf16_flops or self.fp16_flops
            if dtype == "int8":
                return self.int8_ops or 2 * self.fp16_flops
            return self.fp32_flops
        vec = self.fp16_flops * VECTOR_FP16_FRACTION
        return vec if dtype in ("float16", "bfloat16") else vec / 2


@dataclass(frozen=True)
class OpTime:
    """The roofline terms of one op (milliseconds)."""

    compute_ms: float
    memory_ms: float
    launch_ms: float

    @property
    def total_ms(self) -> float:
        return max(self.compute_ms, self.memory_ms) + self.launch_ms

    @property
    def bound(self) -> str:
        if self.launch_ms == 0 and self.compute_ms == 0 and self.memory_ms == 0:
            return "free"
        if self.launch_ms >= max(self.compute_ms, self.memory_ms):
            return "launch"
        return "compute" if self.compute_ms >= self.memory_ms else "memory"


def op_time(flops: float, nbytes: float, figures: CostFigures, unit: str = "cube", dtype: str = "float16") -> OpTime:
    """max(FLOPs / (peak · compute_eff), bytes / (bandwidth · memory_eff)) + launch; views are free.

    Args:
        flops: floating-point operations of the op.
        nbytes: device-memory bytes it reads and writes.
        figures: the target's `CostFigures`.
        unit: "cube", "vector", "move" (data movement only), "view" (free: no kernel) or "fused"
            (free: runs inside another op's kernel, which carries its bytes).
        dtype: the dtype it computes in ("float16", "float32", "bfloat16", "int8", "int").
    """
    if unit in FREE_UNITS:
        return OpTime(0.0, 0.0, 0.0)
    c = flops / (figures.peak_flops(unit, dtype) * figures.compute_efficiency) * 1e3 if flops else 0.0
    m = nbytes / (figures.bandwidth_bytes_s * figures.memory_efficiency) * 1e3 if nbytes else 0.0
    return OpTime(c, m, figures.launch_us / 1e3)


def transfer_ms(nbytes: float, figures: CostFigures, copies: int = 1) -> float:
    """Host↔device time of `copies` memcpys carrying `nbytes` in all: latency each + bytes / PCIe."""
    if copies <= 0:
        return 0.0
    return copies * figures.memcpy_latency_us / 1e3 + nbytes / figures.pcie_bytes_s * 1e3


def handover_ms(nbytes: float, figures: CostFigures) -> float:
    """One chip-to-chip hand-over of `nbytes` (device → host → device: two transfers)."""
    return 2 * transfer_ms(nbytes, figures)


def allreduce_ms(nbytes: float, chips: int, figures: CostFigures) -> float:
    """A ring all-reduce of `nbytes` over `chips` chips: 2 · (n − 1) hand-overs of nbytes / n each."""
    if chips <= 1:
        return 0.0
    return 2 * (chips - 1) * handover_ms(nbytes / chips, figures)


def step_ms(op_ms: Iterable[float], figures: CostFigures, transfer_bytes: Iterable[float] = (),
            handover_bytes: Iterable[float] = ()) -> float:
    """Σ op times + one transfer per entry of `transfer_bytes` + one hand-over per chip boundary."""
    return (float(sum(op_ms)) + sum(transfer_ms(b, figures) for b in transfer_bytes)
            + sum(handover_ms(b, figures) for b in handover_bytes))
