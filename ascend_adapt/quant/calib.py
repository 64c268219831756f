"""Calibration for W8A8: the text set, and per-input-channel activation statistics of every Linear.

The statistic SmoothQuant and the static activation scales need is, for every Linear, the
largest |x| seen on each input channel over the calibration tokens: `amax[j] = max |x[..., j]|`.
It is collected by running the model's fp32 torch golden (`ascend_adapt.backends.torch.session`:
transformers' Llama / Qwen classes, our ChatGLM modules) over the calibration set with a
forward pre-hook on each `nn.Linear`, one prompt at a time (batch 1, no padding, so no pad token
enters a statistic).

Calibration sets:

- `"builtin"`: `ascend_adapt/quant/data/calib_builtin.jsonl`, 16 short paragraphs written for
  this project (English prose, code, Q&A, and Chinese, since ChatGLM users are Chinese); no
  third-party text, no license question.
- a file: one prompt per line (`.txt`), or JSON lines with a `"text"` field (`.jsonl`). Empty
  lines are skipped.

Memory: the golden holds the whole model in fp32 (4 bytes / parameter: 0.5 GB for SmolLM2-135M,
27 GB for Llama-2-7B; twice that while the transformers-based goldens load) plus one prompt's
activations; the statistics are 4 bytes per input channel per Linear (Llama-2-7B ≈ 3 MB).
The W8A8 α search (`ascend_adapt.quant.smoothquant.alpha_errors`) also needs the inputs
themselves: `collect_act_stats(..., keep_inputs=...)` keeps them on at most `max_kept_tokens`
tokens (a uniform stride over the set), 4 bytes × tokens × Σ in_features: 0.34 GB for
SmolLM2-135M (all 860 builtin tokens), 3.05 GB for Llama-2-7B at 1024 tokens. The sum is
`ascend_adapt.quant.smoothquant.calib_memory`, checked against the host before any weight is
loaded (`plan_w8a8`); streaming layer by layer is not implemented.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ascend_adapt.errors import ConfigError

BUILTIN_CALIB = Path(__file__).with_name("data") / "calib_builtin.jsonl"

# the Linears of a decoder layer, canonical suffixes (model_zoo/base.py); "mlp.gate" only in SwiGLU
LAYER_LINEARS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down")


def load_calib_texts(calib="builtin") -> list[str]:
    """The calibration prompts.

    Args:
        calib: "builtin", or a path: `.jsonl` (one JSON object with "text" per line) or any other
            text file (one prompt per line).

    Raises:
        ConfigError: the file is missing, unreadable, malformed (naming the line) or empty.
    """
    path = BUILTIN_CALIB if str(calib) == "builtin" else Path(calib)
    if not path.is_file():
        raise ConfigError(f"--calib: calibration file '{path}' does not exist",
                          "pass 'builtin' or a text file with one prompt per line (or JSONL with \"text\")")
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--calib: cannot read '{path}' as UTF-8 text ({exc})",
                          "pass a UTF-8 text file with one prompt per line") from None
    texts: list[str] = []
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        if jsonl:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--calib: {path}:{n} is not valid JSON ({exc.msg})",
                                  "write one JSON object per line, e.g. {\"text\": \"...\"}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise ConfigError(f"--calib: {path}:{n} has no string field \"text\"",
                                  "write one JSON object per line, e.g. {\"text\": \"...\"}")
            texts.append(obj["text"])
        else:
            texts.append(line)
    if not texts:
        raise ConfigError(f"--calib: '{path}' holds no prompt", "put at least one non-empty line in it")
    return texts


def tokenize_calib(tokenizer, texts: Sequence[str], max_tokens: int = 4096,
                   max_seq_len: int = 256) -> list[list[int]]:
    """Token ids of each prompt, each cut to `max_seq_len`, stopping once `max_tokens` are taken."""
    if max_tokens < 1 or max_seq_len < 1:
        raise ConfigError(f"calibration: max_tokens ({max_tokens}) and max_seq_len ({max_seq_len}) must be ≥ 1")
    out, total = [], 0
    for t in texts:
        ids = list(tokenizer.encode(t))[:max_seq_len]
        ids = ids[:max_tokens - total]
        if ids:
            out.append(ids)
            total += len(ids)
        if total >= max_tokens:
            break
    return out


def linear_names(spec) -> list[str]:
    """Canonical Linear prefixes of a spec ("layers.0.attn.q", …, "lm_head"), in model order."""
    shapes = spec.canonical_shapes()
    names = [f"layers.{i}.{s}" for i in range(spec.num_layers) for s in LAYER_LINEARS
             if f"layers.{i}.{s}.weight" in shapes]
    return names + ["lm_head"]


def hf_weight_names(spec) -> dict[str, str]:
    """Canonical Linear prefix → the HF checkpoint's weight name holding it (a fused tensor such as
    ChatGLM's `query_key_value.weight` is the name of each of its parts)."""
    from ascend_adapt.model_zoo.base import ADAPTERS

    adapter = ADAPTERS.get(spec.arch)
    out = {}
    wanted = {f"{n}.weight": n for n in linear_names(spec)}
    for e in adapter.entries(spec, "hf"):
        for c in e.canonical:
            if c in wanted:
                out[wanted[c]] = e.source
    if "lm_head" not in out:  # tied and not stored: the head is the embedding matrix
        src = [e.source for e in adapter.entries(spec, "hf") if spec.tied_source in e.canonical]
        out["lm_head"] = src[0] if src else "lm_head.weight"
    return out


def torch_linear_modules(backend) -> dict[str, object]:
    """Canonical Linear prefix → the `nn.Linear` of a torch golden backend computing it.

    Our own family modules (ChatGLM-6B, ChatGLM2/3) name parameters through `_param_name`; the
    transformers-based goldens (Llama, Qwen) use the HF names of the adapter's table.
    """
    from torch import nn

    model, spec = backend.model, backend.spec
    hf = hf_weight_names(spec)
    out = {}
    for name in linear_names(spec):
        if name == "lm_head":
            pname = "lm_head.weight"
        elif hasattr(model, "_param_name"):
            pname = model._param_name(f"{name}.weight")
        else:
            pname = hf[name]
        mod = model.get_submodule(pname[: -len(".weight")])
        if not isinstance(mod, nn.Linear):
            raise ConfigError(f"calibration: '{pname}' of the {spec.arch} golden is not an nn.Linear")
        out[name] = mod
    return out


@dataclass
class ActStats:
    """Per-input-channel max |x| of every Linear over a calibration run.

    Attributes:
        amax: canonical Linear prefix → float32 [in_features].
        tokens: calibration tokens seen.
        prompts: calibration prompts run.
        inputs: canonical prefix → float32 [kept_tokens, in_features]: the inputs of the Linears
            asked for in `keep_inputs` on every `stride`-th calibration token (None otherwise).
        kept_tokens: rows of each `inputs` array.
        input_prompts: int [kept_tokens]: the calibration prompt (0, 1, …) of each kept row.
    """

    amax: dict[str, np.ndarray]
    tokens: int
    prompts: int
    inputs: dict[str, np.ndarray] | None = None
    kept_tokens: int = 0
    input_prompts: np.ndarray | None = None


def collect_act_stats(backend, token_lists: Iterable[Sequence[int]], keep_inputs: Iterable[str] = (),
                      max_kept_tokens: int = 1024) -> ActStats:
    """Run the fp32 golden over each prompt (batch 1) and record every Linear's input amax.

    Args:
        backend: a `TorchBackend` (fp32 golden).
        token_lists: token ids per prompt.
        keep_inputs: canonical Linear prefixes whose inputs are also kept (the W8A8 α search),
            on a uniform stride over all calibration tokens so that at most `max_kept_tokens`
            are kept: 4 bytes × kept tokens × Σ in_features of those Linears.

    Returns:
        `ActStats` over all the prompts.
    """
    import torch

    mods = torch_linear_modules(backend)
    token_lists = [list(ids) for ids in token_lists]
    keep = set(keep_inputs)
    unknown = sorted(keep - set(mods))
    if unknown:
        raise ConfigError(f"calibration: '{unknown[0]}' is not a Linear of this {backend.spec.arch} model",
                          "name Linears by canonical prefix, e.g. layers.0.attn.q")
    if keep and max_kept_tokens < 1:
        raise ConfigError(f"calibration: max_kept_tokens = {max_kept_tokens} must be ≥ 1")
    total = sum(len(ids) for ids in token_lists)
    stride = max(1, -(-total // max_kept_tokens)) if keep else 1
    n_kept = -(-total // stride) if keep else 0  # global token indices t with t % stride == 0
    amax: dict[str, torch.Tensor] = {}
    kept: dict[str, np.ndarray] = {}  # filled in place: no second copy when done
    where = {"rows": None, "at": 0}  # rows of the current prompt to keep, and where they go
    row_prompt = np.empty(n_kept, np.int64)

    def hook(name):
        def pre(_mod, args):
            x = args[0].detach()
            x2 = x.reshape(-1, x.shape[-1])
            m = x2.abs().amax(dim=0).float()
            prev = amax.get(name)
            amax[name] = m if prev is None else torch.maximum(prev, m)
            if name in keep and where["rows"] is not None and len(where["rows"]):
                if name not in kept:
                    kept[name] = np.empty((n_kept, x2.shape[-1]), np.float32)
                kept[name][where["at"]:where["at"] + len(where["rows"])] = x2[where["rows"]].float().numpy()
        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in mods.items()]
    tokens = prompts = 0
    try:
        with torch.no_grad():
            for ids in token_lists:
                # global token index t is kept when t % stride == 0
                where["rows"] = torch.arange((-tokens) % stride, len(ids), stride) if keep else None
                backend.full_logits(np.asarray([ids], np.int64))
                if keep:
                    row_prompt[where["at"]:where["at"] + len(where["rows"])] = prompts
                    where["at"] += len(where["rows"])
                tokens += len(ids)
                prompts += 1
    finally:
        for h in handles:
            h.remove()
    if not prompts:
        raise ConfigError("calibration: no calibration tokens", "pass a calibration set with at least one prompt")
    missing = sorted(keep - set(kept))
    if missing:
        raise ConfigError(f"calibration: the golden never ran '{missing[0]}'",
                          "a Linear that the forward pass does not reach cannot be calibrated")
    return ActStats({n: amax[n].numpy().astype(np.float32) for n in mods}, tokens, prompts,
                    kept if keep else None, n_kept, row_prompt if keep else None)
