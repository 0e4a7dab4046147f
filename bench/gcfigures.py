"""The garbage collector's figures of a proxy over one window, from its ``GET /metrics``.

cancelproxy and the aiohttp floor both count with ``cancelproxy.gcstats.GcStats``
(a ``gc.callbacks`` pair around every collection): per generation the
collections, their wall time (a histogram) and the collecting thread's CPU
time, and the longest single pause since the process started. A window is the
difference of two scrapes. Its longest pause is exact when the since-start
maximum rose during the window; otherwise the window's longest is at most that
maximum and at most the upper bound of the highest histogram bucket that
gained a collection: it is then reported as "≤ bound".
"""

from __future__ import annotations

import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from .fleet import Target
from .procstat import total_cpu
from .report import Table

GENERATIONS = (0, 1, 2)
FULL = 2  # a full collection
_PREFIX = "cancelproxy_gc_"


@dataclass(frozen=True)
class GcSnapshot:
    collections: tuple[int, ...]  # per generation
    pause_s: tuple[float, ...]
    cpu_s: tuple[float, ...]
    longest_s: tuple[float, ...]
    buckets: tuple[tuple[tuple[float, int], ...], ...]  # per generation: (le, cumulative count), ascending


def scrape(metrics_url: str) -> GcSnapshot:
    with urllib.request.urlopen(metrics_url, timeout=10) as answer:
        return parse(answer.read().decode())


def parse(text: str) -> GcSnapshot:
    """The GC figures of a Prometheus exposition."""
    values: dict[tuple[str, int], float] = {}
    buckets: dict[int, list[tuple[float, int]]] = {g: [] for g in GENERATIONS}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(_PREFIX):
            continue
        for sample in family.samples:
            generation = int(sample.labels["generation"])
            if sample.name.endswith("_bucket"):
                buckets[generation].append((float(sample.labels["le"]), int(sample.value)))
            else:
                values[(sample.name.removeprefix(_PREFIX), generation)] = sample.value

    def per_generation(name: str) -> tuple[float, ...]:
        return tuple(values.get((name, g), 0.0) for g in GENERATIONS)

    return GcSnapshot(
        collections=tuple(int(v) for v in per_generation("pause_seconds_count")),
        pause_s=per_generation("pause_seconds_sum"),
        cpu_s=per_generation("cpu_seconds_total"),
        longest_s=per_generation("longest_pause_seconds"),
        buckets=tuple(tuple(sorted(buckets[g])) for g in GENERATIONS),
    )


@dataclass(frozen=True)
class Longest:
    seconds: float
    exact: bool  # else: an upper bound

    def cell(self) -> str:
        return f"{self.seconds * 1000:.2f}" if self.exact else f"≤ {self.seconds * 1000:.2f}"


@dataclass(frozen=True)
class GcWindow:
    collections: tuple[int, ...]
    pause_s: tuple[float, ...]
    cpu_s: tuple[float, ...]
    longest: tuple[Longest | None, ...]  # None: no collection of that generation in the window

    @staticmethod
    def between(before: GcSnapshot, after: GcSnapshot) -> GcWindow:
        longest: list[Longest | None] = []
        for g in GENERATIONS:
            if after.collections[g] == before.collections[g]:
                longest.append(None)
            elif after.longest_s[g] > before.longest_s[g]:
                longest.append(Longest(after.longest_s[g], exact=True))
            else:
                bound = _highest_gaining_bucket(before.buckets[g], after.buckets[g])
                longest.append(Longest(min(bound, before.longest_s[g]), exact=False))
        return GcWindow(
            collections=tuple(a - b for a, b in zip(after.collections, before.collections, strict=True)),
            pause_s=tuple(a - b for a, b in zip(after.pause_s, before.pause_s, strict=True)),
            cpu_s=tuple(a - b for a, b in zip(after.cpu_s, before.cpu_s, strict=True)),
            longest=tuple(longest),
        )

    @property
    def total_cpu_s(self) -> float:
        return sum(self.cpu_s)

    def share(self, process_cpu_s: float) -> float | None:
        """The collector's share of the process's CPU time over the window."""
        return self.total_cpu_s / process_cpu_s if process_cpu_s > 0 else None

    def summary(self, process_cpu_s: float) -> str:
        share = self.share(process_cpu_s)
        full = self.longest[FULL]
        return (
            f"{'n/a' if share is None else f'{share:.2%}'} of its CPU, "
            f"{' / '.join(str(n) for n in self.collections)} collections (gen 0 / 1 / 2), longest full "
            f"{'none' if full is None else full.cell() + ' ms'}"
        )

    def as_json(self, process_cpu_s: float) -> dict[str, object]:
        return {
            "collections": list(self.collections),
            "pause_s": list(self.pause_s),
            "cpu_s": list(self.cpu_s),
            "process_cpu_s": process_cpu_s,
            "share_of_cpu": self.share(process_cpu_s),
            "longest_s": [None if x is None else x.seconds for x in self.longest],
            "longest_exact": [None if x is None else x.exact for x in self.longest],
        }


def _highest_gaining_bucket(before: tuple[tuple[float, int], ...], after: tuple[tuple[float, int], ...]) -> float:
    """The upper bound of the highest bucket that gained a collection: cumulative
    counts, so per-bucket gains are the differences of consecutive gains."""
    gains = [n1 - n0 for (_, n1), (_, n0) in zip(after, before, strict=True)]
    highest = after[-1][0]
    previous = 0
    for (le, _), gain in zip(after, gains, strict=True):
        if gain > previous:
            highest = le
        previous = gain
    return highest


class GcWatch:
    """The collector's figures of every target that has them, over one scenario
    (taken before it and added to its table as a note after it)."""

    def __init__(self, targets: Sequence[Target]) -> None:
        self._targets = [t for t in targets if t.gc_metrics]
        self._before = {t.name: (scrape(t.metrics_url), total_cpu(t.server_pids())) for t in self._targets}

    def report(self, table: Table) -> None:
        parts, figures = [], {}
        for target in self._targets:
            snapshot, cpu_before = self._before[target.name]
            window = GcWindow.between(snapshot, scrape(target.metrics_url))
            cpu_s = total_cpu(target.server_pids()) - cpu_before
            figures[target.name] = window.as_json(cpu_s)
            if cpu_s > 0 or any(window.collections):  # not a target this scenario left idle
                parts.append(f"{target.name} {window.summary(cpu_s)}")
        if parts:
            table.notes.append("garbage collector over the whole scenario: " + "; ".join(parts))
            table.data["gc"] = figures
