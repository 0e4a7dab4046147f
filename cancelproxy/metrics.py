"""Prometheus metrics, served at ``GET /metrics``.

Every metric lives in a ``Metrics`` object's own registry, never in
prometheus_client's global default one: several apps may live in one process
(the tests make many), and each must count only its own requests.

    cancelproxy_in_progress_requests{upstream,protocol}                  gauge
    cancelproxy_requests_total{upstream,protocol,status,stop_reason}     counter ("" = no stop_reason)
    cancelproxy_tokens_total{upstream,protocol,kind,estimated}           counter: kind prompt|completion
    cancelproxy_time_to_first_token_seconds{upstream}                    histogram
    cancelproxy_cancel_latency_seconds{upstream}                         histogram: cancel received -> upstream closed
    cancelproxy_upstream_errors_total{upstream,code}                     counter
    cancelproxy_upstream_aborts_total{upstream,outcome}                  counter: an upstream's abort: hook
    cancelproxy_store_write_transactions                                 gauge: the store's committed write transactions
    cancelproxy_resume_readers                                           gauge: readers following a resumed stream
    cancelproxy_resumes_total                                            counter: streams resumed
    cancelproxy_gc_*{generation}                                         collections (gcstats.py, from the app)

prometheus_client also exports a ``*_created`` series per counter and
histogram series unless PROMETHEUS_DISABLE_CREATED_SERIES=true is in the
environment (the Dockerfile sets it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .records import Record

__all__ = ["CANCEL_BUCKETS", "TTFT_BUCKETS", "Metrics", "metrics_handler"]

# From a fast provider's first token to a reasoning model thinking for minutes.
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Closing the upstream connection is normally well under a millisecond to a
# few: the low end is where a regression shows, so it is finely divided.
CANCEL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class _Children:
    """A labelled metric's children, looked up once per label values.

    ``labels(**names)`` checks the names, takes a lock and builds a key on
    every call: several microseconds, a few times per request. The label
    values here come from config and fixed sets, so the children are few.
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Counter | Gauge | Histogram) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    """The proxy's metrics. Calls are cheap and synchronous (the event loop's thread)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._in_progress = Gauge(
            "cancelproxy_in_progress_requests",
            "Generation requests in progress.",
            ["upstream", "protocol"],
            registry=self.registry,
        )
        self._requests = Counter(
            "cancelproxy_requests",  # exposed as cancelproxy_requests_total
            "Finished generation requests, by how they ended.",
            ["upstream", "protocol", "status", "stop_reason"],
            registry=self.registry,
        )
        self._tokens = Counter(
            "cancelproxy_tokens",  # exposed as cancelproxy_tokens_total
            "Tokens of finished generation requests: the provider's count, or the proxy's estimate.",
            ["upstream", "protocol", "kind", "estimated"],
            registry=self.registry,
        )
        self._ttft = Histogram(
            "cancelproxy_time_to_first_token_seconds",
            "Time to the first token of an answer.",
            ["upstream"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self._cancel = Histogram(
            "cancelproxy_cancel_latency_seconds",
            "From a cancel (route or client disconnect) received to the upstream connection closed.",
            ["upstream"],
            buckets=CANCEL_BUCKETS,
            registry=self.registry,
        )
        self._upstream_errors = Counter(
            "cancelproxy_upstream_errors",  # exposed as cancelproxy_upstream_errors_total
            # An error status the provider answered is its own answer, passed
            # through: requests_total{status="failed"} counts those requests.
            "Upstream failures the proxy found: unreachable, timed out, broken off, cut short, an event too large.",
            ["upstream", "code"],
            registry=self.registry,
        )
        self._aborts = Counter(
            "cancelproxy_upstream_aborts",  # exposed as cancelproxy_upstream_aborts_total
            "Abort requests sent to an engine after its connection was closed: sent, failed, timed_out, skipped.",
            ["upstream", "outcome"],
            registry=self.registry,
        )
        self._readers = Gauge(
            "cancelproxy_resume_readers", "Readers following a resumed stream now.", registry=self.registry
        )
        self._resumes = Counter(
            "cancelproxy_resumes",  # exposed as cancelproxy_resumes_total
            "Streams resumed (GET /requests/{id}/stream, /sessions/{id}/stream).",
            registry=self.registry,
        )
        # A gauge mirroring the store's own count (which may restart with the
        # store), so it is set, not incremented.
        self._store_transactions = Gauge(
            "cancelproxy_store_write_transactions",
            "Write transactions the record store has committed.",
            registry=self.registry,
        )
        # What every request touches, by label values.
        self._in_progress_of = _Children(self._in_progress)
        self._requests_of = _Children(self._requests)
        self._tokens_of = _Children(self._tokens)
        self._ttft_of = _Children(self._ttft)
        self._cancel_of = _Children(self._cancel)

    def request_started(self, upstream: str, protocol: str) -> None:
        self._in_progress_of(upstream, protocol).inc()

    def request_finished(self, record: Record, ttft_s: float | None, cancel_s: float | None) -> None:
        """Once per started request, whatever its end; ``None`` for what did not happen."""
        upstream, protocol = record.upstream, record.protocol
        self._in_progress_of(upstream, protocol).dec()
        self._requests_of(upstream, protocol, record.status, record.stop_reason or "").inc()
        if record.usage is not None:
            estimated = "true" if record.usage.estimated else "false"
            self._tokens_of(upstream, protocol, "prompt", estimated).inc(record.usage.prompt_tokens)
            self._tokens_of(upstream, protocol, "completion", estimated).inc(record.usage.completion_tokens)
        if ttft_s is not None:
            self._ttft_of(upstream).observe(ttft_s)
        if cancel_s is not None:
            self._cancel_of(upstream).observe(cancel_s)

    def upstream_error(self, upstream: str, code: str) -> None:
        self._upstream_errors.labels(upstream=upstream, code=code).inc()

    def reader_joined(self) -> None:
        self._readers.inc()
        self._resumes.inc()

    def reader_left(self) -> None:
        self._readers.dec()

    def upstream_abort(self, upstream: str, outcome: str) -> None:
        self._aborts.labels(upstream=upstream, outcome=outcome).inc()

    def set_store_transactions(self, n: int) -> None:
        self._store_transactions.set(n)

    def track_store_transactions(self, read: Callable[[], float]) -> None:
        """Read the count from ``read()`` at each scrape instead of being told it."""
        self._store_transactions.set_function(read)

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its Content-Type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def metrics_handler(metrics: Metrics) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A ``GET /metrics`` handler for ``metrics``: ``router.add_get("/metrics", metrics_handler(m))``."""

    async def handle_metrics(request: web.Request) -> web.Response:
        body, content_type = metrics.render()
        # Set as a header: web.Response(content_type=...) refuses one with a charset.
        return web.Response(body=body, headers={"Content-Type": content_type})

    return handle_metrics
