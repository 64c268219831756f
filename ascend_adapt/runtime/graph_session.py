"""An LM session over the static prefill / decode graphs, for any executor.

`GraphLMSession` does on the host what the card's runner does: it left-pads the prompt to the
graph's prefill length S (the extra slots are just invalid), builds the feeds of the graph
contract (`ascend_adapt.contract`) from the shared step bookkeeping
(`lm_inputs.prefill_inputs` / `decode_inputs`, `StepInputs.split_visible`), keeps the KV cache
[L, B, KVH, M, D] in numpy and writes each step's present K/V into its slots.

The executors are plain callables over numpy dicts — `run_prefill(feeds) -> {output name: array}`
and `run_decode(feeds) -> {…}` — so onnxruntime, the simulator and pyACL plug in the same way.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from ascend_adapt.errors import ConfigError
from ascend_adapt.spec import ModelSpec
from ascend_adapt.contract import GREEDY_OUTPUTS, decode_feeds, prefill_feeds

from .lm_inputs import StepInputs, decode_inputs, prefill_inputs
from .session import StaticCacheSession

Executor = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


class GraphLMSession(StaticCacheSession):
    """One batch in flight over a static prefill graph (length S) and decode graph (M slots).

    Args:
        spec: the model.
        run_prefill: executor of prefill.onnx (feeds → outputs dict with logits, present_*).
        run_decode: executor of decode.onnx.
        batch: B of the graphs (the session's batch must be exactly it).
        max_len: M, the graphs' cache slots.
        prefill_len: S, the prefill graph's length (prompts up to S tokens; shorter ones are
            left-padded, which costs S - len(prompt) slots of the M).
        pad_id: id written into padding positions (never attended to).
        cache_dtype: dtype of the graphs' past_* / present_* (the export's activation dtype:
            float16 for an fp16 export; `contract.cache_dtype(manifest)`).

    Attributes:
        cache_k, cache_v: [L, B, KVH, M, D] host cache in `cache_dtype` (post-rotary keys / values).
        last_outputs: the executor's outputs of the latest step.
        greedy_on_graph: the graphs output the greedy token (`contract.GREEDY_OUTPUTS`: ArgMax and
            Σ of the logits); then `prefill_next` / `decode_next` return tokens without the logits
            (an executor may leave "logits" out of its outputs while `want == "tokens"`).
        want: "logits" (the default) or "tokens" while a `*_next` step runs; a device executor
            reads it to copy back only what the step needs.
    """

    greedy_on_graph = False

    def __init__(self, spec: ModelSpec, run_prefill: Executor, run_decode: Executor, batch: int, max_len: int,
                 prefill_len: int | Sequence[int], pad_id: int | None = None, cache_dtype=np.float32):
        super().__init__(spec, batch, max_len)
        # a step graph (built with gears) serves prefill and decode: `prefill_len` lists its gears
        self.gears = sorted(int(g) for g in prefill_len) if not isinstance(prefill_len, (int, np.integer)) else None
        prefill_len = self.gears[-1] if self.gears else int(prefill_len)
        if prefill_len > max_len:
            raise ConfigError(f"prefill length {prefill_len} exceeds the cache of {max_len} slots")
        self.run_prefill, self.run_decode = run_prefill, run_decode
        self.prefill_len = prefill_len
        self.pad_id = int(pad_id if pad_id is not None else (spec.pad_token_id or 0))
        shape = (spec.num_layers, batch, spec.num_kv_heads, max_len, spec.head_dim)
        self.cache_k = np.zeros(shape, cache_dtype)
        self.cache_v = np.zeros(shape, cache_dtype)
        self.last_outputs: Mapping[str, np.ndarray] = {}
        self.pad = 0  # left padding added to the prompt in the latest prefill
        self.want = "logits"

    def _left_pad(self, input_ids, attention_mask):
        ids = np.asarray(input_ids, dtype=np.int64)
        ids = ids[None] if ids.ndim == 1 else ids
        mask = np.ones(ids.shape, np.int64) if attention_mask is None else np.asarray(attention_mask, np.int64)
        B, s = ids.shape
        # the smallest gear that holds the prompt (a step graph), else the prefill graph's length
        S = next((g for g in self.gears if g >= s), self.prefill_len) if self.gears else self.prefill_len
        if B != self.batch:
            raise ConfigError(f"the graphs were built for batch {self.batch}, got {B} prompts",
                              f"re-export with --batch {B}, or pad the batch to {self.batch} rows")
        if s > S:
            raise ConfigError(f"prompt of {s} tokens exceeds the prefill graph's length {S}"
                              + (f" (the largest of its gears {self.gears})" if self.gears else ""),
                              f"re-export with {'a gear of' if self.gears else '--seq-len'} {s} or more, "
                              "or shorten the prompt")
        self.pad = S - s
        if self.pad:
            ids = np.concatenate([np.full((B, self.pad), self.pad_id, np.int64), ids], 1)
            mask = np.concatenate([np.zeros((B, self.pad), np.int64), mask], 1)
        return ids, mask

    def prefill(self, input_ids, attention_mask=None) -> np.ndarray:
        """Run the prompt ([B, s ≤ S], left-padded); return float32 logits [B, vocab] of the last position."""
        return self.prefill_all(input_ids, attention_mask)[:, -1]

    def prefill_all(self, input_ids, attention_mask=None) -> np.ndarray:
        """Like `prefill`, returning logits of every prompt position [B, s, vocab] (no padding)."""
        ids, mask = self._left_pad(input_ids, attention_mask)
        inputs, self.state = prefill_inputs(self.spec, ids, mask, self.max_len)
        logits = self.step(inputs)
        return logits[:, self.pad:]

    def decode(self, token_ids) -> np.ndarray:
        if self.state is None:
            raise RuntimeError("decode() before prefill()")
        inputs = decode_inputs(self.state, token_ids)
        return self._run(inputs, self.run_decode, decode_feeds(inputs, self.cache_k, self.cache_v))[:, -1]

    def prefill_next(self, input_ids, attention_mask=None) -> tuple[np.ndarray, np.ndarray]:
        """Run the prompt like `prefill`, returning the greedy next token the graph chose.

        Returns:
            (int64 [B] tokens: the first maximum of each row's last-position logits, as
            numpy.argmax; bool [B]: whether all that row's logits were finite).

        Raises:
            ConfigError: the graphs have no `next_token` output (an export made before it).
        """
        ids, mask = self._left_pad(input_ids, attention_mask)
        inputs, self.state = prefill_inputs(self.spec, ids, mask, self.max_len)
        return self._next(lambda: self.step(inputs))

    def decode_next(self, token_ids) -> tuple[np.ndarray, np.ndarray]:
        """One decode step like `decode`, returning (tokens int64 [B], finite bool [B]) as `prefill_next`."""
        if self.state is None:
            raise RuntimeError("decode_next() before prefill_next()")
        inputs = decode_inputs(self.state, token_ids)
        return self._next(lambda: self._run(inputs, self.run_decode, decode_feeds(inputs, self.cache_k, self.cache_v)))

    def _next(self, run) -> tuple[np.ndarray, np.ndarray]:
        if not self.greedy_on_graph:
            raise ConfigError("the graphs have no next_token output (greedy on the card)",
                              "re-export with this version, or use prefill() / decode() and argmax on the host")
        self.want = "tokens"
        try:
            run()
        finally:
            self.want = "logits"
        out = self.last_outputs
        tokens = np.asarray(out["next_token"])[:, -1].astype(np.int64)
        return tokens, np.isfinite(np.asarray(out["logits_sum"], np.float32)[:, -1])

    def step(self, inputs: StepInputs) -> np.ndarray:
        """`StaticCacheSession.step`: route a prefill (start slot 0) or a decode step."""
        is_prefill = inputs.start_slot == 0
        if self.gears is None:
            if is_prefill and inputs.seq_len == self.prefill_len:
                return self._run(inputs, self.run_prefill, prefill_feeds(inputs))
            return self._run(inputs, self.run_decode, decode_feeds(inputs, self.cache_k, self.cache_v))
        # a step graph: a prefill is a step whose cache slots are all hidden
        run = self.run_prefill if is_prefill else self.run_decode
        return self._run(inputs, run, decode_feeds(inputs, self.cache_k, self.cache_v))

    def _run(self, inputs: StepInputs, executor: Executor, feeds) -> np.ndarray | None:
        out = executor(feeds)
        need = ("logits",) if self.want == "logits" else GREEDY_OUTPUTS
        missing = [n for n in (*need, "present_keys", "present_values") if n not in out]
        if missing:
            raise ConfigError(f"the graph executor returned no {', '.join(missing)}",
                              "the executor must return a dict of the graph's outputs by name")
        s0, S = inputs.start_slot, inputs.seq_len
        self.cache_k[:, :, :, s0:s0 + S] = out["present_keys"]
        self.cache_v[:, :, :, s0:s0 + S] = out["present_values"]
        self.last_outputs = out
        return np.asarray(out["logits"], dtype=np.float32) if "logits" in out else None


def open_session(backend, batch: int, max_len: int, run_prefill: Executor, run_decode: Executor,
                 prefill_lengths: int | Sequence[int]) -> GraphLMSession:
    """A `GraphLMSession` for a backend whose graphs were built for `backend.batch` rows and
    `backend.max_len` cache slots: the batch must match, `max_len` may not exceed them."""
    if batch != backend.batch:
        raise ConfigError(f"{backend.path}: the graphs were built for batch {backend.batch}, asked for {batch}",
                          f"re-export (and rebuild the OMs) with --batch {batch}")
    if max_len > backend.max_len:
        raise ConfigError(f"{backend.path}: the graphs have {backend.max_len} cache slots, asked for {max_len}",
                          f"re-export (and rebuild the OMs) with --max-len {max_len} (or more)")
    s = GraphLMSession(backend.spec, run_prefill, run_decode, backend.batch, backend.max_len, prefill_lengths,
                       cache_dtype=getattr(backend, "cache_dtype", np.float32))
    s.greedy_on_graph = has_greedy_outputs(getattr(backend, "manifest", None))
    return s


def has_greedy_outputs(manifest) -> bool:
    """Whether every graph of an export manifest outputs `contract.GREEDY_OUTPUTS` (exports made
    before issue 13's on-device greedy do not: their sessions return logits only)."""
    graphs = (manifest or {}).get("graphs") or {}
    return bool(graphs) and all(set(GREEDY_OUTPUTS) <= {o["name"] for o in g.get("outputs", ())}
                                for g in graphs.values())


def prefill_with_layers(session: GraphLMSession, input_ids, attention_mask, layer_names):
    """Full logits of a prefill and, when `layer_names` is not None, {name: float32 [B, T, ...]}
    of those graph outputs (the padding rows cut off) with "logits" added; the last name (the
    logits themselves) is skipped. Shared by the simulator backend and the multi-chip pipeline."""
    logits = session.prefill_all(input_ids, attention_mask)
    if layer_names is None:
        return logits
    layers = {n: np.asarray(session.last_outputs[n], np.float32)[:, session.pad:]
              for n in layer_names[:-1] if n in session.last_outputs}
    layers["logits"] = logits
    return logits, layers
