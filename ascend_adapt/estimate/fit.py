"""Does a model fit the target's memory as `convert` would build it? Answered from config.json in
milliseconds, before any weight is written.

The bytes come from `core.memory_footprint` (the one formula `estimate` uses too), with the
dtypes and the graph layout that `convert` is about to build:

    weights    = Σ tensors × bytes of the dtype the card stores (fp16 under force_fp16, …)
                 × copies (1 for the step-graph layout's one OM, 2 for prefill + decode OMs)
    kv cache   = 2 · layers · B · M · kv_dim · bytes of the compute dtype
    workspace  = activations of the largest prefill gear over the M-slot cache
    fits       ⇔ weights + kv cache + workspace ≤ the target's usable memory per chip

A refusal names the figures and what would fit: the targets with a large enough chip, the
largest context M that fits this chip, int8 weights (not produced by this version: the figure is
given so the gap is known), and the number of chips a tensor-parallel split would need (not
produced by this version either).

    >>> fc = check_fit(spec, "Ascend310", weight_bytes_per_elem=2, compute_bytes=2, batch=1,
    ...                max_len=2048, prompt_len=512)
    >>> fc.fits, fc.max_len_that_fits
    (False, None)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ascend_adapt.errors import UnsupportedError

from .core import MemoryFootprint, memory_footprint, target_figures

# weight bytes per element -> the precision key of core.PRECISIONS
_PRECISION_OF_BYTES = {4: "fp32", 2: "fp16"}


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
        int8_total_bytes / int8_fits: the same build with w8a16 weights (int8 Linear weights).
        one_graph_total_bytes: for the two-graph layout, the total with the weights held once.
        chips_needed: chips a tensor-parallel split would need (0: the workspace alone is too big).
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

    @property
    def needed_bytes(self) -> int:
        return self.footprint.total_bytes

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.usable_bytes

    def summary(self) -> str:
        f = self.footprint
        copies = f" × {f.weight_copies} copies ({self.layout} layout)" if f.weight_copies > 1 else ""
        return (f"needs {_gib(self.needed_bytes)} per chip: weights {_gib(f.weights.total)} {self.weight_dtype}{copies}"
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
        out.append(f"int8 weights would need {_gib(self.int8_total_bytes)} "
                   f"({'fits' if self.int8_fits else 'still too much'}), but this version does not quantize yet")
        if self.chips_needed > 1:
            out.append(f"{self.chips_needed} chips (tensor-parallel split) would hold it, but this version builds "
                       "for one chip only")
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
                "int8_total_bytes": self.int8_total_bytes, "chips_needed": self.chips_needed}

    def error(self, model: str) -> ModelDoesNotFitError:
        """The refusal to raise (nothing written yet)."""
        return ModelDoesNotFitError(f"{model} does not fit {self.target}: {self.summary()}",
                                    "what would fit: " + "; ".join(self.options()))


def _dtype_name(nbytes: int) -> str:
    return {4: "fp32", 2: "fp16"}.get(nbytes, f"{nbytes}-byte")


def check_fit(spec, target, *, weight_bytes_per_elem: int, compute_bytes: int, batch: int, max_len: int,
              prompt_len: int, weight_copies: int = 1, layout: str = "step",
              alternatives: bool = True) -> FitCheck:
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

    Returns:
        FitCheck.
    """
    name = getattr(target, "name", target)
    fig = target_figures(name)
    precision = _PRECISION_OF_BYTES[weight_bytes_per_elem]

    def footprint(m: int, precision: str = precision, copies: int = weight_copies) -> MemoryFootprint:
        return memory_footprint(spec, precision, batch=batch, seq_len=m, prompt_len=min(prompt_len, m),
                                kv_bytes=compute_bytes, act_bytes=compute_bytes, weight_copies=copies)

    fc = FitCheck(fig.name, fig.usable_bytes, footprint(max_len), batch, max_len, prompt_len,
                  _dtype_name(weight_bytes_per_elem), _dtype_name(compute_bytes), layout)
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
    q = footprint(max_len, "w8a16")
    fc.int8_total_bytes, fc.int8_fits = q.total_bytes, q.total_bytes <= usable
    if weight_copies > 1:
        fc.one_graph_total_bytes = footprint(max_len, precision, 1).total_bytes
    fc.chips_needed = fc.footprint.chips_needed(usable)
    return fc
