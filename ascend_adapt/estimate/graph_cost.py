"""The ops `estimate` times: those of the graph `convert` would build, without its weights.

`estimate` and the simulator share one cost model (`ascend_adapt.cost_model`) AND one op
inventory: for a config, `step_load` builds the builder's step graph (`om_convert.builder.llm`,
the default convert layout) for 1 and for 2 layers with every other dimension real, from the
weight *shapes* only (no weight is read or written), and takes each node's FLOPs and bytes from
the simulator (`sim.cost.op_loads`). The builder repeats one identical block per layer, so the
work is affine in the layer count and

    time(L layers) = time(1) + (L − 1) · (time(2) − time(1))

is exact (up to float rounding) for every op-time function. So `estimate` and the simulator's
cost of the same build agree by construction; what remains between them is the simulator's
precision plan of a rewritten artifact (both use force_fp16 / origin here).

w8a16 builds the quantized graph itself (`om_convert.builder.quantize.LinearQuantizer`, per-channel
scales, every Linear and an untied lm_head), so the simulator's rule for it (the weight-dequant
chain fused into its MatMul, `sim.cost.weight_dequant_chains`) applies to both alike. w4a16 (no
builder emission) keeps the fp16 graph's ops and replaces the bytes of each block Linear's weight
by its quantized bytes (+ scales), as `core.weight_bytes` stores them.
A config the builder cannot emit (`UnsupportedError`) raises; `core.estimate` then falls back
to one aggregate op (weights + KV cache bytes, 2·params FLOPs) through the same cost model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

_LINEAR_SUFFIXES = (".attn.q.weight", ".attn.k.weight", ".attn.v.weight", ".attn.o.weight",
                    ".mlp.gate.weight", ".mlp.up.weight", ".mlp.down.weight")


@dataclass(frozen=True)
class StepLoad:
    """The work of one step graph run (one gear) for 1 and 2 layers, to scale to `layers`.

    Attributes:
        one / two: `sim.cost.OpLoad`s of the 1- and 2-layer graphs.
        layers: L of the model.
        io_bytes: bytes of each host↔device copy of one run (`sim.cost.host_io`; independent of L).
        hidden_bytes: bytes of the hidden state [B, seq, H] in the activation dtype (what a chip
            hands to the next one in a layer split).
    """

    one: tuple
    two: tuple
    layers: int
    io_bytes: tuple[int, ...]
    hidden_bytes: int

    def ops_ms(self, figures, layers: int | None = None) -> float:
        """Σ op times for `layers` (default: the model's) through `cost_model.op_time`."""
        from ascend_adapt.cost_model import op_time

        t1 = sum(op_time(o.flops, o.bytes, figures, o.unit, o.dtype).total_ms for o in self.one)
        t2 = sum(op_time(o.flops, o.bytes, figures, o.unit, o.dtype).total_ms for o in self.two)
        n = self.layers if layers is None else layers
        return t1 + (n - 1) * (t2 - t1)

    def bound_class(self, figures) -> str:
        """"compute", "memory" or "launch": the term that holds most of the 2-layer graph's time."""
        from ascend_adapt.cost_model import op_time

        acc = {"compute": 0.0, "memory": 0.0, "launch": 0.0}
        for o in self.two:
            t = op_time(o.flops, o.bytes, figures, o.unit, o.dtype)
            acc["launch"] += t.launch_ms
            acc["compute" if t.compute_ms >= t.memory_ms else "memory"] += max(t.compute_ms, t.memory_ms)
        return max(acc, key=acc.get)

    def launches(self, layers: int | None = None) -> int:
        n = self.layers if layers is None else layers
        k1 = sum(1 for o in self.one if o.unit not in ("view", "fused"))
        k2 = sum(1 for o in self.two if o.unit not in ("view", "fused"))
        return k1 + (n - 1) * (k2 - k1)


def _quant_bytes(shape: Sequence[int], bits: int, group_size: int | None) -> int:
    """Bytes of one [in, out] block Linear at `bits` (+ its fp16 scales), as core.weight_bytes counts."""
    in_f, out_f = int(shape[0]), int(shape[1])
    if bits == 8:
        return in_f * out_f + out_f * (in_f // group_size if group_size else 1) * 2
    return in_f * out_f * bits // 8 + out_f * math.ceil(in_f / group_size) * 4


@lru_cache(maxsize=64)
def _build(spec_json: str, layers: int, target_name: str, batch: int, max_len: int, act: str,
           quantize: str | None = None, group_size: int | None = None):
    """The weightless step graph of the spec with `layers` layers (the builder's recipe).

    `quantize="w8a16"`: the Linears stored int8 [in, out] with a per-output-channel scale ([out]),
    or with `group_size` G one per G input channels ([in/G, 1, out]), read through the builder's
    own quantized emission (as `convert --quantize w8a16 [--group-size G]` builds it).
    """
    import numpy as np

    from ascend_adapt.spec import ModelSpec
    from ascend_adapt.om_convert.builder.llm import _LINEAR, _LLMGraph
    from ascend_adapt.targets import load_target

    d = json.loads(spec_json)
    d["num_layers"] = layers
    spec = ModelSpec.from_dict(d)
    dtype = np.dtype(act)

    class _Stored:  # what the weight stream records per tensor: dtype and shape (no bytes here)
        def __init__(self, shape):
            self.dtype, self.shape, self.offset, self.length = dtype, tuple(shape), 0, 0

    shapes = dict(spec.canonical_shapes())
    if spec.tie_word_embeddings:
        shapes.pop("embed.weight" if spec.tied_source == "lm_head.weight" else "lm_head.weight", None)
    quantizer = None
    if quantize:
        from ascend_adapt.om_convert.builder.quantize import SCALE_SUFFIX, LinearQuantizer

        quantizer = LinearQuantizer(quantize, spec, dtype, group_size=group_size)
    stored = {}
    for name, shape in shapes.items():
        transposed = name.endswith(_LINEAR) or (name == "lm_head.weight" and not spec.tie_word_embeddings)
        st = _Stored(tuple(shape)[::-1] if transposed else shape)
        if quantizer is not None and quantizer.quantizes(name):
            st.dtype = np.dtype(np.int8)
            scale = (shape[1] // group_size, 1, shape[0]) if group_size else (shape[0],)
            stored[name + SCALE_SUFFIX] = ("weights.bin", _Stored(scale))  # in the act dtype
        stored[name] = ("weights.bin", st)

    def sink(name, arr):  # constants (rotary tables) that would go to weights.bin
        return "weights.bin", 0, int(arr.nbytes)

    target = load_target(target_name)
    g = _LLMGraph(spec, "step", batch, 1, max_len, dtype, 17, target, stored, sink)
    g.quantizer = quantizer
    b = g.build()
    model = b.make_model()
    if quantizer is not None:  # types after the Ascend quant ops, as build_llm_onnx declares them
        from ascend_adapt.operators.quant import annotate_quant_value_info

        annotate_quant_value_info(model)
    return model, spec, tuple(b.keep_dtype)  # keep_dtype: the fp32 islands convert passes to ATC


@lru_cache(maxsize=256)
def _loads(spec_json: str, layers: int, target_name: str, batch: int, max_len: int, gear: int, act: str,
           precision: str, group_size: int | None):
    from ascend_adapt.contract import io_spec, step_shape
    from ascend_adapt.sim.cost import host_io_bytes, op_loads
    from ascend_adapt.sim.graph import infer_tensor_infos
    from ascend_adapt.sim.numerics import plan_precision
    from ascend_adapt.sim.settings import SimSettings

    quant = "w8a16" if precision == "w8a16" else None
    model, spec, keep = _build(spec_json, layers, target_name, batch, max_len, act, quant,
                               group_size if quant else None)
    shapes = {n: tuple(step_shape(s, gear)) for n, s, _ in io_spec(spec, "step", batch, 1, max_len, act)["inputs"]}
    infos = infer_tensor_infos(model, shapes)
    mode = "must_keep_origin_dtype" if act == "float32" else "force_fp16"
    settings = SimSettings(target=target_name, precision_mode=mode, keep_dtype=list(keep))
    from ascend_adapt.targets import load_target

    plan = plan_precision(model, settings, target=load_target(target_name), infos=infos)
    loads = op_loads(model, plan, infos)
    bits = {"w4a16": 4}.get(precision)  # w8a16: the quantized graph itself (_build)
    if bits:
        from dataclasses import replace

        inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
        out = []
        for ld in loads:
            if ld.weight.startswith("layers.") and ld.weight.endswith(_LINEAR_SUFFIXES) and ld.weight in inits:
                q = _quant_bytes(inits[ld.weight], bits, group_size)
                ld = replace(ld, bytes=ld.bytes - ld.weight_bytes + q, weight_bytes=float(q))
            out.append(ld)
        loads = out
    return tuple(loads), tuple(host_io_bytes(model, infos))


def step_load(spec, target_name: str, *, batch: int, max_len: int, gear: int, precision: str = "fp16",
              group_size: int | None = None) -> StepLoad:
    """The `StepLoad` of one step of `gear` tokens per row over an `max_len`-slot cache.

    Args:
        spec: the ModelSpec. target_name: the target (fused ops and the precision plan follow it).
        batch, max_len: B and M of the build. gear: tokens per row of the step (1 = decode).
        precision: "fp16" / "w8a16" / "w4a16" (fp16 graph, force_fp16) or "fp32" (fp32 graph, origin).
        group_size: the scale grouping (`core.group_size_for`: w8a16 None = per output channel,
            w4a16 None = 128).

    Raises:
        UnsupportedError / ConfigError: the builder cannot emit this spec.
    """
    from .core import group_size_for

    group_size = group_size_for(precision, group_size)
    act = "float32" if precision == "fp32" else "float16"
    key = json.dumps(spec.to_dict(), sort_keys=True)
    one, io = _loads(key, 1, target_name, batch, max_len, gear, act, precision, group_size)
    two, _ = _loads(key, 2, target_name, batch, max_len, gear, act, precision, group_size)
    hidden = batch * gear * spec.hidden_size * (4 if act == "float32" else 2)
    return StepLoad(one, two, spec.num_layers, io, hidden)
