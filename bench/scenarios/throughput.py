"""``throughput``: N concurrent streams × M chunks sent as fast as the mock can."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from ..client import ContentCounter, Opener, chat_body, check, read_to_end, session, sleep_until
from ..fleet import FLOOR
from ..report import CPU_COLUMN, FLOOR_NOTE, Table, bottleneck, cpu_cell, ratio, ratios_cell
from ..stats import median
from ..workers import Job
from . import Context


async def _stream(http: aiohttp.ClientSession, opener: Opener, url: str, body: bytes) -> tuple[int, float]:
    counter = ContentCounter()
    async with await opener.post(http, url, body) as response:
        check(response, "stream")
        await read_to_end(response, counter)
    return counter.count, time.monotonic()


async def streams_job(
    url: str, streams: int, chunks: int, start_at: float, timeout_s: float, rate: float = 0.0
) -> dict[str, Any]:
    body = chat_body(stream=True, tokens=chunks, rate=rate)
    opener = Opener()
    async with session(limit=0) as http:
        await sleep_until(start_at)
        started = time.monotonic()
        async with asyncio.timeout(timeout_s):
            done = await asyncio.gather(
                *(_stream(http, opener, url, body) for _ in range(streams)), return_exceptions=True
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
    direct_rate: float | None = None
    floor: tuple[float, float] | None = None  # the floor's chunks/s and CPU s per chunk
    for target in ctx.targets:
        measured = []
        for _ in range(rounds):
            ctx.fleet.clear_mock()
            start_at = ctx.start_at()
            jobs = [
                Job(
                    "bench.scenarios.throughput:streams_job",
                    {
                        "url": target.chat_url,
                        "streams": share,
                        "chunks": chunks,
                        "start_at": start_at,
                        "timeout_s": 120.0,
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
            measured.append(
                (received / wall, wall, window, errors, [e for r in results for e in r["errors"]], received)
            )
        rate = median([m[0] for m in measured])
        rate, wall, window, errors, messages, received = next(m for m in measured if m[0] == rate)
        direct_rate = rate if target.name == "direct" else direct_rate
        to_direct = rate / direct_rate if direct_rate else None
        # The server's CPU per chunk the clients received (its stream set-ups included).
        per_chunk = window.seconds["server"] / received if target.name != "direct" and received else None
        if target.name == FLOOR:
            floor = (rate, per_chunk) if per_chunk else None
        over = [ratio(rate, floor[0]), ratio(per_chunk, floor[1])] if floor and target.name != FLOOR else None
        table.add(
            target.name,
            [
                f"{rate:,.0f}",
                "1.00" if target.name == "direct" else f"{to_direct:.2f}",
                f"{wall:.2f}",
                "n/a" if per_chunk is None else f"{per_chunk * 1e6:.1f}",
                "—" if over is None else ratios_cell(over),
                cpu_cell(window),
                str(errors),
            ],
            {
                "chunks_per_s": rate,
                "ratio_to_direct": to_direct,
                "server_cpu_s_per_chunk": per_chunk,
                "ratio_to_floor": None if over is None else {"chunks_per_s": over[0], "cpu_per_chunk": over[1]},
                "wall_s": wall,
                "cpu_s": window.seconds,
                "errors": errors,
                "error_samples": messages,
                "rounds": [m[0] for m in measured],
            },
        )
        limit = bottleneck(window, ctx.fleet_cores, settings.clients)
        who = "direct is the ceiling here (clients + mock alone)" if target.name == "direct" else target.name
        table.notes.append(f"{who}: limited by {limit}" if limit else f"{who}: no process saturated")
    table.notes.append(
        "server CPU / chunk: the server's utime+stime over the round ÷ the content chunks the clients received"
    )
    table.notes.append(FLOOR_NOTE)
    return table
