"""The step interface between the generate loop and every backend.

A backend makes sessions; a session owns one batch's KV cache (static, `max_len` slots) and
turns `StepInputs` (see `lm_inputs.py`) into next-token logits. The generate loop never sees the
cache or the positions: it only calls `prefill` and `decode`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ascend_adapt.spec import ModelSpec

from .lm_inputs import CacheState, StepInputs, decode_inputs, prefill_inputs


@runtime_checkable
class LMSession(Protocol):
    """One batch in flight."""

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        """Run the prompt ([B, S], left-padded); return float32 logits [B, vocab] of the last position."""

    def decode(self, token_ids: np.ndarray) -> np.ndarray:
        """Feed one token per row ([B]); return float32 logits [B, vocab]."""


@runtime_checkable
class LMBackend(Protocol):
    """Something that can run a model: torch golden, mindspore, onnxruntime, sim, acl."""

    name: str
    spec: ModelSpec

    def new_session(self, batch: int, max_len: int) -> LMSession:
        ...


class StaticCacheSession:
    """Base session for backends that execute one step at a time over a static cache.

    Subclasses implement `step(inputs) -> logits [B, S, vocab]` (they own the cache tensors and
    write this step's K/V at `inputs.start_slot …`). This class keeps the host-side bookkeeping.
    """

    def __init__(self, spec: ModelSpec, batch: int, max_len: int):
        self.spec, self.batch, self.max_len = spec, batch, max_len
        self.state: CacheState | None = None

    def step(self, inputs: StepInputs) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def prefill(self, input_ids, attention_mask=None) -> np.ndarray:
        inputs, self.state = prefill_inputs(self.spec, input_ids, attention_mask, self.max_len)
        if inputs.input_ids.shape[0] != self.batch:
            raise ValueError(f"session was made for batch {self.batch}, got {inputs.input_ids.shape[0]}")
        logits = self.step(inputs)
        return np.asarray(logits, dtype=np.float32)[:, -1]

    def decode(self, token_ids) -> np.ndarray:
        if self.state is None:
            raise RuntimeError("decode() before prefill()")
        logits = self.step(decode_inputs(self.state, token_ids))
        return np.asarray(logits, dtype=np.float32)[:, -1]
