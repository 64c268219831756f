"""The one generate loop, for every backend.

It talks only to `LMSession.prefill` / `LMSession.decode` (see `session.py`), so the torch
golden, MindSpore, onnxruntime, the simulator and pyACL all generate through this code. Prompts
are batched with LEFT padding; each row stops on its own at an EOS / stop token (finished rows
keep feeding their last token, whose logits are ignored, because a static graph runs the whole
batch).

Sampling follows transformers' order: repetition penalty → temperature → top-k → top-p. Each
row samples from its own generator seeded with (seed, row), so a run is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ascend_adapt.errors import AscendAdaptError, ConfigError

StreamCallback = Callable[[int, int, str], None]  # (row, token id, new text)


@dataclass
class GenerationConfig:
    """Decoding options.

    Attributes:
        max_new_tokens: most tokens generated per row.
        do_sample: sample (True) or greedy argmax (False).
        temperature, top_k, top_p: sampling filters (top_k 0 / top_p 1.0 = off).
        seed: sampling seed (row b uses `np.random.default_rng([seed, b])`).
        repetition_penalty: > 1 discourages tokens already in the row (prompt and output), as
            transformers' RepetitionPenaltyLogitsProcessor.
        stop_token_ids: stop tokens in addition to the tokenizer's `eos_ids`.
        stream: called as stream(row, token_id, text_delta) for every generated token.
        max_len: KV-cache slots of the session (default: prompt length + max_new_tokens).
    """

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    repetition_penalty: float = 1.0
    stop_token_ids: Sequence[int] = ()
    stream: StreamCallback | None = None
    max_len: int | None = None

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be ≥ 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0 when sampling, got {self.temperature}",
                              "use greedy decoding (do_sample=False) for temperature 0")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise ConfigError("top_k must be ≥ 0 and repetition_penalty > 0")


@dataclass
class GenerationResult:
    """One prompt's output.

    Attributes:
        prompt_ids: the encoded prompt (no padding).
        token_ids: generated ids, including the stop token when the row stopped on one.
        text: decoded generated text (stop token and special tokens removed).
        finish_reason: "stop" (EOS / stop token) or "length" (max_new_tokens).
    """

    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"


class NonFiniteLogitsError(AscendAdaptError):
    """A backend returned NaN / Inf logits."""


def _session(backend_or_factory, batch: int, max_len: int):
    if hasattr(backend_or_factory, "new_session"):
        return backend_or_factory.new_session(batch, max_len)
    if callable(backend_or_factory):
        return backend_or_factory(batch, max_len)
    raise ConfigError(f"generate needs a backend (with new_session) or a session factory, "
                      f"got {type(backend_or_factory).__name__}")


def apply_repetition_penalty(logits: np.ndarray, seen: Sequence[np.ndarray], penalty: float) -> np.ndarray:
    """transformers' rule per row: logit < 0 → ·penalty, else /penalty, for every seen token."""
    if penalty == 1.0:
        return logits
    out = logits.copy()
    for b, ids in enumerate(seen):
        ids = np.unique(ids)
        x = out[b, ids]
        out[b, ids] = np.where(x < 0, x * penalty, x / penalty)
    return out


def sample_token(logits: np.ndarray, cfg: GenerationConfig, rng: np.random.Generator) -> int:
    """One token from a row's logits [V] with temperature, top-k and top-p."""
    x = logits.astype(np.float64) / cfg.temperature
    if cfg.top_k and cfg.top_k < x.size:
        kth = np.partition(x, -cfg.top_k)[-cfg.top_k]
        x = np.where(x < kth, -np.inf, x)
    p = np.exp(x - x.max())
    p /= p.sum()
    if cfg.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = cum - p[order] < cfg.top_p  # keep the smallest prefix reaching top_p (≥ 1 token)
        mask = np.zeros_like(p, dtype=bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return int(rng.choice(p.size, p=p))


def _check_finite(logits: np.ndarray, step: int) -> None:
    if not np.isfinite(logits).all():
        rows = np.where(~np.isfinite(logits).all(axis=1))[0].tolist()
        raise NonFiniteLogitsError(
            f"the backend returned NaN/Inf logits at generation step {step} (rows {rows})",
            "a fp16 overflow: run `ascend-adapt compare` against the torch golden to find the first "
            "diverging layer, or keep that layer in fp32 (precision mode)")


def generate(backend_or_session_factory, tokenizer, prompts, config: GenerationConfig | None = None,
             *, add_special_tokens: bool = True) -> list[GenerationResult]:
    """Generate for a batch of prompts.

    Args:
        backend_or_session_factory: an `LMBackend` (its `new_session(batch, max_len)` is used) or
            a callable (batch, max_len) -> `LMSession`.
        tokenizer: from `model_zoo.tokenizers.load_tokenizer` (encode / decode / eos_ids / pad_id).
        prompts: a string, a list of strings, or a list of token-id lists (already encoded).
        config: decoding options.
        add_special_tokens: passed to `tokenizer.encode` for string prompts.

    Returns:
        One `GenerationResult` per prompt, in order.
    """
    cfg = config or GenerationConfig()
    cfg.validate()
    if isinstance(prompts, str):
        prompts = [prompts]
    encoded = [list(map(int, p)) if not isinstance(p, str) else tokenizer.encode(p, add_special_tokens)
               for p in prompts]
    if not encoded or any(len(e) == 0 for e in encoded):
        raise ConfigError("generate: every prompt must encode to at least one token")
    B, S = len(encoded), max(len(e) for e in encoded)
    ids = np.full((B, S), tokenizer.pad_id, np.int64)
    mask = np.zeros((B, S), np.int64)
    for b, e in enumerate(encoded):
        ids[b, S - len(e):] = e
        mask[b, S - len(e):] = 1
    max_len = cfg.max_len or S + cfg.max_new_tokens
    if S + cfg.max_new_tokens > max_len:
        raise ConfigError(f"prompt ({S} tokens) + max_new_tokens ({cfg.max_new_tokens}) exceed the "
                          f"cache of {max_len} slots", "raise --max-len or lower --max-new-tokens")
    stops = set(tokenizer.eos_ids) | {int(t) for t in cfg.stop_token_ids}
    rngs = [np.random.default_rng([int(cfg.seed), b]) for b in range(B)]
    results = [GenerationResult(prompt_ids=e) for e in encoded]
    seen = [np.array(e, np.int64) for e in encoded]
    emitted = [""] * B
    done = np.zeros(B, bool)

    session = _session(backend_or_session_factory, B, max_len)
    logits = session.prefill(ids, mask)
    last = ids[:, -1].copy()
    for step in range(cfg.max_new_tokens):
        _check_finite(logits[~done], step)
        scores = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
        for b in range(B):
            if done[b]:
                continue
            tok = sample_token(scores[b], cfg, rngs[b]) if cfg.do_sample else int(np.argmax(scores[b]))
            r = results[b]
            r.token_ids.append(tok)
            seen[b] = np.append(seen[b], tok)
            last[b] = tok
            if tok in stops:
                done[b] = True
                r.finish_reason = "stop"
                continue
            if cfg.stream is not None:
                text = tokenizer.decode(r.token_ids)
                if not text.endswith("\ufffd"):  # hold back an incomplete UTF-8 sequence
                    cfg.stream(b, tok, text[len(emitted[b]):])
                    emitted[b] = text
        if done.all() or step == cfg.max_new_tokens - 1:
            break
        logits = session.decode(last)
    for b, r in enumerate(results):
        body = r.token_ids[:-1] if r.finish_reason == "stop" else r.token_ids
        r.text = tokenizer.decode(body)
        if cfg.stream is not None and len(r.text) > len(emitted[b]) and r.text.startswith(emitted[b]):
            cfg.stream(b, -1, r.text[len(emitted[b]):])  # flush held-back text
    return results


def greedy_tokens(session_factory, input_ids, n: int, attention_mask=None, return_logits: bool = False):
    """`n` greedy tokens per row, never stopping early (for parity tests between backends).

    Args:
        session_factory: an `LMBackend` or a callable (batch, max_len) -> `LMSession`.
        input_ids: [B, S] (or [S]) left-padded prompt ids.
        n: tokens to generate.
        attention_mask: [B, S] (None = no padding).
        return_logits: also return the float32 logits [B, n, vocab] each token was chosen from.

    Returns:
        int64 [B, n] tokens (and the logits with `return_logits`).
    """
    ids = np.asarray(input_ids, np.int64)
    ids = ids[None] if ids.ndim == 1 else ids
    B, S = ids.shape
    session = _session(session_factory, B, S + n)
    logits = session.prefill(ids, attention_mask)
    toks, all_logits = [], []
    for i in range(n):
        all_logits.append(logits)
        tok = logits.argmax(-1).astype(np.int64)
        toks.append(tok)
        if i < n - 1:
            logits = session.decode(tok)
    out = np.stack(toks, axis=1)
    return (out, np.stack(all_logits, axis=1)) if return_logits else out
