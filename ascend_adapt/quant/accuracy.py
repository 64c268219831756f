"""Accuracy of a quantized model against its fp16 (or fp32) reference.

Three measures, each on any two `LMBackend`s (torch golden, onnxruntime export, simulator
artifact, or the fake-quant torch model below):

- per-layer error: for every layer output the backends expose ("embed", "layers.{i}",
  "final_norm", "logits"), the cosine similarity and the max relative error
  `max|a - b| / max|a|` of the quantized output b against the reference a, over a fixed prompt;
- greedy-token agreement: each backend generates N greedy tokens from each fixed prompt; the
  rate is the fraction of positions where the tokens are equal (after a first divergence the
  contexts differ, so this counts that prompt's later tokens only where they happen to coincide),
  with each prompt's first divergent step;
- perplexity on a fixed text (`data/ppl_text.txt`, written for this project, not part of the
  calibration set): exp(mean next-token NLL), in windows of `window` tokens (no overlap).

Fake quantization (`fake_quant_backend`): the fp32 torch golden with every quantized Linear's
weight replaced by `dequantize(quantize_per_channel(W·s))` and, for W8A8, a forward pre-hook that
replaces its input x by `act_scale · clip(rint((x / s) / act_scale), -127, 127)`. That is the
arithmetic of the int8 graph (the int32 accumulation is exact; the dequant multiplies by
`act_scale · w_scale`) up to fp32-vs-fp16 rounding, and it runs before and independently of the
ONNX emission.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ascend_adapt.errors import ConfigError

PPL_TEXT = Path(__file__).with_name("data") / "ppl_text.txt"

# config.json key of a checkpoint whose weights are random (`make_tiny_checkpoint` writes it when it
# draws the weights itself): perplexity on a text means nothing for such weights
RANDOM_WEIGHTS_KEY = "ascend_adapt_random_weights"

# the fixed greedy prompts of `convert --quantize`'s accuracy step, after the family's verify prompt
# (written for this project; not in the calibration set nor the perplexity text)
ACCURACY_PROMPTS = ("The capital of France is", "def add(a, b):\n    return", "Once upon a time, there was")


# ------------------------------------------------------------------------------------------------
# fake quantization in the torch golden

def quantized_linear_names(spec, mode: str, plan=None, include_head: bool = False) -> list[str]:
    """Canonical Linear prefixes a mode quantizes: W8A8 → the plan's; W8A16 → every decoder Linear
    (and the head with `include_head`, not when tied: it is the embedding matrix too)."""
    from .calib import linear_names

    if mode == "w8a8":
        if plan is None:
            raise ConfigError("fake quantization: w8a8 needs a W8A8Plan", "build one with plan_w8a8(model_dir)")
        return list(plan.linears)
    if mode == "w8a16":
        names = [n for n in linear_names(spec) if n != "lm_head"]
        if include_head and not spec.tie_word_embeddings:
            names.append("lm_head")
        return names
    raise ConfigError(f"fake quantization: unknown mode '{mode}'", "use w8a16 or w8a8")


def fake_quant_weights(canonical: dict, spec, mode: str, plan=None, group_size: int | None = None,
                       include_head: bool = False) -> dict:
    """Canonical weights with each quantized Linear's weight through quantize → dequantize
    (W8A8: of W·diag(smooth)); everything else unchanged."""
    from .weights import dequantize, quantize_groupwise, quantize_per_channel

    out = dict(canonical)
    for n in quantized_linear_names(spec, mode, plan, include_head):
        w = np.asarray(canonical[n + ".weight"], np.float32)
        if mode == "w8a8":
            w = w * plan.linears[n].smooth[None, :]
            q, s = quantize_per_channel(w)
            out[n + ".weight"] = dequantize(q, s)
        elif group_size:
            q, s = quantize_groupwise(w, group_size)
            out[n + ".weight"] = dequantize(q, s, group_size)
        else:
            q, s = quantize_per_channel(w)
            out[n + ".weight"] = dequantize(q, s)
    return out


def fake_quant_backend(spec, canonical: dict, mode: str, plan=None, group_size: int | None = None,
                       include_head: bool = False, dtype: str = "float32"):
    """A torch golden computing the quantized model's arithmetic (see the module docstring).

    Args:
        spec: the model.
        canonical: canonical fp weights (name → array).
        mode: "w8a16" or "w8a8".
        plan: the `W8A8Plan` (w8a8).
        group_size: W8A16 group-wise scales (None = per channel).
        include_head: W8A16 also quantizes an untied lm_head.
        dtype: compute dtype of the golden.
    """
    import torch

    from ascend_adapt.backends.torch.session import TorchBackend

    be = TorchBackend.from_canonical(spec, fake_quant_weights(canonical, spec, mode, plan, group_size, include_head),
                                     dtype)
    be.fake_quant = mode
    if mode != "w8a8":
        return be
    from .calib import torch_linear_modules

    mods = torch_linear_modules(be)

    def hook(lp):
        inv_s = torch.from_numpy((1.0 / lp.smooth).astype(np.float32))
        step = float(lp.act_scale)

        def pre(_mod, args):
            x = args[0]
            xs = x.float() * inv_s
            q = torch.clamp(torch.round(xs / step), -127, 127)  # torch.round: half to even, as np.rint
            return (q * step).to(x.dtype),
        return pre

    be.fake_quant_hooks = [mods[n].register_forward_pre_hook(hook(lp)) for n, lp in plan.linears.items()]
    return be


def read_canonical(model_dir) -> tuple[object, dict]:
    """(spec, canonical weights as float32 arrays) of a checkpoint directory or .gguf file."""
    from ascend_adapt.checkpoint import open_checkpoint
    from ascend_adapt.checkpoint.gguf_io import resolve_source
    from ascend_adapt.model_zoo.base import adapter_for_config

    src = resolve_source(model_dir)
    reader = open_checkpoint(src)
    adapter = adapter_for_config(reader.config, str(Path(src) / "config.json"))
    spec = adapter.spec_from_config(reader.config)
    return spec, {n: np.asarray(a, np.float32) for n, a in adapter.iter_canonical(reader, spec)}


# ------------------------------------------------------------------------------------------------
# the three measures

def perplexity(backend, ids: Sequence[int], window: int = 256) -> float:
    """exp(mean next-token NLL) of `ids` under `backend`, in non-overlapping windows."""
    ids = [int(i) for i in ids]
    if len(ids) < 2:
        raise ConfigError("perplexity: the text has fewer than 2 tokens", "use a longer text")
    nll, n = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start:start + window + 1]
        if len(chunk) < 2:
            break
        logits = np.asarray(backend.full_logits(np.asarray([chunk[:-1]], np.int64)), np.float64)[0]
        m = logits.max(-1, keepdims=True)
        logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
        tgt = np.asarray(chunk[1:])
        nll -= float(logp[np.arange(len(tgt)), tgt].sum())
        n += len(tgt)
    return math.exp(nll / n)


def layer_errors(ref, test, ids: Sequence[int]) -> dict[str, dict[str, float]]:
    """Per layer output: {"cosine", "max_rel"} of test against ref on one prompt."""
    _, a = ref.full_logits(np.asarray([list(ids)], np.int64), layer_outputs=True)
    _, b = test.full_logits(np.asarray([list(ids)], np.int64), layer_outputs=True)
    out = {}
    for name in a:
        if name not in b:
            continue
        x = np.asarray(a[name], np.float64).ravel()
        y = np.asarray(b[name], np.float64).ravel()
        denom = np.linalg.norm(x) * np.linalg.norm(y)
        cos = float(x @ y / denom) if denom > 0 else float(np.array_equal(x, y))
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        out[name] = {"cosine": cos, "max_rel": float(np.max(np.abs(x - y))) / peak if peak > 0 else 0.0}
    return out


def greedy_agreement(ref, test, prompts: Sequence[Sequence[int]], steps: int = 32) -> dict:
    """Free-running greedy tokens of both backends per prompt.

    Returns:
        {"rate": equal positions / all positions, "equal": int, "total": int,
         "first_divergence": [step index or None per prompt],
         "teacher_forced_rate": fraction of steps where test's argmax, given the reference's
         greedy prefix (one full forward over prompt + reference tokens), is the reference token}.
    """
    from ascend_adapt.runtime.generate import greedy_tokens

    equal = total = forced = 0
    first = []
    for p in prompts:
        p = [int(t) for t in p]
        a = np.asarray(greedy_tokens(ref, np.asarray([p]), steps)).reshape(-1)
        b = np.asarray(greedy_tokens(test, np.asarray([p]), steps)).reshape(-1)
        same = a == b
        equal += int(same.sum())
        total += len(a)
        first.append(None if same.all() else int(np.argmin(same)))
        seq = p + a[:-1].tolist()
        logits = np.asarray(test.full_logits(np.asarray([seq], np.int64)))[0, len(p) - 1:]
        forced += int((logits.argmax(-1) == a).sum())
    return {"rate": equal / total if total else 1.0, "equal": equal, "total": total, "first_divergence": first,
            "teacher_forced_rate": forced / total if total else 1.0}


@dataclass
class AccuracyReport:
    """What `accuracy_report` measured (None where a measure was not asked for)."""

    label: str
    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    greedy: dict | None = None
    ppl_ref: float | None = None
    ppl_test: float | None = None

    @property
    def ppl_rise(self) -> float | None:
        """Relative perplexity rise, test / ref - 1."""
        if self.ppl_ref is None or self.ppl_test is None:
            return None
        return self.ppl_test / self.ppl_ref - 1.0

    def to_dict(self) -> dict:
        """The measures as JSON-ready values (convert_report.json "accuracy")."""
        return {"label": self.label, "layers": self.layers, "greedy": self.greedy,
                "perplexity": None if self.ppl_rise is None else
                {"reference": self.ppl_ref, "test": self.ppl_test, "rise": self.ppl_rise}}

    def lines(self) -> list[str]:
        out = [f"accuracy of {self.label} against the reference:"]
        if self.layers:
            worst = min(self.layers.items(), key=lambda kv: kv[1]["cosine"])
            out.append(f"  per-layer: worst cosine {worst[1]['cosine']:.5f} at {worst[0]}; "
                       f"logits cosine {self.layers.get('logits', worst[1])['cosine']:.5f}, "
                       f"max rel err {self.layers.get('logits', worst[1])['max_rel']:.3g}")
            for name, e in self.layers.items():
                out.append(f"    {name:<12} cosine {e['cosine']:.6f}  max rel err {e['max_rel']:.3g}")
        if self.greedy is not None:
            g = self.greedy
            out.append(f"  greedy tokens: {g['equal']}/{g['total']} equal free-running ({100 * g['rate']:.1f} %), "
                       f"{100 * g['teacher_forced_rate']:.1f} % teacher-forced; first divergence per prompt "
                       f"{g['first_divergence']}")
        if self.ppl_rise is not None:
            out.append(f"  perplexity: {self.ppl_ref:.3f} → {self.ppl_test:.3f} ({100 * self.ppl_rise:+.2f} %)")
        return out


def accuracy_report(ref, test, *, prompts: Sequence[Sequence[int]] = (), steps: int = 32,
                    ppl_ids: Sequence[int] | None = None, layer_prompt: Sequence[int] | None = None,
                    label: str = "quantized model", window: int = 256) -> AccuracyReport:
    """Compare two LM backends (quantized `test` against reference `ref`).

    Args:
        ref, test: LM backends (`full_logits`, `new_session`).
        prompts: token ids of the greedy prompts (empty: no greedy measure).
        steps: greedy tokens per prompt.
        ppl_ids: token ids of the perplexity text (None: no perplexity; pass it only for real weights).
        layer_prompt: token ids for the per-layer error (default: the first prompt; none: skipped).
        label: what `test` is, for the report lines.
    """
    rep = AccuracyReport(label)
    lp = layer_prompt if layer_prompt is not None else (prompts[0] if prompts else None)
    if lp is not None:
        rep.layers = layer_errors(ref, test, lp)
    if prompts:
        rep.greedy = greedy_agreement(ref, test, prompts, steps)
    if ppl_ids is not None:
        rep.ppl_ref = perplexity(ref, ppl_ids, window)
        rep.ppl_test = perplexity(test, ppl_ids, window)
    return rep


def compare_artifacts(ref_path, test_path, backend: str = "sim", **kwargs) -> AccuracyReport:
    """`accuracy_report` of two artifacts (e.g. the fp16 and the quantized simulator artifacts
    of one model) run on the same backend kind."""
    from ascend_adapt.backends import get_backend

    return accuracy_report(get_backend(backend, ref_path), get_backend(backend, test_path), **kwargs)


def real_weights(model_dir) -> tuple[bool, str]:
    """(whether `model_dir` holds real weights, why we think so): False only where its config.json
    says its weights are random (`RANDOM_WEIGHTS_KEY`, written by `make_tiny_checkpoint`)."""
    cfg = Path(model_dir) / "config.json"
    try:
        marked = bool(json.loads(cfg.read_text(encoding="utf-8")).get(RANDOM_WEIGHTS_KEY))
    except (OSError, ValueError, AttributeError):
        marked = False
    if marked:
        return False, (f"{cfg} marks its weights as random ({RANDOM_WEIGHTS_KEY}: true): perplexity on a text "
                       "means nothing for them (--accuracy-ppl measures it anyway)")
    return True, f"real weights ({cfg.name} does not mark them random; --no-accuracy-ppl skips it)"


def accuracy_prompts(tokenizer, verify_prompt: str, max_len: int | None = None) -> tuple[list[str], list[list[int]]]:
    """(texts, token ids) of the fixed greedy prompts: the verify prompt, then `ACCURACY_PROMPTS`;
    with `max_len`, only those of at most that many tokens."""
    texts, ids = [], []
    for t in (verify_prompt, *ACCURACY_PROMPTS):
        p = [int(i) for i in tokenizer.encode(t)]
        if p and (max_len is None or len(p) <= max_len):
            texts.append(t)
            ids.append(p)
    return texts, ids


def ppl_text_ids(tokenizer, max_tokens: int | None = None) -> list[int]:
    """The fixed perplexity text, tokenized (all of it, or at most `max_tokens`; SmolLM2: 2986)."""
    return list(tokenizer.encode(PPL_TEXT.read_text(encoding="utf-8")))[:max_tokens]
