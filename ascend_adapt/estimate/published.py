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

- Ascend310P (310P3, Atlas 300I Duo): fitted on LLaMA-13B fp16 on both chips of an Atlas 300I
  Duo, 6.32 tok/s (tensor parallel over the 2 chips, so the estimate's card column); checked
  against the llama.cpp CANN figure on 310P (6–8 tok/s, a weak check: another model and an
  overhead-bound backend, see docs/ESTIMATES.md).
- Ascend910B: fitted on Llama-2-7B fp16 torch_npu eager, 16.6 tok/s; no other figure to check.
- Ascend310, Ascend310B, MLU370: no published LLM decode figure: the uncalibrated default
  (`cost_model.DEFAULT_MEMORY_EFFICIENCY`), said so in the report.

Compute efficiency (prefill) has no published figure anywhere: uncalibrated everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

# target family -> the PUBLISHED key its memory efficiency is fitted on
CALIBRATION: dict[str, str] = {
    "Ascend310P": "duo-llama-13b",
    "Ascend910B": "910b-llama2-7b",
}


@dataclass(frozen=True)
class PublishedFigure:
    """One public decode measurement and the estimate settings that match it.

    Attributes:
        key: short id.
        model: what was measured.
        config: the HF config (as in model_architectures.md §3.3) to estimate it with.
        target: target profile name.
        precision: "fp16" / "w8a16" / "w4a16".
        seq_len: context the decode runs at (prompt + generated).
        batch: batch size.
        chips: "card" when the measurement used every chip of a card, else "min".
        tok_s: (low, high) measured tokens/s (low == high for a single figure).
        stack: the software stack measured.
        source: where the figure was published.
        note: what differs from our setting.
        used_for_calibration: whether a memory efficiency is fitted on it (`CALIBRATION`).
    """

    key: str
    model: str
    config: dict
    target: str
    precision: str
    seq_len: int
    batch: int
    chips: str
    tok_s: tuple[float, float]
    stack: str
    source: str
    note: str
    used_for_calibration: bool


def llama_config(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                 max_position: int = 4096) -> dict:
    """An HF Llama config.json with the common Llama-2 values (model_architectures.md §3.3)."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "hidden_act": "silu",
        "max_position_embeddings": max_position, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
        "vocab_size": 32000, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
        "torch_dtype": "float16",
    }


LLAMA2_7B = llama_config(4096, 11008, 32, 32, 32)
LLAMA2_13B = llama_config(5120, 13824, 40, 40, 40)
LLAMA1_13B = llama_config(5120, 13824, 40, 40, 40, max_position=2048)

PUBLISHED: tuple[PublishedFigure, ...] = (
    PublishedFigure(
        key="910b-llama2-7b", model="Llama-2-7B fp16", config=LLAMA2_7B, target="Ascend910B",
        precision="fp16", seq_len=256, batch=1, chips="min", tok_s=(16.6, 16.6),
        stack="torch_npu 2.1 eager (HF transformers), CANN 8.0.RC1, one 910B",
        source="https://github.com/sgl-project/sglang/issues/13072 (100 tokens in 6012 ms)",
        note="eager PyTorch dispatches ~1000+ small ops per token from the host; a sunk graph "
             "(OM / MindSpore graph mode / MindIE) is expected to be faster",
        used_for_calibration=True),
    PublishedFigure(
        key="duo-llama-13b", model="LLaMA-13B fp16", config=LLAMA1_13B, target="Atlas300IDuo",
        precision="fp16", seq_len=2048, batch=1, chips="card", tok_s=(6.32, 6.32),
        stack="PytorchAdapter 1.11 + Ascend acceleration library, CANN 7.0.T3, weights split over "
              "both chips of one Atlas 300I Duo",
        source="Ascend ModelZoo 'LLaMA-13B模型-推理指导' README (Duo双芯, 1 x 1024 in, 1024 out)",
        note="tensor-parallel over the card's 2 chips, so compared with the card figure",
        used_for_calibration=True),
    PublishedFigure(
        key="310p-llamacpp", model="Llama-2-7B fp16 (cross-check)", config=LLAMA2_7B, target="Ascend310P3",
        precision="fp16", seq_len=512, batch=1, chips="min", tok_s=(6.0, 8.0),
        stack="llama.cpp CANN backend, CANN 8.5.0, 310P",
        source="https://github.com/ggml-org/llama.cpp/issues/22271",
        note="the issue measures gemma4-26b-a4b (MoE, ~4B active) at 6 (fp16) / 7 (int8) / 8 (int4) "
             "tok/s with no speed-up from a second chip: the backend is overhead-bound there, not "
             "bandwidth-bound. Our Llama-2-7B fp16 estimate lands in the same range by coincidence "
             "of the two limits, not because the workloads match",
        used_for_calibration=False),
)


def figure(key: str) -> PublishedFigure:
    """The published figure `key` (a KeyError naming the known keys otherwise)."""
    for f in PUBLISHED:
        if f.key == key:
            return f
    raise KeyError(f"no published figure '{key}' (have {', '.join(f.key for f in PUBLISHED)})")


def model_tok_s(fig: PublishedFigure, memory_efficiency: float | None = None) -> float:
    """The estimate of `fig`'s setting (its card column when it used every chip of a card), at
    `memory_efficiency` (default: the target data file's)."""
    from .core import estimate

    r = estimate(fig.config, [fig.target], fig.precision, fig.seq_len, fig.batch, prompt_len=min(16, fig.seq_len),
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
    from ascend_adapt.targets import load_target

    t = load_target(target)
    eff = CostFigures.of(t).memory_efficiency
    key = CALIBRATION.get(t.family)
    if key is None:
        return (f"{t.name}: memory efficiency {eff:.3f} is an uncalibrated default: no published LLM decode "
                f"figure for the {t.family} family")
    fit = figure(key)
    got = model_tok_s(fit)
    parts = [f"{t.name}: memory efficiency {eff:.3f} calibrated on '{fit.key}' ({fit.model}, {fit.target}"
             f"{', all chips of the card' if fit.chips == 'card' else ''}, {_published_text(fit)}; {fit.source}): "
             f"estimate {got:.2f} tok/s, error {_pct(error_pct(got, fit))} (the fit, rounded)"]
    family = {f.key for f in PUBLISHED if f.key != key and load_target(f.target).family == t.family}
    checks = [f for f in PUBLISHED if f.key in family]
    if not checks:
        parts.append("no other published figure of this family to check it against")
    for f in checks:
        est = model_tok_s(f)
        lo, hi = f.tok_s
        inside = " (inside the published range)" if lo <= est <= hi else ""
        parts.append(f"not fitted on '{f.key}' ({f.model}, {f.target}, {_published_text(f)}): estimate "
                     f"{est:.2f} tok/s, error {_pct(error_pct(est, f))}{inside}")
    return "; ".join(parts)
