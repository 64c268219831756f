"""Memory, decode tokens/s, prefill latency and ATC compile cost of an LLM on targets.

Everything is computed from the `ModelSpec` that `config.json` implies (no weights are read) and
the target data files. Every figure comes with the formula that produced it (`formulas`), and
each target's calibration statement says which published measurement its efficiency was fitted
on and the error on the others (`estimate/published.py`). The numbers are estimates, not
measurements.

Model (per decode step of `batch` sequences at context `seq_len`):

    weights      = Σ tensors at the precision's bytes (+ quantization scales, see PRECISIONS)
    kv_cache     = 2 · layers · batch · seq_len · kv_heads · head_dim · 2 bytes   (fp16 K and V)
    workspace    = activations of the largest step (prefill of prompt_len tokens), see `workspace_bytes`
    time         = the one cost model shared with the simulator (`ascend_adapt.cost_model`) over
                   the ops of the graph `convert` builds (`graph_cost.step_load`, no weights read):
                   Σ max(FLOPs ÷ (peak · compute_eff), bytes ÷ (bandwidth · memory_eff)) + launch
                   + host↔device copies (PCIe) + hand-overs between chips (`step_times`)
    decode       = batch ÷ time(gear 1)              [tokens/s]
    prefill      = time(gear prompt_len)
    efficiencies = the target data files' figures, fitted on published measurements
                   (`published.py`: which one, and the error on the others)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ascend_adapt.errors import AscendAdaptError, ConfigError



# precision -> (bits per quantized weight, scale scheme text)
PRECISIONS: dict[str, tuple[int, str]] = {
    "fp32": (32, "no quantization: every tensor fp32 (4 bytes; must_keep_origin_dtype of an fp32 checkpoint)"),
    "fp16": (16, "no quantization: every tensor fp16 (2 bytes)"),
    "w8a16": (8, "int8 weights of every Linear (the transformer blocks' and an untied lm_head), {w8_scales}; "
                 "embedding and norms stay fp16; activations fp16 (the builder's --quantize w8a16{w8_option})"),
    "w4a16": (4, "int4 weights of the transformer-block Linear layers, groups of {group} along the "
                 "input dim with one fp16 scale and one fp16 offset per group (+4 bytes per group = "
                 "+{extra_bits:.2f} bits/weight); embedding, lm_head and norms stay fp16; activations fp16"),
}
W4_GROUP_SIZE = 128  # w4a16's group along the input dim when none is given (estimate's default since w4a16 was added)
ACT_BYTES = 2  # fp16 activations on the NPU (force_fp16 / a16 schemes)
KV_BYTES = 2  # fp16 KV cache
DEFAULT_RESERVE = 0.90  # usable fraction of device memory when the data file gives no usable figure
# kernels launched per decoder layer and step (norms, QKV, rotary, attention, MLP, residuals): an
# assumption [M], used only by the aggregate fallback of `step_times` for a config the graph
# builder cannot emit (the builder's Llama block has 58 non-view nodes; ATC fuses some)
LAUNCHES_PER_LAYER = 40

_QUANT_SUFFIXES = (".attn.q.weight", ".attn.k.weight", ".attn.v.weight", ".attn.o.weight",
                   ".mlp.gate.weight", ".mlp.up.weight", ".mlp.down.weight")


# ------------------------------------------------------------------------------------- inputs
def load_config(config_or_dir: Any) -> tuple[dict, str]:
    """Read an HF config from a dict, a model directory (config.json or Meta params.json) or a file.

    Returns:
        (config dict, a display name for the model).
    """
    from ascend_adapt.checkpoint.config import ConfigDict, load_config_json

    if isinstance(config_or_dir, Mapping):
        cfg = ConfigDict(config_or_dir)
        name = cfg.get("_name_or_path") or cfg.get("model_type")
        return cfg, str(name) if isinstance(name, str) and name else "model"
    p = Path(os.fspath(config_or_dir))
    if p.is_dir():
        for name in ("config.json", "params.json"):
            if (p / name).is_file():
                f = p / name
                break
        else:
            raise ConfigError(f"'{p}' has no config.json (or params.json)",
                              "pass the model directory of an HF checkpoint, or its config.json")
    elif p.is_file():
        f = p
    else:
        raise ConfigError(f"'{p}' does not exist", "pass an HF model directory or a config.json")
    cfg = load_config_json(f)  # strict JSON (no NaN / Infinity), a ConfigError naming the file
    name = cfg.get("_name_or_path")
    if not isinstance(name, str) or not name:
        name = f.parent.name if f.name in ("config.json", "params.json") else f.stem
    return cfg, name


def spec_for(config_or_dir: Any):
    """The ModelSpec (and display name) of a config dict / directory / config.json / ModelSpec."""
    from ascend_adapt.spec import ModelSpec

    if isinstance(config_or_dir, ModelSpec):
        return config_or_dir, config_or_dir.arch
    from ascend_adapt.model_zoo.base import adapter_for_config

    cfg, name = load_config(config_or_dir)
    return adapter_for_config(cfg, cfg.source).spec_from_config(cfg), name


@dataclass(frozen=True)
class TargetFigures:
    """The target figures the estimator uses (per chip), with their confidence marks."""

    name: str
    family: str
    toolchain: str
    soc_version: str
    fp16_tflops: float
    memory_bytes: int
    usable_memory_bytes: int | None
    bandwidth_gbps: float
    chips_per_card: int
    gear_max: int | None
    launch_overhead_us: float
    confidence: Mapping[str, str]
    products: str = ""
    weight_only_quant_kernels: bool | None = None

    @property
    def usable_bytes(self) -> int:
        return self.usable_memory_bytes or int(self.memory_bytes * DEFAULT_RESERVE)


def default_targets() -> tuple[str, ...]:
    """`estimate`'s default targets: those whose data file gives an `estimate_rank`, in its order."""
    from ascend_adapt.targets import TARGETS

    ranked = sorted((t.estimate_rank, name) for name, t in TARGETS.items() if t.estimate_rank is not None)
    return tuple(name for _, name in ranked)


def __getattr__(name: str):
    if name == "DEFAULT_TARGETS":  # read from the target data files when asked for
        return default_targets()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def target_figures(target) -> TargetFigures:
    """Figures of a target (a name or a Target, `ascend_adapt.targets.resolve_target`)."""
    from ascend_adapt.targets import resolve_target

    t = resolve_target(target)
    conf = {k: f.confidence for k, f in t.facts.items()}
    woq = t.facts.get("weight_only_quant_kernels")
    return TargetFigures(
        name=t.name, family=t.family, toolchain=t.toolchain, soc_version=t.soc_version,
        fp16_tflops=t.fp16_tflops, memory_bytes=t.memory_bytes, usable_memory_bytes=t.usable_memory_bytes,
        bandwidth_gbps=t.memory_bandwidth_gbps, chips_per_card=t.chips_per_card, gear_max=t.gear_max,
        launch_overhead_us=t.launch_overhead_us, confidence=conf, products=t.products,
        weight_only_quant_kernels=None if woq is None else bool(woq.value))


# ------------------------------------------------------------------------------ model figures
@dataclass(frozen=True)
class WeightBytes:
    """Weight storage at one precision.

    Attributes:
        total: all weight bytes including scales.
        quantized: bytes of the quantized Linear weights (0 at fp16).
        scales: bytes of their scales / offsets.
        fp16: bytes of the tensors kept in fp16.
        embedding: bytes of the embedding table (not read per decode step unless tied).
        scheme: how the precision stores weights (for the report).
        overhead_pct: scales as a percentage of the quantized weight bytes.
    """

    total: int
    quantized: int
    scales: int
    fp16: int
    embedding: int
    scheme: str
    overhead_pct: float


def group_size_for(precision: str, group_size: int | None = None, spec=None) -> int | None:
    """The scale grouping `precision` is priced with: the builder's grouping for it.

    w8a16: None = one scale per output channel (convert's default), G = one scale per G input
    channels of each output row (`--group-size G`); G is checked as convert checks it
    (`check_quantize_options`, and with `spec`, `check_group_size` on every quantized Linear:
    G must divide its input features). w4a16: None = W4_GROUP_SIZE (128); groups of G along the
    input dim, the last one partial. fp16 / fp32 have no scales: a group size is refused.

    Raises:
        ConfigError: a group size with fp16 / fp32, a non-positive one, or (w8a16) one that does
            not divide a Linear's input features.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'", f"use one of {', '.join(PRECISIONS)}")
    if PRECISIONS[precision][0] >= 16:
        if group_size is not None:
            raise ConfigError(f"--group-size {group_size} applies to quantized weights (w8a16 / w4a16 scales); "
                              f"precision '{precision}' stores no scales",
                              "drop --group-size, or use --precision w8a16 (or w4a16)")
        return None
    if group_size is None:
        return W4_GROUP_SIZE if precision == "w4a16" else None
    from ascend_adapt.om_convert.builder.quantize import check_quantize_options

    check_quantize_options("w8a16", group_size)  # convert's rule: a positive integer (bool refused)
    group_size = int(group_size)
    if precision == "w8a16" and spec is not None:
        from ascend_adapt.quant.weights import check_group_size

        for name, shape in _quantized_linears(spec, 8):
            check_group_size(int(shape[1]), group_size, name)  # the builder's check, per Linear
    return group_size


def _quantized_linears(spec, bits: int) -> list[tuple[str, tuple]]:
    """(name, [out, in] shape) of the Linears stored quantized at `bits` (< 16), as the builder does:
    the blocks' Linears, and at 8 bits an untied lm_head too."""
    out = []
    for name, shape in spec.canonical_shapes().items():
        head = bits == 8 and name == "lm_head.weight" and not spec.tie_word_embeddings
        if (name.startswith("layers.") and name.endswith(_QUANT_SUFFIXES)) or head:
            out.append((name, tuple(shape)))
    return out


def _tensor_parts(spec, precision: str, group: int | None) -> dict[str, tuple[int, int, int]]:
    """name -> (quantized bytes, scale bytes, unquantized bytes) of every stored tensor (a tied
    embedding / head once), `group` already resolved by `group_size_for`."""
    bits = PRECISIONS[precision][0]
    shapes = dict(spec.canonical_shapes())
    if spec.tie_word_embeddings:
        shapes.pop("embed.weight" if spec.tied_source == "lm_head.weight" else "lm_head.weight", None)
    plain_bytes = 4 if bits == 32 else 2  # the unquantized tensors: fp32 only at precision "fp32"
    quantized = dict(_quantized_linears(spec, bits)) if bits < 16 else {}
    out = {}
    for name, shape in shapes.items():
        n = math.prod(shape)
        if name in quantized:
            out_f, in_f = shape
            if bits == 8:  # fp16 scales: [out] per channel, [in/G, 1, out] per group (G divides in_f)
                sc = out_f * (in_f // group if group else 1) * 2
            else:  # an fp16 scale and an fp16 offset per group, the last group partial
                sc = out_f * math.ceil(in_f / group) * 4
            out[name] = (n * bits // 8, sc, 0)
        else:
            out[name] = (0, 0, n * plain_bytes)
    return out


def tensor_bytes(spec, precision: str = "fp16", group_size: int | None = None) -> dict[str, int]:
    """Bytes of every stored tensor at `precision`, a quantized Linear with its scales (a tied
    embedding / head matrix once); `group_size` as `weight_bytes`. Sums to weight_bytes().total."""
    group = group_size_for(precision, group_size, spec)
    return {n: sum(p) for n, p in _tensor_parts(spec, precision, group).items()}


def weight_bytes(spec, precision: str = "fp16", group_size: int | None = None) -> WeightBytes:
    """Bytes of the weights at `precision` (see PRECISIONS for what is quantized and how).

    `group_size`: the scale grouping (`group_size_for`): w8a16 None = one fp16 scale per output
    channel, G = one per G input channels of each output row, as `om_convert.builder.quantize`
    stores them ([out] or [in/G, 1, out]); w4a16 None = 128. Refused with fp16 / fp32.
    """
    group = group_size_for(precision, group_size, spec)
    scheme = PRECISIONS[precision][1]
    parts = _tensor_parts(spec, precision, group)
    quant = sum(q for q, _, _ in parts.values())
    scales = sum(sc for _, sc, _ in parts.values())
    fp16 = sum(f for _, _, f in parts.values())
    embed = parts["embed.weight"][2] if "embed.weight" in parts and not spec.tie_word_embeddings else 0
    total = quant + scales + fp16
    if group:
        w8 = (f"one fp16 scale per group of {group} input channels of each output row (+2 bytes per "
              f"group = +{16 / group:.3f} bits/weight)")
    else:
        w8 = "one fp16 scale per output channel (+2 bytes per row)"
    return WeightBytes(total, quant, scales, fp16, embed,
                       scheme.format(group=group, extra_bits=32 / group if group else 0.0, w8_scales=w8,
                                     w8_option=f" --group-size {group}" if group else ""),
                       100.0 * scales / quant if quant else 0.0)


def workspace_bytes(spec, batch: int, prompt_len: int, seq_len: int, act_bytes: int = ACT_BYTES) -> int:
    """Activation memory of the largest step: a prefill of `prompt_len` tokens over a `seq_len` cache.

    One layer's live tensors at once (layers run one after another and reuse the buffers):
    hidden states ×2 (residual + normed), Q, K, V, gate and up of the MLP, the attention
    scores [batch, heads, prompt_len, seq_len] in the activation dtype plus their fp32 softmax,
    and the fp32 logits of the last position [batch, vocab] (a = `act_bytes`, 2 for fp16):

        ws = a·B·T·(2H + q_dim + 2·kv_dim + 2I) + (a + 4)·B·heads·T·S + 4·B·V
    """
    B, T, S = batch, prompt_len, seq_len
    per_token = 2 * spec.hidden_size + spec.q_dim + 2 * spec.kv_dim + 2 * spec.intermediate_size
    return (act_bytes * B * T * per_token + (act_bytes + 4) * B * spec.num_heads * T * S
            + 4 * B * spec.vocab_size)


@dataclass(frozen=True)
class MemoryFootprint:
    """Device memory of one loaded model on one chip, from `memory_footprint` (bytes).

    Attributes:
        weights: the weight storage of ONE copy (`WeightBytes`).
        weight_copies: copies the card loads (1: one OM; 2: a prefill OM + a decode OM each
            embedding the weights).
        weights_bytes: weights.total × weight_copies.
        kv_cache_bytes: the static K and V cache of `batch` × `seq_len` slots.
        workspace_bytes: activations of the largest step (`workspace_bytes`).
        kv_bytes / act_bytes: bytes per KV element / activation element used.
    """

    weights: WeightBytes
    weight_copies: int
    weights_bytes: int
    kv_cache_bytes: int
    workspace_bytes: int
    kv_bytes: int
    act_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.workspace_bytes

    def chips_needed(self, usable_bytes: int) -> int:
        """Chips of `usable_bytes` each (tensor parallel: weights and KV split over the chips,
        activations conservatively not); 0 when the workspace alone exceeds one chip."""
        if self.workspace_bytes >= usable_bytes:
            return 0
        return max(1, math.ceil((self.weights_bytes + self.kv_cache_bytes) / (usable_bytes - self.workspace_bytes)))


def memory_footprint(spec, precision: str = "fp16", *, batch: int = 1, seq_len: int, prompt_len: int | None = None,
                     kv_bytes: int = KV_BYTES, act_bytes: int = ACT_BYTES, weight_copies: int = 1,
                     group_size: int | None = None) -> MemoryFootprint:
    """Weights + KV cache + workspace of `spec` on one chip: THE memory formula of `estimate`
    (and of `convert`'s fit check, which passes the dtypes and graph layout it will build).

    Args:
        spec: the ModelSpec.
        precision: weight storage, a key of PRECISIONS ("fp32", "fp16", "w8a16", "w4a16").
        batch: B. seq_len: context slots M of the static KV cache. prompt_len: tokens of the
            largest prefill step (default: seq_len).
        kv_bytes: bytes per cached K/V element (2 = fp16, 4 = fp32).
        act_bytes: bytes per activation element (2 = fp16, 4 = fp32).
        weight_copies: copies of the weights the card holds (2 for a prefill + a decode OM).
        group_size: the builder's scale grouping for `precision` (`group_size_for`): w8a16 None =
            per output channel, G = per G input channels (convert --group-size G); w4a16 None = 128.
    """
    w = weight_bytes(spec, precision, group_size)
    prompt_len = int(prompt_len or seq_len)
    return MemoryFootprint(w, int(weight_copies), w.total * int(weight_copies),
                           spec.kv_cache_bytes(batch, seq_len, kv_bytes),
                           workspace_bytes(spec, batch, prompt_len, seq_len, act_bytes), kv_bytes, act_bytes)


def linear_params(spec) -> int:
    """Parameters that take part in matmuls for every token (all but the gathered embedding)."""
    n = spec.param_count()
    if not spec.tie_word_embeddings:
        n -= spec.vocab_size * spec.hidden_size
    return n


def prefill_flops(spec, batch: int, prompt_len: int, seq_len: int) -> float:
    """2 · linear params · B · T (matmuls) + 4 · L · B · T · S · q_dim (QKᵀ and PV over the static cache)."""
    return (2.0 * linear_params(spec) * batch * prompt_len
            + 4.0 * spec.num_layers * batch * prompt_len * seq_len * spec.q_dim)


# -------------------------------------------------------------------------------- the report
@dataclass
class CompileCost:
    """ATC compile cost of the prefill (gears) + decode (static) OMs."""

    prefill_gears: list[int]
    seconds: float
    om_bytes: int
    assumption: str


@dataclass
class TargetEstimate:
    """The estimate on one target. Byte figures per chip unless named otherwise."""

    target: str
    family: str
    toolchain: str
    memory_bytes: int
    usable_bytes: int
    bandwidth_gbps: float
    fp16_tflops: float
    chips_per_card: int
    needed_bytes: int
    fits_one_chip: bool
    chips_needed: int
    cards_needed: int
    decode_bound_tok_s: float
    efficiency: float
    efficiency_basis: str
    decode_tok_s: float
    launch_cap_tok_s: float
    card_chips: int
    card_decode_tok_s: float
    prefill_ms: float
    prefill_bound: str
    compile: CompileCost | None
    notes: list[str] = field(default_factory=list)
    confidence: dict = field(default_factory=dict)
    decode_ms: float = 0.0
    transfer_ms: float = 0.0
    calibration: str = ""


@dataclass
class EstimateReport:
    """What `estimate` returns. `targets` holds one TargetEstimate per target."""

    model: str
    arch: str
    params: int
    precision: str
    seq_len: int
    batch: int
    prompt_len: int
    weights_bytes: int
    weights: WeightBytes
    kv_cache_bytes: int
    workspace_bytes: int
    total_bytes: int
    decode_bytes_per_step: int
    prefill_flops: float
    targets: list[TargetEstimate]
    formulas: dict[str, str]
    assumptions: list[str]

    def target(self, name: str) -> TargetEstimate:
        for t in self.targets:
            if t.target.lower() == name.lower():
                return t
        raise KeyError(f"no estimate for target '{name}' (have {', '.join(t.target for t in self.targets)})")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass(frozen=True)
class StepTimes:
    """Per-step times of one build on one target from the shared cost model (milliseconds).

    Attributes:
        decode_ms: one decode step (one token per row) on the chips the model needs (a layer
            split runs them in turn): ops + host↔device copies + hand-overs between chips.
        card_decode_ms: the same, tensor parallel over every chip of the cards (ops ÷ chips +
            2 all-reduces of the hidden state per layer), what the published multi-chip stacks do.
        bound_ms: decode_ms at 100 % memory and compute efficiency (the roofline bound).
        transfer_ms / handover_ms / launch_ms: the host copies, the hand-overs, the launch part of a decode step.
        launches: kernels per decode step.
        prefill_ms / prefill_bound: a prefill of prompt_len tokens per row, and its dominant term.
        memory_efficiency / efficiency_basis: the efficiency used and where it comes from.
        fallback: non-empty when the builder could not emit the config (aggregate model used).
    """

    decode_ms: float
    card_decode_ms: float
    bound_ms: float
    transfer_ms: float
    handover_ms: float
    launch_ms: float
    launches: int
    prefill_ms: float
    prefill_bound: str
    memory_efficiency: float
    efficiency_basis: str
    fallback: str = ""


def _efficiency_override(name: str, family: str, efficiency) -> float | None:
    if isinstance(efficiency, (int, float)) and not isinstance(efficiency, bool):
        return float(efficiency)
    if isinstance(efficiency, Mapping):
        for key in (name, family):
            if key in efficiency:
                return float(efficiency[key])
    return None


def step_times(spec, target: str, *, batch: int, seq_len: int, prompt_len: int, precision: str = "fp16",
               chips: int = 1, card_chips: int | None = None, efficiency=None, prefill_efficiency: float | None = None,
               group_size: int | None = None, step_bytes: int | None = None,
               flops: float | None = None) -> StepTimes:
    """Decode and prefill step times of `spec` on `target` through `ascend_adapt.cost_model`.

    The ops are those of the graph `convert` builds (`graph_cost.step_load`: the simulator's
    per-op FLOPs and bytes of the weightless step graph at gear 1 and gear `prompt_len`), each
    timed by `cost_model.op_time`; the host copies are the ones the "acl" runtime makes with
    the KV cache and greedy on the card (`sim.cost.host_io`).

    Args:
        spec: the ModelSpec. target: target name.
        batch, seq_len, prompt_len: B, M and the prefill length.
        precision: a key of PRECISIONS.
        chips: chips the model is split over (layer split: each step runs them in turn).
        card_chips: chips of the cards, for the tensor-parallel column (default `chips`).
        efficiency: memory efficiency override (a number, or {target or family: number}).
        prefill_efficiency: compute efficiency override.
        group_size: the scale grouping of a quantized precision (`group_size_for`; w8a16 None = per
            output channel, w4a16 None = 128).
        step_bytes / flops: the aggregate decode bytes and prefill FLOPs, for the fallback.
    """
    from ascend_adapt.cost_model import CostFigures, allreduce_ms, handover_ms, op_time, transfer_ms
    from ascend_adapt.targets import resolve_target

    t = resolve_target(target)
    over = _efficiency_override(t.name, t.family, efficiency)
    fig = CostFigures.of(t, memory_efficiency=over, compute_efficiency=prefill_efficiency)
    ideal = CostFigures.of(t, memory_efficiency=1.0, compute_efficiency=1.0)
    basis = dict(fig.basis)["memory_efficiency"]
    card_chips = card_chips or chips
    group_size = group_size_for(precision, group_size, spec)
    L = spec.num_layers
    try:
        from .graph_cost import step_load

        dec = step_load(spec, t.name, batch=batch, max_len=seq_len, gear=1, precision=precision,
                        group_size=group_size)
        pre = step_load(spec, t.name, batch=batch, max_len=seq_len, gear=prompt_len, precision=precision,
                        group_size=group_size)
    except AscendAdaptError as exc:  # the builder cannot emit it: one aggregate op, same cost model
        if step_bytes is None or flops is None:
            raise
        launches = L * LAUNCHES_PER_LAYER
        dec_ops = op_time(2.0 * linear_params(spec) * batch, step_bytes, fig).total_ms + (
            launches - 1) * fig.launch_us / 1e3
        dec_ideal = op_time(2.0 * linear_params(spec) * batch, step_bytes, ideal).total_ms + (
            launches - 1) * fig.launch_us / 1e3
        pre_t = op_time(flops, step_bytes, fig)
        io = [4 * batch, 4 * batch, 4 * batch * (1 + seq_len), 4 * batch, 4 * batch]
        tr = transfer_ms(sum(io), fig, len(io))
        hand = (chips - 1) * handover_ms(2 * batch * spec.hidden_size, fig)
        card = dec_ops / card_chips + tr + 2 * L * allreduce_ms(2 * batch * spec.hidden_size, card_chips, fig)
        return StepTimes(dec_ops + tr + hand, card, dec_ideal + tr + hand, tr, hand, launches * fig.launch_us / 1e3,
                         launches, pre_t.total_ms + (launches - 1) * fig.launch_us / 1e3, pre_t.bound,
                         fig.memory_efficiency, basis,
                         f"the graph builder cannot emit this config ({exc.message}): one aggregate op "
                         f"(weights + KV bytes, {LAUNCHES_PER_LAYER} kernels per layer) through the same cost model")
    tr = transfer_ms(sum(dec.io_bytes), fig, len(dec.io_bytes))
    hand = (chips - 1) * handover_ms(dec.hidden_bytes, fig)
    ops = dec.ops_ms(fig)
    card = ops / card_chips + tr + 2 * L * allreduce_ms(dec.hidden_bytes, card_chips, fig)
    launches = dec.launches()
    pre_tr = transfer_ms(sum(pre.io_bytes), fig, len(pre.io_bytes))
    pre_ms = pre.ops_ms(fig) + pre_tr + (chips - 1) * handover_ms(pre.hidden_bytes, fig)
    return StepTimes(ops + tr + hand, card, dec.ops_ms(ideal) + tr + hand, tr, hand, launches * fig.launch_us / 1e3,
                     launches, pre_ms, pre.bound_class(fig), fig.memory_efficiency, basis)


def _calibration(target: str) -> str:
    from .published import calibration_statement

    return calibration_statement(target)


def _compile_cost(fig: TargetFigures, weights_total: int, min_prompt: int, seq_len: int,
                  seconds_per_gear: float | None) -> tuple[CompileCost | None, str | None]:
    if fig.gear_max is None:  # the target data's `gears`: null where the toolchain has no gears (MagicMind)
        return None, (f"{fig.toolchain}: takes shape ranges, one build per graph; no ATC gear plan "
                      f"(compile time not modelled)")
    try:
        from ascend_adapt.om_convert.atc import estimate_compile_cost, plan_gears
    except ImportError as exc:  # the ATC driver is optional for the estimate
        return None, f"ATC driver not available ({exc}); compile cost not estimated"
    max_gears = min(fig.gear_max or 100, 100)
    lo = max(1, min(min_prompt, seq_len))
    gears = plan_gears(lo, seq_len, max_gears=max_gears, soc_version=fig.soc_version) if seq_len > lo else [seq_len]
    kw = {} if seconds_per_gear is None else {"seconds_per_gear": seconds_per_gear}
    # convert's default layout: ONE step graph, the prefill gears + the decode gear 1 as
    # --dynamic_dims profiles of one OM that stores the weights once
    one = estimate_compile_cost([1, *gears], weight_bytes=weights_total, **kw)
    text = (f"one OM (convert's step-graph layout): {len(gears)} prefill gears (plan_gears pow2 from {lo} to "
            f"{seq_len}) + the decode gear 1, the weights stored once. " + one.assumption)
    return CompileCost(list(gears), one.seconds, one.om_bytes, text), None


def estimate(config_or_dir: Any, targets: Sequence[str] | None = None, precision: str = "fp16",
             seq_len: int | None = None, batch: int = 1, *, prompt_len: int | None = None,
             efficiency: float | Mapping[str, float] | None = None,
             prefill_efficiency: float | None = None, group_size: int | None = None, min_prompt: int = 16,
             compile_seconds_per_gear: float | None = None, calibration: bool = True) -> EstimateReport:
    """Estimate memory, decode tokens/s, prefill latency and ATC compile cost on targets.

    Args:
        config_or_dir: an HF model directory, a config.json path, a config dict or a ModelSpec.
            Only the config is read; no weights are needed.
        targets: target names (default: `default_targets()`, the data files with an `estimate_rank`).
        precision: "fp16", "w8a16", "w4a16" or "fp32" (see PRECISIONS).
        seq_len: context length the static KV cache holds (default: min(2048, max_position)).
        batch: sequences decoded together.
        prompt_len: tokens of the prefill step (default: seq_len, the largest prefill gear).
        efficiency: memory efficiency of the cost model (`ascend_adapt.cost_model`): one value for
            all targets, or {target or family: value}; default: the target data file's
            `memory_efficiency`, fitted on a published figure where one exists (`published.py`).
        prefill_efficiency: compute efficiency (fraction of the peak); default: the data file's
            `compute_efficiency`, else 0.40 (uncalibrated).
        group_size: the scale grouping the build uses (`group_size_for`): w8a16 None = one scale per
            output channel, G = per G input channels (convert --group-size G, which must divide every
            Linear's input features); w4a16 None = 128. Refused with fp16 / fp32.
        min_prompt: the smallest prefill gear in the ATC gear plan.
        compile_seconds_per_gear: ATC seconds per static graph (default: the ATC driver's placeholder).
        calibration: add each target's calibration statement (`published.calibration_statement`:
            the published figure its efficiency was fitted on, and the error on the others).

    Returns:
        EstimateReport.
    """
    spec, name = spec_for(config_or_dir)
    seq_len, prompt_len, batch = _lengths(spec, seq_len, prompt_len, batch)
    group_size = group_size_for(precision, group_size, spec)
    mem = memory_footprint(spec, precision, batch=batch, seq_len=seq_len, prompt_len=prompt_len,
                           group_size=group_size)
    w, kv, ws = mem.weights, mem.kv_cache_bytes, mem.workspace_bytes
    step_bytes = w.total - w.embedding + kv
    flops = prefill_flops(spec, batch, prompt_len, seq_len)
    run = _Run(spec, precision, batch, seq_len, prompt_len, mem, step_bytes, flops, efficiency,
               prefill_efficiency, group_size, min_prompt, compile_seconds_per_gear, calibration)
    out = [_target_estimate(run, tname) for tname in (targets or default_targets())]
    return EstimateReport(
        model=name, arch=spec.arch, params=spec.param_count(), precision=precision, seq_len=seq_len,
        batch=batch, prompt_len=prompt_len, weights_bytes=w.total, weights=w, kv_cache_bytes=kv,
        workspace_bytes=ws, total_bytes=w.total + kv + ws, decode_bytes_per_step=step_bytes,
        prefill_flops=flops, targets=out, formulas=_formulas(spec, w, batch, seq_len),
        assumptions=list(ASSUMPTIONS))


def _lengths(spec, seq_len: int | None, prompt_len: int | None, batch: int) -> tuple[int, int, int]:
    """seq_len (default min(2048, max_position)), prompt_len (default seq_len) and batch, checked."""
    seq_len = int(seq_len or min(2048, spec.max_position))
    prompt_len = int(prompt_len or seq_len)
    batch = int(batch)
    if seq_len < 1 or batch < 1 or prompt_len < 1:
        raise ConfigError(f"estimate: seq_len={seq_len}, batch={batch}, prompt_len={prompt_len} must be >= 1")
    if prompt_len > seq_len:
        raise ConfigError(f"estimate: prompt_len {prompt_len} exceeds seq_len {seq_len}",
                          "the static KV cache must hold the prompt; raise --seq-len")
    return seq_len, prompt_len, batch


@dataclass(frozen=True)
class _Run:
    """What one `estimate` call computes every target with: the model, the build and the options."""

    spec: Any
    precision: str
    batch: int
    seq_len: int
    prompt_len: int
    mem: MemoryFootprint
    step_bytes: int
    flops: float
    efficiency: Any
    prefill_efficiency: float | None
    group_size: int | None
    min_prompt: int
    compile_seconds_per_gear: float | None
    calibration: bool


def _target_estimate(run: _Run, tname: str) -> TargetEstimate:
    """The estimate on one target: the chips a layer split needs, the step times, the notes."""
    from .fit import chips_for_split

    fig = target_figures(tname)
    mem = run.mem
    # the chips a layer split (convert --chips N) needs, each chip checked with its own layers,
    # KV cache and end of the model (estimate/fit.py, the planner convert uses)
    chips = chips_for_split(run.spec, fig.name, precision=run.precision, kv_bytes=mem.kv_bytes,
                            act_bytes=mem.act_bytes, batch=run.batch, max_len=run.seq_len,
                            prompt_len=run.prompt_len, group_size=run.group_size)
    notes: list[str] = []
    timing = None
    if chips == 0:
        notes.append(f"the prefill workspace alone ({mem.workspace_bytes / 1e9:.2f} GB) exceeds a chip: "
                     "lower --seq-len/--batch")
        cards = card_chips = 0
        bound = dec = card_dec = prefill_ms = cap = eff = 0.0
        basis, pbound = "", "n/a"
    else:
        cards = math.ceil(chips / fig.chips_per_card)
        card_chips = cards * fig.chips_per_card
        timing = step_times(run.spec, tname, batch=run.batch, seq_len=run.seq_len, prompt_len=run.prompt_len,
                            precision=run.precision, chips=chips, card_chips=card_chips, efficiency=run.efficiency,
                            prefill_efficiency=run.prefill_efficiency, group_size=run.group_size,
                            step_bytes=run.step_bytes, flops=run.flops)
        eff, basis = timing.memory_efficiency, timing.efficiency_basis
        bound, dec, card_dec = (1e3 * run.batch / ms for ms in (timing.bound_ms, timing.decode_ms,
                                                                 timing.card_decode_ms))
        cap = 1e3 * run.batch / timing.launch_ms if timing.launch_ms else math.inf
        prefill_ms, pbound = timing.prefill_ms, timing.prefill_bound
        notes += _timing_notes(timing, fig, chips)
    notes += _figure_notes(fig, run.precision)
    cc, cnote = (None, None) if chips == 0 else _compile_cost(
        fig, mem.weights.total, run.min_prompt, run.seq_len, run.compile_seconds_per_gear)
    if cnote:
        notes.append(cnote)
    return TargetEstimate(
        target=fig.name, family=fig.family, toolchain=fig.toolchain, memory_bytes=fig.memory_bytes,
        usable_bytes=fig.usable_bytes, bandwidth_gbps=fig.bandwidth_gbps, fp16_tflops=fig.fp16_tflops,
        chips_per_card=fig.chips_per_card, needed_bytes=mem.total_bytes, fits_one_chip=chips == 1,
        chips_needed=chips, cards_needed=cards, decode_bound_tok_s=bound, efficiency=eff,
        efficiency_basis=basis, decode_tok_s=dec, launch_cap_tok_s=cap, card_chips=card_chips,
        card_decode_tok_s=card_dec, prefill_ms=prefill_ms, prefill_bound=pbound, compile=cc, notes=notes,
        confidence={k: fig.confidence.get(k, "?") for k in
                    ("memory_bytes", "memory_bandwidth_gbps", "fp16_tflops", "chips_per_card")},
        decode_ms=timing.decode_ms if timing else 0.0, transfer_ms=timing.transfer_ms if timing else 0.0,
        calibration=_calibration(fig.name) if (run.calibration and timing) else "")


def _timing_notes(timing: StepTimes, fig: TargetFigures, chips: int) -> list[str]:
    """Launch-bound steps, the hand-overs of a multi-chip split, the aggregate fallback."""
    notes = []
    if timing.launch_ms >= 0.5 * timing.decode_ms:
        notes.append(f"launch-bound: {timing.launches} kernels x {fig.launch_overhead_us:g} us = "
                     f"{timing.launch_ms:.2f} ms of the {timing.decode_ms:.2f} ms per step")
    if chips > 1:
        notes.append(f"needs {chips} chips: a layer split (convert --chips {chips}) runs them one after "
                     f"another, + {chips - 1} hand-over(s) of the hidden state per step "
                     f"({timing.handover_ms:.3f} ms); the card column is tensor parallel")
    if timing.fallback:
        notes.append(timing.fallback)
    return notes


def _figure_notes(fig: TargetFigures, precision: str) -> list[str]:
    """What the target's data says about this estimate: no weight-only kernels, unconfirmed figures."""
    notes = []
    # `weight_only_quant_kernels` is false only in the ATC targets' data (Ascend310 / 310B1), whose
    # source says ATC there has AMCT W8A8 only
    if precision != "fp16" and fig.weight_only_quant_kernels is False:
        notes.append("weight-only int8/int4 is a msModelSlim/MindIE scheme; ATC on this chip has AMCT "
                     "W8A8 only: the figure assumes a dequantizing kernel exists")
    weak = sorted(k for k in ("memory_bandwidth_gbps", "memory_bytes", "fp16_tflops")
                  if fig.confidence.get(k) == "M")
    if weak:
        notes.append(f"unconfirmed [M] figures: {', '.join(weak)}")
    return notes


def _formulas(spec, w: WeightBytes, batch: int, seq_len: int) -> dict[str, str]:
    return {
        "weights": w.scheme,
        "kv_cache": f"2 · layers · batch · seq_len · kv_dim · 2 B = 2·{spec.num_layers}·{batch}·{seq_len}·"
                    f"{spec.kv_dim}·2",
        "workspace": "2·B·T·(2H + q_dim + 2·kv_dim + 2I) + 6·B·heads·T·S + 4·B·vocab "
                     "(one layer's fp16 activations, fp16 scores + fp32 softmax, fp32 last logits)",
        "fits": "chips = the fewest N whose layer split (convert --chips N: contiguous layer ranges, embedding "
                "on the first chip, head on the last) fits every chip: its layers' weights + KV cache + the "
                "workspace ≤ usable (estimate.fit.chips_for_split); usable = the data file's usable "
                f"memory, else {DEFAULT_RESERVE:.0%} of the memory",
        "op_time": "max(FLOPs ÷ (peak · compute_eff), bytes ÷ (bandwidth · memory_eff)) + launch overhead, "
                   "per op of the graph convert builds (ascend_adapt.cost_model, shared with the simulator)",
        "decode_expected": "batch ÷ (Σ op times of a gear-1 step + host copies (ids, positions, mask up; "
                           "next_token, logits_sum down) at the PCIe figure + (chips − 1) hand-overs)",
        "decode_bound": "the same at 100 % memory and compute efficiency",
        "card": "tensor parallel over the card's chips: Σ op times ÷ chips + host copies + 2 ring "
                "all-reduces of the hidden state per layer",
        "prefill": "Σ op times of a gear-prompt_len step + host copies (the mask is B·T·(T+M)·4 bytes)",
    }


ASSUMPTIONS = (
    "figures are estimates from the target data files (confidence marks per target), not measurements",
    "the ops are those of convert's step graph (one node = one kernel, no fusion beyond the builder's): "
    "every weight and the whole static KV cache are read each step (ATC graphs are static)",
    "efficiencies: memory efficiency fitted on a published decode figure where one exists (see calibration); "
    "compute efficiency uncalibrated (no published prefill figure)",
    "hand-over between chips: device -> host -> device over PCIe (no direct chip link assumed)",
    "w8a16 / w4a16 compute in fp16 after dequantization: the fp16 peak applies; w8a16 costs the builder's "
    "quantized graph with each weight dequantization fused into its MatMul (WeightQuantBatchMatmulV2: the int8 "
    "weight + scales are read, no fp16 copy; sim.cost.weight_dequant_chains)",
)


# -------------------------------------------------------------------------------- formatting
def _gb(n: float) -> str:
    if abs(n) < 1e6:
        return f"{n / 1e3:.1f} kB"
    if abs(n) < 1e8:
        return f"{n / 1e6:.2f} MB"
    return f"{n / 1e9:.2f} GB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def _dur(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def format_report(r: EstimateReport) -> str:
    """A plain-text report: the model's footprint, one table row per target, then the notes."""
    w = r.weights
    lines = [
        f"estimate: {r.model} ({r.arch}, {_count(r.params)} params), {r.precision}, "
        f"batch {r.batch}, seq_len {r.seq_len}, prompt {r.prompt_len}",
        f"  weights    {_gb(r.weights_bytes)}"
        + (f"  (quantized {_gb(w.quantized)} + scales {_gb(w.scales)} = +{w.overhead_pct:.2f}%, "
           f"fp16 {_gb(w.fp16)})" if w.quantized else ""),
        f"             {w.scheme}",
        f"  kv cache   {_gb(r.kv_cache_bytes)}   {r.formulas['kv_cache']}",
        f"  workspace  {_gb(r.workspace_bytes)}   {r.formulas['workspace']}",
        f"  total      {_gb(r.total_bytes)};  bytes read per decode step {_gb(r.decode_bytes_per_step)};"
        f"  prefill {r.prefill_flops / 1e12:.1f} TFLOP",
        "",
    ]
    head = ["target", "usable/chip", "fits 1 chip", "chips (cards)", "bound tok/s", "eff",
            "expected tok/s", "card tok/s (TP)", "prefill ms", "ATC gears / compile"]
    rows = []
    for t in r.targets:
        cc = t.compile
        comp = f"{len(cc.prefill_gears)}+1 / {_dur(cc.seconds)}" if cc else "-"
        rows.append([
            t.target, _gb(t.usable_bytes), "yes" if t.fits_one_chip else "no",
            f"{t.chips_needed} ({t.cards_needed})" if t.chips_needed else "-",
            f"{t.decode_bound_tok_s:.1f}", f"{t.efficiency:.3f}", f"{t.decode_tok_s:.1f}",
            f"{t.card_decode_tok_s:.1f} ({t.card_chips} chips)" if t.card_chips else "-",
            (f"{t.prefill_ms:.0f}" if t.prefill_ms >= 10 else f"{t.prefill_ms:.2g}") + f" ({t.prefill_bound})"
            if t.chips_needed else "-", comp])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join("{:<%d}" % wd for wd in widths)
    lines.append(fmt.format(*head))
    lines.append(fmt.format(*["-" * wd for wd in widths]))
    lines += [fmt.format(*row) for row in rows]
    lines.append("")
    lines.append("memory efficiency (ascend_adapt.cost_model; target data files):")
    for t in r.targets:
        if t.chips_needed:
            lines.append(f"  {t.target}: {t.efficiency:.3f}, {t.efficiency_basis}")
    cal = [t.calibration for t in r.targets if t.calibration]
    if cal:
        lines.append("calibration (fitted on one published figure, checked on the others):")
        lines += [f"  {c}" for c in cal]
    notes = [(t.target, n) for t in r.targets for n in t.notes]
    if notes:
        lines.append("notes:")
        lines += [f"  {tg}: {n}" for tg, n in notes]
    lines.append("formulas:")
    lines += [f"  {k}: {v}" for k, v in r.formulas.items() if k not in ("weights", "kv_cache", "workspace")]
    cc = next((t.compile for t in r.targets if t.compile), None)
    if cc:
        lines.append(f"  atc compile: {cc.assumption}")
    lines.append("assumptions:")
    lines += [f"  - {a}" for a in r.assumptions]
    return "\n".join(lines)
