"""ChatGLM-6B's position scheme: 2-D positions and a prefix-LM context (reference
model_architectures.md §1.5–1.6), the hook `ChatGLMAdapter.position_scheme` gives the core.

A prompt is `context … [gMASK] <sop>` (the tokenizer appends the last two):
- position = the token's index until `<sop>`, then frozen at the index of `[gMASK]` (or `[MASK]`);
- block id = 0 in the context, then 1, 2, 3 … from `<sop>` on;
- every context slot (before `<sop>`) sees every other context slot; from `<sop>` on it is causal.

position_ids are [B, 2, S] (positions, block ids). Per row, decode continues from the next block
id and carries the frozen position.
"""

from __future__ import annotations

import numpy as np

from ascend_adapt.errors import ConfigError
from ascend_adapt.runtime.lm_inputs import PositionScheme, PrefillPositions
from ascend_adapt.spec import ModelSpec


class GLM2DPositions(PositionScheme):
    """ChatGLM-6B: [B, 2, S] positions / block ids, the context before `<sop>` bidirectional."""

    name = "glm2d"
    rows = 2

    def prefill(self, spec: ModelSpec, ids: np.ndarray, mask: np.ndarray) -> PrefillPositions:
        """Raises ConfigError for a row without `<sop>`, or without [gMASK]/[MASK] before it."""
        B, S = ids.shape
        pos = np.zeros((B, 2, S), np.int64)
        ctx_end = np.zeros(B, np.int64)
        frozen = np.zeros((B, 1), np.int64)
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
            frozen[b, 0] = m
            next_block[b] = len(row) - c + 1
        return PrefillPositions(pos, next_block, ctx_end, frozen)

    def decode(self, next_pos: np.ndarray, carry: np.ndarray) -> np.ndarray:
        """[B, 2, 1]: the frozen [gMASK] position and the next block id."""
        return np.stack([np.asarray(carry, np.int64)[:, 0], np.asarray(next_pos, np.int64)], axis=1)[:, :, None]

    def prompt_suffix(self, spec: ModelSpec) -> tuple[int, ...]:
        """[gMASK] <sop>, as ChatGLM-6B's tokenizer appends them."""
        return (spec.gmask_token_id, spec.bos_token_id)


GLM2D_POSITIONS = GLM2DPositions()
