"""Published LLM decode figures on the targets, and the efficiency factors calibrated on them.

The estimator's decode figure is a roofline bound (memory bandwidth ÷ bytes read per token)
times an *efficiency factor per target family*. Where a public measurement exists, the factor is
calibrated on it; where none exists, a stated default is used and the report says
"uncalibrated". `docs/ESTIMATES.md` puts every estimate beside these figures.

Calibration (bytes per token = weights without the embedding table + the full static KV cache;
bandwidth from the target data files):

- Ascend910B: Llama-2-7B fp16, torch_npu eager, batch 1, ~100 new tokens: 16.6 tok/s.
  Bound with the data file's 400 GB/s (the lowest of the conflicting public figures) = 30.0 tok/s,
  so 16.6 / 30.0 = 0.55.
- Ascend310P (310P3 chips, Atlas 300I Pro / Duo): LLaMA-13B fp16 on both chips of an Atlas 300I
  Duo, input 1024 + output 1024: 6.32 tok/s. Bound on 2 × 204 GB/s = 14.9 tok/s, so 0.42.
  The llama.cpp figure (6–8 tok/s on 310P) is *not* used for calibration (different model, and
  its speed does not depend on precision, i.e. it is not bandwidth-bound); it is a cross-check.
- Ascend310, Ascend310B, MLU370: no public LLM decode figure found: 0.40 (uncalibrated).
"""

from __future__ import annotations

from dataclasses import dataclass

# decode efficiency = achieved tokens/s ÷ bandwidth bound, per target family
DECODE_EFFICIENCY: dict[str, float] = {
    "Ascend910B": 0.55,
    "Ascend310P": 0.42,
    "Ascend310": 0.40,
    "Ascend310B": 0.40,
    "MLU370": 0.40,
}
DEFAULT_DECODE_EFFICIENCY = 0.40

# why each factor has the value it has (printed in the report)
EFFICIENCY_BASIS: dict[str, str] = {
    "Ascend910B": "calibrated: Llama-2-7B fp16 torch_npu 16.6 tok/s vs 30.0 tok/s bound at 400 GB/s",
    "Ascend310P": "calibrated: LLaMA-13B fp16 on a 300I Duo (2 chips) 6.32 tok/s vs 14.9 tok/s bound",
    "Ascend310": "uncalibrated default (no published LLM decode figure found)",
    "Ascend310B": "uncalibrated default (no published LLM decode figure found)",
    "MLU370": "uncalibrated default (no published LLM decode figure found)",
}

# prefill: fraction of the fp16 peak a large prefill reaches. No public prefill figure was
# found for any target, so one uncalibrated value is used everywhere.
PREFILL_EFFICIENCY: dict[str, float] = {}
DEFAULT_PREFILL_EFFICIENCY = 0.40


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
        used_for_calibration: whether DECODE_EFFICIENCY was fitted on it.
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
