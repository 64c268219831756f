"""Per-step inputs of an LLM over a static, preallocated KV cache — the host side of the card.

Every backend (torch golden, MindSpore, onnxruntime, simulator, pyACL) decodes through the same
bookkeeping, so they see identical positions and masks:

- The cache has `max_len` slots per row. A prefill of a left-padded batch [B, S] writes slots
  0 … S-1 (padding slots are marked invalid); each decode step writes the next slot.
- `visible[b, i, j]` says whether query i of this step may attend to cache slot j, *after* this
  step's K/V are written into their slots: slot valid and (j ≤ query slot, or j inside the
  prefix-LM context for ChatGLM-6B). A query always sees its own slot, so a padding row is never
  fully masked (a NaN there would reach real rows through V in the next layer).
- Positions: Llama uses 1-D positions counting real tokens; ChatGLM-6B uses 2-D positions
  (reference model_architectures.md §1.5–1.6): position = index until `<sop>`, then frozen at
  the `[gMASK]` index; block id = 0 in the context, then 1, 2, 3 … from `<sop>` on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ascend_adapt.errors import ConfigError
from ascend_adapt.spec import ModelSpec


@dataclass
class StepInputs:
    """What one forward step needs.

    Attributes:
        input_ids: [B, S] int64.
        positions: [B, S] int64 (1-D rotary) or [B, 2, S] (ChatGLM-6B: positions, block ids).
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
        next_pos: [B] next 1-D position (Llama) / next block id (ChatGLM).
        ctx_end: [B] first slot that is causal (ChatGLM: the `<sop>` slot; Llama: 0).
        gmask_pos: [B] ChatGLM's frozen position (index of [gMASK] / [MASK] in the unpadded row).
    """

    spec: ModelSpec
    max_len: int
    valid: np.ndarray
    next_slot: int
    next_pos: np.ndarray
    ctx_end: np.ndarray
    gmask_pos: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def batch(self) -> int:
        return self.valid.shape[0]


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
        spec: the model.
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
    slots = np.arange(S)
    if spec.rotary == "glm2d":
        pos = np.zeros((B, 2, S), np.int64)
        ctx_end = np.zeros(B, np.int64)
        gpos = np.zeros(B, np.int64)
        next_block = np.zeros(B, np.int64)
        for b in range(B):
            pad = S - int(mask[b].sum())
            row = ids[b, pad:].tolist()
            if spec.bos_token_id not in row:
                raise ConfigError(
                    f"ChatGLM-6B prompt (row {b}) has no <sop> (id {spec.bos_token_id})",
                    "encode prompts with the ChatGLM tokenizer: it appends [gMASK] <sop>",
                )
            c = row.index(spec.bos_token_id)
            g = spec.gmask_token_id if spec.gmask_token_id in row else spec.mask_token_id
            if g not in row[:c]:
                raise ConfigError(f"ChatGLM-6B prompt (row {b}) has no [gMASK]/[MASK] before <sop>",
                                  "encode prompts with the ChatGLM tokenizer")
            m = row.index(g)
            t = np.arange(len(row))
            pos[b, 0, pad:] = np.where(t < c, t, m)
            pos[b, 1, pad:] = np.where(t < c, 0, t - c + 1)
            ctx_end[b] = pad + c
            gpos[b] = m
            next_block[b] = len(row) - c + 1
        state = CacheState(spec, max_len, valid, S, next_block, ctx_end, gpos)
    else:
        pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int64)
        pos[~mask] = 1 if S > 1 else 0  # as transformers does for padding
        state = CacheState(spec, max_len, valid, S, mask.sum(1).astype(np.int64), np.zeros(B, np.int64))
    step = StepInputs(ids, pos, 0, _visible(valid, slots, state.ctx_end))
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
    if state.spec.rotary == "glm2d":
        pos = np.stack([state.gmask_pos, state.next_pos], axis=1)[:, :, None]
    else:
        pos = state.next_pos[:, None].copy()
    state.next_pos = state.next_pos + 1
    state.next_slot = s + 1
    return StepInputs(tok, pos, s, _visible(state.valid, np.array([s]), state.ctx_end))
