"""Prometheus metrics of the server (`/metrics`), on prometheus_client with a registry per server.

| metric | type | meaning |
|---|---|---|
| `ascend_adapt_queue_length` | gauge | requests waiting for a row |
| `ascend_adapt_running_rows` | gauge | rows holding a request |
| `ascend_adapt_batch_rows` | gauge | rows of the batch (B) |
| `ascend_adapt_ttft_seconds` | histogram | arrival → first token |
| `ascend_adapt_tpot_seconds` | histogram | time per output token after the first, per request |
| `ascend_adapt_generated_tokens_total` | counter | tokens generated |
| `ascend_adapt_tokens_per_second` | gauge | tokens generated over the last `window_s` seconds / window |
| `ascend_adapt_requests_finished_total{finish_reason}` | counter | stop, length, cancelled (client gone), error |

With `labels` (a Ray Serve replica: `{"device": "0"}`) every sample carries them too.
"""

from __future__ import annotations

import collections
import threading
import time


def _prometheus():
    try:
        import prometheus_client
    except ImportError as exc:
        from ascend_adapt.errors import MissingDependencyError

        raise MissingDependencyError("prometheus_client", "serve", "ascend-adapt serve") from exc
    return prometheus_client


_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServeMetrics:
    """The engine's metric hooks (`set_load`, `token`, `finished`) and their Prometheus text.

    Args:
        batch: rows of the batch.
        window_s: window of the tokens/s gauge.
        labels: label name → value added to every sample of the exposition (None: none).
    """

    def __init__(self, batch: int, window_s: float = 10.0, labels: dict[str, str] | None = None):
        pc = _prometheus()
        self._pc = pc
        self.labels = {str(k): str(v) for k, v in (labels or {}).items()}
        self.registry = pc.CollectorRegistry()
        r = self.registry
        self.queue = pc.Gauge("ascend_adapt_queue_length", "Requests waiting for a row", registry=r)
        self.running = pc.Gauge("ascend_adapt_running_rows", "Rows holding a request", registry=r)
        pc.Gauge("ascend_adapt_batch_rows", "Rows of the static batch (B)", registry=r).set(batch)
        self.ttft = pc.Histogram("ascend_adapt_ttft_seconds", "Time to first token", buckets=_BUCKETS_S, registry=r)
        self.tpot = pc.Histogram("ascend_adapt_tpot_seconds", "Time per output token after the first",
                                 buckets=_BUCKETS_S, registry=r)
        self.tokens = pc.Counter("ascend_adapt_generated_tokens", "Tokens generated", registry=r)
        self.finished_total = pc.Counter("ascend_adapt_requests_finished", "Requests finished",
                                         ["finish_reason"], registry=r)
        self.rate = pc.Gauge("ascend_adapt_tokens_per_second", f"Tokens generated per second over the last "
                             f"{window_s:g} s", registry=r)
        self.rate.set_function(self.tokens_per_s)
        self.window_s = window_s
        self._times = collections.deque()
        self._lock = threading.Lock()

    def set_load(self, queued: int, running: int) -> None:
        self.queue.set(queued)
        self.running.set(running)

    def token(self, now_s: float) -> None:
        self.tokens.inc()
        with self._lock:
            self._times.append(now_s)
            self._trim(now_s)

    def _trim(self, now_s: float) -> None:
        while self._times and self._times[0] < now_s - self.window_s:
            self._times.popleft()

    def tokens_per_s(self) -> float:
        with self._lock:
            self._trim(time.monotonic())
            return len(self._times) / self.window_s

    def finished(self, req) -> None:
        self.finished_total.labels(req.finish_reason or "unknown").inc()
        if req.t_first_s is not None:
            self.ttft.observe(req.t_first_s - req.t_arrival_s)
            n = len(req.token_ids)
            if n > 1 and req.t_done_s is not None:
                self.tpot.observe((req.t_done_s - req.t_first_s) / (n - 1))

    def text(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus exposition."""
        source = _Labelled(self.registry, self.labels) if self.labels else self.registry
        return self._pc.generate_latest(source), self._pc.CONTENT_TYPE_LATEST


class _Labelled:
    """A registry's metrics with constant labels added to every sample (what `generate_latest` reads)."""

    def __init__(self, registry, labels: dict[str, str]):
        self.registry, self.labels = registry, labels

    def collect(self):
        from prometheus_client.metrics_core import Metric

        for family in self.registry.collect():
            out = Metric(family.name, family.documentation, family.type, family.unit)
            out.samples = [s._replace(labels={**self.labels, **s.labels}) for s in family.samples]
            yield out
