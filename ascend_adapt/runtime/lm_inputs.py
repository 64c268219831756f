"""Per-step inputs of an LLM over a static, preallocated KV cache — the host side of the card.

Every backend (torch golden, MindSpore, onnxruntime, simulator, pyACL) decodes through the same
bookkeeping, so they see identical positions and masks:

- The cache has `max_len` slots per row. A prefill of a left-padded batch [B, S] writes slots
  0 … S-1 (padding slots are marked invalid); each decode step writes the next slot.
- `visible[b, i, j]` says whether query i of this step may attend to cache slot j, *after* this
  step's K/V are written into their slots: slot valid and (j ≤ query slot, or j inside the
  row's bidirectional prefix `ctx_end`). A query always sees its own slot, so a padding row is
  never fully masked (a NaN there would reach real rows through V in the next layer).
- Positions and the prefix come from the spec's `position_scheme`, the hook the architecture's
  adapter provides: `PositionScheme` here is the common case (1-D positions counting real tokens,
  no prefix); ChatGLM-6B's adapter overrides it with its 2-D positions and its prefix-LM context
  (`model_zoo/chatglm/positions.py`). This module never tests for an architecture by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ascend_adapt.errors import ConfigError
from ascend_adapt.spec import ModelSpec


@dataclass
class StepInputs:
    """What one forward step needs.

    Attributes:
        input_ids: [B, S] int64.
        positions: int64 of the scheme's `shape(B, S)`: [B, S], or [B, rows, S] (ChatGLM-6B:
            [B, 2, S] = positions, block ids).
        start_slot: first cache slot written by this step (the step writes start … start+S-1).
        visible: [B, S, max_len] bool; True = query may attend to that cache slot.
    """

    input_ids: np.ndarray
    positions: np.ndarray
    start_slot: int
    visible: np.ndarray

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    def split_visible(self) -> tuple[np.ndarray, np.ndarray]:
        """Visibility for a graph that attends over [cache slots ⊕ this step's tokens].

        Returns:
            past: [B, S, max_len] — cache slots written by *earlier* steps (slots ≥ start_slot
                are hidden: the cache passed in does not hold this step's K/V yet).
            new: [B, S, S] — among this step's own tokens.
        """
        S, s0 = self.seq_len, self.start_slot
        past = self.visible.copy()
        past[:, :, s0:] = False
        new = self.visible[:, :, s0:s0 + S]
        return past, new

    def additive_mask(self, fill: float = -1e9, dtype=np.float32) -> np.ndarray:
        """[B, 1, S, max_len] additive bias: 0 where visible, `fill` elsewhere."""
        return np.where(self.visible, 0.0, fill).astype(dtype)[:, None]


@dataclass
class CacheState:
    """Host-side state of one batch's static cache.

    Attributes:
        valid: [B, max_len] bool, slots holding real tokens.
        next_slot: the slot the next token goes to (same for every row: rows are left-padded).
        next_pos: [B] the counter the position scheme numbers the next token with (1-D: its
            position; ChatGLM-6B: its block id); +1 per decode step.
        ctx_end: [B] first slot that is causal; slots before it form a bidirectional prefix
            (the default scheme: 0; ChatGLM-6B: the `<sop>` slot).
        carry: [B, k] what else the position scheme keeps per row for its decode positions
            (the default: k = 0; ChatGLM-6B: k = 1, the frozen [gMASK] position).
    """

    spec: ModelSpec
    max_len: int
    valid: np.ndarray
    next_slot: int
    next_pos: np.ndarray
    ctx_end: np.ndarray
    carry: np.ndarray

    @property
    def batch(self) -> int:
        return self.valid.shape[0]


@dataclass
class PrefillPositions:
    """What a position scheme computes for a prefill: the step's positions and the per-row state
    its decode steps continue from (see `CacheState` for `next_pos`, `ctx_end`, `carry`)."""

    positions: np.ndarray
    next_pos: np.ndarray
    ctx_end: np.ndarray
    carry: np.ndarray


class PositionScheme:
    """How a model numbers its tokens and which prompt slots see each other: the hook an
    architecture's adapter provides (`Adapter.position_scheme`) and `ModelSpec.position_scheme`
    resolves by `spec.arch`.

    This base class is the common case (Llama, Qwen, ChatGLM2/3): 1-D positions that count the
    real tokens of a row (padding gets the position transformers gives it), a causal mask, no
    prompt suffix. An architecture with other rules subclasses it and overrides the methods
    (ChatGLM-6B: `model_zoo/chatglm/positions.py`). Every backend, the graph contract, the
    continuous-batching rows and the tools that make prompts go through these methods only.
    """

    name = "1d"
    # rows of position_ids per token: 0 = position_ids is [B, S]; n > 0 = [B, n, S]
    rows = 0

    def shape(self, batch, seq) -> list:
        """position_ids' shape for a step of `seq` tokens (ints, or a symbolic gear dimension)."""
        return [batch, self.rows, seq] if self.rows else [batch, seq]

    def prefill(self, spec: ModelSpec, ids: np.ndarray, mask: np.ndarray) -> PrefillPositions:
        """Positions of a left-padded prompt batch and the decode state after it.

        Args:
            spec: the model.
            ids: [B, S] int64 token ids, left-padded.
            mask: [B, S] bool, True for real tokens.

        Returns:
            positions int64 `shape(B, S)`, next_pos [B], ctx_end [B], carry [B, k].
        """
        B, S = ids.shape
        pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int64)
        pos[~mask] = 1 if S > 1 else 0  # as transformers does for padding
        return PrefillPositions(pos, mask.sum(1).astype(np.int64), np.zeros(B, np.int64), np.zeros((B, 0), np.int64))

    def decode(self, next_pos: np.ndarray, carry: np.ndarray) -> np.ndarray:
        """Positions of one decode step, int64 `shape(B, 1)`, from each row's `next_pos` [B] and
        `carry` [B, k] (the state `prefill` returned, `next_pos` advanced by one per step)."""
        return np.asarray(next_pos, np.int64)[:, None].copy()

    def prompt_suffix(self, spec: ModelSpec) -> tuple[int, ...]:
        """Token ids every prompt of this model ends with (as its tokenizer writes them); tools
        that make up prompts (compare's random ids, op recording) end theirs with these."""
        return ()


DEFAULT_POSITIONS = PositionScheme()


def scheme_for(spec: ModelSpec) -> PositionScheme:
    """The position scheme of `spec.arch`'s adapter; the default for an architecture no adapter
    registered in this process (the spec may come from a manifest written elsewhere)."""
    from ascend_adapt.model_zoo.base import ADAPTERS  # lazy: the plugins sit above the core

    if spec.arch not in ADAPTERS:
        return DEFAULT_POSITIONS
    scheme = getattr(ADAPTERS.get(spec.arch), "position_scheme", DEFAULT_POSITIONS)
    if not isinstance(scheme, PositionScheme):
        raise ConfigError(f"adapter '{spec.arch}': position_scheme is a {type(scheme).__name__}, "
                          "not a PositionScheme", "subclass ascend_adapt.runtime.lm_inputs.PositionScheme")
    return scheme


def _visible(valid: np.ndarray, q_slots: np.ndarray, ctx_end: np.ndarray) -> np.ndarray:
    """[B, S, M]: slot j valid and (j <= query slot or j < ctx_end[b])."""
    M = valid.shape[1]
    j = np.arange(M)[None, None, :]
    causal = j <= q_slots[None, :, None]
    prefix = j < ctx_end[:, None, None]
    own = j == q_slots[None, :, None]  # a padding query sees itself, so no row is fully masked
    return (valid[:, None, :] & (causal | prefix)) | own


def prefill_inputs(spec: ModelSpec, input_ids: np.ndarray, attention_mask: np.ndarray | None,
                   max_len: int) -> tuple[StepInputs, CacheState]:
    """Inputs of the prefill step for a left-padded batch, and the cache state after it.

    Args:
        spec: the model (its `position_scheme` numbers the tokens).
        input_ids: [B, S] token ids, left-padded.
        attention_mask: [B, S] 1 for real tokens, 0 for padding (None = no padding).
        max_len: cache slots per row (prompt + new tokens must fit).
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim == 1:
        ids = ids[None]
    B, S = ids.shape
    mask = np.ones((B, S), bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    if mask.shape != ids.shape:
        raise ConfigError(f"attention_mask shape {mask.shape} does not match input_ids {ids.shape}")
    if S > max_len:
        raise ConfigError(f"prompt of {S} tokens does not fit a cache of {max_len} slots",
                          "raise --max-len / --seq-len or shorten the prompt")
    for b in range(B):
        first = int(np.argmax(mask[b])) if mask[b].any() else S
        if mask[b].any() and not mask[b, first:].all():
            raise ConfigError("attention_mask must be left-padded (zeros only before the first real token)")
    valid = np.zeros((B, max_len), bool)
    valid[:, :S] = mask
    p = spec.position_scheme.prefill(spec, ids, mask)
    state = CacheState(spec, max_len, valid, S, p.next_pos, p.ctx_end, p.carry)
    step = StepInputs(ids, p.positions, 0, _visible(valid, np.arange(S), state.ctx_end))
    return step, state


def decode_inputs(state: CacheState, token_ids: np.ndarray) -> StepInputs:
    """Inputs of one decode step (one new token per row); advances `state` in place."""
    tok = np.asarray(token_ids, dtype=np.int64).reshape(-1, 1)
    B = state.batch
    if tok.shape[0] != B:
        raise ConfigError(f"decode got {tok.shape[0]} tokens for a batch of {B}")
    s = state.next_slot
    if s >= state.max_len:
        raise ConfigError(f"the KV cache is full ({state.max_len} slots)",
                          "raise --max-len / --seq-len, or lower --max-new-tokens")
    state.valid[:, s] = True
    pos = state.spec.position_scheme.decode(state.next_pos, state.carry)
    state.next_pos = state.next_pos + 1
    state.next_slot = s + 1
    return StepInputs(tok, pos, s, _visible(state.valid, np.array([s]), state.ctx_end))
