"""``concurrent_streams``: 100 concurrent streams at a chat model's pace, for a few seconds.

The steady load of a busy deployment (50 tokens/s a stream, a delta each),
far from saturating anything: what relaying costs per chunk, and how much of
the proxy's CPU the cyclic garbage collector takes and for how long it stops
the loop (``gcfigures``: the floor and cancelproxy count collections with the
same ``gc.callbacks`` pair). No RSS per stream: a process's RSS grows only
past its high-water mark, which earlier scenarios (slow_streams' 2,000
streams) have set far above what 100 streams need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..client import listen_overflows
from ..fleet import FLOOR, Target
from ..gcfigures import FULL, GcWindow, scrape
from ..procstat import CpuWindow, total_cpu
from ..report import (
    CPU_COLUMN,
    FLOOR_NOTE,
    Table,
    bottleneck,
    cpu_cell,
    median_ratio,
    ratio,
    ratios_by_round,
    ratios_cell,
)
from ..stats import percentile
from ..workers import Job
from . import Context
from .slow_streams import peak_in_flight

RATE = 50.0


@dataclass(frozen=True)
class _Round:
    """One window of the scenario through one target."""

    results: list[dict[str, Any]]
    wall_s: float
    window: CpuWindow  # every process's share of the CPU meanwhile
    cpu_s: float  # the server's utime+stime over the window
    overflows: int
    delivered: int  # deltas the clients received

    @property
    def cpu_s_per_chunk(self) -> float | None:
        return self.cpu_s / self.delivered if self.delivered else None


def _one_round(ctx: Context, target: Target, n: int, tokens: int) -> _Round:
    ctx.fleet.clear_mock()
    start_at = ctx.start_at()
    jobs = [
        Job(
            "bench.scenarios.slow_streams:slow_job",
            {
                "url": target.chat_url,
                "streams": share,
                "start_at": start_at,
                "timeout_s": 60.0 + tokens / RATE,
                "tokens": tokens,
                "rate": RATE,
            },
        )
        for share in ctx.split(n)
    ]
    pids = target.server_pids
    cpu_before, overflows = total_cpu(pids()), listen_overflows()
    meter = ctx.cpu_meter(target)
    meter.start()
    results = ctx.pool.run(jobs, timeout_s=90 + tokens / RATE)
    wall = max(r["ended"] for r in results) - start_at
    window = meter.stop(wall_s=wall)
    return _Round(
        results=results,
        wall_s=wall,
        window=window,
        cpu_s=total_cpu(pids()) - cpu_before,
        overflows=listen_overflows() - overflows,
        delivered=sum(len(r["durations"]) for r in results) * tokens,
    )


def run(ctx: Context) -> Table:
    n, tokens, rounds = ctx.settings.concurrent_streams, ctx.settings.concurrent_tokens, ctx.settings.concurrent_rounds
    table = Table(
        "concurrent_streams",
        f"{n} concurrent streams at {RATE:g} chunks/s × {tokens} chunks ({tokens / RATE:.0f} s), started together; "
        f"{rounds} round(s), the targets taking turns in each",
        [
            "target",
            "wall s",
            "added gap p50 / p99 ms",
            "server CPU µs / chunk",
            "GC % of server CPU",
            "GC collections gen 0 / 1 / 2",
            "longest GC pause ms gen 0 / 1 / 2",
            "÷ floor: CPU per chunk / GC share",
            CPU_COLUMN,
            "SYN drops",
            "errors",
        ],
    )
    # The GC figures and the CPU they are a share of span all of a target's
    # rounds (a process waiting for its turn does next to nothing).
    gc_before = {t.name: scrape(t.metrics_url) if t.gc_metrics else None for t in ctx.targets}
    cpu_before = {t.name: total_cpu(t.server_pids()) for t in ctx.targets}
    measured = ctx.in_turns(rounds, lambda target: _one_round(ctx, target, n, tokens))

    floor: list[_Round] | None = measured.get(FLOOR)
    floor_gc_share: float | None = None
    full_since_start: dict[str, float | None] = {}  # None: no full collection yet
    round_notes: list[str] = []
    for target in ctx.targets:
        taken = measured[target.name]
        before = gc_before[target.name]
        gc_after = scrape(target.metrics_url) if before is not None else None
        gc = GcWindow.between(before, gc_after) if before is not None and gc_after is not None else None
        if gc_after is not None:
            full_since_start[target.name] = gc_after.longest_s[FULL] if gc_after.collections[FULL] else None
        cpu_all_rounds = total_cpu(target.server_pids()) - cpu_before[target.name]

        proxied = target.name != "direct"
        per_chunk = [r.cpu_s_per_chunk for r in taken]
        # The round reported is the median one by CPU per chunk (by wall time for direct).
        chosen = sorted(taken, key=lambda r: (r.cpu_s_per_chunk or 0.0, r.wall_s))[len(taken) // 2]
        gaps = [g for r in taken for res in r.results for g in res["gaps"]]
        figures: dict[str, Any] = {
            "rounds": len(taken),
            "wall_s": chosen.wall_s,
            "added_gap_p50_s": percentile(gaps, 50) - 1 / RATE if gaps else None,
            "added_gap_p99_s": percentile(gaps, 99) - 1 / RATE if gaps else None,
            "server_cpu_s": chosen.cpu_s if proxied else None,
            "server_cpu_s_per_chunk": chosen.cpu_s_per_chunk if proxied else None,
            "server_cpu_s_per_chunk_rounds": per_chunk if proxied else None,
            "peak_in_flight": max(peak_in_flight([i for res in r.results for i in res["intervals"]]) for r in taken),
            "gc": None if gc is None else gc.as_json(cpu_all_rounds),
            "gc_longest_full_since_start_s": full_since_start.get(target.name),
            "gc_share_of_cpu": None if gc is None else gc.share(cpu_all_rounds),
            "cpu_s": chosen.window.seconds,
            "machine_busy": chosen.window.machine_busy,
            "listen_overflows": sum(r.overflows for r in taken),
            "errors": sum(res["error_count"] for r in taken for res in r.results),
            "error_samples": [e for r in taken for res in r.results for e in res["errors"]],
        }
        over = None
        if floor is not None and proxied and target.name != FLOOR:
            # Each round's figure to the floor's of the same round, minutes
            # apart at most; the median of those.
            by_round = ratios_by_round(per_chunk, [f.cpu_s_per_chunk for f in floor])
            over = [median_ratio(by_round), ratio(figures["gc_share_of_cpu"], floor_gc_share)]
            figures["ratio_to_floor"] = dict(zip(["cpu_per_chunk", "gc_share"], over, strict=True))
            figures["ratio_to_floor"]["cpu_per_chunk_rounds"] = by_round
            if len(taken) > 1:
                round_notes.append(
                    f"{target.name}: CPU per chunk ÷ the floor's, round by round: {ratios_cell(by_round, ', ')}"
                )
        table.add(target.name, _cells(figures, gc, over, chosen.window), figures)
        if target.name == FLOOR:
            floor_gc_share = figures["gc_share_of_cpu"]
        limit = bottleneck(chosen.window, ctx.fleet_cores, ctx.settings.clients)
        if limit:
            table.notes.append(f"{target.name}: limited by {limit}")
    table.notes += round_notes
    table.notes += [
        "wall = the common start → the last delta; added gap = client inter-arrival of deltas − "
        f"{1000 / RATE:.0f} ms, over all rounds; server CPU / chunk = the server's utime+stime over a round ÷ the "
        "deltas delivered (stream set-ups included); the row is the median round by it, and ÷ floor the median of "
        "each round's ratio to the floor's of the same round",
        "GC (the aiohttp floor and cancelproxy only): from each one's GET /metrics before the first round and after "
        "the last, where gc.callbacks times every collection; % of server CPU = the collecting thread's CPU time in "
        "collections ÷ the process's utime+stime over the same span; a pause is a collection's wall time (the event "
        "loop stands still meanwhile); gen 2 is a full collection; ≤: no longer pause than the process's longest "
        "before the run, bounded by the pause histogram's bucket; none: no collection of that generation",
        "the longest full collection each process has had since it started (its GC figures' own maximum): "
        + "; ".join(
            f"{name} {'none yet' if seconds is None else f'{seconds * 1000:.2f} ms'}"
            for name, seconds in full_since_start.items()
        ),
        FLOOR_NOTE,
    ]
    return table


def _cells(
    figures: dict[str, Any], gc: GcWindow | None, over: list[float | None] | None, window: CpuWindow
) -> list[str]:
    def maybe(value: float | None, scale: float, digits: int) -> str:
        return "n/a" if value is None else f"{value * scale:.{digits}f}"

    gaps = [figures["added_gap_p50_s"], figures["added_gap_p99_s"]]
    return [
        f"{figures['wall_s']:.2f}",
        " / ".join("n/a" if g is None else f"{g * 1000:+.1f}" for g in gaps),
        maybe(figures["server_cpu_s_per_chunk"], 1e6, 1),
        maybe(figures["gc_share_of_cpu"], 100, 2),
        "n/a" if gc is None else " / ".join(str(c) for c in gc.collections),
        "n/a" if gc is None else " / ".join("none" if x is None else x.cell() for x in gc.longest),
        "—" if over is None else ratios_cell(over),
        cpu_cell(window),
        str(figures["listen_overflows"]),
        str(figures["errors"]),
    ]
