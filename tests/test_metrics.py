"""Prometheus metrics: what a scrape sees after the proxy's calls."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from cancelproxy.metrics import CANCEL_BUCKETS, Metrics, metrics_handler
from cancelproxy.records import Record, Status, StopReason, Usage

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics: Metrics) -> Samples:
    body, _ = metrics.render()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _finished(upstream: str, protocol: str, status: Status, stop_reason: StopReason | None, usage: Usage) -> Record:
    return Record(
        request_id="r",
        session_id="s",
        credential="none",
        upstream=upstream,
        model="m",
        stream=True,
        created_at=0.0,
        protocol=protocol,
        status=status,
        stop_reason=stop_reason,
        usage=usage,
    )


def exercise(metrics: Metrics) -> None:
    for _ in range(3):
        metrics.request_started("openai", "chat")
    metrics.request_started("mock", "messages")
    exact, estimated = Usage(10, 5, 15), Usage.estimate(3, 2)
    metrics.request_finished(_finished("openai", "chat", "completed", None, exact), ttft_s=0.3, cancel_s=None)
    metrics.request_finished(_finished("openai", "chat", "stopped", "cancel", estimated), ttft_s=0.2, cancel_s=0.0007)
    metrics.request_finished(
        _finished("mock", "messages", "stopped", "disconnect", estimated), ttft_s=None, cancel_s=0.02
    )
    metrics.upstream_abort("mock", "sent")
    metrics.upstream_error("openai", "timeout")
    metrics.upstream_error("openai", "timeout")
    metrics.upstream_error("openai", "502")
    metrics.set_store_transactions(42)


def test_counters_and_gauges() -> None:
    metrics = Metrics()
    exercise(metrics)
    s = scrape(metrics)
    assert value(s, "cancelproxy_in_progress_requests", upstream="openai", protocol="chat") == 1
    assert value(s, "cancelproxy_in_progress_requests", upstream="mock", protocol="messages") == 0
    total = "cancelproxy_requests_total"
    assert value(s, total, upstream="openai", protocol="chat", status="completed", stop_reason="") == 1
    assert value(s, total, upstream="openai", protocol="chat", status="stopped", stop_reason="cancel") == 1
    assert value(s, total, upstream="mock", protocol="messages", status="stopped", stop_reason="disconnect") == 1
    tokens = "cancelproxy_tokens_total"
    assert value(s, tokens, upstream="openai", protocol="chat", kind="completion", estimated="false") == 5
    assert value(s, tokens, upstream="openai", protocol="chat", kind="prompt", estimated="true") == 3
    assert value(s, tokens, upstream="mock", protocol="messages", kind="completion", estimated="true") == 2
    assert value(s, "cancelproxy_upstream_aborts_total", upstream="mock", outcome="sent") == 1
    assert sum(v for (name, _), v in s.items() if name == total) == 3
    assert value(s, "cancelproxy_upstream_errors_total", upstream="openai", code="timeout") == 2
    assert value(s, "cancelproxy_upstream_errors_total", upstream="openai", code="502") == 1
    assert value(s, "cancelproxy_store_write_transactions") == 42


def test_histograms() -> None:
    metrics = Metrics()
    exercise(metrics)
    s = scrape(metrics)
    ttft = "cancelproxy_time_to_first_token_seconds"
    assert value(s, ttft + "_count", upstream="openai") == 2
    assert abs((value(s, ttft + "_sum", upstream="openai") or 0) - 0.5) < 1e-9
    assert value(s, ttft + "_count", upstream="mock") is None  # nothing observed there

    bucket = "cancelproxy_cancel_latency_seconds_bucket"
    les = sorted(
        float(dict(labels)["le"])
        for (name, labels), _ in s.items()
        if name == bucket and dict(labels)["upstream"] == "openai"
    )
    assert les == [*CANCEL_BUCKETS, float("inf")]
    assert les[0] == 0.0005 and les[-2] == 1.0
    assert value(s, bucket, upstream="openai", le="0.0005") == 0
    assert value(s, bucket, upstream="openai", le="0.001") == 1
    assert value(s, bucket, upstream="openai", le="+Inf") == 1
    assert value(s, bucket, upstream="mock", le="0.01") == 0
    assert value(s, bucket, upstream="mock", le="0.025") == 1
    assert value(s, "cancelproxy_cancel_latency_seconds_count", upstream="mock") == 1


def test_render_content_type() -> None:
    body, content_type = Metrics().render()
    assert content_type.startswith("text/plain")
    assert b"# TYPE cancelproxy_store_write_transactions gauge" in body


def test_store_transactions_from_a_callback() -> None:
    metrics = Metrics()
    count = {"n": 7}
    metrics.track_store_transactions(lambda: count["n"])
    assert value(scrape(metrics), "cancelproxy_store_write_transactions") == 7
    count["n"] = 9
    assert value(scrape(metrics), "cancelproxy_store_write_transactions") == 9


def test_two_instances_do_not_share_state() -> None:
    first, second = Metrics(), Metrics()  # a shared registry would refuse the second
    exercise(first)
    second.request_started("openai", "chat")
    s1, s2 = scrape(first), scrape(second)
    assert value(s1, "cancelproxy_in_progress_requests", upstream="openai", protocol="chat") == 1
    assert value(s2, "cancelproxy_in_progress_requests", upstream="openai", protocol="chat") == 1
    assert value(s1, "cancelproxy_store_write_transactions") == 42
    assert value(s2, "cancelproxy_store_write_transactions") == 0
    assert not [key for key in s2 if key[0] == "cancelproxy_requests_total"]
    assert first.registry is not second.registry


async def test_metrics_handler_serves_the_scrape(aiohttp_client: Any) -> None:
    metrics = Metrics()
    exercise(metrics)
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(metrics))
    client = await aiohttp_client(app)
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == metrics.render()[1]
    families = {f.name for f in text_string_to_metric_families(await response.text())}
    assert {
        "cancelproxy_requests",
        "cancelproxy_cancel_latency_seconds",
        "cancelproxy_in_progress_requests",
    } <= families
