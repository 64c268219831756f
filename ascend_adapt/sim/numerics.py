"""Numerics of the Ascend precision modes, emulated by rewriting the ONNX graph.

How the card computes under each mode (reference sheet §1.1; CANN `--precision_mode` docs):

- `must_keep_origin_dtype` / `origin`: every op in the graph's own dtypes (fp32 stays fp32).
- `force_fp16` / `fp16`: every op that has an fp16 kernel runs in fp16: tensors are *stored* in
  fp16 between ops, weights are converted to fp16 once, graph inputs are cast to fp16 on entry
  and outputs back to their dtype. Cube ops (MatMul, Gemm, Conv) read fp16 and accumulate in fp32.
- `allow_fp32_to_fp16`: Cube ops in fp16 (fp16 in, fp16 out); vector ops keep fp32.
- `cube_fp16in_fp32out` (= `force_fp32`): Cube ops read fp16 inputs and write fp32; vector fp32.
- `allow_mix_precision[_fp16]` / `mixed_float16`: white-list ops in fp16, black-list ops in
  fp32, grey-list ops follow their producer; `--modify_mixlist` edits the lists.
- `--keep_dtype` (node names or `OpType::<Type>`) keeps ops in their original dtype in every
  mode but must_keep_origin_dtype (where everything is kept anyway).

How we emulate it: for every op the mode runs in fp16 (or bf16), each fp32 input not already
fp16-exact is rounded through a `Cast(to=float16) → Cast(to=float32)` pair, and each fp32
output is rounded the same way (fp16 overflow → ±inf, as on the card). The op itself still runs
in fp32 in onnxruntime. Consequences:

- Cube ops: inputs are exact fp16 values, products are exact in fp32 and accumulation is fp32,
  output rounded to fp16: this matches the Cube unit up to the summation order.
- Vector ops (Add, Mul, Exp, Softmax, reductions, ...): the card computes natively in fp16
  (with its own Exp / Tanh / Erf approximations); we compute in fp32 and round the result once.
  Our result is the correctly rounded one, so per-op error is ≤ the card's and NOT bit-exact.
  Reductions and Softmax accumulate in fp32 here; a sum of fp16 values whose *partial* sums
  exceed 65504 but whose result does not overflows on a card that accumulates in fp16 and not
  here. An *output* above 65504 overflows here too.
- Data-movement ops (Reshape, Transpose, Gather, Concat, ..., Resize in `nearest` mode) only copy
  or select values that are already fp16-exact, so their outputs are not rounded again. Resize in
  `linear` / `cubic` mode (and Scatter ops with an add / mul reduction) compute new values: their
  outputs are rounded like any computing op (`moves_values_only`).
- Weights are rounded once when the session is built (ATC converts them at compile time): only
  the fp32 ones that rounding ops read are loaded for that. Every other weight in external data
  (an export's `weights.bin`, fp16 ones included) stays in its file, memory-mapped once per
  process and shared by every session; onnxruntime's CPU kernels widen fp16 weights to fp32 at
  use (exact; a big one in column blocks, `chain_wide_matmuls`), and each layer reads its part of
  the KV-cache inputs when it needs it (`defer_input_reads`), so an fp16 7B runs in about its
  weight bytes plus activations (docs/simulator.md).
- Ops that exist only in fp16 on a chip (the target's `fp16_only_ops`, e.g. Conv on Ascend310)
  are refused under must_keep_origin_dtype by acceptance (`sim.acceptance`), as ATC refuses
  them; what is accepted runs in fp32 here.

The rewritten graph runs in onnxruntime with every graph optimization disabled
(`ORT_DISABLE_ALL`), so no pass folds or fuses the rounding casts away. must_keep_origin_dtype
runs the unmodified graph with the same options as the plain onnxruntime runner, so its results
are bit-identical to it.
"""

from __future__ import annotations

import os
import tempfile
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .graph import CUBE_OPS, MOVE_OPS, TensorInfo, expose_all_outputs, infer_tensor_infos, load_model, node_label
from .settings import SimSettings

LOW = "low"          # inputs and outputs rounded to the low dtype
LOW_IN = "low_in"    # inputs rounded, outputs fp32 (Cube ops under cube_fp16in_fp32out)
ORIGIN = "origin"    # untouched

# allow_mix_precision default lists. The card's lists come from each op's `precision_reduce`
# flag in the installed op-info library, which we cannot read: ASSUMED here (confidence M):
# white = Cube ops; black = ops whose fp16 evaluation overflows or loses precision in LLMs;
# everything else grey (follows its producer).
MIX_WHITE = frozenset(CUBE_OPS)
MIX_BLACK = frozenset({"Exp", "Log", "Pow", "Softmax", "LogSoftmax", "ReduceSum", "ReduceMean",
                       "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "LayerNormalization",
                       "Sqrt", "Reciprocal", "Div", "Erf", "CumSum"})

# float inputs that are parameters, not data (never rounded)
_NON_DATA_INPUTS = {"Resize": {1, 2}, "Upsample": {1}, "Range": {0, 1, 2}, "Dropout": {1}}
_LOW_ONNX = {"float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}
_SUFFIX = "__sim"


def moves_values_only(node: onnx.NodeProto) -> bool:
    """True when the op's outputs are copies / selections of its input values (no rounding needed).

    Most of `MOVE_OPS` always are. Resize (and Upsample) only in `nearest` mode: `linear` and
    `cubic` interpolate new values, which the card computes (and stores) in the low dtype like any
    computing op. Scatter ops with a `reduction` add / multiply values.
    """
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type in ("Resize", "Upsample"):
        mode = attrs.get("mode", b"nearest")
        return (mode.decode() if isinstance(mode, bytes) else str(mode)) == "nearest"
    if node.op_type in ("ScatterND", "ScatterElements"):
        red = attrs.get("reduction", b"none")
        if (red.decode() if isinstance(red, bytes) else str(red)) not in ("none", "max", "min"):
            return False
    return node.op_type in MOVE_OPS


def _round_array(a: np.ndarray, low: str) -> np.ndarray:
    if low == "bfloat16":
        import ml_dtypes

        return a.astype(ml_dtypes.bfloat16).astype(np.float32)
    with np.errstate(over="ignore"):
        return a.astype(np.float16).astype(np.float32)


class _KeepMatcher:
    """--keep_dtype entries: node names, or `OpType::<Type>` with an ONNX or Ascend IR type."""

    def __init__(self, entries: Iterable[str], target: Any = None):
        self.names: set[str] = set()
        self.types: set[str] = set()
        for e in entries:
            if e.startswith("OpType::"):
                self.types.add(e[len("OpType::"):])
            else:
                self.names.add(e)
        self.target = target
        self.hits: set[str] = set()

    def __call__(self, node: onnx.NodeProto, label: str) -> bool:
        hit = None
        if label in self.names or (node.name and node.name in self.names):
            hit = label if label in self.names else node.name
        elif node.op_type in self.types:
            hit = f"OpType::{node.op_type}"
        elif self.target is not None and self.types:
            ge = self.target.ge_op_type(node.op_type, node.domain or "ai.onnx")
            if ge and ge in self.types:
                hit = f"OpType::{ge}"
        if hit:
            self.hits.add(hit)
        return hit is not None

    def unmatched(self) -> list[str]:
        all_ = self.names | {f"OpType::{t}" for t in self.types}
        return sorted(all_ - self.hits)


def _mix_lists(settings: SimSettings, target: Any) -> tuple[set[str], set[str]]:
    white, black = set(MIX_WHITE), set(MIX_BLACK)
    ml = settings.modify_mixlist or {}

    def edit(s: set[str], key: str):
        for op in ml.get(key, {}).get("to-remove", []):
            s.discard(op)
        s.update(ml.get(key, {}).get("to-add", []))

    edit(white, "white-list")
    edit(black, "black-list")
    gray = ml.get("gray-list", {})
    for op in gray.get("to-add", []):
        white.discard(op)
        black.discard(op)
    return white, black


def _in_list(node: onnx.NodeProto, ops: set[str], target: Any) -> bool:
    if node.op_type in ops:
        return True
    if target is not None:
        ge = target.ge_op_type(node.op_type, node.domain or "ai.onnx")
        return bool(ge) and ge in ops
    return False


def _float_inputs(node: onnx.NodeProto, infos: Mapping[str, TensorInfo]) -> list[int]:
    skip = _NON_DATA_INPUTS.get(node.op_type, ())
    return [i for i, n in enumerate(node.input)
            if n and i not in skip and n in infos and infos[n].elem_type == TensorProto.FLOAT]


def _float_outputs(node: onnx.NodeProto, infos: Mapping[str, TensorInfo]) -> list[int]:
    return [i for i, n in enumerate(node.output) if n and n in infos and infos[n].elem_type == TensorProto.FLOAT]


@dataclass
class PrecisionPlan:
    """Per-node decision of a precision mode.

    Attributes:
        modes: {node index: LOW | LOW_IN | ORIGIN} for the top-level graph's nodes.
        low_dtype: "float16" / "bfloat16" / None.
        kept: labels of the nodes kept in fp32 by --keep_dtype.
        unmatched_keep: keep_dtype entries that matched no node (ATC ignores them with a warning).
    """

    modes: dict[int, str]
    low_dtype: str | None
    kept: list[str] = field(default_factory=list)
    unmatched_keep: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = defaultdict(int)
        for m in self.modes.values():
            c[m] += 1
        return dict(c)


def plan_precision(model: onnx.ModelProto, settings: SimSettings, *, target: Any = None,
                   infos: Mapping[str, TensorInfo] | None = None) -> PrecisionPlan:
    """Decide, for every node of the top-level graph, the dtype the card computes it in.

    Nodes without a float32 input or output are ORIGIN (nothing to round). Subgraph bodies
    (If / Loop) are not rewritten: they run in their original dtypes.

    Args:
        model: the ONNX model (weights not needed).
        settings: precision mode, keep_dtype, modify_mixlist.
        target: the target or its name (maps ONNX types to Ascend IR types for OpType:: / mixlist
            entries); None: entries match ONNX op types only.
        infos: tensor infos (computed when omitted).
    """
    if target is not None:
        from ascend_adapt.targets import resolve_target

        target = resolve_target(target)
    infos = infos if infos is not None else infer_tensor_infos(model)
    policy, low = settings.policy, settings.low_dtype
    modes: dict[int, str] = {}
    if policy == "origin":
        return PrecisionPlan({i: ORIGIN for i in range(len(model.graph.node))}, None)
    keep = _KeepMatcher(settings.keep_dtype, target)
    white, black = _mix_lists(settings, target) if policy == "mixed" else (set(), set())
    low_produced: set[str] = set()
    kept: list[str] = []
    for i, node in enumerate(model.graph.node):
        label = node_label(node, i)
        fin, fout = _float_inputs(node, infos), _float_outputs(node, infos)
        if not fin and not fout:
            modes[i] = ORIGIN
            continue
        if keep(node, label):
            modes[i] = ORIGIN
            kept.append(label)
            continue
        cube = _in_list(node, set(CUBE_OPS), target)
        if policy == "force":
            mode = LOW
        elif policy == "cube":
            mode = LOW if cube else ORIGIN
        elif policy == "cube_in":
            mode = LOW_IN if cube else ORIGIN
        else:  # mixed
            if _in_list(node, white, target):
                mode = LOW
            elif _in_list(node, black, target):
                mode = ORIGIN
            else:  # grey: follow the producer of a float input
                mode = LOW if any(node.input[j] in low_produced for j in fin) else ORIGIN
        modes[i] = mode
        if mode == LOW:
            low_produced.update(node.output[j] for j in fout)
    return PrecisionPlan(modes, low, kept, keep.unmatched())


def rounded_initializers(model: onnx.ModelProto, plan: PrecisionPlan,
                         infos: Mapping[str, TensorInfo]) -> set[str]:
    """Names of the float32 initializers `emulate_precision` rounds (read as a float input by a
    LOW / LOW_IN node): the only weights it needs in memory."""
    inits = {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    names: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if plan.modes.get(i) in (LOW, LOW_IN):
            names.update(node.input[j] for j in _float_inputs(node, infos) if node.input[j] in inits)
    return names


@dataclass
class EmulationStats:
    """What `emulate_precision` did."""

    low_nodes: int = 0
    low_in_nodes: int = 0
    fp32_nodes: int = 0
    rounding_pairs: int = 0
    rounded_initializers: int = 0
    kept: list[str] = field(default_factory=list)
    unmatched_keep: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def emulate_precision(model: onnx.ModelProto, settings: SimSettings, *, target: Any = None,
                      infos: Mapping[str, TensorInfo] | None = None,
                      plan: PrecisionPlan | None = None) -> tuple[onnx.ModelProto, EmulationStats]:
    """Rewrite `model` so that onnxruntime computes it as the card does under `settings`.

    The fp32 initializers it rounds must have their data loaded (`rounded_initializers` names
    them; the others may stay in external data). Tensor names of the original graph keep their
    meaning: each holds the value as the card stores it.

    Returns:
        (the rewritten copy, statistics). For must_keep_origin_dtype the copy is unchanged.
    """
    infos = infos if infos is not None else infer_tensor_infos(model)
    plan = plan or plan_precision(model, settings, target=target, infos=infos)
    stats = EmulationStats(kept=list(plan.kept), unmatched_keep=list(plan.unmatched_keep))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if plan.low_dtype is None:
        stats.fp32_nodes = len(model.graph.node)
        return out, stats
    g = out.graph
    nodes = []
    for n in g.node:  # detached copies: the repeated field is rebuilt below
        c = onnx.NodeProto()
        c.CopyFrom(n)
        nodes.append(c)
    low_readers, other_readers = _float_readers(nodes, plan, infos, g.output)
    exact, rounded = _round_initializers(g, plan.low_dtype, low_readers, other_readers, stats)
    _round_constants(nodes, plan.low_dtype, low_readers, other_readers, exact)
    new_nodes = _with_rounding_pairs(nodes, plan, infos, exact, rounded, stats)
    g.ClearField("node")
    g.node.extend(new_nodes)
    return out, stats


def _float_readers(nodes: list[onnx.NodeProto], plan: PrecisionPlan, infos: Mapping[str, TensorInfo],
                   outputs) -> tuple[dict[str, int], dict[str, int]]:
    """How often each tensor is read as a float input of a rounding node (LOW / LOW_IN), and by
    anything else (other inputs, other nodes, the graph outputs)."""
    low_readers: dict[str, int] = defaultdict(int)
    other_readers: dict[str, int] = defaultdict(int)
    for i, node in enumerate(nodes):
        fin = set(_float_inputs(node, infos))
        for j, name in enumerate(node.input):
            if plan.modes[i] in (LOW, LOW_IN) and j in fin:
                low_readers[name] += 1
            elif name:
                other_readers[name] += 1
    for o in outputs:
        other_readers[o.name] += 1
    return low_readers, other_readers


def _round_initializers(g: onnx.GraphProto, low: str, low_readers: Mapping[str, int],
                        other_readers: Mapping[str, int], stats: EmulationStats) -> tuple[set[str], dict[str, str]]:
    """Round the float32 initializers that rounding nodes read to the `low` dtype: in place when
    only rounding nodes read them, else as a rounded copy beside the original.

    Returns:
        (tensors whose values are exact in the low dtype, {tensor: name of its rounded copy}).
    """
    exact: set[str] = set()
    rounded: dict[str, str] = {}
    new_inits: list[onnx.TensorProto] = []
    for init in g.initializer:
        if init.data_type != TensorProto.FLOAT or not low_readers.get(init.name):
            continue
        arr = _round_array(numpy_helper.to_array(init), low)
        stats.rounded_initializers += 1
        if other_readers.get(init.name):
            t = numpy_helper.from_array(arr, f"{init.name}{_SUFFIX}_{low}")
            new_inits.append(t)
            rounded[init.name] = t.name
            exact.add(t.name)
        else:
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
            exact.add(init.name)
    g.initializer.extend(new_inits)
    return exact, rounded


def _round_constants(nodes: list[onnx.NodeProto], low: str, low_readers: Mapping[str, int],
                     other_readers: Mapping[str, int], exact: set[str]) -> None:
    """Constant nodes holding float32 tensors read by rounding nodes: round in place when only
    rounding nodes read them (the common case), else let the input pair do it."""
    for node in nodes:
        if node.op_type == "Constant" and node.output and low_readers.get(node.output[0]) \
                and not other_readers.get(node.output[0]):
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                    arr = _round_array(numpy_helper.to_array(a.t), low)
                    a.t.CopyFrom(numpy_helper.from_array(arr, a.t.name))
                    exact.add(node.output[0])


class _Pairs:
    """Makes the Cast(low) → Cast(float32) pairs that round a tensor to the low dtype, numbered."""

    def __init__(self, low: str, stats: EmulationStats):
        self.low, self.low_t, self.stats, self.count = low, _LOW_ONNX[low], stats, 0

    def __call__(self, src: str, dst: str) -> list[onnx.NodeProto]:
        self.count += 1
        mid = f"{dst}{_SUFFIX}_{self.low}"
        self.stats.rounding_pairs += 1
        return [helper.make_node("Cast", [src], [mid], to=self.low_t, name=f"{_SUFFIX}_to_low_{self.count}"),
                helper.make_node("Cast", [mid], [dst], to=TensorProto.FLOAT, name=f"{_SUFFIX}_to_f32_{self.count}")]


def _with_rounding_pairs(nodes: list[onnx.NodeProto], plan: PrecisionPlan, infos: Mapping[str, TensorInfo],
                         exact: set[str], rounded: dict[str, str], stats: EmulationStats) -> list[onnx.NodeProto]:
    """The node list with rounding pairs: before each float input of a LOW / LOW_IN node that is
    not exact yet (once per tensor), and after each float output of a LOW node that computes
    (ops that only move values keep them exact). ORIGIN nodes stay as they are."""
    pair = _Pairs(plan.low_dtype, stats)
    new_nodes: list[onnx.NodeProto] = []
    for i, node in enumerate(nodes):
        mode = plan.modes[i]
        if mode == ORIGIN:
            stats.fp32_nodes += 1
            new_nodes.append(node)
            continue
        if mode == LOW:
            stats.low_nodes += 1
        else:
            stats.low_in_nodes += 1
        for j in _float_inputs(node, infos):
            src = node.input[j]
            if src in exact:
                continue
            if src not in rounded:
                dst = f"{src}{_SUFFIX}_rounded"
                new_nodes.extend(pair(src, dst))
                rounded[src] = dst
                exact.add(dst)
            node.input[j] = rounded[src]
        fout = _float_outputs(node, infos)
        if mode == LOW and moves_values_only(node):
            new_nodes.append(node)
            exact.update(node.output[j] for j in fout)
            continue
        post: list[onnx.NodeProto] = []
        if mode == LOW:
            for j in fout:
                name = node.output[j]
                raw = f"{name}{_SUFFIX}_raw"
                node.output[j] = raw
                post.extend(pair(raw, name))
                exact.add(name)
        new_nodes.append(node)
        new_nodes.extend(post)
    return new_nodes


def _session_options(optimize: bool, threads: int | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return so


_PROTO_LIMIT = 1_800_000_000

# Memory, not values: the rewrites below change when onnxruntime allocates, never what it computes.
# A float16 weight bigger than this once widened to fp32 is multiplied in chained column blocks
# (`chain_wide_matmuls`): ChatGLM-6B's [130528, 4096] head would otherwise be widened whole (2.1 GB).
# 6B/7B MLP matrices (<= 0.45 GB widened) stay whole: split at 128 MiB they saved 0.45 GiB of peak on
# the ChatGLM-6B shape but made its prefill 1.7x slower (tools/bench/real_size.py, consecutive runs).
WIDEN_BLOCK_BYTES = 512 << 20
# A Gather / Slice reading at least this many bytes of a graph input runs next to its consumer
# (`defer_input_reads`): the per-layer reads of the KV cache, [B, KVH, M, D] each.
DEFER_READ_BYTES = 1 << 20


def _zero_after(tensor: str, dtype: int, tag: str) -> tuple[list[onnx.NodeProto], str]:
    """Nodes computing a scalar 0 of `dtype` (an integer ONNX type) from `tensor`'s size: a real
    data dependency on `tensor` (it must exist first) that adds nothing to the value it is added to.
    Only the element count is read, never the data."""
    size = helper.make_node("Size", [tensor], [f"{tag}/size"], name=f"{tag}/Size")
    zero = helper.make_node("Mul", [f"{tag}/size", f"{tag}/zero_i64"], [f"{tag}/zero64"], name=f"{tag}/Zero")
    nodes = [helper.make_node("Constant", [], [f"{tag}/zero_i64"], name=f"{tag}/ZeroConst",
                              value=numpy_helper.from_array(np.array(0, np.int64))), size, zero]
    if dtype == TensorProto.INT64:
        return nodes, f"{tag}/zero64"
    nodes.append(helper.make_node("Cast", [f"{tag}/zero64"], [f"{tag}/zero"], name=f"{tag}/ZeroCast", to=dtype))
    return nodes, f"{tag}/zero"


# onnxruntime's name for the casts it inserts around kernels without fp16 (core/optimizer/
# insert_cast_transformer.cc, 1.32): its RemoveDuplicateCastTransformer drops a fp32→fp16→fp32
# pair only when the narrowing cast bears this prefix (`UnsafeCast`), so an fp16-less chain
# (MatMul → Add bias → …) stays in fp32 between its ops.
_ORT_CAST_PREFIX = "InsertedPrecisionFreeCast_"


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"{name}/Const", value=numpy_helper.from_array(value))


def _block_ranges(n_cols: int, k: int, limit_bytes: int, threads: int | None) -> list[tuple[int, int]]:
    """Column ranges [c0, c1) of at most `limit_bytes` of fp32 each (multiples of 16 columns), but
    never narrower than 80 columns per thread, the last one included (see `chain_wide_matmuls`;
    one thread more than asked: onnxruntime's pool runs its threads plus the calling one)."""
    min_cols = 80 * (max(1, threads or os.cpu_count() or 1) + 1)
    block = max(min_cols, limit_bytes // (4 * k) // 16 * 16)  # min_cols: a multiple of 16
    starts = list(range(0, n_cols, block))
    if len(starts) > 1 and n_cols - starts[-1] < min_cols:
        starts.pop()  # a narrow remainder joins the block before it
    return [(c0, starts[j + 1] if j + 1 < len(starts) else n_cols) for j, c0 in enumerate(starts)]


def chain_wide_matmuls(model: onnx.ModelProto, limit_bytes: int = WIDEN_BLOCK_BYTES,
                       threads: int | None = None) -> int:
    """Multiply a big float16 weight in chained column blocks instead of widening it whole, in place.

    onnxruntime's CPU kernels have no fp16 MatMul / Gemm: it casts the fp16 weight to an fp32
    copy before each use (exact), a transient twice the weight's size: 2.1 GB for ChatGLM-6B's
    [130528, 4096] head. For a weight over `limit_bytes` once widened, `Y = A @ W` becomes
    `fp16(Concat_j(fp32(A) @ fp32(Slice(W, columns of block j))))` (Gemm with transB=1: rows of
    W), so one block is widened at a time. The casts are written out: left to onnxruntime, its
    cast insertion runs the Slices in fp32 too, after widening the whole weight (the column split
    tried once and removed gained nothing for that reason). The casts of A and of the product
    carry onnxruntime's own prefix (`_ORT_CAST_PREFIX`), so they are dropped where onnxruntime
    drops the ones it inserts around an fp16 MatMul: next to an op without an fp16 kernel (a
    bias Add, an activation: the product reaches it in fp32) and after a graph cast to fp16
    (onnxruntime then feeds the MatMul that cast's fp32 input, as before). Each Slice's
    `starts` gets a real data dependency on the previous block's product (block 0's: on A),
    `starts + 0·Size(previous)`: without it the slices and their casts read only the weight, and
    the scheduler may run them all first.

    Every output element is the same dot product over the same K, by the same fp32 kernel (MLAS
    SGEMM: products of fp16-exact values, fp32 accumulation, then rounded to fp16): the values do
    not change, bit for bit (tests/test_sim_head_memory.py), as long as MLAS keeps its K stride
    for each thread's share of columns. It lengthens the K stride (which regroups the fp32 sums)
    only for a share of 64 columns or fewer (onnxruntime 1.32, mlas/lib/sgemm.cpp,
    `MlasSgemmOperation`), and splits N among threads in multiples of 16 (`MlasPartitionWork`):
    blocks of at least 80 columns per thread keep every share above 64. This is how the
    simulator executes, not what it accepts: the graph ATC gets is untouched. Only float16 2-D
    weights of MatMul, and of 2-input Gemm with transA=0 and alpha=1, are split.

    Args:
        model: the graph to rewrite (initializer dims and dtypes are read, never their data).
        limit_bytes: largest fp32 widening of one block, in bytes (exceeded only where the
            per-thread minimum asks for wider blocks).
        threads: onnxruntime's intra-op threads (None: its default, at most `os.cpu_count()`).

    Returns:
        the number of nodes split.
    """
    inits = {t.name: t for t in model.graph.initializer}
    out_nodes: list[onnx.NodeProto] = []
    n_split = 0
    for node in model.graph.node:
        w = inits.get(node.input[1]) if len(node.input) > 1 else None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ok = (w is not None and w.data_type == TensorProto.FLOAT16 and len(w.dims) == 2
              and (node.op_type == "MatMul" or (node.op_type == "Gemm" and len(node.input) == 2
                                                and not attrs.get("transA", 0) and attrs.get("alpha", 1.0) == 1.0)))
        if not ok or 4 * w.dims[0] * w.dims[1] <= limit_bytes:
            out_nodes.append(node)
            continue
        col_axis = 0 if node.op_type == "Gemm" and attrs.get("transB", 0) else 1
        n_cols, k = int(w.dims[col_axis]), int(w.dims[1 - col_axis])
        ranges = _block_ranges(n_cols, k, limit_bytes, threads)
        if len(ranges) < 2:
            out_nodes.append(node)
            continue
        tag0 = node.name or node.output[0]
        f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
        out_nodes += [_const(f"{tag0}/block_axes", np.array([col_axis], np.int64)),
                      helper.make_node("Cast", [node.input[0]], [f"{tag0}/a32"], to=f32,
                                       name=f"{_ORT_CAST_PREFIX}{tag0}/CastA")]
        parts, prev = [], f"{tag0}/a32"
        for j, (c0, c1) in enumerate(ranges):
            tag = f"{tag0}/block{j}"
            dep_nodes, zero = _zero_after(prev, TensorProto.INT64, tag)
            out_nodes += dep_nodes + [
                _const(f"{tag}/c0", np.array([c0], np.int64)),
                _const(f"{tag}/ends", np.array([c1], np.int64)),
                helper.make_node("Add", [f"{tag}/c0", zero], [f"{tag}/starts"], name=f"{tag}/Starts"),
                helper.make_node("Slice", [node.input[1], f"{tag}/starts", f"{tag}/ends", f"{tag0}/block_axes"],
                                 [f"{tag}/w"], name=f"{tag}/Slice"),
                helper.make_node("Cast", [f"{tag}/w"], [f"{tag}/w32"], name=f"{tag}/CastW", to=f32)]
            mm = helper.make_node(node.op_type, [f"{tag0}/a32", f"{tag}/w32"], [f"{tag}/y32"],
                                  name=f"{tag}/{node.op_type}")
            mm.attribute.extend(node.attribute)
            out_nodes.append(mm)
            parts.append(prev := f"{tag}/y32")
        out_nodes += [helper.make_node("Concat", parts, [f"{tag0}/y32"], name=f"{tag0}/Concat", axis=-1),
                      helper.make_node("Cast", [f"{tag0}/y32"], [node.output[0]], to=f16,
                                       name=f"{_ORT_CAST_PREFIX}{tag0}/CastY")]
        n_split += 1
    if n_split:
        del model.graph.node[:]
        model.graph.node.extend(out_nodes)
    return n_split


def defer_input_reads(model: onnx.ModelProto, min_bytes: int = DEFER_READ_BYTES) -> int:
    """Run each big Gather / Slice of a graph input next to its consumer, in place.

    A step graph reads each layer's past K / V out of the [L, B, KVH, M, D] cache inputs with a
    Gather at a constant index. Such a node needs nothing computed, so the scheduler may run
    every layer's read first: a second copy of the whole cache alive at once (0.94 GB for
    ChatGLM-6B at M = 2048). Here its index (Gather) or starts (Slice) gets `+ 0·Size(t)`,
    where `t` is another computed input of its first consumer (the new K / V of the layer),
    and the node moves right before that consumer. Values are unchanged.

    Args:
        model: the graph to rewrite.
        min_bytes: smallest graph input (static shape) whose reads are deferred.

    Returns:
        the number of nodes deferred.
    """
    from .graph import elem_size

    g = model.graph
    inits = {t.name for t in g.initializer}
    consts = {n.output[0] for n in g.node if n.op_type == "Constant" and n.output} | inits
    big = set()
    for vi in g.input:
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
        if vi.name not in inits and dims and all(dims) \
                and int(np.prod(dims, dtype=np.int64)) * elem_size(vi.type.tensor_type.elem_type) >= min_bytes:
            big.add(vi.name)
    if not big:
        return 0
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    consumers: dict[str, list[int]] = defaultdict(list)
    for i, n in enumerate(g.node):
        for x in set(n.input):
            if x:
                consumers[x].append(i)
    idx_dtype = {t.name: t.data_type for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    idx_dtype[n.output[0]] = a.t.data_type

    def descendants(i: int) -> set[str]:
        seen, todo = set(), list(g.node[i].output)
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            for c in consumers.get(t, ()):
                todo.extend(g.node[c].output)
        return seen

    reads = [i for i, n in enumerate(g.node)
             if n.op_type in ("Gather", "Slice") and len(n.input) >= 2 and n.input[0] in big
             and all(x in consts for x in n.input[1:] if x)
             and idx_dtype.get(n.input[1]) in (TensorProto.INT32, TensorProto.INT64)]
    read_outputs = {g.node[i].output[0] for i in reads}
    moves: dict[int, tuple[int, list[onnx.NodeProto]]] = {}  # node -> (consumer it goes before, new nodes)
    for i in reads:
        n = g.node[i]
        users = sorted(consumers.get(n.output[0], ()))
        if not users:
            continue
        c = users[0]
        after = descendants(i)
        # the dependency: a computed input of the consumer, not itself a deferred read, not fed by this one
        dep = next((x for x in g.node[c].input if x and x in producer and x not in after
                    and x not in read_outputs), None)
        if dep is None:
            continue
        tag = f"{n.name or n.output[0]}/after"
        dep_nodes, zero = _zero_after(dep, idx_dtype[n.input[1]], tag)
        moved = onnx.NodeProto()
        moved.CopyFrom(n)
        dep_nodes.append(helper.make_node("Add", [n.input[1], zero], [f"{tag}/index"], name=f"{tag}/Index"))
        moved.input[1] = f"{tag}/index"
        moves[i] = (c, dep_nodes + [moved])
    if not moves:
        return 0
    before: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    for i, (c, nodes) in sorted(moves.items()):
        before[c].extend(nodes)
    out = []
    for i, n in enumerate(g.node):
        out.extend(before.get(i, ()))
        if i not in moves:
            out.append(n)
    del g.node[:]
    g.node.extend(out)
    return len(moves)


# weights files memory-mapped in this process: (path, size, mtime, inode) -> the read-only map
_MAPS: "weakref.WeakValueDictionary[tuple, np.memmap]" = weakref.WeakValueDictionary()


def _mapped_file(path: Path) -> np.memmap:
    """`path` memory-mapped read-only, once per process while any session uses it (sessions of
    the same weights file share its pages, which then count once in the process's RSS)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    mapped = _MAPS.get(key)
    if mapped is None:
        mapped = np.memmap(path, mode="r")
        _MAPS[key] = mapped
    return mapped


def _external_bytes(tensor: onnx.TensorProto, base_dir: Path) -> np.ndarray | None:
    """`tensor`'s bytes (uint8) in its memory-mapped external data file; None when the file is
    missing (onnxruntime then names it). Raises ConfigError when the file is too short."""
    from ascend_adapt.errors import ConfigError

    from .graph import elem_size

    info = {e.key: e.value for e in tensor.external_data}
    dims = tuple(int(d) for d in tensor.dims)
    need = int(np.prod(dims, dtype=np.int64)) * elem_size(tensor.data_type)
    offset, length = int(info.get("offset", 0)), int(info.get("length", need))
    path = Path(base_dir) / info.get("location", "")
    if not path.is_file():
        return None
    size = path.stat().st_size
    if length != need or offset + length > size:
        raise ConfigError(f"{path}: initializer '{tensor.name}' {list(dims)} needs {need} bytes at offset "
                          f"{offset}, the file holds {size} bytes (length recorded: {length})",
                          "the weights file does not belong to this graph: re-export the model")
    if need == 0:
        return np.zeros(0, np.uint8)
    return _mapped_file(path)[offset:offset + length]


def _shared_initializer(tensor: onnx.TensorProto, base_dir: Path):
    """An OrtValue viewing `tensor`'s bytes in its memory-mapped external data file, or None when
    onnxruntime should read it itself (a dtype numpy views cannot carry, an unaligned offset)."""
    import onnxruntime as ort

    from .graph import elem_size, np_dtype

    if tensor.data_type in (TensorProto.BFLOAT16, TensorProto.STRING, TensorProto.UNDEFINED):
        return None
    raw = _external_bytes(tensor, base_dir)
    if raw is None or raw.size == 0 or int(raw.ctypes.data) % elem_size(tensor.data_type):
        return None
    view = raw.view(np_dtype(tensor.data_type)).reshape(tuple(int(d) for d in tensor.dims))
    return ort.OrtValue.ortvalue_from_numpy(view)


def _inline_external(model: onnx.ModelProto, base_dir, names: set[str] | None = None) -> None:
    """Copy the external data of the initializers in `names` (all when None) into `model`, in
    place (read through the shared mapping: onnx's loader refuses hard-linked weights files)."""
    from onnx.external_data_helper import uses_external_data

    for t in model.graph.initializer:
        if uses_external_data(t) and (names is None or t.name in names):
            raw = _external_bytes(t, Path(base_dir))
            if raw is None:
                from ascend_adapt.errors import ConfigError

                loc = {e.key: e.value for e in t.external_data}.get("location", "?")
                raise ConfigError(f"{Path(base_dir) / loc}: the external data of '{t.name}' is missing",
                                  "keep the graph beside its weights file, or re-export the model")
            t.raw_data = raw.tobytes()
            t.data_location = TensorProto.DEFAULT
            del t.external_data[:]



class SimSession:
    """An onnxruntime session computing a graph as the card does under `settings`.

    Args:
        model: path to an .onnx file (external data beside it) or a ModelProto (with weights, or
            with external references resolved against `base_dir`).
        settings: the precision settings.
        target: the target (for OpType:: / mixlist entries given as Ascend IR types).
        dump: expose every intermediate tensor of the original graph as an output; `run`
            returns them all (name → array), for layer-wise comparison.
        base_dir: directory of the external data when `model` is a ModelProto.
        threads: onnxruntime intra-op threads (None = its default).

    Attributes:
        stats: EmulationStats of the rewrite.
        plan: the PrecisionPlan.
        input_names / output_names: what `run` takes and returns (outputs in graph order).
    """

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, settings: SimSettings, *, target: Any = None,
                 dump: bool = False, base_dir: str | os.PathLike | None = None, threads: int | None = None,
                 infos: Mapping[str, TensorInfo] | None = None):
        import onnxruntime as ort

        self.settings = settings
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._weights: list = []  # OrtValues viewing the mapped weights file (kept alive with the session)
        path = None if isinstance(model, onnx.ModelProto) else Path(model)
        if path is not None and base_dir is None:
            base_dir = path.parent
        light = load_model(model)  # weights external
        from ascend_adapt.operators.quant import has_quant_ops, lower_quant_ops

        # Ascend quant ops (AscendQuant / AscendDequant / AscendAntiQuant, int8 MatMul) are not
        # onnxruntime ops: they are lowered to bit-exact onnxruntime nodes after the precision
        # rewrite (which leaves their int / fp16 arithmetic alone), operators/quant.py
        quant = has_quant_ops(light)
        infos = infos if infos is not None else infer_tensor_infos(light)
        self.plan = plan_precision(light, settings, target=target, infos=infos)
        originals = [o for n in light.graph.node for o in n.output if o]
        if settings.keeps_origin and not dump and path is not None and not quant:
            self.stats = EmulationStats(fp32_nodes=len(light.graph.node))
            # the unmodified file with the plain runner's options: bit-identical to it
            self._sess = ort.InferenceSession(str(path), _session_options(True, threads),
                                              providers=["CPUExecutionProvider"])
        else:
            # weights in external data stay there (see _make_session) but the fp32 ones to round
            full = self._load_rounded(model if isinstance(model, onnx.ModelProto) else light,
                                      rounded_initializers(light, self.plan, infos), base_dir)
            rewritten, self.stats = emulate_precision(full, settings, target=target, infos=infos, plan=self.plan)
            if quant:
                rewritten = lower_quant_ops(rewritten, base_dir)
            if dump:
                expose_all_outputs(rewritten, [i.name for i in light.graph.input] + originals)
            if not settings.keeps_origin:  # ORT_DISABLE_ALL: nothing folds the dependencies away
                chain_wide_matmuls(rewritten, WIDEN_BLOCK_BYTES, threads)
                defer_input_reads(rewritten, DEFER_READ_BYTES)
            self._sess = self._make_session(rewritten, _session_options(settings.keeps_origin, threads), base_dir)
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]

    @staticmethod
    def _load_rounded(model: onnx.ModelProto, names: set[str], base_dir) -> onnx.ModelProto:
        """`model`, or a copy with the external data of the fp32 initializers in `names` loaded."""
        from onnx.external_data_helper import uses_external_data

        todo = {t.name for t in model.graph.initializer
                if t.name in names and t.data_type == TensorProto.FLOAT and uses_external_data(t)}
        if not todo:
            return model
        if base_dir is None:
            raise ValueError("the model keeps its weights in external data: pass base_dir")
        m = onnx.ModelProto()
        m.CopyFrom(model)
        _inline_external(m, base_dir, todo)
        return m

    def _make_session(self, model: onnx.ModelProto, so, base_dir):
        """The onnxruntime session of the rewritten proto.

        Initializers in external data are not copied into the proto: onnxruntime resolves them in
        `base_dir`, and each one it can take as a numpy view is handed over as a view of the
        weights file memory-mapped once per process (`_mapped_file`), so every session of the same
        file (prefill + decode, a dump session) shares those pages. A proto holding more than
        protobuf's 2 GB in its own initializers goes through a temporary file instead.
        """
        import onnxruntime as ort
        from onnx.external_data_helper import uses_external_data

        external = [t for t in model.graph.initializer if uses_external_data(t)]
        if external and base_dir is None:
            raise ValueError("the model keeps its weights in external data: pass base_dir")
        if model.ByteSize() >= _PROTO_LIMIT:  # big inline weights (a ModelProto built in memory)
            if external:
                _inline_external(model, base_dir)
            import shutil

            from ascend_adapt.fsutil import register_cleanup, unregister_cleanup

            self._tmp = tempfile.TemporaryDirectory(prefix="ascend-adapt-sim-")
            # removed when a signal ends the program too; the registration holds the name, not the
            # directory object, so an unclosed session's directory is still removed when collected
            name = self._tmp.name
            self._tmp_cleanup = register_cleanup(lambda: shutil.rmtree(name, ignore_errors=True))
            weakref.finalize(self._tmp, unregister_cleanup, self._tmp_cleanup)
            p = Path(self._tmp.name) / "sim.onnx"
            onnx.save_model(model, str(p), save_as_external_data=True, all_tensors_to_one_file=True,
                            location="sim.weights")
            return ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
        self._weights = []
        # Memory, not values: onnxruntime widens fp16 weights to fp32 with Cast nodes that read only
        # an initializer; the default order runs such nodes early, holding many widened weights at
        # once, the priority-based order runs them next to their consumers. No CPU arena: it keeps
        # the largest per-step buffers (the widened [vocab, H] head) after each step.
        so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        so.enable_cpu_mem_arena = False
        if external:
            so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                        str(Path(base_dir).resolve()))
            for t in external:
                value = _shared_initializer(t, Path(base_dir))
                if value is not None:
                    so.add_initializer(t.name, value)
                    self._weights.append(value)  # must outlive the session
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference; returns {output name: array} (every tensor with dump=True)."""
        vals = self._sess.run(self.output_names, {k: v for k, v in feeds.items() if k in self.input_names})
        return dict(zip(self.output_names, vals))

    def input_metadata(self) -> dict[str, tuple[np.dtype, tuple]]:
        return {i.name: (_ort_dtype(i.type), tuple(d if isinstance(d, int) else None for d in i.shape))
                for i in self._sess.get_inputs()}

    def close(self) -> None:
        self._sess = None
        self._weights = []
        if self._tmp is not None:
            from ascend_adapt.fsutil import unregister_cleanup

            unregister_cleanup(self._tmp_cleanup)
            self._tmp.cleanup()
            self._tmp = None


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
              "tensor(uint16)": np.uint16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
              "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_}


def _ort_dtype(t: str) -> np.dtype:
    if t == "tensor(bfloat16)":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_ORT_TYPES.get(t, np.float32))
