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

from typing import Any

from ..client import listen_overflows
from ..fleet import FLOOR
from ..gcfigures import FULL, GcWindow, scrape
from ..procstat import total_cpu
from ..report import CPU_COLUMN, FLOOR_NOTE, Table, bottleneck, cpu_cell, ratio, ratios_cell
from ..stats import percentile
from ..workers import Job
from . import Context
from .slow_streams import peak_in_flight

RATE = 50.0


def run(ctx: Context) -> Table:
    n, tokens = ctx.settings.concurrent_streams, ctx.settings.concurrent_tokens
    table = Table(
        "concurrent_streams",
        f"{n} concurrent streams at {RATE:g} chunks/s × {tokens} chunks ({tokens / RATE:.0f} s), started together",
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
    floor: dict[str, Any] | None = None
    full_since_start: dict[str, float | None] = {}  # None: no full collection yet
    for target in ctx.targets:
        pids = target.server_pids
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
        gc_before = scrape(target.metrics_url) if target.gc_metrics else None
        cpu_before, overflows = total_cpu(pids()), listen_overflows()
        meter = ctx.cpu_meter(target)
        meter.start()
        results = ctx.pool.run(jobs, timeout_s=90 + tokens / RATE)
        wall = max(r["ended"] for r in results) - start_at
        window = meter.stop(wall_s=wall)
        cpu_s, overflows = total_cpu(pids()) - cpu_before, listen_overflows() - overflows
        gc_after = scrape(target.metrics_url) if gc_before is not None else None
        gc = GcWindow.between(gc_before, gc_after) if gc_before is not None and gc_after is not None else None
        if gc_after is not None:
            full_since_start[target.name] = gc_after.longest_s[FULL] if gc_after.collections[FULL] else None

        proxied = target.name != "direct"
        gaps = [g for r in results for g in r["gaps"]]
        delivered = sum(len(r["durations"]) for r in results) * tokens
        in_flight = peak_in_flight([i for r in results for i in r["intervals"]])
        figures: dict[str, Any] = {
            "wall_s": wall,
            "added_gap_p50_s": percentile(gaps, 50) - 1 / RATE if gaps else None,
            "added_gap_p99_s": percentile(gaps, 99) - 1 / RATE if gaps else None,
            "server_cpu_s": cpu_s if proxied else None,
            "server_cpu_s_per_chunk": cpu_s / delivered if proxied and delivered else None,
            "peak_in_flight": in_flight,
            "gc": None if gc is None else gc.as_json(cpu_s),
            "gc_longest_full_since_start_s": full_since_start.get(target.name),
            "gc_share_of_cpu": None if gc is None else gc.share(cpu_s),
            "cpu_s": window.seconds,
            "machine_busy": window.machine_busy,
            "listen_overflows": overflows,
            "errors": sum(r["error_count"] for r in results),
            "error_samples": [e for r in results for e in r["errors"]],
        }
        over = None
        if floor is not None and proxied and target.name != FLOOR:
            over = [ratio(figures[k], floor[k]) for k in ("server_cpu_s_per_chunk", "gc_share_of_cpu")]
            figures["ratio_to_floor"] = dict(zip(["cpu_per_chunk", "gc_share"], over, strict=True))
        table.add(target.name, _cells(figures, gc, over, window), figures)
        floor = figures if target.name == FLOOR else floor
        limit = bottleneck(window, ctx.fleet_cores, ctx.settings.clients)
        if limit:
            table.notes.append(f"{target.name}: limited by {limit}")
    table.notes += [
        "wall = the common start → the last delta; added gap = client inter-arrival of deltas − "
        f"{1000 / RATE:.0f} ms; server CPU / chunk = the server's utime+stime over the run ÷ the deltas delivered "
        "(stream set-ups included)",
        "GC (the aiohttp floor and cancelproxy only): from each one's GET /metrics before and after the run, where "
        "gc.callbacks times every collection; % of server CPU = the collecting thread's CPU time in collections ÷ "
        "the process's utime+stime; a pause is a collection's wall time (the event loop stands still meanwhile); "
        "gen 2 is a full collection; ≤: no longer pause than the process's longest before the run, bounded by the "
        "pause histogram's bucket; none: no collection of that generation",
        "the longest full collection each process has had since it started (its GC figures' own maximum): "
        + "; ".join(
            f"{name} {'none yet' if seconds is None else f'{seconds * 1000:.2f} ms'}"
            for name, seconds in full_since_start.items()
        ),
        FLOOR_NOTE,
    ]
    return table


def _cells(figures: dict[str, Any], gc: GcWindow | None, over: list[float | None] | None, window: Any) -> list[str]:
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
