"""The garbage collector's figures: counted around every collection, exposed on /metrics, for the app's lifetime."""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bench.gcfigures import FULL, GcWindow, parse
from cancelproxy import create_app
from cancelproxy.config import parse_config
from cancelproxy.gcstats import GC_PAUSE_BUCKETS, GcStats

from .conftest import Proxy

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
_CONFIG = {"upstreams": [{"name": "mock", "base_url": "builtin:mock", "models": ["*"]}], "store": {"url": "memory://"}}
FAMILIES = {"cancelproxy_gc_pause_seconds", "cancelproxy_gc_cpu_seconds", "cancelproxy_gc_longest_pause_seconds"}


def _samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _render(stats: GcStats) -> str:
    registry = CollectorRegistry()
    registry.register(stats)
    return generate_latest(registry).decode()


def test_every_collection_is_counted_and_timed_by_generation() -> None:
    stats = GcStats()
    stats.install()
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        stats.remove()
    s = _samples(_render(stats))
    for generation in ("0", "2"):
        count = s[("cancelproxy_gc_pause_seconds_count", frozenset({("generation", generation)}))]
        assert count >= 1
        inf = ("cancelproxy_gc_pause_seconds_bucket", frozenset({("generation", generation), ("le", "+Inf")}))
        assert s[inf] == count
        assert s[("cancelproxy_gc_pause_seconds_sum", frozenset({("generation", generation)}))] > 0
        assert s[("cancelproxy_gc_longest_pause_seconds", frozenset({("generation", generation)}))] > 0
        assert s[("cancelproxy_gc_cpu_seconds_total", frozenset({("generation", generation)}))] >= 0
    bounds = {
        dict(labels)["le"]
        for (name, labels), _ in s.items()
        if name == "cancelproxy_gc_pause_seconds_bucket" and ("generation", "2") in labels
    }
    assert bounds == {repr(b) for b in GC_PAUSE_BUCKETS} | {"+Inf"}


def test_a_removed_callback_counts_nothing_more() -> None:
    stats = GcStats()
    stats.install()
    stats.install()  # once only
    assert gc.callbacks.count(stats._on_gc) == 1
    stats.remove()
    assert stats._on_gc not in gc.callbacks
    gc.collect(2)
    s = _samples(_render(stats))
    assert s[("cancelproxy_gc_pause_seconds_count", frozenset({("generation", "2")}))] == 0


async def test_the_app_counts_for_its_lifetime_and_serves_them(aiohttp_client: ClientFactory) -> None:
    installed = len(gc.callbacks)
    client = await aiohttp_client(create_app(parse_config(_CONFIG, env={})))
    assert len(gc.callbacks) == installed + 1  # gc.callbacks is the process's: one entry, this app's
    gc.collect(2)
    async with client.get("/metrics") as response:
        s = _samples(await response.text())
    assert s[("cancelproxy_gc_pause_seconds_count", frozenset({("generation", "2")}))] >= 1
    await client.close()
    assert len(gc.callbacks) == installed


async def test_the_proxy_process_exposes_them(proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.root}/metrics") as response:
        families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    assert FAMILIES <= families.keys()
    for name in FAMILIES:
        assert {s.labels["generation"] for s in families[name].samples} == {"0", "1", "2"}


def test_the_benchmark_reads_a_window_of_them() -> None:
    """bench/gcfigures.py: a window's longest pause is exact when it set a new
    maximum, else an upper bound."""
    stats = GcStats()
    stats.install()
    try:
        start = parse(_render(stats))
        gc.collect(2)
        after_full = parse(_render(stats))
        gc.collect(0)
        after_young = parse(_render(stats))
    finally:
        stats.remove()
    full = GcWindow.between(start, after_full)
    assert full.collections[FULL] >= 1
    longest = full.longest[FULL]
    assert longest is not None and longest.exact and longest.seconds == after_full.longest_s[FULL]
    assert full.share(process_cpu_s=1.0) == sum(full.cpu_s)
    young = GcWindow.between(after_full, after_young)
    assert young.longest[FULL] is None  # no full collection in that window
    assert young.collections[0] >= 1 and young.longest[0] is not None
