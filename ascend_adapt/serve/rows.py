"""Row-wise execution for continuous batching: each row of the batch is its own request.

`generate` runs a batch that starts together (every row's cache slot advances in lock step).
A server refills a finished row with a waiting request while the other rows keep decoding, so
each row needs its own cache slots, positions and mask. Two implementations of one small
interface (`prefill(rows)` / `decode(tokens)` / `free(row)`):

- `GraphRows`: the static-batch graphs of a converted artifact (sim / onnxruntime / acl). The
  graphs take per-row positions and masks already (graph contract), so nothing in the graphs
  changes: a refilled row is prefilled in a batch-B prefill step whose other rows are fillers
  (their outputs are dropped), and one decode step serves every running row at its own slot.
  The feeds are the arrays `GraphLMSession` builds for the same row (`lm_inputs.prefill_inputs`
  for one row, the `_visible` rule per row), so a row's answer equals `generate`'s.
- `SessionRows`: a backend with no static batch (torch, mindspore): each row is a batch-1
  session of its own, as `generate` makes for one prompt; the rows are stepped one after another.

Slots a previous request left in a refilled row are hidden by the mask (additive −10000: their
softmax weight is exactly 0), so they need no clearing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ascend_adapt.errors import ConfigError
from ascend_adapt.runtime.lm_inputs import StepInputs, prefill_inputs


@dataclass
class _RowState:
    """One row's cache bookkeeping (the per-row version of `lm_inputs.CacheState`)."""

    valid: np.ndarray        # [M] bool
    next_slot: int
    next_pos: int            # the position scheme's counter (1-D: the position; ChatGLM-6B: block id)
    ctx_end: int             # first causal slot (0 by default; ChatGLM-6B: the <sop> slot)
    carry: np.ndarray        # [k] the scheme's other per-row decode state (ChatGLM-6B: the frozen position)


class GraphRows:
    """Per-row prefill / decode over the static-batch graphs of a converted artifact.

    Args:
        backend: an LM backend whose `new_session` returns a `GraphLMSession` (sim, onnxruntime, acl).

    Attributes:
        batch: B of the graphs (rows).
        max_len: M, cache slots per row.
        steps: {"prefill": n, "decode": n} graph executions so far.
    """

    def __init__(self, backend):
        self.backend = backend
        self.spec = backend.spec
        self.batch, self.max_len = int(backend.batch), int(backend.max_len)
        session = backend.new_session(self.batch, self.max_len)
        if not hasattr(session, "run_decode"):
            raise ConfigError(f"backend '{getattr(backend, 'name', backend)}' has no graph executors",
                              "serve a converted artifact on sim / onnxruntime / acl, or a checkpoint on torch")
        self.session = session
        self.run_prefill, self.run_decode = session.run_prefill, session.run_decode
        self.gears = session.gears  # None: two graphs (prefill of length S, decode)
        self.prefill_len = session.prefill_len
        self.pad_id = session.pad_id
        self.cache_k, self.cache_v = session.cache_k, session.cache_v
        self.rows: list[_RowState | None] = [None] * self.batch
        self.steps = {"prefill": 0, "decode": 0}

    # ------------------------------------------------------------------ sizes
    def gear_for(self, prompt_len: int) -> int:
        """The prefill length a prompt is left-padded to (the smallest gear holding it, else S)."""
        if self.gears:
            fits = [g for g in self.gears if g >= prompt_len]
            if not fits:
                raise ConfigError(f"prompt of {prompt_len} tokens exceeds the largest prefill gear ({self.gears[-1]})",
                                  "shorten the prompt, or re-convert with a larger gear (--gears / --seq-len)")
            return fits[0]
        if prompt_len > self.prefill_len:
            raise ConfigError(f"prompt of {prompt_len} tokens exceeds the prefill length S={self.prefill_len}",
                              "shorten the prompt, or re-convert with a larger --seq-len")
        return self.prefill_len

    def capacity(self, prompt_len: int) -> int:
        """New tokens a row can generate after a prompt of `prompt_len` tokens (M − padded prompt)."""
        return self.max_len - self.gear_for(prompt_len)

    # ------------------------------------------------------------------ steps
    def prefill(self, prompts: dict[int, list[int]]) -> dict[int, np.ndarray]:
        """Prefill the given rows (row → prompt ids, all of one gear) in one batch-B step.

        Returns:
            row → float32 logits [V] of the prompt's last position.
        """
        if not prompts:
            return {}
        S = self.gear_for(max(len(p) for p in prompts.values()))
        if any(self.gear_for(len(p)) != S for p in prompts.values()):
            raise ConfigError("GraphRows.prefill: the rows of one prefill step must share a gear")
        per: dict[int, tuple[StepInputs, object]] = {}
        for r, ids in prompts.items():
            x = np.full((1, S), self.pad_id, np.int64)
            m = np.zeros((1, S), np.int64)
            x[0, S - len(ids):] = ids
            m[0, S - len(ids):] = 1
            per[r] = prefill_inputs(self.spec, x, m, self.max_len)
        filler = next(iter(per.values()))[0]  # rows not being filled repeat a real row; dropped after
        pick = [per[r][0] if r in per else filler for r in range(self.batch)]
        step = StepInputs(np.concatenate([p.input_ids for p in pick]), np.concatenate([p.positions for p in pick]),
                          0, np.concatenate([p.visible for p in pick]))
        from ascend_adapt.contract import decode_feeds, prefill_feeds

        if self.gears is None:
            out = self.run_prefill(prefill_feeds(step))
        else:  # a step graph: a prefill is a step whose cache slots are all hidden
            out = self.run_prefill(decode_feeds(step, self.cache_k, self.cache_v))
        self.steps["prefill"] += 1
        logits = np.asarray(out["logits"], np.float32)
        result = {}
        for r, (_, state) in per.items():
            self.cache_k[:, r, :, :S] = out["present_keys"][:, r]
            self.cache_v[:, r, :, :S] = out["present_values"][:, r]
            self.rows[r] = _RowState(state.valid[0].copy(), S, int(state.next_pos[0]), int(state.ctx_end[0]),
                                     state.carry[0].copy())
            result[r] = logits[r, -1]
        return result

    def decode(self, tokens: dict[int, int]) -> dict[int, np.ndarray]:
        """One decode step: row → its next token in; row → float32 logits [V] out.

        Rows not in `tokens` are idle: they feed a pad token that sees only itself.
        """
        if not tokens:
            return {}
        B, M = self.batch, self.max_len
        scheme = self.spec.position_scheme
        ids = np.full((B, 1), self.pad_id, np.int64)
        pos = np.zeros(scheme.shape(B, 1), np.int64)
        past = np.zeros((B, 1, M), bool)
        j = np.arange(M)
        slots = {}
        for r, tok in tokens.items():
            st = self.rows[r]
            if st is None:
                raise ConfigError(f"row {r} was not prefilled")
            s = st.next_slot
            if s >= M:
                raise ConfigError(f"the KV cache of row {r} is full ({M} slots)")
            st.valid[s] = True
            # lm_inputs._visible for this row's query slot s, then split_visible's "past" (slots < s)
            visible = (st.valid & ((j <= s) | (j < st.ctx_end))) | (j == s)
            past[r, 0] = visible & (j < s)
            ids[r, 0] = tok
            pos[r] = scheme.decode(np.array([st.next_pos], np.int64), st.carry[None])[0]
            st.next_pos += 1
            st.next_slot = s + 1
            slots[r] = s
        from ascend_adapt.contract import additive

        new = np.ones((B, 1, 1), bool)  # a query always sees its own slot
        feeds = {"input_ids": ids.astype(np.int32), "position_ids": pos.astype(np.int32),
                 "attention_mask": additive(np.concatenate([past, new], -1))[:, None],
                 "past_keys": self.cache_k, "past_values": self.cache_v}
        out = self.run_decode(feeds)
        self.steps["decode"] += 1
        logits = np.asarray(out["logits"], np.float32)
        for r, s in slots.items():
            self.cache_k[:, r, :, s] = out["present_keys"][:, r, :, 0]
            self.cache_v[:, r, :, s] = out["present_values"][:, r, :, 0]
        return {r: logits[r, -1] for r in tokens}

    def free(self, row: int) -> None:
        """Forget a row (its slots are hidden from whatever request takes it next)."""
        self.rows[row] = None

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


class SessionRows:
    """Rows as batch-1 sessions, for backends that take any batch (torch, mindspore).

    Each request gets `backend.new_session(1, prompt + max_new_tokens)`, as `generate` does for
    one prompt; a decode step steps every running row in turn.

    Args:
        backend: an `LMBackend`.
        batch: rows served at once.
    """

    def __init__(self, backend, batch: int):
        from ascend_adapt.runtime.generate import context_limit

        if batch < 1:
            raise ConfigError(f"--batch must be ≥ 1, got {batch}")
        self.backend, self.spec, self.batch = backend, backend.spec, int(batch)
        limit = context_limit(backend)
        if limit is None:
            raise ConfigError(f"backend '{getattr(backend, 'name', backend)}' states no context length",
                              "serve a checkpoint whose config.json has max_position_embeddings / seq_length")
        self.max_len = limit[0]
        self.sessions: list = [None] * self.batch
        self.steps = {"prefill": 0, "decode": 0}

    def gear_for(self, prompt_len: int) -> int:
        return prompt_len

    def capacity(self, prompt_len: int) -> int:
        return self.max_len - prompt_len

    def prefill(self, prompts: dict[int, list[int]], max_new: dict[int, int] | None = None) -> dict[int, np.ndarray]:
        out = {}
        for r, ids in prompts.items():
            n = (max_new or {}).get(r, self.capacity(len(ids)))
            s = self.backend.new_session(1, len(ids) + n)
            out[r] = np.asarray(s.prefill(np.asarray([ids], np.int64), None), np.float32)[0]
            self.sessions[r] = s
            self.steps["prefill"] += 1
        return out

    def decode(self, tokens: dict[int, int]) -> dict[int, np.ndarray]:
        out = {r: np.asarray(self.sessions[r].decode(np.asarray([t], np.int64)), np.float32)[0]
               for r, t in tokens.items()}
        if tokens:
            self.steps["decode"] += 1
        return out

    def free(self, row: int) -> None:
        self.sessions[row] = None

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


def make_rows(backend, batch: int | None = None):
    """`GraphRows` for a converted artifact (static B; `batch` must be None or B), else `SessionRows`."""
    if hasattr(backend, "max_len") and hasattr(backend, "batch") and isinstance(getattr(backend, "batch"), int):
        if batch is not None and int(batch) != int(backend.batch):
            raise ConfigError(f"--batch {batch}: {getattr(backend, 'path', 'the artifact')} was built for batch "
                              f"{backend.batch}", f"leave --batch out, or re-convert with --batch {batch}")
        return GraphRows(backend)
    return SessionRows(backend, batch or 4)
