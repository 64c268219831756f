"""The continuous-batching engine: a queue of requests over the rows of a static batch.

One scheduler thread owns the rows (`rows.GraphRows` / `rows.SessionRows`). Each iteration:

1. rows whose client went away are freed;
2. if rows are free and requests wait, ONE prefill step fills free rows with waiting requests
   of the same prefill gear (the head of the queue decides the gear), so a refill stalls the
   running rows for at most one prefill gear;
3. one decode step advances every running row; finished rows are freed at once.

Token choice is `generate`'s: repetition penalty, then greedy argmax or temperature / top-k /
top-p sampling from `np.random.default_rng([seed, 0])` (what `generate` uses for one prompt), an
EOS / stop token ends a row (`finish_reason` "stop"), `max_tokens` ends it with "length". Stop
strings end it too, the text cut before the stop string (OpenAI's rule); streamed text holds
back an incomplete UTF-8 sequence and a tail that could begin a stop string.

Events reach the caller through `Request.on_event(kind, data)`, called on the scheduler thread:
("delta", {"text", "token_ids"}), then ("done", {"finish_reason", …}) or ("error", exception).
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ascend_adapt.errors import AscendAdaptError, ConfigError

log = logging.getLogger("ascend_adapt.serve")


class QueueFullError(AscendAdaptError):
    """The waiting queue is full; `retry_after_s` estimates when a place frees up."""

    def __init__(self, queued: int, retry_after_s: int):
        super().__init__(f"the request queue is full ({queued} waiting)",
                         f"retry after {retry_after_s} s, or start the server with a larger --max-queue")
        self.retry_after_s = retry_after_s


class ContextLengthError(ConfigError):
    """A prompt (+ max_tokens) past what a row holds: the context M or the largest prefill length."""


class DrainingError(AscendAdaptError):
    """The server is shutting down: it finishes the requests it has and takes no new ones."""


@dataclass
class Request:
    """One completion request.

    Attributes:
        prompt_ids: encoded prompt.
        max_tokens: most new tokens.
        do_sample, temperature, top_k, top_p, seed, repetition_penalty: as `GenerationConfig`.
        stop: stop strings (the text ends before the first one).
        on_event: callback(kind, data) from the scheduler thread.
        id: request id (set by `Engine.submit` when empty).
    """

    prompt_ids: list[int]
    max_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    on_event: Callable[[str, dict], None] | None = None
    id: str = ""
    # filled in by the engine
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: str = ""
    finish_reason: str | None = None
    t_arrival_s: float = 0.0
    t_first_s: float | None = None
    t_done_s: float | None = None
    row: int | None = None
    cancelled: bool = False

    def cancel(self) -> None:
        """Ask the engine to drop this request (a client that went away); its row is freed."""
        self.cancelled = True

    @property
    def usage(self) -> dict:
        n = len(self.prompt_ids)
        return {"prompt_tokens": n, "completion_tokens": len(self.token_ids),
                "total_tokens": n + len(self.token_ids)}


class Engine:
    """Continuous batching of `Request`s over row-wise executors.

    Args:
        rows: `GraphRows` / `SessionRows`.
        tokenizer: decode / eos_ids (None: token ids only, text stays "").
        max_queue: most waiting requests (beyond it `submit` raises `QueueFullError`).
        metrics: an object with the `ServeMetrics` hooks, or None.
        eos_ids: stop tokens when there is no tokenizer.
    """

    def __init__(self, rows, tokenizer=None, max_queue: int = 64, metrics=None, eos_ids=()):
        self.rows = rows
        self.tokenizer = tokenizer
        self.max_queue = int(max_queue)
        self.metrics = metrics
        self.eos = set(tokenizer.eos_ids if tokenizer is not None else eos_ids)
        self.decode_text = tokenizer.decode if tokenizer is not None else (lambda ids: "")
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: dict[int, Request] = {}
        self._cv = threading.Condition()
        self._stop = False
        self.draining = False
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self.step_s = collections.deque(maxlen=64)  # recent decode step times (for Retry-After)
        self.failed: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._loop, name="ascend-adapt-serve-engine", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, drain: bool = True, timeout_s: float | None = None) -> bool:
        """Stop taking requests; with `drain`, finish the running and waiting ones first.

        Returns:
            True when every request finished (False: the timeout passed first).
        """
        if drain:
            done = self.drain(timeout_s)
        else:
            with self._cv:
                self.draining = True
                self._cv.notify_all()
            done = True
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.rows.close()
        return done

    def drain(self, timeout_s: float | None = None) -> bool:
        """Stop taking requests (`submit` raises `DrainingError`) and wait until the running and
        waiting ones finish; the scheduler keeps running (`shutdown` stops it).

        Returns:
            True when every request finished (False: the timeout passed first).
        """
        with self._cv:
            self.draining = True
            self._cv.notify_all()
        end = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cv:
            while self.waiting or self.running:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(0.05 if left is None else min(0.05, left))
        return True

    # ------------------------------------------------------------------ requests
    def check(self, prompt_len: int, max_tokens: int) -> None:
        """Refuse a request the rows cannot hold (prompt past the context / prefill length)."""
        if prompt_len < 1:
            raise ConfigError("the prompt has no tokens", "send a non-empty prompt")
        try:
            room = self.rows.capacity(prompt_len)
        except ConfigError as exc:  # longer than the prefill graph / largest gear
            raise ContextLengthError(f"the prompt does not fit this model's context: {exc.message}", exc.hint) from None
        slots = self.rows.max_len - room
        padded = f", padded to {slots}" if slots != prompt_len else ""
        if max_tokens > room:
            raise ContextLengthError(
                f"this model's context is {self.rows.max_len} tokens; the prompt ({prompt_len} tokens{padded}) + "
                f"max_tokens ({max_tokens}) = {slots + max_tokens} exceed it",
                f"lower max_tokens to at most {room}" if room > 0 else "shorten the prompt")

    def submit(self, req: Request) -> Request:
        """Queue a request (checked against the context first).

        Raises:
            ConfigError: the prompt + max_tokens do not fit.
            QueueFullError: `max_queue` requests wait already.
            DrainingError: the server is shutting down.
        """
        self.check(len(req.prompt_ids), req.max_tokens)
        with self._cv:
            if self.draining or self._stop:
                raise DrainingError("the server is shutting down", "retry on another replica or after the restart")
            if self.failed is not None:
                raise AscendAdaptError(f"the engine stopped: {self.failed}", "restart the server")
            if len(self.waiting) >= self.max_queue:
                raise QueueFullError(len(self.waiting), self.retry_after_s())
            if not req.id:
                req.id = f"req-{next(self._ids)}"
            req.t_arrival_s = time.monotonic()
            self.waiting.append(req)
            self._gauges()
            self._cv.notify_all()
        return req

    def retry_after_s(self) -> int:
        """Seconds until a queue place is likely free: one request's worth of decode steps."""
        step = float(np.median(self.step_s)) if self.step_s else 0.05
        return max(1, int(np.ceil(step * 16)))

    # ------------------------------------------------------------------ the loop
    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.set_load(len(self.waiting), len(self.running))

    def _loop(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._stop and not self.waiting and not self.running:
                        self._cv.wait()
                    if self._stop:
                        return
                self._reap()
                self._admit()
                self._decode()
                with self._cv:
                    self._gauges()
                    self._cv.notify_all()
        except BaseException as exc:  # a backend failure: every request gets the error
            log.exception("serving engine stopped")
            with self._cv:
                self.failed = exc
                pending = list(self.running.values()) + list(self.waiting)
                self.running.clear()
                self.waiting.clear()
                self._cv.notify_all()
            for r in pending:
                self._emit(r, "error", exc)

    def _reap(self) -> None:
        """Free the rows (and queue places) of requests whose client went away."""
        with self._cv:
            gone = [r for r in self.running.values() if r.cancelled]
            gone += [r for r in self.waiting if r.cancelled]
            self.waiting = collections.deque(r for r in self.waiting if not r.cancelled)
        for r in gone:
            self._finish(r, "cancelled")

    def _admit(self) -> None:
        with self._cv:
            free = [b for b in range(self.rows.batch) if b not in self.running]
            if not free or not self.waiting:
                return
            gear = self.rows.gear_for(len(self.waiting[0].prompt_ids))
            take, keep = [], collections.deque()
            while self.waiting:
                r = self.waiting.popleft()
                if len(take) < len(free) and self.rows.gear_for(len(r.prompt_ids)) == gear:
                    take.append(r)
                else:
                    keep.append(r)
            self.waiting = keep
            for b, r in zip(free, take):
                r.row = b
                self.running[b] = r
        prompts = {r.row: r.prompt_ids for r in take}
        if hasattr(self.rows, "sessions"):  # batch-1 sessions: as large as generate would make them
            logits = self.rows.prefill(prompts, {r.row: r.max_tokens for r in take})
        else:
            logits = self.rows.prefill(prompts)
        for r in take:
            self._token(r, logits[r.row])

    def _decode(self) -> None:
        with self._cv:
            live = {b: r for b, r in self.running.items() if r.finish_reason is None}
        if not live:
            return
        t0 = time.monotonic()
        logits = self.rows.decode({b: r.token_ids[-1] for b, r in live.items()})
        self.step_s.append(time.monotonic() - t0)
        for b, r in live.items():
            self._token(r, logits[b])

    # ------------------------------------------------------------------ tokens
    def _choose(self, r: Request, logits: np.ndarray) -> int:
        from ascend_adapt.runtime.generate import GenerationConfig, apply_repetition_penalty, sample_token

        if not np.isfinite(logits).all():
            from ascend_adapt.runtime.generate import NonFiniteLogitsError

            raise NonFiniteLogitsError(f"the backend returned NaN/Inf logits for request {r.id}",
                                       "run `ascend-adapt compare` against the torch golden")
        seen = np.asarray(r.prompt_ids + r.token_ids, np.int64)
        scores = apply_repetition_penalty(logits[None], [seen], r.repetition_penalty)[0]
        if not r.do_sample:
            return int(np.argmax(scores))
        if not hasattr(r, "_rng"):
            r._rng = np.random.default_rng([int(r.seed), 0])
        cfg = GenerationConfig(do_sample=True, temperature=r.temperature, top_k=r.top_k, top_p=r.top_p)
        return sample_token(scores, cfg, r._rng)

    def _token(self, r: Request, logits: np.ndarray) -> None:
        if r.cancelled:
            self._finish(r, "cancelled")
            return
        try:
            tok = self._choose(r, logits)
        except AscendAdaptError as exc:  # this request's logits: it fails, the others go on
            self._finish(r, "error", exc)
            return
        now = time.monotonic()
        if r.t_first_s is None:
            r.t_first_s = now
        r.token_ids.append(tok)
        if self.metrics is not None:
            self.metrics.token(now)
        if tok in self.eos:
            self._finish(r, "stop")
            return
        text = self.decode_text(r.token_ids)
        cut = _first_stop(text, r.stop)
        if cut is not None:
            r.text = text[:cut]
            self._finish(r, "stop")
            return
        r.text = text
        if len(r.token_ids) >= r.max_tokens:
            self._finish(r, "length")
            return
        safe = _safe_prefix(text, r.stop)
        if len(safe) > len(r.emitted) and safe.startswith(r.emitted):
            self._emit(r, "delta", {"text": safe[len(r.emitted):], "token_ids": [tok]})
            r.emitted = safe
        else:
            self._emit(r, "delta", {"text": "", "token_ids": [tok]})

    def _finish(self, r: Request, reason: str, error: BaseException | None = None) -> None:
        r.finish_reason = reason
        r.t_done_s = time.monotonic()
        if reason == "stop" and r.token_ids and r.token_ids[-1] in self.eos:
            r.text = self.decode_text(r.token_ids[:-1])  # generate's text: without the stop token
        with self._cv:
            if r.row is not None and self.running.get(r.row) is r:
                del self.running[r.row]
                self.rows.free(r.row)
            self._gauges()
            self._cv.notify_all()
        if self.metrics is not None:
            self.metrics.finished(r)
        if error is not None:
            self._emit(r, "error", error)
            return
        if reason != "cancelled":
            tail = r.text[len(r.emitted):] if r.text.startswith(r.emitted) else ""
            last = [r.token_ids[-1]] if reason in ("stop", "length") and r.token_ids else []
            self._emit(r, "delta", {"text": tail, "token_ids": last})
            r.emitted = r.text
        self._emit(r, "done", {"finish_reason": reason, "usage": r.usage})
        log.info("request %s: %d prompt + %d completion tokens, finish %s, ttft %.3f s, total %.3f s", r.id,
                 len(r.prompt_ids), len(r.token_ids), reason,
                 (r.t_first_s - r.t_arrival_s) if r.t_first_s else float("nan"), r.t_done_s - r.t_arrival_s)

    @staticmethod
    def _emit(r: Request, kind: str, data) -> None:
        if r.on_event is not None:
            r.on_event(kind, data)


def _first_stop(text: str, stops) -> int | None:
    """Index where the earliest stop string starts in `text`, or None."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def _safe_prefix(text: str, stops) -> str:
    """The part of `text` that can be sent: no incomplete UTF-8 at the end, and no tail that
    could still grow into a stop string."""
    if text.endswith("\ufffd"):
        text = text.rstrip("\ufffd")
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return text[:len(text) - hold] if hold else text
