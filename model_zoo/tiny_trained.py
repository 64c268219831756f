"""Tiny checkpoints that have something to say: a short, deterministic training run on the corpus.

Why: the tiny random checkpoints (`tiny.py`) have nearly flat next-token logits (top-1 / top-2
margin median ~0.15 logits, a fifth of the steps below 0.05). A correct int8 weight rounding moves
their logits by 0.02–0.05, which flips some of those argmaxes, and in free-running greedy decoding
every later token of the row then differs (fp16 moves them ~10× less and flips none). Agreement of
greedy tokens there measures the flatness as much as the quantizer. A model trained until it
reproduces a text has margins of several logits on that text, as a real model has on text it
predicts confidently, and free-running agreement becomes a test of the quantized numerics
(docs/quantization.md "Measured").

What: `train_tiny_weights(arch)` trains the tiny config of `arch` (the same shapes as
`make_tiny_checkpoint`) to continue `tiny_corpus.txt`, read as one endless loop of lines
(tokenized with the tiny tokenizer, a newline piece between lines), from the start of every line.
It trains the fp32 torch golden classes themselves (transformers' `LlamaForCausalLM`; our
`ChatGLMForCausalLM`'s layers) with positions and masks from the shared bookkeeping
(`ascend_adapt.runtime.lm_inputs.prefill_inputs`), so training sees exactly the inputs that
inference feeds: a Llama row is `BOS + the stream from a line start`; a ChatGLM-6B row is the first
`prefix_len(i)` tokens of line i, `[gMASK] <sop>`, then the rest of the stream, with the loss on the
tokens after `<sop>` only (the context before it is bidirectional). `make_trained_tiny_checkpoint`
writes the result with `make_tiny_checkpoint`'s own writer (same on-disk layouts, tokenizer and
config); `trained_prompts` gives the matching prompt of every line and `corpus_continuations` the
text that follows it.

Deterministic: fixed seed, fixed step count, full batch, Adam, one CPU thread while training (a
matmul's summation order can depend on the thread count); 3–6 s per model at load average 4.6 on 2 cores.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Mapping

import numpy as np

from ascend_adapt.errors import ConfigError
from ascend_adapt.spec import ModelSpec

from .base import ADAPTERS
from .tiny import _CORPUS, make_tiny_checkpoint, random_canonical_weights, tiny_config, tiny_tokenizer_model

ARCHS = ("llama", "chatglm")
STEPS = 100          # Adam steps (full batch: one row per corpus line); the loss has converged by then
LR = 1e-2            # peak learning rate (linear warm-up over 10 % of the steps, cosine decay to 0)
CONTINUATION = 34    # tokens trained after each prompt (≥ the 32 greedy steps the tests decode, + 2)


def _newline_id(arch: str, sp) -> int:
    piece = "<n>" if arch == "chatglm" else "<0x0A>"  # ChatGLM-6B's user piece / Llama's byte fallback
    i = sp.piece_to_id(piece)
    if i == sp.unk_id():
        raise ConfigError(f"the tiny {arch} tokenizer has no newline piece '{piece}'")
    return int(i)


def corpus_lines(arch: str) -> list[list[int]]:
    """Token ids of each `tiny_corpus.txt` line under the tiny tokenizer of `arch` (no specials)."""
    import sentencepiece as spm

    from .tokenizers import ChatGLMTokenizer

    sp = spm.SentencePieceProcessor(model_proto=tiny_tokenizer_model(arch))
    pre = ChatGLMTokenizer.preprocess if arch == "chatglm" else (lambda s: s)
    lines = [ln for ln in _CORPUS.read_text(encoding="utf-8").splitlines() if ln.strip()]
    nl = _newline_id(arch, sp)
    return [[int(t) for t in sp.encode(pre(ln))] + [nl] for ln in lines]


MAX_PREFIX = 6


def prefix_len(i: int, line: list[int]) -> int:
    """Prompt tokens taken from line i: 3 to `MAX_PREFIX` by line, at least one token left to continue."""
    return max(1, min(3 + i % 4, MAX_PREFIX, len(line) - 1))


def _stream_from(lines: list[list[int]], i: int, skip: int, n: int) -> list[int]:
    """n tokens of the endless loop of lines, from token `skip` of line i."""
    out: list[int] = []
    j, k = i, skip
    while len(out) < n:
        out.extend(lines[j % len(lines)][k:])
        j, k = j + 1, 0
    return out[:n]


def trained_prompts(spec: ModelSpec, lines: list[list[int]] | None = None) -> list[list[int]]:
    """The prompt of every corpus line, as the model was trained on it (Llama: BOS + the first
    `prefix_len` tokens; ChatGLM-6B: those tokens + [gMASK] <sop>)."""
    lines = lines if lines is not None else corpus_lines(spec.arch)
    out = []
    for i, line in enumerate(lines):
        body = line[:prefix_len(i, line)]
        out.append(body + [spec.gmask_token_id, spec.bos_token_id] if spec.rotary == "glm2d"
                   else [spec.bos_token_id] + body)
    return out


def corpus_continuations(spec: ModelSpec, n: int, lines: list[list[int]] | None = None) -> np.ndarray:
    """int64 [lines, n]: the n corpus tokens that follow each `trained_prompts` prompt (what the
    trained model learned to continue with; the text loops from the last line to the first)."""
    lines = lines if lines is not None else corpus_lines(spec.arch)
    return np.asarray([_stream_from(lines, i, prefix_len(i, line), n) for i, line in enumerate(lines)], np.int64)


def _rows(spec: ModelSpec, lines: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Training rows (ids [R, T]) and loss weights on the *targets* (ids[:, 1:]) [R, T-1]."""
    prompts = trained_prompts(spec, lines)
    rows, weights = [], []
    for i, (line, p) in enumerate(zip(lines, prompts)):
        k = prefix_len(i, line)
        if spec.rotary == "glm2d":
            # the prompt + ≥ CONTINUATION stream tokens (rows padded to one length with more stream);
            # loss from <sop> on (its target is the first new token)
            seq = p + _stream_from(lines, i, k, CONTINUATION + MAX_PREFIX - k)
            w = np.zeros(len(seq) - 1, np.float32)
            w[len(p) - 1:] = 1.0
        else:  # causal everywhere: every position from BOS on is a prediction the model will make
            seq = [spec.bos_token_id] + _stream_from(lines, i, 0, MAX_PREFIX + CONTINUATION)
            w = np.ones(len(seq) - 1, np.float32)
        rows.append(seq)
        weights.append(w)
    T = max(map(len, rows))
    if any(len(r) != T for r in rows):  # equal by construction; say so loudly if that ever changes
        raise ConfigError("tiny_trained: training rows of unequal length")
    return np.asarray(rows, np.int64), np.asarray(weights, np.float32)


@contextlib.contextmanager
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _init_weights(spec: ModelSpec, seed: int) -> dict[str, np.ndarray]:
    """The random tiny weights, with the head scaled to logits O(1) (a trainable start)."""
    w = random_canonical_weights(spec, seed)
    w["lm_head.weight"] = (w["lm_head.weight"] * 0.1).astype(np.float32)
    if spec.tie_word_embeddings:
        w[spec.tied_source] = w["lm_head.weight"]
        w["embed.weight"] = w["lm_head.weight"]
    return w


def train_tiny_weights(arch: str, *, steps: int = STEPS, seed: int = 0, lr: float = LR,
                       config_overrides: Mapping | None = None, log: list | None = None) -> dict[str, np.ndarray]:
    """Train the tiny `arch` model to continue the corpus; returns canonical fp32 weights.

    Args:
        arch: "llama" or "chatglm".
        steps: Adam steps (full batch).
        seed: seed of the initial weights and of torch.
        lr: peak learning rate.
        config_overrides: keys to change in the tiny config.json (e.g. tie_word_embeddings).
        log: when a list, (step, loss) pairs are appended every 25 steps and at the end.
    """
    if arch not in ARCHS:
        raise ConfigError(f"tiny_trained: no trainer for architecture '{arch}'", f"use one of: {', '.join(ARCHS)}")
    if steps < 1:
        raise ConfigError(f"tiny_trained: steps must be ≥ 1, got {steps}")
    import torch

    from ascend_adapt.runtime.lm_inputs import prefill_inputs

    adapter = ADAPTERS.get(arch)
    spec = adapter.spec_from_config(tiny_config(arch, **(config_overrides or {})))
    lines = corpus_lines(arch)
    ids, weights = _rows(spec, lines)
    if int(ids.max()) >= spec.vocab_size:
        raise ConfigError(f"tiny_trained: token id {int(ids.max())} ≥ vocab_size {spec.vocab_size}")
    step_in, _ = prefill_inputs(spec, ids, None, ids.shape[1])
    x_ids = torch.from_numpy(ids)
    targets = x_ids[:, 1:]
    w = torch.from_numpy(weights)
    positions = torch.from_numpy(step_in.positions)
    visible = torch.from_numpy(step_in.visible)
    init = _init_weights(spec, seed)

    with _one_thread():
        torch.manual_seed(seed)
        if arch == "llama":
            from .llama.torch_model import build_hf_model

            model = build_hf_model(spec, init.items(), "float32")

            def logits_of():
                return model(input_ids=x_ids, position_ids=positions, use_cache=False).logits
        else:
            from .chatglm.torch_model import ChatGLMForCausalLM

            model = ChatGLMForCausalLM(spec, "float32").load_canonical(init.items())

            def logits_of():  # the module's forward, without its no_grad (same layers, same order)
                x = model.embed(x_ids)
                for layer in model.layers:
                    x = layer(x, positions, visible, model.cos, model.sin)
                return model.lm_head(model.final_norm(x))
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.98))
        warm = max(1, steps // 10)

        def lr_at(s: int) -> float:
            if s < warm:
                return lr * (s + 1) / warm
            return lr * 0.5 * (1.0 + np.cos(np.pi * (s - warm) / max(1, steps - warm)))

        for s in range(steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(s)
            logits = logits_of()[:, :-1]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                    reduction="none")
            loss = (nll * w.reshape(-1)).sum() / w.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if log is not None and (s % 25 == 0 or s == steps - 1):
                log.append((s, float(loss.detach())))
        model.eval()

    with torch.no_grad():
        if arch == "llama":
            state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
            out = {}
            for e in adapter.entries(spec, "hf"):
                if e.source not in state:
                    continue
                for cname, arr in zip(e.canonical, adapter.split(e, state[e.source], spec)):
                    out[cname] = np.ascontiguousarray(arr, dtype=np.float32)
        else:
            params = dict(model.named_parameters())
            out = {c: params[model._param_name(c)].detach().float().numpy().copy() for c in spec.canonical_shapes()}
    missing = sorted(set(spec.canonical_shapes()) - set(out))
    if missing:
        raise ConfigError(f"tiny_trained: trained model lacks canonical tensor '{missing[0]}'")
    return out


def make_trained_tiny_checkpoint(out_dir, arch: str = "llama", layout: str = "safetensors", *, steps: int = STEPS,
                                 seed: int = 0, config_overrides: Mapping | None = None, force: bool = False,
                                 log: list | None = None) -> Path:
    """Train (`train_tiny_weights`) and write the checkpoint as `make_tiny_checkpoint` writes it."""
    weights = train_tiny_weights(arch, steps=steps, seed=seed, config_overrides=config_overrides, log=log)
    return make_tiny_checkpoint(out_dir, arch, layout, config_overrides=config_overrides, force=force,
                                weights=weights)
