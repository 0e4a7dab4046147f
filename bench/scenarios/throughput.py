"""``throughput``: N concurrent streams × M chunks sent as fast as the mock can."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from ..client import MARKS, ContentCounter, Opener, Protocol, check, read_to_end, session, sleep_until, stream_body
from ..fleet import FLOOR, Target
from ..procstat import CpuWindow
from ..report import CPU_COLUMN, FLOOR_NOTE, Table, bottleneck, cpu_cell, median_ratio, ratios_by_round, ratios_cell
from ..stats import median
from ..workers import Job
from . import Context


async def _stream(http: aiohttp.ClientSession, opener: Opener, url: str, body: bytes, mark: bytes) -> tuple[int, float]:
    counter = ContentCounter(mark)
    async with await opener.post(http, url, body) as response:
        check(response, "stream")
        await read_to_end(response, counter)
    return counter.count, time.monotonic()


async def streams_job(
    url: str,
    streams: int,
    chunks: int,
    start_at: float,
    timeout_s: float,
    rate: float = 0.0,
    protocol: Protocol = "chat",
) -> dict[str, Any]:
    body = stream_body(protocol, tokens=chunks, rate=rate)
    opener = Opener()
    async with session(limit=0) as http:
        await sleep_until(start_at)
        started = time.monotonic()
        async with asyncio.timeout(timeout_s):
            done = await asyncio.gather(
                *(_stream(http, opener, url, body, MARKS[protocol]) for _ in range(streams)),
                return_exceptions=True,
            )
    ok = [d for d in done if isinstance(d, tuple)]
    errors = [repr(d) for d in done if not isinstance(d, tuple)]
    return {
        "started": started,
        "ended": max((e for _, e in ok), default=started),
        "chunks": sum(c for c, _ in ok),
        "errors": errors[:3],
        "error_count": len(errors),
    }


@dataclass
class Round:
    chunks_per_s: float
    wall_s: float
    window: CpuWindow
    errors: int
    error_samples: list[str]
    received: int  # content chunks the clients received


def measure_round(ctx: Context, target: Target, protocol: Protocol, streams: int, chunks: int) -> Round:
    """One run of ``streams`` concurrent streams × ``chunks`` at rate 0 through ``target``
    (rounds of them: ``Context.in_turns``)."""
    ctx.fleet.clear_mock()
    start_at = ctx.start_at()
    jobs = [
        Job(
            "bench.scenarios.throughput:streams_job",
            {
                "url": target.url(protocol),
                "streams": share,
                "chunks": chunks,
                "start_at": start_at,
                "timeout_s": 120.0,
                "protocol": protocol,
            },
        )
        for share in ctx.split(streams)
    ]
    meter = ctx.cpu_meter(target)
    meter.start()
    results = ctx.pool.run(jobs, timeout_s=150)
    wall = max(r["ended"] for r in results) - min(r["started"] for r in results)
    window = meter.stop(wall_s=wall)
    received = sum(r["chunks"] for r in results)
    errors = sum(r["error_count"] for r in results) + (streams * chunks - received > 0)
    messages = [e for r in results for e in r["errors"]]
    return Round(received / wall, wall, window, errors, messages, received)


def median_round(measured: list[Round]) -> Round:
    rate = median([m.chunks_per_s for m in measured])
    return next(m for m in measured if m.chunks_per_s == rate)


def cpu_per_chunk(target: Target, chosen: Round) -> float | None:
    """The server's CPU per chunk the clients received (its stream set-ups included); None for direct."""
    return chosen.window.seconds["server"] / chosen.received if target.name != "direct" and chosen.received else None


def run(ctx: Context) -> Table:
    settings = ctx.settings
    streams, chunks, rounds = settings.throughput_streams, settings.throughput_chunks, settings.throughput_rounds
    table = Table(
        "throughput",
        f"{streams} concurrent streams × {chunks} chunks at rate 0 (as fast as the mock "
        f"sends), content chunks received per second by all clients; median of {rounds} round(s)",
        [
            "target",
            "chunks/s",
            "ratio to direct",
            "wall s",
            "server CPU µs / chunk",
            "÷ floor: chunks/s / CPU per chunk",
            CPU_COLUMN,
            "errors",
        ],
    )
    rounds_of = ctx.in_turns(rounds, lambda target: measure_round(ctx, target, "chat", streams, chunks))
    floor_target = next((target for target in ctx.targets if target.name == FLOOR), None)
    direct_rate: float | None = None
    for target in ctx.targets:
        measured = rounds_of[target.name]
        chosen = median_round(measured)
        rate, window = chosen.chunks_per_s, chosen.window
        direct_rate = rate if target.name == "direct" else direct_rate
        to_direct = rate / direct_rate if direct_rate else None
        per_chunk = cpu_per_chunk(target, chosen)
        over = None
        if floor_target is not None and target.name not in (FLOOR, "direct"):
            floor_rounds = rounds_of[FLOOR]
            rates = ratios_by_round([m.chunks_per_s for m in measured], [f.chunks_per_s for f in floor_rounds])
            cpu = ratios_by_round(
                [cpu_per_chunk(target, m) for m in measured], [cpu_per_chunk(floor_target, f) for f in floor_rounds]
            )
            over = [median_ratio(rates), median_ratio(cpu)]
        table.add(
            target.name,
            [
                f"{rate:,.0f}",
                "1.00" if target.name == "direct" else f"{to_direct:.2f}",
                f"{chosen.wall_s:.2f}",
                "n/a" if per_chunk is None else f"{per_chunk * 1e6:.1f}",
                "—" if over is None else ratios_cell(over),
                cpu_cell(window),
                str(chosen.errors),
            ],
            {
                "chunks_per_s": rate,
                "ratio_to_direct": to_direct,
                "server_cpu_s_per_chunk": per_chunk,
                "ratio_to_floor": None if over is None else {"chunks_per_s": over[0], "cpu_per_chunk": over[1]},
                "wall_s": chosen.wall_s,
                "cpu_s": window.seconds,
                "errors": chosen.errors,
                "error_samples": chosen.error_samples,
                "rounds": [m.chunks_per_s for m in measured],
            },
        )
        limit = bottleneck(window, ctx.fleet_cores, settings.clients)
        who = "direct is the ceiling here (clients + mock alone)" if target.name == "direct" else target.name
        table.notes.append(f"{who}: limited by {limit}" if limit else f"{who}: no process saturated")
    table.notes.append(
        "server CPU / chunk: the server's utime+stime over the round ÷ the content chunks the clients received; "
        "the rounds take turns, every target in each; a row is its median round by chunks/s, and ÷ floor the median "
        "of each round's ratio to the floor's in the same round"
    )
    table.notes.append(FLOOR_NOTE)
    return table
