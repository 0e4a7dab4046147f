"""Time the process spends in CPython's cyclic garbage collector, as Prometheus metrics.

A collection holds the GIL: while it runs the event loop relays nothing and
answers no cancel, so its share of the CPU and its longest pauses bound what
any tuning of the request path can win. ``gc.callbacks`` calls ``GcStats``
just before and just after every collection:

    cancelproxy_gc_pause_seconds{generation}           histogram: wall time of each collection
    cancelproxy_gc_cpu_seconds_total{generation}       counter: CPU time of the collecting thread in collections
    cancelproxy_gc_longest_pause_seconds{generation}   gauge: the longest single collection since installed

Generation 2 is a full collection. Wall time is what the loop waited; CPU
time is what the collector cost, also on a machine busy with other work
(where a collection may be preempted halfway).

The cost is per collection, not per request: two ``perf_counter`` and two
``thread_time`` reads, a bisect and a few additions (a few µs, against a
collection that itself walks hundreds of objects).

``gc.callbacks`` is one list for the whole process: the app installs its
callback in its cleanup context and removes it on teardown. Several apps in
one process (the tests make many) each count every collection of the
process, which is right: a collection stops all of them.
"""

from __future__ import annotations

import bisect
import gc
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

__all__ = ["GC_PAUSE_BUCKETS", "GcStats"]

# A young collection takes tens of µs; a full one of a big heap, tens of ms.
GC_PAUSE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_GENERATIONS = 3


class GcStats:
    """Collection counts and times per generation; a prometheus_client collector."""

    def __init__(self) -> None:
        # Per generation: collections per bucket (not cumulative; the last is +Inf).
        self._buckets = [[0] * (len(GC_PAUSE_BUCKETS) + 1) for _ in range(_GENERATIONS)]
        self._pause_s = [0.0] * _GENERATIONS
        self._cpu_s = [0.0] * _GENERATIONS
        self._longest_s = [0.0] * _GENERATIONS
        self._began = 0.0
        self._began_cpu = 0.0

    def install(self) -> None:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def remove(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Runs inside the collector, holding the GIL: only clock reads and arithmetic.
        if phase == "start":
            self._began_cpu = time.thread_time()
            self._began = time.perf_counter()
            return
        pause = time.perf_counter() - self._began
        cpu = time.thread_time() - self._began_cpu
        generation = info["generation"]
        self._buckets[generation][bisect.bisect_left(GC_PAUSE_BUCKETS, pause)] += 1
        self._pause_s[generation] += pause
        self._cpu_s[generation] += cpu
        if pause > self._longest_s[generation]:
            self._longest_s[generation] = pause

    def collect(self) -> Iterator[Metric]:
        pauses = HistogramMetricFamily(
            "cancelproxy_gc_pause_seconds", "Wall time of each garbage collection.", labels=["generation"]
        )
        cpu = CounterMetricFamily(
            "cancelproxy_gc_cpu_seconds",  # exposed as cancelproxy_gc_cpu_seconds_total
            "CPU time of the collecting thread spent in garbage collections.",
            labels=["generation"],
        )
        longest = GaugeMetricFamily(
            "cancelproxy_gc_longest_pause_seconds",
            "The longest single garbage collection since the proxy started.",
            labels=["generation"],
        )
        for generation in range(_GENERATIONS):
            label = [str(generation)]
            cumulative, buckets = 0, []
            for bound, count in zip([*GC_PAUSE_BUCKETS, float("inf")], self._buckets[generation], strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
            pauses.add_metric(label, buckets, self._pause_s[generation])
            cpu.add_metric(label, self._cpu_s[generation])
            longest.add_metric(label, self._longest_s[generation])
        yield from (pauses, cpu, longest)
