"""What a graph would cost on the card: per-op roofline latency and device memory (simulated).

Not a measurement. Every op gets FLOPs and bytes from its (inferred) shapes, and a time from
the one cost model shared with `estimate` (`ascend_adapt.cost_model`):

    time = max(flops / (peak · compute_eff), bytes / (bandwidth · memory_eff)) + launch overhead

against the target profile (`ascend_adapt.targets`, efficiencies calibrated on published figures:
`ascend_adapt.estimate.published`). A step also pays its host↔device copies (`transfer_ms`).
Assumptions (also printed with every report):

- Cube ops (MatMul, Gemm, Conv, ConvTranspose, Einsum) run at the target's fp16 peak when the
  precision mode computes them in fp16 (bf16 peak for bf16), at the fp32 peak otherwise.
  FLOPs = 2·M·N·K (Conv: 2·out·Cin/g·kernel).
- Vector ops run at `VECTOR_FP16_FRACTION` of the fp16 peak in fp16 (2048-bit vector unit =
  128 fp16 lanes vs the Cube's 16×16×16 MACs per cycle: 1/32, counting an FMA as 2 FLOPs), half
  that in fp32. FLOPs per output element: 1 for arithmetic, `TRANSCENDENTAL_FLOPS` for
  exp/log/tanh/erf/sqrt/pow/sigmoid; reductions count input elements; Softmax 5, norms 8 per element.
- Every op reads its inputs and writes its outputs from device memory once (no L2 reuse, no
  UB fusion of elementwise chains: pessimistic for vector chains). Float tensors count 2 bytes
  where the mode stores them in fp16/bf16, else their own size. Gather / Slice move only the
  selected rows.
- Views (Reshape, Squeeze, Unsqueeze, Flatten, Identity, Shape, Constant) cost nothing; every
  other op pays the target's launch overhead.
- Quantized weights (W8A16): a weight-dequant chain (AscendAntiQuant → [Reshape] → Mul by the
  scale → [Reshape]) that feeds only a MatMul's weight input is fused into that MatMul, as CANN's
  WeightQuantBatchMatmulV2 runs it (`weight_dequant_chains`): the chain's nodes cost nothing and the
  MatMul reads the int8 weight + its scales instead of an fp16 copy. W8A8's int8 × int8 MatMul
  runs at the target's int8 peak. The Ascend quant ops (default domain, as ATC registers them)
  are costed by their operators-registry `sim_cost` hooks.
- Host↔device: one copy per graph input and per output the host reads, at the target's PCIe
  figure, except for an LLM graph of the contract (docs/graph_contract.md) run with the KV
  cache on the card: past_* stay on the card, present_* too, and only next_token / logits_sum
  come back (`host_io`).
- Memory: weights (in the device dtype) + input/output buffers (the KV cache, for LLM decode
  graphs, is part of the inputs) + workspace (peak of live intermediates in node order, views
  aliased). Each OM loaded with aclmdlLoadFromFile holds its own weights and workspace.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto

from ascend_adapt.cost_model import VECTOR_FP16_FRACTION, CostFigures, op_time, transfer_ms
from ascend_adapt.quant import ASCEND_QUANT_OPS, INT8_MATMUL_TAG

from .graph import (CUBE_OPS, VIEW_OPS, TensorInfo, elem_size, graph_inputs, graph_outputs, infer_tensor_infos,
                    initializer_infos, load_model, node_label)
from .numerics import LOW, LOW_IN, ORIGIN, PrecisionPlan, plan_precision
from .settings import SimSettings

SIMULATED = "simulated"
TRANSCENDENTAL_FLOPS = 8
_TRANSCENDENTAL = {"Exp", "Log", "Tanh", "Erf", "Sqrt", "Pow", "Sigmoid", "Sin", "Cos", "Reciprocal",
                   "Softplus", "Gelu", "HardSigmoid", "Elu", "Selu", "Atan", "Asin", "Acos", "Tan"}
_REDUCE = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceSumSquare", "ReduceLogSumExp", "ReduceLogSum", "ArgMax", "ArgMin", "CumSum", "TopK",
           "GlobalAveragePool", "GlobalMaxPool"}
_NORM = {"LayerNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization",
         "SimplifiedLayerNormalization", "RMSNormalization", "MeanVarianceNormalization"}
_SOFTMAX = {"Softmax", "LogSoftmax"}
_MOVE_SELECTED = {"Gather", "GatherElements", "GatherND", "Slice", "Split"}
_ZERO_FLOP = {"Transpose", "Concat", "Expand", "Tile", "Cast", "Pad", "ScatterND", "ScatterElements",
              "Gather", "GatherElements", "GatherND", "Slice", "Split", "Where", "ConstantOfShape", "Range",
              "DepthToSpace", "SpaceToDepth", "Trilu", "CastLike", "Resize"}

ASSUMPTIONS = (
    "simulated roofline (ascend_adapt.cost_model, shared with estimate): time = max(FLOPs / (peak x compute "
    "efficiency), bytes / (bandwidth x memory efficiency)) + launch overhead per non-view op",
    "Cube ops at the fp16 peak in fp16 modes (fp32 peak when computed in fp32)",
    f"vector ops at {VECTOR_FP16_FRACTION:.4g} x fp16 peak in fp16, half that in fp32 "
    "(2048-bit vector unit vs 16x16x16 Cube; confidence M)",
    f"transcendental ops count {TRANSCENDENTAL_FLOPS} FLOPs per element; Softmax 5, norms 8",
    "every op reads inputs / writes outputs from device memory once: no cache reuse, no fusion",
    "views (Reshape, Squeeze, Unsqueeze, Flatten, Identity) are free",
    "W8A16: a weight-dequant chain (AscendAntiQuant + scale Mul) feeding a MatMul's weight is fused into it "
    "(CANN WeightQuantBatchMatmulV2: int8 weight + scales read, no fp16 copy; confidence M on 310P, L on 310); "
    "int8 x int8 MatMuls at the int8 peak",
    "host<->device: one memcpy per input fed and output read, at the target's PCIe figure (an LLM graph with "
    "the KV cache on the card: ids, positions, mask up; next_token, logits_sum down)",
    "memory = weights (device dtype) + I/O buffers (incl. KV cache) + peak live intermediates; "
    "each loaded OM holds its own weights and workspace",
)


@dataclass
class OpCost:
    """Cost of one node (simulated).

    Attributes:
        name / op_type: the node.
        unit: "cube", "vector", "move" (data movement only), "view" (free) or "fused" (free: runs inside
            the MatMul it feeds, `weight_dequant_chains`).
        dtype: the compute dtype ("float16", "float32", ...).
        flops: floating-point operations.
        bytes: device-memory bytes read + written.
        compute_ms / memory_ms / launch_ms: the roofline terms.
        time_ms: max(compute, memory) + launch.
        bound: "compute", "memory", "launch" or "free".
        shape_known: False when shapes were not inferred (cost counted as launch only).
        operator: the operators-registry op that emitted the node (`ascend_adapt.op` tag), or "".
    """

    name: str
    op_type: str
    unit: str
    dtype: str
    flops: float
    bytes: float
    compute_ms: float
    memory_ms: float
    launch_ms: float
    time_ms: float
    bound: str
    shape_known: bool = True
    operator: str = ""


@dataclass
class MemoryEstimate:
    """Device memory of one graph (or the sum over an artifact's graphs), simulated.

    Attributes:
        weights_bytes: initializers in the device dtype.
        io_bytes: input + output buffers (including `kv_cache_bytes`).
        kv_cache_bytes: inputs whose name says past / cache (the static KV cache).
        workspace_bytes: peak live intermediates.
        limit_bytes: the target's usable device memory per chip.
    """

    weights_bytes: int = 0
    io_bytes: int = 0
    kv_cache_bytes: int = 0
    workspace_bytes: int = 0
    limit_bytes: int | None = None
    unknown: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.io_bytes + self.workspace_bytes

    @property
    def fits(self) -> bool | None:
        return None if self.limit_bytes is None else self.total_bytes <= self.limit_bytes

    def __add__(self, other: "MemoryEstimate") -> "MemoryEstimate":
        return MemoryEstimate(self.weights_bytes + other.weights_bytes, self.io_bytes + other.io_bytes,
                              self.kv_cache_bytes + other.kv_cache_bytes,
                              self.workspace_bytes + other.workspace_bytes,
                              self.limit_bytes if self.limit_bytes is not None else other.limit_bytes,
                              self.unknown + other.unknown)

    def to_text(self) -> str:
        gb = lambda b: f"{b / 2**30:.3g} GiB" if b >= 2**30 else f"{b / 2**20:.3g} MiB"  # noqa: E731
        s = (f"memory ({SIMULATED}): weights {gb(self.weights_bytes)} + I/O {gb(self.io_bytes)} "
             f"(KV cache {gb(self.kv_cache_bytes)}) + workspace {gb(self.workspace_bytes)} = {gb(self.total_bytes)}")
        if self.limit_bytes:
            s += f" of {gb(self.limit_bytes)} per chip ({100 * self.total_bytes / self.limit_bytes:.1f}%)"
        return s

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total_bytes"] = self.total_bytes
        d["fits"] = self.fits
        return d


@dataclass
class CostReport:
    """Per-op and per-step cost of one graph on a target (simulated).

    Attributes:
        graph: graph name. target / soc_version / precision_mode: what it was estimated for.
        input_shapes: the concrete input shapes used.
        ops: OpCost per node, in graph order (`by_time()` sorts them).
        memory: the MemoryEstimate.
        assumptions: what the numbers rest on.
        warnings: e.g. nodes whose shapes could not be inferred.
        transfer_ms: host↔device copies of one run (`host_io`), at the target's PCIe figure.
        host_io_bytes: their bytes in all. copies: their number.
        figures: {figure: "source [confidence]"} of the cost-model figures used.
    """

    graph: str
    target: str
    soc_version: str
    precision_mode: str
    input_shapes: dict[str, tuple[int, ...]]
    ops: list[OpCost]
    memory: MemoryEstimate
    assumptions: tuple[str, ...] = ASSUMPTIONS
    warnings: list[str] = field(default_factory=list)
    simulated: bool = True
    transfer_ms: float = 0.0
    host_io_bytes: int = 0
    copies: int = 0
    figures: dict = field(default_factory=dict)

    @property
    def total_ms(self) -> float:
        """Σ op times on the card (no host copies; `step_ms` adds them)."""
        return float(sum(o.time_ms for o in self.ops))

    @property
    def step_ms(self) -> float:
        """One run as the host sees it: the ops + the host↔device copies."""
        return self.total_ms + self.transfer_ms

    @property
    def total_flops(self) -> float:
        return float(sum(o.flops for o in self.ops))

    @property
    def total_bytes(self) -> float:
        return float(sum(o.bytes for o in self.ops))

    def by_time(self) -> list[OpCost]:
        return sorted(self.ops, key=lambda o: -o.time_ms)

    def by_op_type(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for o in self.ops:
            out[o.op_type] = out.get(o.op_type, 0.0) + o.time_ms
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def by_operator(self) -> dict[str, float]:
        """Time per operators-registry op (nodes without a tag under their op type), sorted."""
        out: dict[str, float] = {}
        for o in self.ops:
            key = o.operator or o.op_type
            out[key] = out.get(key, 0.0) + o.time_ms
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def to_dict(self) -> dict:
        return {"simulated": True, "graph": self.graph, "target": self.target, "soc_version": self.soc_version,
                "precision_mode": self.precision_mode,
                "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
                "total_ms": self.total_ms, "transfer_ms": self.transfer_ms, "step_ms": self.step_ms,
                "host_io_bytes": self.host_io_bytes, "copies": self.copies,
                "total_flops": self.total_flops, "total_bytes": self.total_bytes,
                "memory": self.memory.to_dict(), "by_op_type_ms": self.by_op_type(),
                "by_operator_ms": self.by_operator(),
                "ops": [asdict(o) for o in self.ops], "assumptions": list(self.assumptions),
                "warnings": list(self.warnings)}

    def summary(self) -> dict:
        """The manifest-sized part of `to_dict` (no per-op list)."""
        d = self.to_dict()
        d.pop("ops")
        d["top_ops"] = [{"name": o.name, "op_type": o.op_type, "time_ms": o.time_ms, "bound": o.bound}
                        for o in self.by_time()[:10]]
        return d

    def to_text(self, top: int = 15) -> str:
        shapes = ", ".join(f"{k} {list(v)}" for k, v in self.input_shapes.items())
        units: dict[str, int] = {}
        for o in self.ops:
            units[o.unit] = units.get(o.unit, 0) + 1
        lines = [
            f"[{SIMULATED}] cost of '{self.graph}' on {self.target} (soc_version {self.soc_version}, "
            f"precision {self.precision_mode}); inputs: {shapes}",
            "  a roofline model of the target profile, not a measurement",
            f"  total {self.total_ms:.4f} ms per run ({SIMULATED}); {len(self.ops)} ops "
            f"({', '.join(f'{n} {u}' for u, n in sorted(units.items()))}); "
            f"{self.total_flops / 1e9:.4g} GFLOP; {self.total_bytes / 2**20:.4g} MiB moved",
            f"  + host<->device {self.transfer_ms:.4f} ms ({self.copies} copies, {self.host_io_bytes:,} B) = "
            f"{self.step_ms:.4f} ms per step",
            f"  {'time_ms':>10} {'share':>6} {'bound':>8} {'unit':>6} {'dtype':>8} {'GFLOP':>9} {'MiB':>9}  op_type / name",
        ]
        total = self.total_ms or 1.0
        for o in self.by_time()[:top]:
            lines.append(f"  {o.time_ms:10.4f} {100 * o.time_ms / total:5.1f}% {o.bound:>8} {o.unit:>6} "
                         f"{o.dtype:>8} {o.flops / 1e9:9.4g} {o.bytes / 2**20:9.4g}  {o.op_type} / {o.name}")
        if len(self.ops) > top:
            lines.append(f"  ... {len(self.ops) - top} more ops")
        by_op = list(self.by_operator().items())[:8]
        lines.append("  by operator: " + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in by_op))
        lines.append("  " + self.memory.to_text())
        for w in self.warnings:
            lines.append(f"  warning: {w}")
        lines.append("  assumptions:")
        lines.extend(f"   - {a}" for a in self.assumptions)
        return "\n".join(lines)


# ---------------------------------------------------------------------------- shapes
def resolve_input_shapes(model: onnx.ModelProto, settings: SimSettings | None = None,
                         input_shapes: Mapping[str, Sequence[int]] | None = None,
                         gear: int | str | None = "largest") -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Concrete input shapes: `input_shapes` first, then --input_shape (with gear `gear`), then
    the graph's static dims. Returns (shapes, names of inputs left with unknown dims)."""
    ins = graph_inputs(model)
    out: dict[str, tuple[int, ...]] = {}
    given = dict(input_shapes or {})
    gear_shapes: dict[str, tuple[int, ...]] = {}
    if settings is not None:
        gs = settings.gear_shapes()
        if gs and gear is not None:
            if gear == "largest":
                chosen = max(gs, key=lambda d: sum(math.prod(v) for v in d.values()))
            elif gear == "smallest":
                chosen = min(gs, key=lambda d: sum(math.prod(v) for v in d.values()))
            else:
                chosen = gs[int(gear)]
            gear_shapes = chosen
    unknown = []
    for name, info in ins.items():
        if name in given:
            out[name] = tuple(int(d) for d in given[name])
            continue
        if name in gear_shapes:
            out[name] = gear_shapes[name]
            continue
        pinned = (settings.input_shape or {}).get(name) if settings is not None else None
        dims = list(info.shape) if info.shape is not None else None
        if pinned is not None and all(isinstance(d, int) and d > 0 for d in pinned):
            out[name] = tuple(pinned)
        elif dims is not None and all(isinstance(d, int) for d in dims):
            out[name] = tuple(dims)  # type: ignore[arg-type]
        else:
            unknown.append(name)
    return out, unknown


# ---------------------------------------------------------------------------- per-op
def _shape(infos: Mapping[str, TensorInfo], name: str) -> tuple[int, ...] | None:
    i = infos.get(name)
    return i.shape if i is not None and i.static else None  # type: ignore[return-value]


def _numel(s: tuple[int, ...] | None) -> int:
    return math.prod(s) if s is not None else 0


def _einsum_flops(eq: str, shapes: list[tuple[int, ...]]) -> float:
    lhs = eq.replace(" ", "").split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for term, s in zip(lhs, shapes):
        letters = [c for c in term if c.isalpha()]
        if "..." in term:
            n_ell = len(s) - len(letters)
            for k in range(n_ell):
                sizes[f"_{k}"] = s[term.index("...") + k] if term.index("...") + k < len(s) else 1
            letters = [c for c in term.split("...")[0]] + [c for c in term.split("...")[1]]
            s = s[:len(term.split("...")[0])] + s[len(s) - len(term.split("...")[1]):]
        for c, d in zip(letters, s):
            sizes[c] = d
    return 2.0 * math.prod(sizes.values()) if sizes else 0.0


def _flops(node: onnx.NodeProto, infos: Mapping[str, TensorInfo]) -> tuple[float, bool]:
    """(FLOPs, shapes known)."""
    op = node.op_type
    ins = [_shape(infos, n) if n else None for n in node.input]
    outs = [_shape(infos, n) if n else None for n in node.output]
    out0 = outs[0] if outs else None
    if op in VIEW_OPS or op in _ZERO_FLOP:
        return 0.0, True
    if op == "MatMul" or op == "FusedMatMul":
        if out0 is None or ins[0] is None:
            return 0.0, False
        return 2.0 * _numel(out0) * ins[0][-1], True
    if op == "Gemm":
        if out0 is None or ins[0] is None:
            return 0.0, False
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        k = ins[0][0] if trans_a else ins[0][-1]
        return 2.0 * _numel(out0) * k + (_numel(out0) if len(node.input) > 2 and node.input[2] else 0), True
    if op == "Conv":
        if out0 is None or len(ins) < 2 or ins[1] is None:
            return 0.0, False
        return 2.0 * _numel(out0) * math.prod(ins[1][1:]), True
    if op == "ConvTranspose":
        if ins[0] is None or len(ins) < 2 or ins[1] is None:
            return 0.0, False
        return 2.0 * _numel(ins[0]) * math.prod(ins[1][1:]), True
    if op == "Einsum":
        if any(s is None for s in ins):
            return 0.0, False
        eq = next((a.s.decode() for a in node.attribute if a.name == "equation"), "")
        return _einsum_flops(eq, ins), True  # type: ignore[arg-type]
    if op in _REDUCE:
        return (float(_numel(ins[0])), True) if ins and ins[0] is not None else (0.0, False)
    if out0 is None:
        return 0.0, False
    if op in _SOFTMAX:
        return 5.0 * _numel(out0), True
    if op in _NORM:
        return 8.0 * _numel(out0), True
    if op in _TRANSCENDENTAL:
        return float(TRANSCENDENTAL_FLOPS * _numel(out0)), True
    return float(_numel(out0)), True


def _unit(node: onnx.NodeProto) -> str:
    if node.op_type in VIEW_OPS:
        return "view"
    if node.op_type in CUBE_OPS:
        return "cube"
    if node.op_type in _ZERO_FLOP:
        return "move"
    return "vector"


def _tensor_bytes(infos: Mapping[str, TensorInfo], name: str, low_bytes: int | None) -> int | None:
    i = infos.get(name)
    if i is None or not i.static:
        return None
    if i.elem_type == TensorProto.FLOAT and low_bytes:
        return i.numel * low_bytes  # type: ignore[operator]
    return i.numel * elem_size(i.elem_type)  # type: ignore[operator]


def _bytes(node: onnx.NodeProto, infos: Mapping[str, TensorInfo], mode: str, low: str | None) -> tuple[float, bool]:
    if node.op_type in VIEW_OPS:
        return 0.0, True
    lb = 2 if (low and mode in (LOW, LOW_IN)) else None
    out_lb = 2 if (low and mode == LOW) else None
    outs = [_tensor_bytes(infos, n, out_lb) for n in node.output if n]
    if any(b is None for b in outs):
        return 0.0, False
    out_b = float(sum(outs))  # type: ignore[arg-type]
    if node.op_type in _MOVE_SELECTED:
        # read the selected elements (= output size) + indices / starts
        extra = [_tensor_bytes(infos, n, None) for n in node.input[1:] if n]
        return 2 * out_b + float(sum(b for b in extra if b)), True
    ins = [_tensor_bytes(infos, n, lb) for n in node.input if n]
    if any(b is None for b in ins):
        return out_b, False
    return out_b + float(sum(ins)), True  # type: ignore[arg-type]


def _compute_dtype(node: onnx.NodeProto, infos: Mapping[str, TensorInfo], mode: str, low: str | None) -> str:
    if mode in (LOW, LOW_IN) and low:
        return low
    for n in list(node.input) + list(node.output):
        i = infos.get(n)
        if i is not None and i.is_float:
            return {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16",
                    TensorProto.BFLOAT16: "bfloat16", TensorProto.DOUBLE: "float64"}[i.elem_type]
    return "int"


def _operator_tag(node: onnx.NodeProto) -> str:
    """The operators-registry name an emission stamped on the node (`ascend_adapt.op`), or ""."""
    for p in node.metadata_props:
        if p.key == "ascend_adapt.op":
            return p.value
    return ""


def _custom_cost(node: onnx.NodeProto, infos: Mapping[str, TensorInfo]):
    """(flops, bytes) from the operators registry's `sim_cost` hook (custom-domain and quant nodes).

    The hook takes `{"inputs": [(shape, dtype), …], "outputs": [(shape, dtype), …], "attrs": {…}}`
    (docs/operators.md); the operator is the node's `ascend_adapt.op` tag, else its op type.
    """
    try:
        from ascend_adapt.operators.registry import OPERATORS
    except Exception:  # noqa: BLE001 - the registry is optional here
        return None
    name = _operator_tag(node) or node.op_type
    try:
        entry = OPERATORS.get(name) if name in OPERATORS else None
    except Exception:  # noqa: BLE001
        return None
    hook = getattr(entry, "sim_cost", None) if entry is not None else None
    if hook is None:
        return None
    from .graph import attrs_of

    def desc(names):
        out = []
        for n in names:
            i = infos.get(n) if n else None
            out.append((None if i is None else i.shape, None if i is None else i.elem_type))
        return out

    try:
        flops, nbytes = hook({"inputs": desc(node.input), "outputs": desc(node.output), "attrs": attrs_of(node)})
        return float(flops), float(nbytes)
    except Exception:  # noqa: BLE001 - a broken hook falls back to the generic estimate
        return None


@dataclass(frozen=True)
class OpLoad:
    """What one node asks of the card: its work, before any target figure turns it into time.

    Attributes:
        name / op_type / unit / dtype / operator: as in `OpCost`.
        flops: floating-point operations. bytes: device-memory bytes read + written.
        shape_known: False when shapes were not inferred.
        weight_bytes: bytes of float initializers the node reads (part of `bytes`), e.g. a
            MatMul's weight: what `estimate` rescales for quantized precisions.
        weight: name of the (first) such initializer, or "".
    """

    name: str
    op_type: str
    unit: str
    dtype: str
    flops: float
    bytes: float
    shape_known: bool
    operator: str = ""
    weight_bytes: float = 0.0
    weight: str = ""


def _is_int8_matmul(node: onnx.NodeProto, infos: Mapping[str, TensorInfo]) -> bool:
    """A MatMul of two int8 operands (W8A8's quantized Linear, tagged `int8_matmul`)."""
    if node.op_type != "MatMul":
        return False
    if _operator_tag(node) == INT8_MATMUL_TAG:
        return True
    types = [infos[n].elem_type if n in infos else None for n in node.input[:2]]
    return all(t == TensorProto.INT8 for t in types)


def _uses_hook(node: onnx.NodeProto, infos: Mapping[str, TensorInfo]) -> bool:
    """Whether the node's cost comes from its operators-registry `sim_cost` hook.

    Custom-domain nodes, and the Ascend quant ops / int8 MatMul whatever their domain (ATC's
    parsers register AscendQuant & co in the default domain, where the generic estimate would
    count them as plain vector ops).
    """
    return (node.domain not in ("", "ai.onnx") or node.op_type in ASCEND_QUANT_OPS
            or _is_int8_matmul(node, infos))


def weight_dequant_chains(model: onnx.ModelProto) -> dict[int, tuple[tuple[int, ...], tuple[str, ...]]]:
    """W8A16 weight-dequant chains the card fuses into the MatMul that reads them.

    A chain is AscendAntiQuant(q) → [Reshape] → Mul(·, scale) → [Reshape] ending at input 1 (the
    weight) of a MatMul, with q and the scale constants (initializers or Constant outputs) and
    every intermediate read by the next chain node only (and not a graph output). On the card
    ATC runs such a chain as one WeightQuantBatchMatmulV2: the int8 weight and its scales are read
    and dequantized on the way into the Cube, with no fp16 weight copy in device memory (hicann
    ops-nn `matmul/weight_quant_batch_matmul_v2/docs/aclnnWeightQuantBatchMatmulV2.md`, CANN 8.x:
    supported on "Atlas 推理系列产品" = the 310P cards, and the A2/A3 series; the original 310 is
    not listed, so there the rule is an assumption, confidence L; that ATC's graph fusion forms
    it from this AscendAntiQuant + Mul + MatMul pattern is not documented publicly either:
    confidence M on 310P).

    Returns:
        {MatMul node index: (indices of the fused chain nodes, names of the constants the fused
        op reads instead of the fp16 weight: q first, then the scales)}.
    """
    g = model.graph
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    readers: dict[str, int] = {}
    for n in g.node:
        for x in n.input:
            if x:
                readers[x] = readers.get(x, 0) + 1
    outs = {o.name for o in g.output}
    consts = {t.name for t in g.initializer} | {n.output[0] for n in g.node if n.op_type == "Constant" and n.output}
    chains: dict[int, tuple[tuple[int, ...], tuple[str, ...]]] = {}
    for mi, mm in enumerate(g.node):
        if mm.op_type != "MatMul" or len(mm.input) < 2 or _operator_tag(mm) == INT8_MATMUL_TAG:
            continue
        cur, idx, scales, q = mm.input[1], [], [], None
        while cur in producer and readers.get(cur, 0) == 1 and cur not in outs:
            j = producer[cur]
            n = g.node[j]
            if n.op_type == "Reshape":
                idx.append(j)
                cur = n.input[0]
            elif n.op_type == "Mul" and len(n.input) == 2:
                a, b = n.input
                if b in consts and a not in consts:
                    path, sc = a, b
                elif a in consts and b not in consts:
                    path, sc = b, a
                else:
                    break
                idx.append(j)
                scales.append(sc)
                cur = path
            elif n.op_type == "AscendAntiQuant":
                if n.input[0] in consts:
                    idx.append(j)
                    q = n.input[0]
                break
            else:
                break
        if q is not None:
            chains[mi] = (tuple(idx), (q, *scales))
    return chains


def op_loads(model: onnx.ModelProto, plan: PrecisionPlan, infos: Mapping[str, TensorInfo]) -> list[OpLoad]:
    """FLOPs and bytes of every node (see the module assumptions); `op_costs` times them."""
    inits = set(initializer_infos(model))
    chains = weight_dequant_chains(model)
    fused = {j for idx, _ in chains.values() for j in idx}
    out = []
    for i, node in enumerate(model.graph.node):
        mode = plan.modes.get(i, ORIGIN)
        lb = 2 if (plan.low_dtype and mode in (LOW, LOW_IN)) else None
        if i in fused:  # runs inside the MatMul it feeds (weight_dequant_chains)
            out.append(OpLoad(node_label(node, i), node.op_type, "fused", "int8", 0.0, 0.0, True,
                              _operator_tag(node)))
            continue
        unit = _unit(node)
        dtype = "int8" if _is_int8_matmul(node, infos) else _compute_dtype(node, infos, mode, plan.low_dtype)
        custom = _custom_cost(node, infos) if _uses_hook(node, infos) else None
        if custom is not None:
            flops, nbytes = custom
            known = True
        else:
            flops, k1 = _flops(node, infos)
            nbytes, k2 = _bytes(node, infos, mode, plan.low_dtype)
            known = k1 and k2
        if unit == "view":
            flops = nbytes = 0.0
        w_bytes, w_name = 0.0, ""
        if i in chains:  # the fused WeightQuantBatchMatmul: int8 weight + scales instead of the fp16 copy
            _, leaves = chains[i]
            fp_w = _tensor_bytes(infos, node.input[1], lb)
            leaf_b = [_tensor_bytes(infos, n, lb) for n in leaves]
            if fp_w is None or any(b is None for b in leaf_b):
                known = False
            else:
                w_bytes = float(sum(leaf_b))  # type: ignore[arg-type]
                nbytes = nbytes - fp_w + w_bytes
                w_name = leaves[0]
        elif unit == "cube":
            for n in node.input[1:]:
                if n in inits:
                    b = _tensor_bytes(infos, n, lb) or 0
                    w_bytes += b
                    w_name = w_name or n
        out.append(OpLoad(node_label(node, i), node.op_type, unit, dtype, float(flops), float(nbytes), known,
                          _operator_tag(node), w_bytes, w_name))
    return out


def op_costs(model: onnx.ModelProto, target: Any, plan: PrecisionPlan, infos: Mapping[str, TensorInfo],
             figures: CostFigures | None = None) -> list[OpCost]:
    """Per-op time of `model` on `target` through the shared cost model (`cost_model.op_time`)."""
    fig = figures or CostFigures.of(target)
    out = []
    for ld in op_loads(model, plan, infos):
        t = op_time(ld.flops, ld.bytes, fig, ld.unit, ld.dtype)
        out.append(OpCost(ld.name, ld.op_type, ld.unit, ld.dtype, ld.flops, ld.bytes, t.compute_ms, t.memory_ms,
                          t.launch_ms, t.total_ms, t.bound, ld.shape_known, ld.operator))
    return out


def host_io(model: onnx.ModelProto, infos: Mapping[str, TensorInfo]) -> tuple[list[str], list[str]]:
    """(inputs the host feeds, outputs the host reads) per run.

    An LLM graph of the contract (inputs past_keys / past_values, outputs next_token /
    logits_sum: docs/graph_contract.md) is costed as the "acl" runtime runs it with the KV cache
    on the card and greedy on the card: the cache inputs and present_* outputs stay there and
    only contract.GREEDY_OUTPUTS come back. Any other graph: every input and every output.
    """
    ins, outs = list(graph_inputs(model)), list(graph_outputs(model))
    if {"past_keys", "past_values"} <= set(ins) and {"next_token", "logits_sum"} <= set(outs):
        return [n for n in ins if n not in ("past_keys", "past_values")], ["next_token", "logits_sum"]
    return ins, outs


def host_io_bytes(model: onnx.ModelProto, infos: Mapping[str, TensorInfo]) -> list[int]:
    """Bytes of each host↔device copy of one run (`host_io`), in graph dtypes."""
    ins, outs = host_io(model, infos)
    out = []
    for n in ins + outs:
        i = infos.get(n)
        if i is not None and i.static:
            out.append(int(i.numel * elem_size(i.elem_type)))  # type: ignore[operator]
    return out


# ---------------------------------------------------------------------------- memory
def estimate_memory(model: onnx.ModelProto, target: Any, settings: SimSettings, *,
                    input_shapes: Mapping[str, Sequence[int]] | None = None,
                    infos: Mapping[str, TensorInfo] | None = None, plan: PrecisionPlan | None = None
                    ) -> MemoryEstimate:
    """Device memory one loaded graph needs (simulated; see the module assumptions).

    Args:
        model: the graph (weights not needed).
        target: the target profile (limit = usable memory per chip, else memory per chip).
        settings: precision and shapes (the largest gear is used).
        input_shapes: concrete input shapes (default: resolved from settings / the graph).
    """
    if input_shapes is None:
        input_shapes, _ = resolve_input_shapes(model, settings)
    infos = infos if infos is not None else infer_tensor_infos(model, input_shapes)
    plan = plan or plan_precision(model, settings, target=target, infos=infos)
    low_b = 2 if plan.low_dtype else None
    inits = initializer_infos(model)
    # weights: float32 initializers read by low nodes are stored in the low dtype
    low_read: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if plan.modes.get(i) in (LOW, LOW_IN):
            low_read.update(node.input)
    mem = MemoryEstimate(limit_bytes=getattr(target, "usable_memory_bytes", None) or target.memory_bytes)
    for name, info in inits.items():
        lb = low_b if (name in low_read and info.elem_type == TensorProto.FLOAT) else None
        mem.weights_bytes += info.numel * (lb or elem_size(info.elem_type))  # type: ignore[operator]
    for node in model.graph.node:  # Constant nodes are weights too
        if node.op_type == "Constant" and node.output:
            i = infos.get(node.output[0])
            if i is not None and i.static:
                mem.weights_bytes += i.numel * elem_size(i.elem_type)  # type: ignore[operator]
    ins, outs = graph_inputs(model), graph_outputs(model)
    for name in list(ins) + list(outs):
        i = infos.get(name)
        if i is None or not i.static:
            mem.unknown.append(name)
            continue
        b = i.numel * elem_size(i.elem_type)  # type: ignore[operator]
        mem.io_bytes += b
        if name in ins and re.search(r"past|cache", name, re.I):
            mem.kv_cache_bytes += b
    # workspace: liveness over node order; views alias their input's buffer
    io_names = set(ins) | set(outs) | set(inits)
    alias: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type in VIEW_OPS and node.input and node.input[0]:
            for n in node.output:
                if n and n not in io_names:
                    alias[n] = alias.get(node.input[0], node.input[0])
    root_last: dict[str, int] = {}
    for i, node in enumerate(model.graph.node):
        for n in node.input:
            r = alias.get(n, n)
            root_last[r] = i
    live: dict[str, int] = {}
    peak = cur = 0
    for i, node in enumerate(model.graph.node):
        mode = plan.modes.get(i, ORIGIN)
        for n in node.output:
            if not n or n in io_names or n in alias:
                continue
            b = _tensor_bytes(infos, n, 2 if (plan.low_dtype and mode == LOW) else None)
            if b is None:
                mem.unknown.append(n)
                continue
            live[n] = b
            cur += b
        peak = max(peak, cur)
        for n in set(node.input):
            r = alias.get(n, n)
            if r in live and root_last.get(r, -1) <= i:
                cur -= live.pop(r)
        for n in node.output:  # never read
            if n in live and n not in root_last:
                cur -= live.pop(n)
    mem.workspace_bytes = peak
    return mem


# ---------------------------------------------------------------------------- entry point
def estimate_cost(model: Any, target: Any, settings: SimSettings | None = None, *,
                  input_shapes: Mapping[str, Sequence[int]] | None = None, graph_name: str | None = None,
                  feeds: Mapping[str, np.ndarray] | None = None, gear: int | str | None = "largest") -> CostReport:
    """Estimate latency and memory of one graph on `target` (simulated).

    Args:
        model: path to an .onnx file or a ModelProto (weights not read).
        target: a Target or a target name.
        settings: precision mode, keep_dtype, input shapes / gears (default: force_fp16).
        input_shapes: concrete input shapes (default: the feeds' shapes, else the largest gear,
            else --input_shape, else the graph's static dims).
        graph_name: name for the report (default: the graph's name).
        feeds: example inputs; when static shape inference leaves shapes unknown, the graph is
            run once in onnxruntime on them to read every shape.
        gear: which gear to cost when shapes come from gears ("largest", "smallest" or an index).

    Returns:
        CostReport (say `report.to_text()`).
    """
    from ascend_adapt.targets import resolve_target

    target = resolve_target(target)
    settings = settings or SimSettings(target=target.name)
    m = load_model(model)
    if feeds is not None and input_shapes is None:
        input_shapes = {k: tuple(np.shape(v)) for k, v in feeds.items()}
    shapes, unknown = resolve_input_shapes(m, settings, input_shapes, gear)
    infos = infer_tensor_infos(m, shapes)
    warnings = []
    missing = [o for n in m.graph.node for o in n.output if o and not (infos.get(o) and infos[o].static)]
    if missing and feeds is not None:
        from .graph import probe_tensor_infos

        infos = probe_tensor_infos(None, feeds, _with_weights_for_probe(model, m))
        missing = [o for n in m.graph.node for o in n.output if o and not (infos.get(o) and infos[o].static)]
    if unknown:
        warnings.append(f"inputs with unknown dims: {', '.join(unknown)} (pass input_shapes or gears)")
    plan = plan_precision(m, settings, target=target, infos=infos)
    fig = CostFigures.of(target)
    ops = op_costs(m, target, plan, infos, fig)
    io = host_io_bytes(m, infos)
    n_unknown = sum(1 for o in ops if not o.shape_known)
    if n_unknown:
        warnings.append(f"{n_unknown} ops with shapes that could not be inferred are counted as launch overhead only")
    mem = estimate_memory(m, target, settings, input_shapes=shapes, infos=infos, plan=plan)
    return CostReport(graph_name or m.graph.name or "graph", target.name, target.soc_version, settings.precision_mode,
                      shapes, ops, mem, ASSUMPTIONS, warnings, transfer_ms=transfer_ms(sum(io), fig, len(io)),
                      host_io_bytes=int(sum(io)), copies=len(io), figures=dict(fig.basis))


def _with_weights_for_probe(model: Any, light: onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    return load_model(model, load_weights=True)


def combine_memory(estimates: Iterable[MemoryEstimate]) -> MemoryEstimate:
    """Device memory of several OMs loaded side by side (e.g. prefill + decode)."""
    total = MemoryEstimate()
    for e in estimates:
        total = total + e
    return total
