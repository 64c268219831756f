"""The one generate loop, for every backend.

It talks only to `LMSession.prefill` / `LMSession.decode` (see `session.py`), so the torch
golden, MindSpore, onnxruntime, the simulator and pyACL all generate through this code. For plain
greedy decoding over graphs that choose the token themselves (`GraphLMSession.greedy_on_graph`:
an ArgMax in the graph, docs/graph_contract.md) it calls `prefill_next` / `decode_next` instead,
so a card returns 8 bytes per row rather than the logits. Prompts
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

from ascend_adapt.errors import AscendAdaptError, ConfigError, UnsupportedError

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
        max_len: KV-cache slots of the session (default: prompt length + max_new_tokens). It
            and prompt + max_new_tokens must fit the backend's context (`context_limit`).
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
        finish_reason: "stop" (EOS / stop token), "length" (max_new_tokens) or "interrupted"
            (Ctrl-C; see `GenerationInterrupted`).
        prompt_logits: with `generate(..., prompt_logits=True)`, float32 [len(prompt_ids), vocab]:
            the logits at every prompt position (row i predicts token i + 1; the last row chose the
            first new token), without padding.
    """

    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"
    prompt_logits: np.ndarray | None = field(default=None, repr=False)


class NonFiniteLogitsError(AscendAdaptError):
    """A backend returned NaN / Inf logits."""


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped `generate` between steps.

    A KeyboardInterrupt, so code that does not look for it stops as before; `results` holds
    what was generated so far (finish_reason "interrupted" on the rows still running).
    """

    def __init__(self, results: list[GenerationResult]):
        super().__init__("generation interrupted")
        self.results = results


def context_limit(backend) -> tuple[int, str] | None:
    """The most tokens (prompt + new) a backend holds, and what sets that limit.

    A converted artifact (onnxruntime / sim / acl backends) has a static KV cache of `max_len`
    slots M fixed at export; a checkpoint (torch / mindspore) has its config's context
    (`max_position_embeddings` for Llama, `max_sequence_length` / `seq_length` for ChatGLM-6B,
    `ModelSpec.max_position`). None for a bare session factory, which says neither.
    """
    m = getattr(backend, "max_len", None)
    if isinstance(m, (int, np.integer)) and not isinstance(m, bool) and m > 0:
        return int(m), f"the artifact's KV cache of {int(m)} slots (--max-len at export / convert)"
    spec = getattr(backend, "spec", None)
    n = getattr(spec, "max_position", None)
    if isinstance(n, (int, np.integer)) and n > 0:
        return int(n), (f"the model's context of {int(n)} positions (config.json max_position_embeddings / "
                        "max_sequence_length / seq_length)")
    return None


def _prefill_slots(backend, prompt_len: int) -> int:
    """Cache slots the prefill takes: a static graph pads the prompt to its length S, a gear
    build to the smallest gear that holds it; any other backend takes the prompt as it is."""
    gears = getattr(backend, "gears", None)
    seq_len = getattr(backend, "seq_len", None)
    if not isinstance(getattr(backend, "max_len", None), (int, np.integer)):
        return prompt_len
    if gears:
        fits = [int(g) for g in sorted(gears) if int(g) >= prompt_len]
        if not fits:
            raise ConfigError(f"prompt of {prompt_len} tokens exceeds the largest prefill gear "
                              f"({max(int(g) for g in gears)}) of {getattr(backend, 'path', 'the artifact')}",
                              "shorten the prompt, or re-convert with a larger gear (--gears / --seq-len)")
        return fits[0]
    if isinstance(seq_len, (int, np.integer)) and seq_len > 0:
        if prompt_len > seq_len:
            raise ConfigError(f"prompt of {prompt_len} tokens exceeds the prefill length S={int(seq_len)} of "
                              f"{getattr(backend, 'path', 'the artifact')}",
                              "shorten the prompt, or re-export / re-convert with a larger --seq-len")
        return int(seq_len)
    return prompt_len


def check_context(backend, prompt_len: int, max_new_tokens: int, max_len: int | None = None) -> None:
    """Refuse, before anything is allocated, a request the backend's context cannot hold.

    Args:
        backend: an `LMBackend` (a bare session factory is not checked: it states no limit).
        prompt_len: tokens of the longest prompt (without padding).
        max_new_tokens: new tokens asked for.
        max_len: KV-cache slots asked for explicitly (None = prompt + max_new_tokens).

    Raises:
        ConfigError: naming the prompt length, max_new_tokens and the limit with what sets it.
    """
    limit = context_limit(backend)
    if limit is None:
        return
    n, what = limit
    slots = _prefill_slots(backend, prompt_len)
    padded = f", padded to {slots}" if slots != prompt_len else ""
    if slots + max_new_tokens > n:
        room = n - slots
        raise ConfigError(
            f"prompt ({prompt_len} tokens{padded}) + max_new_tokens ({max_new_tokens}) = {slots + max_new_tokens} "
            f"exceed {what}",
            (f"lower --max-new-tokens to at most {room}" if room > 0 else "shorten the prompt")
            + (", or re-convert with a larger --max-len" if hasattr(backend, "max_len") else ""))
    if max_len is not None and max_len > n:
        raise ConfigError(f"--max-len {max_len} exceeds {what}",
                          f"leave --max-len out (default: prompt + max_new_tokens) or use at most {n}")


def _vocab_size(backend, tokenizer) -> int | None:
    spec = getattr(backend, "spec", None)
    v = getattr(spec, "vocab_size", None) or getattr(tokenizer, "vocab_size", None)
    return int(v) if isinstance(v, (int, np.integer)) and v > 0 else None


def _prefill_all(session, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Prefill returning the logits of EVERY prompt position, float32 [B, S, vocab].

    Graph sessions have `prefill_all`; the other sessions are `StaticCacheSession`s, whose
    `step` returns [B, S, vocab]: this is their `prefill` without dropping positions.
    """
    if hasattr(session, "prefill_all"):
        return np.asarray(session.prefill_all(ids, mask), np.float32)
    from .lm_inputs import prefill_inputs
    from .session import StaticCacheSession

    if not isinstance(session, StaticCacheSession):
        raise UnsupportedError(f"{type(session).__name__} returns the logits of the last position only",
                               "prompt logits need a StaticCacheSession (or a session with prefill_all)")
    inputs, session.state = prefill_inputs(session.spec, ids, mask, session.max_len)
    if inputs.input_ids.shape[0] != session.batch:
        raise ConfigError(f"session was made for batch {session.batch}, got {inputs.input_ids.shape[0]}")
    return np.asarray(session.step(inputs), np.float32)


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


def _check_finite_rows(finite: np.ndarray, done: np.ndarray, step: int) -> None:
    """`_check_finite` for a graph that chose the tokens: `finite` [B] says whether each row's
    logits were all finite (the graph's Σ logits output)."""
    bad = ~np.asarray(finite, bool) & ~done
    if bad.any():
        raise NonFiniteLogitsError(
            f"the backend returned NaN/Inf logits at generation step {step} (rows {np.where(bad)[0].tolist()})",
            "a fp16 overflow: run `ascend-adapt compare` against the torch golden to find the first "
            "diverging layer, or keep that layer in fp32 (precision mode)")


def _greedy_on_graph(session, cfg: GenerationConfig | None = None) -> bool:
    """Whether the session's graphs choose the greedy token themselves (GraphLMSession with
    contract.GREEDY_OUTPUTS) and `cfg` asks for nothing but greedy argmax: sampling and a
    repetition penalty need the full logits on the host."""
    if cfg is not None and (cfg.do_sample or cfg.repetition_penalty != 1.0):
        return False
    return bool(getattr(session, "greedy_on_graph", False)) and hasattr(session, "decode_next")


def generate(backend_or_session_factory, tokenizer, prompts, config: GenerationConfig | None = None,
             *, add_special_tokens: bool = True, prompt_logits: bool = False) -> list[GenerationResult]:
    """Generate for a batch of prompts.

    Everything that could exhaust memory is checked before anything is allocated: the prompt
    plus `max_new_tokens` must fit the backend's context (`check_context`: a converted artifact's
    KV cache M, a checkpoint's max positions), so the cache and masks are bounded by it.

    Args:
        backend_or_session_factory: an `LMBackend` (its `new_session(batch, max_len)` is used) or
            a callable (batch, max_len) -> `LMSession`.
        tokenizer: from `model_zoo.tokenizers.load_tokenizer` (encode / decode / eos_ids / pad_id),
            or None when every prompt is a list of token ids: the pad / EOS ids then come from
            the backend's spec and `text` stays "".
        prompts: a string, a list of strings, or a list of token-id lists (already encoded; each
            id must lie in [0, vocab)).
        config: decoding options.
        add_special_tokens: passed to `tokenizer.encode` for string prompts.
        prompt_logits: also return each prompt's logits at every position
            (`GenerationResult.prompt_logits`, float32 [prompt length, vocab]).

    Returns:
        One `GenerationResult` per prompt, in order.

    Raises:
        ConfigError: an empty prompt (no tokens), a token id outside the vocabulary, or a
            request that exceeds the context.
        GenerationInterrupted: Ctrl-C between steps; `.results` holds the tokens so far.
    """
    cfg = config or GenerationConfig()
    cfg.validate()
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ConfigError("generate: no prompt given", "pass at least one prompt (text or token ids)")
    spec = getattr(backend_or_session_factory, "spec", None)
    if tokenizer is None and any(isinstance(p, str) for p in prompts):
        raise ConfigError("generate: text prompts need a tokenizer", "pass the tokenizer, or token-id prompts")
    vocab = _vocab_size(backend_or_session_factory, tokenizer)
    encoded = []
    for i, p in enumerate(prompts):
        e = tokenizer.encode(p, add_special_tokens) if isinstance(p, str) else [int(t) for t in p]
        if not e:
            shown = f" ({p!r})" if isinstance(p, str) else ""
            raise ConfigError(f"generate: prompt {i + 1}{shown} has no tokens",
                              "give at least one token (an empty text prompt encodes to nothing when the "
                              "tokenizer adds no BOS / special tokens)")
        bad = [t for t in e if t < 0 or (vocab is not None and t >= vocab)]
        if bad:
            raise ConfigError(f"generate: prompt {i + 1} has token id {bad[0]} outside the vocabulary "
                              f"[0, {vocab if vocab is not None else '…'})",
                              f"token ids lie in 0..{vocab - 1 if vocab is not None else 'vocab-1'}")
        encoded.append(e)
    pad_id = tokenizer.pad_id if tokenizer is not None else int(getattr(spec, "pad_token_id", None) or 0)
    eos_ids = tuple(tokenizer.eos_ids) if tokenizer is not None else tuple(getattr(spec, "eos_ids", ()) or ())
    decode = tokenizer.decode if tokenizer is not None else (lambda ids: "")
    B, S = len(encoded), max(len(e) for e in encoded)
    # before any allocation: the context holds prompt + new tokens (and an explicit max_len)
    check_context(backend_or_session_factory, S, cfg.max_new_tokens, cfg.max_len)
    max_len = cfg.max_len or S + cfg.max_new_tokens
    if S + cfg.max_new_tokens > max_len:
        raise ConfigError(f"prompt ({S} tokens) + max_new_tokens ({cfg.max_new_tokens}) exceed the "
                          f"cache of {max_len} slots", "raise --max-len or lower --max-new-tokens")
    ids = np.full((B, S), pad_id, np.int64)
    mask = np.zeros((B, S), np.int64)
    for b, e in enumerate(encoded):
        ids[b, S - len(e):] = e
        mask[b, S - len(e):] = 1
    stops = set(eos_ids) | {int(t) for t in cfg.stop_token_ids}
    rngs = [np.random.default_rng([int(cfg.seed), b]) for b in range(B)]
    results = [GenerationResult(prompt_ids=e) for e in encoded]
    seen = [np.array(e, np.int64) for e in encoded]
    emitted = [""] * B
    done = np.zeros(B, bool)

    try:
        session = _session(backend_or_session_factory, B, max_len)
        # plain greedy over graphs that choose the token themselves (ArgMax in the graph,
        # contract.GREEDY_OUTPUTS): only the ids come back from the card, not the logits
        on_graph = _greedy_on_graph(session, cfg) and not prompt_logits
        if prompt_logits:
            every = _prefill_all(session, ids, mask)
            for b, e in enumerate(encoded):
                results[b].prompt_logits = np.ascontiguousarray(every[b, S - len(e):], np.float32)
            logits = every[:, -1]
        elif on_graph:
            chosen, finite = session.prefill_next(ids, mask)
        else:
            logits = session.prefill(ids, mask)
        last = ids[:, -1].copy()
        for step in range(cfg.max_new_tokens):
            if on_graph:
                _check_finite_rows(finite, done, step)
            else:
                _check_finite(logits[~done], step)
                scores = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
            for b in range(B):
                if done[b]:
                    continue
                if on_graph:
                    tok = int(chosen[b])
                else:
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
                    text = decode(r.token_ids)
                    if not text.endswith("\ufffd"):  # hold back an incomplete UTF-8 sequence
                        cfg.stream(b, tok, text[len(emitted[b]):])
                        emitted[b] = text
            if done.all() or step == cfg.max_new_tokens - 1:
                break
            if on_graph:
                chosen, finite = session.decode_next(last)
            else:
                logits = session.decode(last)
    except KeyboardInterrupt:  # Ctrl-C between (or inside) steps: keep what was generated
        for b, r in enumerate(results):
            if not done[b]:
                r.finish_reason = "interrupted"
        _finish(results, decode, cfg, emitted, flush=False)
        raise GenerationInterrupted(results) from None
    _finish(results, decode, cfg, emitted)
    return results


def _finish(results: list[GenerationResult], decode, cfg: GenerationConfig, emitted: list[str],
            flush: bool = True) -> None:
    """Decode each row's text (without its stop token); flush held-back streamed text."""
    for b, r in enumerate(results):
        body = r.token_ids[:-1] if r.finish_reason == "stop" else r.token_ids
        r.text = decode(body)
        if flush and cfg.stream is not None and len(r.text) > len(emitted[b]) and r.text.startswith(emitted[b]):
            cfg.stream(b, -1, r.text[len(emitted[b]):])  # flush held-back text


def greedy_tokens(session_factory, input_ids, n: int, attention_mask=None, return_logits: bool = False):
    """`n` greedy tokens per row, never stopping early (for parity tests between backends).

    Without `return_logits`, graphs that choose the token (`greedy_on_graph`) choose it.

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
    if not return_logits and _greedy_on_graph(session):  # the graph's ArgMax: only ids come back
        tok, _ = session.prefill_next(ids, attention_mask)
        toks = [tok]
        for _ in range(n - 1):
            tok, _ = session.decode_next(tok)
            toks.append(tok)
        return np.stack(toks, axis=1)
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
