"""Does a model fit the target's memory as `convert` would build it? Answered from config.json in
milliseconds, before any weight is written.

The bytes come from `core.memory_footprint` (the one formula `estimate` uses too), with the
dtypes and the graph layout that `convert` is about to build:

    weights    = Σ tensors × bytes of the dtype the card stores (fp16 under force_fp16, …; int8
                 Linears under --quantize + their fp16 scales: one per output channel, or with
                 --group-size G one per G input channels of each row, `group_size`)
                 × copies (1 for the step-graph layout's one OM, 2 for prefill + decode OMs)
    kv cache   = 2 · layers · B · M · kv_dim · bytes of the compute dtype
    workspace  = activations of the largest prefill gear over the M-slot cache
    fits       ⇔ weights + kv cache + workspace ≤ the target's usable memory per chip

A refusal names the figures and what would fit: the targets with a large enough chip, the
largest context M that fits this chip, int8 weight quantization (W8A16 with per-channel scales:
the figure is given so the gap is known; for a build already int8 with --group-size G, its
per-channel scales instead), and `--chips N`, the fewest chips of this target a pipeline split holds.

**Multi-chip split** (`convert --chips N`, `check_split_fit`): the layers are cut into N
contiguous ranges, one stage graph (one OM) per chip; chip 0 also holds the embedding, the last
chip the final norm and the head (a tied embedding/head matrix is on both). Each chip holds only
its layers' weights and KV cache, so per chip:

    weights_c   = layers_c × bytes per layer + (embedding on chip 0) + (final norm + head on the last)
                  × copies (the two-graph layout: the stage's prefill and decode OMs each hold them)
    kv cache_c  = 2 · layers_c · B · M · kv_dim · bytes of the compute dtype
    workspace_c = the same largest-prefill activations as one chip (one layer's tensors at a
                  time), less the fp32 logits on every chip but the last
    fits        ⇔ every chip's weights_c + kv cache_c + workspace_c ≤ the usable memory per chip

`partition_layers` chooses the ranges that make the largest chip smallest (so the chips holding
the embedding and the head get fewer layers); `chips_for_split` is the smallest N that fits.

    >>> fc = check_fit(spec, "Ascend310", weight_bytes_per_elem=2, compute_bytes=2, batch=1,
    ...                max_len=2048, prompt_len=512)
    >>> fc.fits, fc.max_len_that_fits
    (False, None)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ascend_adapt.errors import ConfigError, UnsupportedError

from .core import MemoryFootprint, group_size_for, memory_footprint, target_figures, tensor_bytes, workspace_bytes

# weight bytes per element -> the precision key of core.PRECISIONS
_PRECISION_OF_BYTES = {4: "fp32", 2: "fp16", 1: "w8a16"}  # 1: int8 Linears (--quantize)


class ModelDoesNotFitError(UnsupportedError):
    """The model, as it would be built, needs more device memory than one chip of the target has."""


def _gib(n: float) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


@dataclass
class FitCheck:
    """The fit of one build on one target (bytes per chip).

    Attributes:
        target: target name. usable_bytes: its usable memory per chip.
        footprint: the `MemoryFootprint` of the build.
        batch, max_len, prompt_len: B, M (KV slots) and the largest prefill step.
        weight_dtype / compute_dtype: what the card stores the weights in / computes and caches in.
        layout: "step" (one OM) or "two-graph" (prefill + decode OMs).
        max_len_that_fits: the largest M (≥ prompt_len) that fits this chip with everything else
            unchanged, or None when none does.
        targets_that_fit: other targets (same toolchain) on which the build fits one chip.
        int8_total_bytes / int8_fits: the same build with w8a16 weights (int8 Linear weights) and
            per-output-channel scales (convert's default; for a grouped int8 build: without --group-size).
        one_graph_total_bytes: for the two-graph layout, the total with the weights held once.
        group_size: the w8a16 scale grouping priced (None: per output channel; int8 weights only).
        chips_needed: the fewest chips of this target a pipeline split (`convert --chips N`)
            fits on (0: none up to one layer per chip does).
    """

    target: str
    usable_bytes: int
    footprint: MemoryFootprint
    batch: int
    max_len: int
    prompt_len: int
    weight_dtype: str
    compute_dtype: str
    layout: str
    max_len_that_fits: int | None = None
    targets_that_fit: list[str] = field(default_factory=list)
    int8_total_bytes: int = 0
    int8_fits: bool = False
    one_graph_total_bytes: int | None = None
    chips_needed: int = 1
    group_size: int | None = None

    @property
    def needed_bytes(self) -> int:
        return self.footprint.total_bytes

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.usable_bytes

    def summary(self) -> str:
        f = self.footprint
        copies = f" × {f.weight_copies} copies ({self.layout} layout)" if f.weight_copies > 1 else ""
        return (f"needs {_gib(self.needed_bytes)} per chip: weights {_gib(f.weights.total)} "
                f"{_weight_text(self.weight_dtype, self.group_size)}{copies}"
                f" + KV cache {_gib(f.kv_cache_bytes)} ({self.compute_dtype}, B={self.batch} × M={self.max_len})"
                f" + workspace {_gib(f.workspace_bytes)} (prefill of {self.prompt_len}); {self.target} has "
                f"{_gib(self.usable_bytes)} usable per chip")

    def options(self) -> list[str]:
        """What would fit, one line each (empty when it fits)."""
        if self.fits:
            return []
        out = []
        if self.one_graph_total_bytes is not None and self.one_graph_total_bytes <= self.usable_bytes:
            out.append(f"the one-graph layout (--layout step, the default: one OM holding the weights once) "
                       f"needs {_gib(self.one_graph_total_bytes)}")
        if self.max_len_that_fits is not None:
            out.append(f"fewer context slots: --max-len {self.max_len_that_fits} or less fits {self.target}")
        if self.targets_that_fit:
            out.append(f"a larger chip: --soc {' / '.join(self.targets_that_fit)}")
        if self.chips_needed > 1:
            out.append(f"split the layers over {self.chips_needed} chips: --chips {self.chips_needed} (one OM per "
                       f"chip, each holding its layers' weights and KV cache; a 300I Duo card carries 2 "
                       f"Ascend310P3 chips, an Atlas 300I 4 Ascend310)")
        verdict = "fits" if self.int8_fits else "still too much"
        if self.weight_dtype != "int8":
            out.append(f"int8 weight quantization (W8A16: int8 Linear weights, per-channel fp16 scales, fp16 "
                       f"activations) needs {_gib(self.int8_total_bytes)} on one chip ({verdict})")
        elif self.group_size and self.int8_total_bytes < self.needed_bytes:
            out.append(f"per-channel scales (drop --group-size {self.group_size}) need "
                       f"{_gib(self.int8_total_bytes)} on one chip ({verdict})")
        return out

    def to_dict(self) -> dict:
        f = self.footprint
        return {"target": self.target, "fits": self.fits, "needed_bytes": self.needed_bytes,
                "usable_bytes": self.usable_bytes, "weights_bytes": f.weights_bytes,
                "weight_copies": f.weight_copies, "kv_cache_bytes": f.kv_cache_bytes,
                "workspace_bytes": f.workspace_bytes, "weight_dtype": self.weight_dtype,
                "compute_dtype": self.compute_dtype, "layout": self.layout, "batch": self.batch,
                "max_len": self.max_len, "prompt_len": self.prompt_len,
                "max_len_that_fits": self.max_len_that_fits, "targets_that_fit": self.targets_that_fit,
                "int8_total_bytes": self.int8_total_bytes, "chips_needed": self.chips_needed,
                "group_size": self.group_size}

    def error(self, model: str) -> ModelDoesNotFitError:
        """The refusal to raise (nothing written yet)."""
        return ModelDoesNotFitError(f"{model} does not fit {self.target}: {self.summary()}",
                                    "what would fit: " + "; ".join(self.options()))


def _dtype_name(nbytes: int) -> str:
    return {4: "fp32", 2: "fp16", 1: "int8"}.get(nbytes, f"{nbytes}-byte")


def _weight_text(weight_dtype: str, group_size: int | None) -> str:
    """"fp16", or for int8 which scales were priced."""
    if weight_dtype != "int8":
        return weight_dtype
    return "int8 (fp16 scales " + (f"per {group_size} input channels)" if group_size else "per output channel)")


def check_fit(spec, target, *, weight_bytes_per_elem: int, compute_bytes: int, batch: int, max_len: int,
              prompt_len: int, weight_copies: int = 1, layout: str = "step",
              alternatives: bool = True, group_size: int | None = None) -> FitCheck:
    """The memory fit of a build of `spec` on `target` (see the module docstring).

    Args:
        spec: the ModelSpec (from config.json; no weights are read).
        target: target name (or a Target).
        weight_bytes_per_elem: bytes per weight element the card stores (2 fp16, 4 fp32).
        compute_bytes: bytes per activation / KV-cache element (2 fp16, 4 fp32).
        batch, max_len, prompt_len: B, the KV slots M, and the largest prefill step.
        weight_copies: 1 (step graph: one OM) or 2 (a prefill OM and a decode OM).
        layout: "step" or "two-graph" (for the messages).
        alternatives: also work out what would fit (max_len, targets, int8, chips).
        group_size: int8 weights (1 byte): the build's w8a16 scale grouping (convert --group-size G:
            one fp16 scale per G input channels of each row; None: per output channel). Refused
            with fp16 / fp32 weights (no scales).

    Returns:
        FitCheck.
    """
    fig = target_figures(target)
    precision = _precision_of(weight_bytes_per_elem)
    group_size = group_size_for(precision, group_size, spec)

    def footprint(m: int, precision: str = precision, copies: int = weight_copies,
                  group: int | None = group_size) -> MemoryFootprint:
        return memory_footprint(spec, precision, batch=batch, seq_len=m, prompt_len=min(prompt_len, m),
                                kv_bytes=compute_bytes, act_bytes=compute_bytes, weight_copies=copies,
                                group_size=group)

    fc = FitCheck(fig.name, fig.usable_bytes, footprint(max_len), batch, max_len, prompt_len,
                  _dtype_name(weight_bytes_per_elem), _dtype_name(compute_bytes), layout, group_size=group_size)
    if fc.fits or not alternatives:
        return fc
    usable = fig.usable_bytes
    # the largest M ≥ prompt_len that fits (the footprint grows with M): bisection
    lo, hi = prompt_len, max_len
    if footprint(lo).total_bytes <= usable:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if footprint(mid).total_bytes <= usable else (lo, mid)
        fc.max_len_that_fits = lo
    from ascend_adapt.targets import list_targets

    for other in list_targets():
        if other == fig.name:
            continue
        try:
            of = target_figures(other)
        except Exception:  # noqa: BLE001 - a broken data file must not hide the refusal
            continue
        if of.toolchain == fig.toolchain and fc.needed_bytes <= of.usable_bytes:
            fc.targets_that_fit.append(of.name)
    q = footprint(max_len, "w8a16", group=None)  # convert's default int8 scales: per output channel
    fc.int8_total_bytes, fc.int8_fits = q.total_bytes, q.total_bytes <= usable
    if weight_copies > 1:
        fc.one_graph_total_bytes = footprint(max_len, precision, 1).total_bytes
    fc.chips_needed = chips_for_split(spec, fig.name, precision=precision, kv_bytes=compute_bytes,
                                      act_bytes=compute_bytes, batch=batch, max_len=max_len,
                                      prompt_len=prompt_len, weight_copies=weight_copies, group_size=group_size)
    return fc


def _precision_of(weight_bytes_per_elem: int) -> str:
    try:
        return _PRECISION_OF_BYTES[weight_bytes_per_elem]
    except KeyError:
        raise ConfigError(f"weight_bytes_per_elem={weight_bytes_per_elem!r}: the card stores weights in 4 (fp32), "
                          "2 (fp16) or 1 (int8) bytes", "pass 4, 2 or 1") from None


# ---------------------------------------------------------------------------- multi-chip split
_HEAD_TENSORS = ("final_norm.", "lm_head.")


def stage_tensors(spec, first: bool, last: bool) -> list[str]:
    """The non-layer tensors a stage holds: the embedding on the first chip, the final norm and
    the head on the last (a tied embedding / head matrix on both)."""
    names = list(spec.canonical_shapes())
    if spec.tie_word_embeddings:
        drop = "embed.weight" if spec.tied_source == "lm_head.weight" else "lm_head.weight"
        names = [n for n in names if n != drop]
    out = []
    for n in names:
        if n.startswith("layers."):
            continue
        is_head = n.startswith(_HEAD_TENSORS)
        tied = spec.tie_word_embeddings and n == spec.tied_source
        if (first and (not is_head or tied)) or (last and (is_head or tied)):
            out.append(n)
    return out


def split_weight_bytes(spec, precision: str, layers: tuple[int, int], first: bool, last: bool,
                       group_size: int | None = None) -> int:
    """Weight bytes of one stage (one copy): its layers + its non-layer tensors (`stage_tensors`),
    each tensor at `core.tensor_bytes` (an int8 Linear with its scales, `group_size` as there; a
    quantized untied head on the last chip at its int8 size)."""
    per = tensor_bytes(spec, precision, group_size)
    a, b = layers
    # every layer holds the same tensors (ModelSpec.canonical_shapes): the layers' bytes divide exactly
    per_layer = sum(n_b for n, n_b in per.items() if n.startswith("layers.")) // spec.num_layers
    return (b - a) * per_layer + sum(per[n] for n in stage_tensors(spec, first, last))


@dataclass
class ChipFit:
    """One chip of a split: its stage (layers [a, b)) and its bytes.

    Attributes:
        chip: index in the pipeline (0 = the embedding's chip). device_id: the NPU it runs on.
        layers: (a, b), the layers [a, b) it holds. embed / head: it holds the embedding / the head.
        weights_bytes (× copies), kv_cache_bytes, workspace_bytes; usable_bytes of the chip.
    """

    chip: int
    device_id: int
    layers: tuple[int, int]
    embed: bool
    head: bool
    weights_bytes: int
    kv_cache_bytes: int
    workspace_bytes: int
    usable_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.workspace_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.usable_bytes

    def name(self) -> str:
        a, b = self.layers
        parts = [f"layers {a}-{b - 1}"] + (["embedding"] if self.embed else []) + (["head"] if self.head else [])
        return f"chip {self.chip} (device {self.device_id}: {', '.join(parts)})"

    def summary(self) -> str:
        return (f"{self.name()} needs {_gib(self.total_bytes)}: weights {_gib(self.weights_bytes)} + KV cache "
                f"{_gib(self.kv_cache_bytes)} + workspace {_gib(self.workspace_bytes)}")

    def to_dict(self) -> dict:
        return {"chip": self.chip, "device_id": self.device_id, "layers": list(self.layers), "embed": self.embed,
                "head": self.head, "weights_bytes": self.weights_bytes, "kv_cache_bytes": self.kv_cache_bytes,
                "workspace_bytes": self.workspace_bytes, "needed_bytes": self.total_bytes,
                "usable_bytes": self.usable_bytes, "fits": self.fits}


def _chip_bytes(spec, precision: str, layers, first: bool, last: bool, *, kv_bytes: int, act_bytes: int,
                batch: int, max_len: int, prompt_len: int, weight_copies: int,
                group_size: int | None = None) -> tuple[int, int, int]:
    """(weights × copies, KV cache, workspace) of one stage."""
    a, b = layers
    w = split_weight_bytes(spec, precision, layers, first, last, group_size) * int(weight_copies)
    kv = 2 * (b - a) * batch * max_len * spec.kv_dim * kv_bytes
    ws = workspace_bytes(spec, batch, min(prompt_len, max_len), max_len, act_bytes)
    if not last:
        ws -= 4 * batch * spec.vocab_size  # no logits on this chip
    return w, kv, ws


def partition_layers(spec, chips: int, *, precision: str = "fp16", kv_bytes: int = 2, act_bytes: int = 2,
                     batch: int = 1, max_len: int = 2048, prompt_len: int = 512,
                     weight_copies: int = 1, group_size: int | None = None) -> list[tuple[int, int]]:
    """N contiguous layer ranges [a, b) covering every layer, each ≥ 1 layer, that make the largest
    chip (weights + KV + workspace) smallest: the chips holding the embedding / the head get fewer
    layers when those weigh more than a layer's share.

    Raises:
        ConfigError: `chips` < 1 or more than the model's layers.
    """
    L = spec.num_layers
    if isinstance(chips, bool) or not isinstance(chips, int) or chips < 1:
        raise ConfigError(f"--chips {chips!r}: the number of chips must be a positive integer",
                          "pass --chips 1 (one chip, the default) or the chips of the card, e.g. --chips 2")
    if chips > L:
        raise ConfigError(f"--chips {chips}: the model has {L} layers, a split needs at least one layer per chip",
                          f"use --chips {L} or fewer")
    kw = dict(kv_bytes=kv_bytes, act_bytes=act_bytes, batch=batch, max_len=max_len, prompt_len=prompt_len,
              weight_copies=weight_copies, group_size=group_size)
    # bytes of chip i with c layers = c · per_layer + extra_i (layer-independent part)
    extra, per_layer = [], 0
    for i in range(chips):
        first, last = i == 0, i == chips - 1
        w0, kv0, ws0 = _chip_bytes(spec, precision, (0, 0), first, last, **kw)
        w1, kv1, ws1 = _chip_bytes(spec, precision, (0, 1), first, last, **kw)
        extra.append(w0 + kv0 + ws0)
        per_layer = (w1 + kv1) - (w0 + kv0)
    per_layer = max(per_layer, 1)

    def counts(cap: int) -> list[int]:
        return [min(L, (cap - e) // per_layer) for e in extra]

    lo, hi = max(extra) + per_layer, max(extra) + L * per_layer  # hi always feasible
    while lo < hi:  # the smallest cap at which every chip takes ≥ 1 layer and all L are placed
        mid = (lo + hi) // 2
        c = counts(mid)
        lo, hi = (lo, mid) if min(c) >= 1 and sum(c) >= L else (mid + 1, hi)
    c = counts(lo)
    while sum(c) > L:  # give back the surplus from the fullest chip (the first one among equals)
        i = max((j for j in range(chips) if c[j] > 1), key=lambda j: (c[j] * per_layer + extra[j], -j))
        c[i] -= 1
    ranges, a = [], 0
    for n in c:
        ranges.append((a, a + n))
        a += n
    return ranges


def parse_device_ids(device_ids, chips: int) -> list[int]:
    """The NPU of each chip: `device_ids` ("0,1", a list, or None for 0..N-1), one per chip.

    Raises:
        ConfigError: a count that is not `chips`, a negative or repeated id, or a non-integer.
    """
    if device_ids is None or device_ids == "":
        return list(range(chips))
    items = device_ids.split(",") if isinstance(device_ids, str) else list(device_ids)
    try:
        ids = [int(str(x).strip()) for x in items]
    except ValueError:
        raise ConfigError(f"--device-ids {device_ids!r}: device ids are non-negative integers, comma-separated",
                          "e.g. --device-ids 0,1") from None
    if len(ids) != chips:
        raise ConfigError(f"--device-ids {','.join(map(str, ids))} names {len(ids)} device(s) for --chips {chips}",
                          f"give one device id per chip ({chips}), or drop --device-ids for 0..{chips - 1}")
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"--device-ids {','.join(map(str, ids))}: ids must be non-negative and distinct",
                          "each chip of the split is its own device, e.g. --device-ids 0,1")
    return ids


@dataclass
class SplitFit:
    """The fit of a split build: one `ChipFit` per chip (bytes per chip)."""

    target: str
    usable_bytes: int
    chips: list[ChipFit]
    batch: int
    max_len: int
    prompt_len: int
    weight_dtype: str
    compute_dtype: str
    layout: str
    chips_needed: int = 0
    group_size: int | None = None

    @property
    def fits(self) -> bool:
        return all(c.fits for c in self.chips)

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return [c.layers for c in self.chips]

    @property
    def device_ids(self) -> list[int]:
        return [c.device_id for c in self.chips]

    def summary(self) -> str:
        worst = max(self.chips, key=lambda c: c.total_bytes)
        return (f"split over {len(self.chips)} {self.target} chips ({_weight_text(self.weight_dtype, self.group_size)} "
                f"weights, {self.compute_dtype} "
                f"KV cache B={self.batch} × M={self.max_len}, prefill of {self.prompt_len}): "
                + "; ".join(f"chip {c.chip} layers {c.layers[0]}-{c.layers[1] - 1} {_gib(c.total_bytes)}"
                            for c in self.chips)
                + f" (largest {_gib(worst.total_bytes)} of {_gib(self.usable_bytes)} usable per chip)")

    def to_dict(self) -> dict:
        return {"target": self.target, "fits": self.fits, "chips": len(self.chips), "usable_bytes": self.usable_bytes,
                "per_chip": [c.to_dict() for c in self.chips], "batch": self.batch, "max_len": self.max_len,
                "prompt_len": self.prompt_len, "weight_dtype": self.weight_dtype,
                "compute_dtype": self.compute_dtype, "layout": self.layout, "chips_needed": self.chips_needed,
                "needed_bytes": max(c.total_bytes for c in self.chips), "group_size": self.group_size}

    def error(self, model: str) -> ModelDoesNotFitError:
        bad = [c for c in self.chips if not c.fits]
        more = (f"--chips {self.chips_needed} fits every chip" if self.chips_needed > len(self.chips) else
                "no split up to one layer per chip fits: shorten --max-len / --seq-len or use a larger chip")
        return ModelDoesNotFitError(
            f"{model} split over {len(self.chips)} chips does not fit {self.target}: "
            + "; ".join(f"{c.summary()}, {self.target} has {_gib(c.usable_bytes)} usable" for c in bad),
            f"what would fit: {more}; or fewer context slots (--max-len)"
            + (", or int8 weight quantization (W8A16)" if self.weight_dtype != "int8" else
               f", or per-channel scales (drop --group-size {self.group_size})" if self.group_size else ""))


def check_split_fit(spec, target, chips: int, device_ids=None, *, weight_bytes_per_elem: int, compute_bytes: int,
                    batch: int, max_len: int, prompt_len: int, weight_copies: int = 1, layout: str = "step",
                    ranges: list[tuple[int, int]] | None = None, group_size: int | None = None) -> SplitFit:
    """Per-chip fit of `spec` split over `chips` chips of `target` (see the module docstring).

    Args:
        chips: N ≥ 1 (≤ the layers). device_ids: one NPU per chip (default 0..N-1).
        ranges: the layer ranges (default `partition_layers`).
        other args (group_size: the int8 build's scale grouping): as `check_fit`.
    """
    fig = target_figures(target)
    precision = _precision_of(weight_bytes_per_elem)
    group_size = group_size_for(precision, group_size, spec)
    kw = dict(kv_bytes=compute_bytes, act_bytes=compute_bytes, batch=batch, max_len=max_len, prompt_len=prompt_len,
              weight_copies=weight_copies, group_size=group_size)
    ranges = ranges or partition_layers(spec, chips, precision=precision, **kw)
    ids = parse_device_ids(device_ids, chips)
    out = []
    for i, (r, dev) in enumerate(zip(ranges, ids)):
        first, last = i == 0, i == chips - 1
        w, kv, ws = _chip_bytes(spec, precision, r, first, last, **kw)
        out.append(ChipFit(i, dev, tuple(r), first, last, w, kv, ws, fig.usable_bytes))
    sf = SplitFit(fig.name, fig.usable_bytes, out, batch, max_len, prompt_len, _dtype_name(weight_bytes_per_elem),
                  _dtype_name(compute_bytes), layout, group_size=group_size)
    sf.chips_needed = chips if sf.fits else chips_for_split(spec, fig.name, precision=precision, **kw)
    return sf


def chips_for_split(spec, target, *, precision: str = "fp16", kv_bytes: int = 2, act_bytes: int = 2, batch: int = 1,
                    max_len: int = 2048, prompt_len: int = 512, weight_copies: int = 1,
                    group_size: int | None = None) -> int:
    """The fewest chips of `target` a pipeline split (`convert --chips N`) of `spec` fits on, every
    chip checked with `partition_layers`' ranges; 0 when even one layer per chip does not fit.
    `group_size`: the scale grouping of a quantized precision (`core.group_size_for`)."""
    usable = target_figures(target).usable_bytes
    group_size = group_size_for(precision, group_size, spec)
    kw = dict(kv_bytes=kv_bytes, act_bytes=act_bytes, batch=batch, max_len=max_len, prompt_len=prompt_len,
              weight_copies=weight_copies, group_size=group_size)
    for n in range(1, spec.num_layers + 1):
        ranges = partition_layers(spec, n, precision=precision, **kw)
        if all(sum(_chip_bytes(spec, precision, r, i == 0, i == n - 1, **kw)) <= usable
               for i, r in enumerate(ranges)):
            return n
    return 0
