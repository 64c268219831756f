"""Published LLM decode figures on the targets: what the cost model's efficiencies are fitted
on, and what they are checked against.

The cost model (`ascend_adapt.cost_model`, shared by the simulator and `estimate`) times every op
of the graph `convert` builds as max(FLOPs ÷ (peak · compute_eff), bytes ÷ (bandwidth ·
memory_eff)) + launch, plus host copies and chip hand-overs. Decode is memory-bound, so the
*memory efficiency* decides the decode figure. It lives in the target data files
(`targets/data/<target>.json`, `memory_efficiency`), and is **fitted** here on one named
published measurement per target family (`CALIBRATION`): `fit_memory_efficiency(key)` solves
"estimate of that measurement's setting = its published tokens/s" by bisection. The data file
holds the fitted value rounded to 3 decimals (a test refits it). Every other published figure of
the family is a **check**: `calibration_statement(target)` prints the fit and the error on each
check, and `estimate`'s report carries it.

The figures are target data: each target file lists the measurements made on it under
`published_decode` (with the HF config they were measured with, from `targets/data/models/`),
and marks the one its family is fitted on with `"calibrates": true` (docs/targets.md). Today:

- Ascend310P (310P3, Atlas 300I Duo): fitted on LLaMA-13B fp16 on both chips of an Atlas 300I
  Duo, 6.32 tok/s (`Atlas300IDuo.json`; tensor parallel over the 2 chips, so the estimate's card
  column); checked against the llama.cpp CANN figure on 310P (`Ascend310P3.json`, 6–8 tok/s, a
  weak check: another model and an overhead-bound backend, see docs/ESTIMATES.md).
- Ascend910B: fitted on Llama-2-7B fp16 torch_npu eager, 16.6 tok/s; no other figure to check.
- Ascend310, Ascend310B, MLU370: no published LLM decode figure: the uncalibrated default
  (`cost_model.DEFAULT_MEMORY_EFFICIENCY`), said so in the report.

Compute efficiency (prefill) has no published figure anywhere: uncalibrated everywhere.
"""

from __future__ import annotations

from functools import lru_cache

from ascend_adapt.errors import ConfigError
from ascend_adapt.targets import PublishedFigure, load_target, published_figures

def calibration_table(figures: "tuple[PublishedFigure, ...]") -> dict[str, str]:
    """{target family: the key of the figure its memory efficiency is fitted on}; one per family."""
    out: dict[str, str] = {}
    for f in figures:
        if not f.used_for_calibration:
            continue
        family = load_target(f.target).family
        if family in out:
            raise ConfigError(f"two published figures calibrate the {family} family: '{out[family]}' and '{f.key}'",
                              "mark one of them \"calibrates\": false in its target file")
        out[family] = f.key
    return out


def published() -> tuple[PublishedFigure, ...]:
    """Every published figure of the registered targets (their files' `published_decode`)."""
    return published_figures()


def calibration() -> dict[str, str]:
    """{target family: the key of the published figure its memory efficiency is fitted on}."""
    return calibration_table(published())


# the HF configs the figures were measured with (targets/data/models/), by figure key
_CONFIGS = {"LLAMA2_7B": "910b-llama2-7b", "LLAMA1_13B": "duo-llama-13b"}


def __getattr__(name: str):
    """PUBLISHED, CALIBRATION, LLAMA2_7B, LLAMA1_13B: read from the target data when asked for
    (importing this module loads no target file)."""
    if name == "PUBLISHED":
        return published()
    if name == "CALIBRATION":
        return calibration()
    if name in _CONFIGS:
        return dict(figure(_CONFIGS[name]).config)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def figure(key: str) -> PublishedFigure:
    """The published figure `key` (a KeyError naming the known keys otherwise)."""
    figs = published()
    for f in figs:
        if f.key == key:
            return f
    raise KeyError(f"no published figure '{key}' (have {', '.join(f.key for f in figs)})")


def model_tok_s(fig: PublishedFigure, memory_efficiency: float | None = None) -> float:
    """The estimate of `fig`'s setting (its card column when it used every chip of a card), at
    `memory_efficiency` (default: the target data file's)."""
    from .core import estimate

    r = estimate(dict(fig.config), [fig.target], fig.precision, fig.seq_len, fig.batch, prompt_len=min(16, fig.seq_len),
                 efficiency=memory_efficiency, calibration=False)
    t = r.targets[0]
    return t.card_decode_tok_s if fig.chips == "card" else t.decode_tok_s


@lru_cache(maxsize=None)
def fit_memory_efficiency(key: str) -> float:
    """The memory efficiency at which the estimate of published figure `key` equals its tokens/s
    (the middle of a range), by bisection (the estimate grows with the efficiency)."""
    fig = figure(key)
    want = sum(fig.tok_s) / 2
    lo, hi = 1e-3, 1.0
    if model_tok_s(fig, hi) < want:
        return hi  # even the full bandwidth is slower than published: the model is missing something
    for _ in range(40):  # 2^-40 of the interval: far below the 3 decimals the data file keeps
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if model_tok_s(fig, mid) < want else (lo, mid)
    return (lo + hi) / 2


def error_pct(estimate_tok_s: float, fig: PublishedFigure) -> float:
    """(estimate − published) ÷ published in %, against the middle of a published range."""
    want = sum(fig.tok_s) / 2
    return 100.0 * (estimate_tok_s - want) / want


def _pct(x: float) -> str:
    return f"{round(x, 1) + 0.0:+.1f}%"  # + 0.0: a rounded -0.0 prints as +0.0


def _published_text(fig: PublishedFigure) -> str:
    lo, hi = fig.tok_s
    return f"{lo:g} tok/s" if lo == hi else f"{lo:g}–{hi:g} tok/s"


@lru_cache(maxsize=None)
def calibration_statement(target: str) -> str:
    """Which published figure `target`'s memory efficiency was fitted on, the estimate there, and
    the estimate's error on every published figure of its family it was not fitted on."""
    from ascend_adapt.cost_model import CostFigures

    t = load_target(target)
    eff = CostFigures.of(t).memory_efficiency
    figs = published()
    key = calibration_table(figs).get(t.family)
    if key is None:
        return (f"{t.name}: memory efficiency {eff:.3f} is an uncalibrated default: no published LLM decode "
                f"figure for the {t.family} family")
    fit = figure(key)
    got = model_tok_s(fit)
    parts = [f"{t.name}: memory efficiency {eff:.3f} calibrated on '{fit.key}' ({fit.model}, {fit.target}"
             f"{', all chips of the card' if fit.chips == 'card' else ''}, {_published_text(fit)}; {fit.source}): "
             f"estimate {got:.2f} tok/s, error {_pct(error_pct(got, fit))} (the fit, rounded)"]
    checks = [f for f in figs if f.key != key and load_target(f.target).family == t.family]
    if not checks:
        parts.append("no other published figure of this family to check it against")
    for f in checks:
        est = model_tok_s(f)
        lo, hi = f.tok_s
        inside = " (inside the published range)" if lo <= est <= hi else ""
        parts.append(f"not fitted on '{f.key}' ({f.model}, {f.target}, {_published_text(f)}): estimate "
                     f"{est:.2f} tok/s, error {_pct(error_pct(est, f))}{inside}")
    return "; ".join(parts)
