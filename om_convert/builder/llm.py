"""Build prefill.onnx + decode.onnx for an HF LLM checkpoint, directly from its spec and streamed
weights (not traced): the adapter's `ModelSpec` decides the layer recipe, the operators registry
emits each piece (fused where the target has the op, else target-supported primitives), and the
canonical weights stream one tensor at a time into ONE external-data file `weights.bin` that both
graphs reference — so the build holds about one tensor in memory and the protos stay small.

The I/O contract is in `ascend_adapt/contract.py` / docs/graph_contract.md.

Graph internals (batch-first):
- hidden states [B, S, H] in the activation dtype (= `weight_dtype`); fp32 graph I/O is cast at
  the boundary when it is fp16;
- Linear weights are stored transposed, [in, out], for MatMul; a tied embedding / head matrix is
  stored once as [vocab, H] and the head is `Gemm(transB=1)`;
- per-layer node names are prefixed `layers.{i}/…`; the block outputs are tensors named
  `layers.{i}`, plus `embed`, `final_norm` and `logits` (the torch golden's layer-output names).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ascend_adapt.errors import ConfigError, UnsupportedError
from ascend_adapt.fsutil import atomic_output, check_output

from ascend_adapt.contract import MASK_FILL, io_spec, layer_output_names
from .weights import ExternalWeights

WEIGHT_DTYPES = {"float32": np.float32, "fp32": np.float32, "float16": np.float16, "fp16": np.float16}
MAX_OPSET = 18
MIN_OPSET = 13  # Squeeze / Unsqueeze / Split with axes as inputs, Softmax over one axis

# canonical tensors that are Linear weights ([out, in] in the checkpoint; stored [in, out])
_LINEAR = ("attn.q.weight", "attn.k.weight", "attn.v.weight", "attn.o.weight",
           "mlp.gate.weight", "mlp.up.weight", "mlp.down.weight")

# files copied from the checkpoint into the export (config + tokenizer; never weights)
_COPY_EXACT = {"config.json", "generation_config.json", "params.json", "special_tokens_map.json",
               "added_tokens.json", "merges.txt", "vocab.json", "vocab.txt"}
_COPY_PREFIX = ("tokenizer", "tokenization_", "configuration_")
_COPY_SUFFIX = (".model", ".tiktoken")


@dataclass
class BuildResult:
    """What `build_llm_onnx` wrote.

    Attributes:
        out_dir: the export directory.
        prefill_path, decode_path, weights_path: the two graphs and their shared weights file
            (with `gears`, both are the one step graph).
        paths: {graph name: path} of every graph written ("prefill", "decode" or "step").
        manifest: the content of export.json.
        weights_bytes: size of weights.bin.
        num_tensors: tensors stored in weights.bin.
        max_tensor_bytes: the largest single tensor written (≈ the build's peak weight memory).
        proto_bytes: {"prefill": …, "decode": …} sizes of the .onnx files (no weights inside).
        op_types: sorted ONNX op types used by either graph.
        elapsed_s: wall time of the build.
    """

    out_dir: Path
    prefill_path: Path
    decode_path: Path
    weights_path: Path
    manifest: dict
    weights_bytes: int
    num_tensors: int
    max_tensor_bytes: int
    proto_bytes: dict = field(default_factory=dict)
    op_types: list = field(default_factory=list)
    elapsed_s: float = 0.0
    paths: dict = field(default_factory=dict)


def normalize_gears(gears, max_len: int, gear_max: int = 100) -> list[int]:
    """Step lengths of a gear build: sorted, unique, always with 1 (a decode step), 2–`gear_max` of them."""
    try:
        out = sorted({1, *(int(g) for g in gears)})
    except (TypeError, ValueError):
        raise ConfigError(f"gears must be integers, got {gears!r}") from None
    if out[0] < 1 or out[-1] > max_len:
        raise ConfigError(f"gears {out} must lie in 1..max_len ({max_len})",
                          "every prefill gear writes that many cache slots: raise --max-len or drop the gear")
    if len(out) < 2:
        raise ConfigError("a gear build needs at least one prefill length besides the decode gear 1",
                          "pass e.g. --gears 16,32,64")
    if len(out) > gear_max:
        raise ConfigError(f"{len(out)} gears (decode gear 1 included) exceed ATC's limit of {gear_max} (E10036)",
                          "use fewer prefill lengths, e.g. powers of two (om_convert.atc.plan_gears)")
    return out


# ---------------------------------------------------------------------------------------------
# the layer recipe
# ---------------------------------------------------------------------------------------------
class _LLMGraph:
    """Emits one graph (prefill or decode) for `spec` into a GraphBuilder."""

    def __init__(self, spec, kind: str, batch: int, seq_len: int, max_len: int, act_dtype, opset: int,
                 target, stored: dict, sink, stage: dict | None = None):
        from ascend_adapt.operators import get_operator
        from ascend_adapt.operators.graph import GraphBuilder

        self.spec, self.kind, self.target = spec, kind, target
        self.B, self.M = batch, max_len
        self.S = {"prefill": seq_len, "decode": 1, "step": None}[kind]  # None: the gear dim (symbolic)
        self.stored = stored
        self.op = get_operator
        self.b = GraphBuilder(kind, opset=opset, act_dtype=act_dtype)
        self.b.external_sink = sink
        self._weight_names: dict[str, str] = {}
        self.quantizer = None  # om_convert.builder.quantize.LinearQuantizer of a --quantize build
        # a stage of a multi-chip split (om_convert/split.py): layers [a, b), the embedding on the
        # first stage, the final norm and head on the last; None = the whole model
        self.stage = stage
        self.layer_range = range(*stage["layers"]) if stage else range(spec.num_layers)
        self.is_first = stage is None or stage["first"]
        self.is_last = stage is None or stage["last"]

    # -- helpers --------------------------------------------------------------------------------
    def w(self, name: str) -> str:
        """Reference a stored weight (external initializer, declared on first use)."""
        if name not in self._weight_names:
            t = self.stored.get(name)
            if t is None:
                raise ConfigError(f"the weight stream has no tensor '{name}' needed by the graph")
            location, st = t
            self.b.external(name, st.dtype, st.shape, location, st.offset, st.length)
            self._weight_names[name] = name
        return name

    def linear(self, x: str, prefix: str, scope: str) -> str:
        b = self.b
        with b.scope(scope):
            y = self.matmul(x, prefix + ".weight")
            if prefix + ".bias" in self.stored:
                y = b.node("Add", [y, self.w(prefix + ".bias")], name="AddBias")
        return y

    def matmul(self, x: str, weight: str) -> str:
        """x @ W for a stored [in, out] Linear weight (quantized ones through the quantizer)."""
        q = self.quantizer
        if q is not None and q.quantizes(weight):
            return q.emit(self, x, weight)
        return self.b.node("MatMul", [x, self.w(weight)])

    def norm(self, x: str, prefix: str, scope: str) -> str:
        spec, b = self.spec, self.b
        with b.scope(scope):
            if spec.norm == "rmsnorm":
                return self.op("rms_norm").emit(b, [x, self.w(prefix + ".weight")], self.target,
                                                eps=spec.norm_eps)[0]
            if spec.norm == "layernorm":
                return self.op("layer_norm").emit(b, [x, self.w(prefix + ".weight"), self.w(prefix + ".bias")],
                                                  self.target, eps=spec.norm_eps)[0]
        raise UnsupportedError(f"norm '{spec.norm}' has no graph emission")

    def heads(self, x: str, n: int, name: str) -> str:
        """[B, S, n·D] → [B, n, S, D]."""
        b = self.b
        r = b.reshape(x, [0, 0, n, self.spec.head_dim], name=f"Split{name}Heads")
        return b.node("Transpose", [r], name=f"Transpose{name}", perm=[0, 2, 1, 3])

    # -- the graph ------------------------------------------------------------------------------
    def build(self):
        spec, b = self.spec, self.b
        io = io_spec(spec, self.kind, self.B, self.S or 0, self.M, kv_dtype=self.b.act_dtype.name)
        if self.stage is not None:
            from ascend_adapt.om_convert.split import stage_io

            io = stage_io(io, spec, self.stage)
        for name, shape, dtype in io["inputs"]:
            b.add_input(name, dtype, shape)
        act = b.act_dtype
        with b.scope("inputs"):
            mask = b.cast("attention_mask", act, name="CastMask") if act != np.float32 else "attention_mask"
            past_k = past_v = None
            if self.kind != "prefill":  # the cache is in the activation dtype (io_spec): no cast
                past_k, past_v = "past_keys", "past_values"

        tied = spec.tie_word_embeddings
        embed_w = spec.tied_source if tied else "embed.weight"
        if self.is_first:
            with b.scope("embed"):
                h = b.node("Gather", [self.w(embed_w), "input_ids"], axis=0)
            h = b.rename(h, "embed")
        else:  # a later stage of a split: the previous chip's hidden state
            h = "hidden_in"

        presents_k, presents_v = [], []
        for i in self.layer_range:
            with b.scope(f"layers.{i}"):
                h, k, v = self.block(i, h, mask, past_k, past_v)
            h = b.rename(h, f"layers.{i}")
            presents_k.append(k)
            presents_v.append(v)
        if not self.is_last:
            return self._finish_stage(h, presents_k, presents_v, io)

        h = self.norm(h, "final_norm", "final_norm")
        h = b.rename(h, "final_norm")
        with b.scope("lm_head"):
            if tied:
                flat = b.reshape(h, [-1, spec.hidden_size], name="Flatten")
                logits = b.node("Gemm", [flat, self.w(embed_w)], transB=1)
                logits = b.reshape(logits, [self.B, -1, spec.vocab_size], name="Unflatten")
            else:
                logits = self.matmul(h, "lm_head.weight")
        with b.scope("outputs"):
            if act != np.float32:
                logits = b.cast(logits, np.float32, name="CastLogits")
            logits = b.rename(logits, "logits")  # named before ArgMax / ReduceSum consume it
            outs = {"logits": logits}
            # greedy on the card (issue 13 item 3): ArgMax over V of the fp32 logits the host
            # would get (ONNX select_last_index=0: the first maximum, as numpy.argmax), cast to
            # the int32 of input_ids; and Σ logits over V, non-finite iff a logit is NaN / ±Inf
            # (|Σ| ≤ V·65504 < fp32 max for fp16 logits), so the host can still refuse NaN output
            # without copying the logits back. The sum is an fp32 island (ATC --keep_dtype): in
            # fp16 it overflows for finite logits (SmolLM2: 49152 logits of ~10 > 65504)
            am = b.node("ArgMax", [logits], name="ArgMaxToken", axis=-1, keepdims=0, select_last_index=0)
            outs["next_token"] = b.cast(am, np.int32, name="CastToken")
            with b.fp32_island():
                outs["logits_sum"] = b.node("ReduceSum", [logits, b.ints([-1])], name="SumLogits", keepdims=0)
            for name, parts in (("present_keys", presents_k), ("present_values", presents_v)):
                stacked = b.node("Concat", [b.unsqueeze(p, [0], name=f"Unsqueeze_{name}") for p in parts],
                                 name=f"Stack_{name}", axis=0)
                outs[name] = stacked
        for name, shape, dtype in io["outputs"]:
            if outs[name] != name:
                b.rename(outs[name], name)
            b.add_output(name, dtype, shape)
        return b

    def _finish_stage(self, h: str, presents_k, presents_v, io):
        """Outputs of a stage that is not the last: the hidden state (through an Identity, so the
        block output keeps its `layers.{i}` name) and this stage's present K/V."""
        b = self.b
        outs = {"hidden_out": h}
        with b.scope("outputs"):
            for name, parts in (("present_keys", presents_k), ("present_values", presents_v)):
                outs[name] = b.node("Concat", [b.unsqueeze(p, [0], name=f"Unsqueeze_{name}") for p in parts],
                                    name=f"Stack_{name}", axis=0)
        for name, shape, dtype in io["outputs"]:
            if name == "hidden_out":
                b.add_output(outs[name], dtype, shape, name=name)
            else:
                b.rename(outs[name], name)
                b.add_output(name, dtype, shape)
        return b

    def block(self, i: int, h: str, mask: str, past_k_all, past_v_all):
        spec, b = self.spec, self.b
        p = f"layers.{i}"
        H, KVH, D = spec.num_heads, spec.num_kv_heads, spec.head_dim
        a = self.norm(h, f"{p}.attn_norm", "attn_norm")
        with b.scope("attn"):
            q = self.heads(self.linear(a, f"{p}.attn.q", "q_proj"), H, "Q")
            k = self.heads(self.linear(a, f"{p}.attn.k", "k_proj"), KVH, "K")
            v = self.heads(self.linear(a, f"{p}.attn.v", "v_proj"), KVH, "V")
            if spec.qk_norm:  # Qwen3: RMSNorm of every q / k head over head_dim, before the rotary
                q = self.norm(q, f"{p}.attn.q_norm", "q_norm")
                k = self.norm(k, f"{p}.attn.k_norm", "k_norm")
            rot = dict(style=spec.rotary, rotary_dim=spec.rotary_dim or None, theta=spec.rope_theta,
                       table_dtype=spec.rotary_table_dtype, table_rows=self.table_rows, head_dim=D)
            with b.scope("q_rotary"):
                q = self.op("rotary").emit(b, [q, "position_ids"], self.target, **rot)[0]
            with b.scope("k_rotary"):
                k = self.op("rotary").emit(b, [k, "position_ids"], self.target, **rot)[0]
            inputs = [q, k, v, mask]
            if past_k_all is not None:  # this graph's cache holds its own layers (a stage: from its first)
                idx = b.const(np.int32(i - self.layer_range.start))
                inputs += [b.node("Gather", [past_k_all, idx], name="PastK", axis=0),
                           b.node("Gather", [past_v_all, idx], name="PastV", axis=0)]
            with b.scope("sdpa"):
                ctx = self.op("attention").emit(
                    b, inputs, self.target, num_heads=H, num_kv_heads=KVH, head_dim=D,
                    layer_coeff=float(i + 1) if spec.attn_layer_scaling else None)[0]
            o = self.linear(ctx, f"{p}.attn.o", "o_proj")
        h = self.residual(h, a, o, "attn_residual")
        m = self.norm(h, f"{p}.mlp_norm", "mlp_norm")
        with b.scope("mlp"):
            if spec.ffn == "swiglu":
                g = self.linear(m, f"{p}.mlp.gate", "gate_proj")
                u = self.linear(m, f"{p}.mlp.up", "up_proj")
                with b.scope("act"):
                    f = self.op("swiglu").emit(b, [g, u], self.target)[0]
            elif spec.ffn == "gelu_tanh":
                u = self.linear(m, f"{p}.mlp.up", "up_proj")
                with b.scope("act"):
                    f = self.op("gelu_tanh").emit(b, [u], self.target)[0]
            else:
                raise UnsupportedError(f"ffn '{spec.ffn}' has no graph emission")
            d = self.linear(f, f"{p}.mlp.down", "down_proj")
        return self.residual(h, m, d, "mlp_residual"), k, v

    def residual(self, x: str, normed: str, f: str, scope: str) -> str:
        spec, b = self.spec, self.b
        with b.scope(scope):
            if spec.residual == "prenorm":
                return b.node("Add", [x, f])
            if spec.residual == "glm_alpha":
                return self.op("glm_residual").emit(b, [normed, f], self.target, alpha=spec.residual_alpha)[0]
        raise UnsupportedError(f"residual '{spec.residual}' has no graph emission")

    @property
    def table_rows(self) -> int:
        return max(self.spec.max_position, self.M) + 1


# ---------------------------------------------------------------------------------------------
# the build
# ---------------------------------------------------------------------------------------------
def _stored_array(name: str, arr: np.ndarray, spec, dtype) -> np.ndarray:
    """Checkpoint layout → graph layout for one canonical tensor."""
    out = arr.astype(dtype, copy=False)
    if name.endswith(_LINEAR) or (name == "lm_head.weight" and not spec.tie_word_embeddings):
        out = np.ascontiguousarray(out.T)
    return out


def _check_target(target, opset: int) -> None:
    lo, hi = target.opset_range()
    if not lo <= opset <= hi:
        raise UnsupportedError(
            f"opset {opset} is outside {target.name}'s range {lo}-{hi} "
            f"({target.toolchain} {target.default_toolchain_version})",
            f"pass --opset between {max(lo, MIN_OPSET)} and {min(hi, MAX_OPSET)}")


def check_graph_ops(model, target, opset: int) -> list[str]:
    """Problems with `model`'s nodes on `target` (empty = every node accepted)."""
    from onnx import helper

    problems = []
    seen = set()
    for n in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        key = (n.op_type, tuple(sorted((k, repr(v)) for k, v in attrs.items())), len(n.input), len(n.output))
        if key in seen:
            continue
        seen.add(key)
        verdict = target.op_support(n.op_type, opset, attrs, num_inputs=len(n.input), num_outputs=len(n.output))
        if not verdict.supported:
            problems.append(f"{n.name} ({n.op_type}): {verdict.reason}")
    return problems


def _copy_side_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for f in sorted(src.iterdir()):
        if not f.is_file():
            continue
        n = f.name
        if n in _COPY_EXACT or n.startswith(_COPY_PREFIX) or n.endswith(_COPY_SUFFIX):
            if n.endswith((".safetensors", ".bin", ".pth", ".pt", ".index.json")):
                continue
            shutil.copy2(f, dst / n)
            copied.append(n)
    return copied


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, unit="tensor", desc="weights → weights.bin", file=sys.stderr, leave=False)


def _check_shapes(batch: int, seq_len: int, max_len: int, weight_dtype: str, opset: int, gears, target):
    """Validate the build's sizes, dtype, opset and gears, before anything is read or written.

    Returns (activation dtype, canonical weight dtype name, gears (normalized) or None, seq_len
    (the largest gear of a step build), the graph kinds, the Target or None)."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ConfigError(f"weight dtype '{weight_dtype}' is not supported", "use float32 or float16")
    act = np.dtype(WEIGHT_DTYPES[weight_dtype])
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"opset {opset} is not supported by the graph builder",
                          f"use {MIN_OPSET}-{MAX_OPSET} (ATC parses ONNX opsets up to 18)")
    if gears:
        gears = normalize_gears(gears, max_len, (getattr(target, "gear_max", None) or 100)  # None: no gear limit (MLU370)
                                if not isinstance(target, str) else 100)
        seq_len = gears[-1]
    kinds = ("step",) if gears else ("prefill", "decode")
    if batch < 1 or seq_len < 1 or max_len < 1:
        raise ConfigError(f"batch, seq_len and max_len must be ≥ 1 (got {batch}, {seq_len}, {max_len})")
    if seq_len > max_len:
        raise ConfigError(f"seq_len {seq_len} exceeds max_len {max_len}",
                          "the prefill writes seq_len cache slots: raise --max-len or lower --seq-len")
    if target is not None:
        from ascend_adapt.targets import resolve_target

        target = resolve_target(target)
        _check_target(target, opset)
    return act, act.name, gears or None, seq_len, kinds, target


def _open_model(model_dir: Path, kinds, stages):
    """(reader, adapter, spec, units) of a checkpoint: `units` = (graph name, kind, stage) of
    every graph to build (one per kind, or per kind and stage of a split)."""
    from ascend_adapt.checkpoint import open_checkpoint
    from ascend_adapt.model_zoo.base import adapter_for_config

    reader = open_checkpoint(model_dir)
    adapter = adapter_for_config(reader.config, str(model_dir / "config.json"))
    spec = adapter.spec_from_config(reader.config)
    if spec.rotary not in ("half_split", "interleaved", "glm2d"):
        raise UnsupportedError(f"rotary style '{spec.rotary}' has no graph emission")
    units = [(k, k, None) for k in kinds]
    if stages:
        from ascend_adapt.om_convert.split import graph_units

        units = graph_units(spec, stages, kinds)
    return reader, adapter, spec, units


def _make_quantizer(quantize, group_size, spec, act, w8a8_plan):
    """The LinearQuantizer of a --quantize build (options validated here), or None."""
    if quantize is None:
        return None
    from .quantize import LinearQuantizer, check_quantize_options

    if check_quantize_options(quantize, group_size) is not None:
        return LinearQuantizer(quantize, spec, act, group_size=group_size, plan=w8a8_plan)
    return None


def _stream_weights(adapter, reader, spec, act, wf, quantizer, progress: bool) -> dict:
    """Stream the canonical tensors one at a time into weights.bin (int8 where quantized); a
    tied matrix is stored once. Returns {canonical name: (location, stored tensor)}."""
    entries = adapter.entries(spec, "meta" if getattr(reader, "layout", "") == "meta" else "hf")
    n_expected = sum(len(e.canonical) for e in entries)
    skip = set()
    if spec.tie_word_embeddings:
        skip.add("embed.weight" if spec.tied_source == "lm_head.weight" else "lm_head.weight")
    stored: dict = {}
    bar = _progress(n_expected, progress)
    try:
        for name, arr in adapter.iter_canonical(reader, spec):
            if name not in skip and not (quantizer is not None and quantizer.store(
                    name, arr, wf, stored, lambda n, a: _stored_array(n, a, spec, act))):
                st = wf.add(name, _stored_array(name, arr, spec, act))
                stored[name] = (wf.location, st)
            del arr
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if spec.tie_word_embeddings and spec.tied_source not in stored:
        raise ConfigError(f"tied weights: '{spec.tied_source}' is not in the checkpoint")
    return stored


def _write_graph(d: Path, unit, spec, batch: int, seq_len: int, max_len: int, act, opset: int, target, stored: dict,
                 sink, quantizer, gears):
    """Emit, check and write one graph `d/<name>.onnx`. Returns (model proto, its fp32-island
    node names, the file's size)."""
    import onnx

    gname, kind, stage = unit
    g = _LLMGraph(spec, kind, batch, seq_len, max_len, act, opset, target, stored, sink, stage)
    g.quantizer = quantizer
    b = g.build()
    shape_doc = f"S={seq_len}" if kind != "step" else f"step gears {gears}"
    model = b.make_model(doc=f"ascend-adapt {kind} graph of {spec.arch} (static KV cache, "
                             f"B={batch}, {shape_doc}, M={max_len})",
                         metadata={"ascend_adapt.graph": gname, "ascend_adapt.mask_fill": MASK_FILL})
    if quantizer is not None:  # types / shapes after the Ascend quant ops, for the simulator
        from ascend_adapt.operators.quant import annotate_quant_value_info

        annotate_quant_value_info(model)
    if target is not None:
        problems = check_graph_ops(model, target, opset)
        if problems:
            raise UnsupportedError(
                f"{gname} graph: {len(problems)} node(s) {target.name} does not accept, e.g. {problems[0]}",
                "this is a builder bug: report it with the spec; try another --opset meanwhile")
    path = d / f"{gname}.onnx"
    path.write_bytes(model.SerializeToString())
    if quantizer is not None:  # Ascend quant ops (default domain, unknown to onnx): check
        from ascend_adapt.operators.quant import lower_quant_ops  # their lowered form

        tmp = d / f".lowered_{gname}.onnx"  # beside weights.bin (external data)
        tmp.write_bytes(lower_quant_ops(model).SerializeToString())
        try:
            onnx.checker.check_model(str(tmp))
        finally:
            tmp.unlink()
    else:
        onnx.checker.check_model(str(path))
    return model, list(b.keep_dtype), path.stat().st_size


def _manifest(spec, model_dir: Path, kinds, units, batch: int, seq_len: int, max_len: int, opset: int,
              weight_dtype: str, target, gears, weights_bytes: int, n_tensors: int, keep: dict, op_types: list,
              copied: list, quantizer, stages) -> dict:
    """The content of export.json (docs/graph_contract.md)."""
    manifest = {
        "format": "ascend-adapt/llm-onnx", "format_version": 1,
        "arch": spec.arch, "spec": spec.to_dict(), "source": str(model_dir),
        "batch": batch, "seq_len": seq_len, "max_len": max_len, "opset": opset,
        "weight_dtype": weight_dtype, "activation_dtype": weight_dtype,
        "target": getattr(target, "name", None),
        "mask_fill": MASK_FILL,
        "graphs": {kind: {"file": f"{kind}.onnx",
                          **{k: [{"name": n, "shape": s, "dtype": t} for n, s, t in v]
                             for k, v in io_spec(spec, kind, batch, seq_len, max_len,
                                                 kv_dtype=np.dtype(weight_dtype).name).items()}}
                   for kind in kinds},
        "gears": gears or None,
        "weights": {"file": "weights.bin", "bytes": weights_bytes, "tensors": n_tensors,
                    "linear_layout": "[in, out] (transposed from the checkpoint's [out, in])",
                    "tied_head": "Gemm(transB=1) over the [vocab, H] embedding" if spec.tie_word_embeddings
                    else None},
        "layer_outputs": layer_output_names(spec.num_layers),
        "keep_dtype": keep,
        "keep_dtype_files": {kind: f"keep_dtype_{kind}.cfg" for kind in keep},
        "op_types": op_types,
        "copied_files": copied,
    }
    if quantizer is not None:
        manifest["quantization"] = quantizer.manifest()
    if stages:  # the stage graphs replace the whole-model ones (split.stage_manifest)
        from ascend_adapt.om_convert.split import stage_manifest

        stage_manifest(manifest, spec, units, batch, seq_len, max_len)
    return manifest


def build_llm_onnx(model_dir, out_dir, *, batch: int = 1, seq_len: int = 64, max_len: int = 256, target=None,
                   opset: int = 17, weight_dtype: str = "float32", force: bool = False,
                   progress: bool = True, gears=None, stages=None, quantize: str | None = None,
                   group_size: int | None = None, w8a8_plan=None) -> BuildResult:
    """Build prefill.onnx + decode.onnx (+ weights.bin, export.json) for an HF LLM checkpoint.

    With `gears`, build instead ONE step.onnx whose step length is a gear dimension (decode = 1,
    prefill = the other gears): ATC compiles it into one OM with `--dynamic_dims`, so the card
    loads the weights once instead of once per graph.

    Args:
        model_dir: HF checkpoint directory (any layout the adapters read).
        out_dir: export directory to create (atomically; `force` replaces an existing one).
        batch: B, the static batch of both graphs.
        seq_len: S, the prefill length (prompts are left-padded to it).
        max_len: M, the KV-cache slots of the decode graph (S ≤ M).
        target: an `ascend_adapt.targets.Target`, or a name for `load_target` ("Ascend310P3"), or
            None. With a target, the opset is checked against its range, fused ops are emitted only
            where it parses them, and every node is checked against its op table.
        opset: ONNX opset, 13-18 (ATC parses ≤ 18).
        weight_dtype: "float32" or "float16": the dtype of the stored weights AND of the graph's
            activations (fp32 islands stay fp32; the graph I/O is float32 either way).
        force: replace an existing `out_dir`.
        progress: show a progress bar on stderr.
        gears: prefill lengths of a step-graph build (1 is added for decode); `seq_len` becomes
            the largest gear.
        stages: a multi-chip split (`om_convert.split`): [{"layers": [a, b], "device_id": d}, …]
            contiguous ranges covering every layer; each graph kind is then built once per stage
            as `stage{i}_{kind}.onnx` (stage I/O: `split.stage_io`), all sharing weights.bin, and
            export.json lists them under "stages".
        quantize: None (float weights), "w8a16" or "w8a8" (`om_convert.builder.quantize`): Linear
            weights stored int8 as they stream, read through the Ascend quant operators;
            export.json records it under "quantization".
        group_size: w8a16 scales per group of this many input channels (None = per output channel).
        w8a8_plan: the `ascend_adapt.quant.smoothquant.W8A8Plan` of a w8a8 build.

    Returns:
        BuildResult.
    """
    t0 = time.perf_counter()
    model_dir = Path(model_dir)
    check_output(out_dir, force, inputs=[model_dir])
    act, weight_dtype, gears, seq_len, kinds, target = _check_shapes(batch, seq_len, max_len, weight_dtype, opset,
                                                                     gears, target)
    reader, adapter, spec, units = _open_model(model_dir, kinds, stages)
    quantizer = _make_quantizer(quantize, group_size, spec, act, w8a8_plan)  # validated before anything is written

    with atomic_output(out_dir, force=force, is_dir=True, inputs=[model_dir]) as d:
        with ExternalWeights(d / "weights.bin") as wf:
            stored = _stream_weights(adapter, reader, spec, act, wf, quantizer, progress)
            graphs, keep, protos = {}, {}, {}
            for unit in units:
                gname = unit[0]
                graphs[gname], keep[gname], protos[gname] = _write_graph(
                    d, unit, spec, batch, seq_len, max_len, act, opset, target, stored, wf.sink, quantizer, gears)
        weights_bytes, n_tensors, max_tensor = wf.nbytes, len(wf.tensors), wf.max_tensor_bytes

        op_types = sorted({n.op_type for m in graphs.values() for n in m.graph.node})
        for kind, names in keep.items():
            (d / f"keep_dtype_{kind}.cfg").write_text("".join(n + "\n" for n in names))
        copied = _copy_side_files(model_dir, d)
        manifest = _manifest(spec, model_dir, kinds, units, batch, seq_len, max_len, opset, weight_dtype, target,
                             gears, weights_bytes, n_tensors, keep, op_types, copied, quantizer, stages)
        (d / "export.json").write_text(json.dumps(manifest, indent=2))
    out = Path(out_dir)
    paths = {g: out / f"{g}.onnx" for g, _, _ in units}
    return BuildResult(out, paths.get("prefill", out / "step.onnx"), paths.get("decode", out / "step.onnx"),
                       out / "weights.bin", manifest, weights_bytes, n_tensors, max_tensor, protos, op_types,
                       time.perf_counter() - t0, paths)


def load_manifest(export_dir) -> dict:
    """Read export.json of an export directory (raising a helpful error when it is not one)."""
    p = Path(export_dir) / "export.json"
    if not p.is_file():
        raise ConfigError(f"{export_dir}: no export.json — not an ascend-adapt ONNX export",
                          "build one with `ascend-adapt export <hf-dir> -o <dir>`")
    return json.loads(p.read_text())

