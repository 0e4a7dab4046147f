"""``slow_streams``: many concurrent streams at 10 chunks/s: the cost of holding them.

Per target: round 1 gives the wall time, the inter-chunk delay the hop adds, the
server's CPU seconds and its RSS per in-flight stream; rounds 2.. give the RSS
after each round (flat: nothing is kept once streams end). Direct has no server
and runs round 1 only.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import aiohttp

from ..client import OPENING, ContentCounter, Opener, chat_body, check, listen_overflows, session, sleep_until
from ..fleet import FLOOR
from ..procstat import RssSampler, total_cpu, total_rss_kb
from ..report import CPU_COLUMN, FLOOR_NOTE, Table, bottleneck, cpu_cell, ratio, ratios_cell
from ..stats import percentile
from ..workers import Job
from . import Context

TOKENS = 20
RATE = 10.0
IDEAL_S = TOKENS / RATE  # 2.0 s
GAP_S = 1 / RATE


async def _stream(
    http: aiohttp.ClientSession, opener: Opener, url: str, body: bytes, tokens: int
) -> tuple[float, float, float, list[float]]:
    """(sent, headers received, last delta, gaps between deltas) of one stream."""
    counter = ContentCounter()
    arrivals: list[float] = []
    sent = time.monotonic()
    async with await opener.post(http, url, body) as response:
        headers = time.monotonic()
        check(response, "stream")
        while data := await response.content.readany():
            now = time.monotonic()
            arrivals += [now] * counter.feed(data)
    if len(arrivals) != tokens:
        raise RuntimeError(f"{len(arrivals)} deltas of {tokens}")
    return sent, headers, arrivals[-1], [b - a for a, b in itertools.pairwise(arrivals)]


async def slow_job(
    url: str, streams: int, start_at: float, timeout_s: float, tokens: int = TOKENS, rate: float = RATE
) -> dict[str, Any]:
    body = chat_body(stream=True, tokens=tokens, rate=rate)
    opener = Opener()
    async with session(limit=0) as http:
        await sleep_until(start_at)
        async with asyncio.timeout(timeout_s):
            done = await asyncio.gather(
                *(_stream(http, opener, url, body, tokens) for _ in range(streams)), return_exceptions=True
            )
    ok = [d for d in done if isinstance(d, tuple)]
    errors = [repr(d) for d in done if not isinstance(d, tuple)]
    return {
        "started": start_at,
        "ended": max((d[2] for d in ok), default=start_at),
        "durations": [d[2] - d[0] for d in ok],
        "gaps": [g for d in ok for g in d[3]],
        "intervals": [(d[1], d[2]) for d in ok],
        "errors": errors[:3],
        "error_count": len(errors),
    }


def peak_in_flight(intervals: list[tuple[float, float]]) -> int:
    """Most streams between headers and last delta at the same instant."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def _settle(quick: bool) -> None:
    time.sleep(0.5 if quick else 1.0)  # the proxy's writer flushes every 200 ms; let freed memory be freed


def run(ctx: Context) -> Table:
    n = ctx.settings.slow_streams
    rounds = ctx.settings.slow_rounds
    table = Table(
        "slow_streams",
        f"{n} concurrent streams at {RATE:g} chunks/s × {TOKENS} chunks (ideal {IDEAL_S:.1f} s), all started at once; "
        f"round 1 measured, then RSS after each of {rounds} rounds",
        [
            "target",
            "wall s",
            "stream p99 s",
            "last headers s",
            "peak in flight",
            "added gap p50 / p99 ms",
            "server CPU s",
            "server CPU µs / chunk",
            "RSS KB / stream",
            f"RSS MB before → after rounds 1..{rounds}",
            "÷ floor: peak in flight / RSS per stream / CPU per chunk",
            CPU_COLUMN,
            "SYN drops",
            "errors",
        ],
    )
    floor: dict[str, Any] | None = None
    for target in ctx.targets:
        pids = target.server_pids
        proxied = target.name != "direct"
        ctx.fleet.clear_mock()
        before_kb = total_rss_kb(pids())
        after_kb: list[int] = []
        first: dict[str, Any] = {}
        for round_no in range(1 if not proxied else rounds):
            start_at = ctx.start_at()
            jobs = [
                Job(
                    "bench.scenarios.slow_streams:slow_job",
                    {"url": target.chat_url, "streams": share, "start_at": start_at, "timeout_s": 60.0},
                )
                for share in ctx.split(n)
            ]
            meter = ctx.cpu_meter(target)
            overflows = listen_overflows()
            cpu_before = total_cpu(pids())
            meter.start()
            with RssSampler(pids) as sampler:
                results = ctx.pool.run(jobs, timeout_s=90)
            wall = max(r["ended"] for r in results) - min(r["started"] for r in results)
            window = meter.stop(wall_s=wall)
            if round_no == 0:
                first = {
                    "wall": wall,
                    "window": window,
                    "peak_kb": sampler.peak_kb,
                    "cpu_s": total_cpu(pids()) - cpu_before,
                    "overflows": listen_overflows() - overflows,
                    "in_flight": peak_in_flight([i for r in results for i in r["intervals"]]),
                    "last_headers": max((h for r in results for h, _ in r["intervals"]), default=start_at) - start_at,
                    "durations": [d for r in results for d in r["durations"]],
                    "gaps": [g for r in results for g in r["gaps"]],
                    "errors": sum(r["error_count"] for r in results),
                    "error_samples": [e for r in results for e in r["errors"]],
                }
            _settle(ctx.settings.quick)
            after_kb.append(total_rss_kb(pids()))
        cells, figures = _row(target.name, proxied, n, before_kb, after_kb, first, floor)
        table.add(target.name, cells, figures)
        floor = figures if target.name == FLOOR else floor
        if first["in_flight"] < n:
            table.notes.append(
                f"{target.name}: only {first['in_flight']} of {n} streams were ever in flight at once: the last one "
                f"got its headers {first['last_headers']:.1f} s after the start, and a stream lasts {IDEAL_S:.0f} s"
            )
        limit = bottleneck(first["window"], ctx.fleet_cores, ctx.settings.clients)
        who = "direct is the ceiling (clients + mock alone)" if not proxied else target.name
        table.notes.append(f"{who}: limited by {limit}" if limit else f"{who}: no process saturated")
    table.notes += [
        "wall = all requested at once → last delta received; stream = its request sent → its last delta; last "
        "headers = start → the last stream's answer headers; peak in flight = most streams between headers and "
        "last delta at one instant; added gap = client inter-arrival of "
        f"deltas − {GAP_S * 1000:.0f} ms; server CPU = utime+stime from /proc (nginx: master + worker); RSS/stream = "
        "(peak VmRSS, sampled every 100 ms − VmRSS before) / peak in flight",
        f"each client process opens at most {OPENING} connections at a time (held until the answer's headers), so "
        "the mock's 128-connection listen backlog (aiohttp's default; cancelproxy's is 4096) is not overflowed; "
        "SYN drops = the kernel's "
        "ListenOverflows during the round (a dropped SYN costs the client a 1 s retransmit)",
        "server CPU / chunk: round 1's server CPU ÷ the deltas it relayed (stream set-ups and tear-downs included)",
        FLOOR_NOTE,
    ]
    return table


def _row(
    name: str,
    proxied: bool,
    n: int,
    before_kb: int,
    after_kb: list[int],
    first: dict[str, Any],
    floor: dict[str, Any] | None,
) -> tuple[list[str], dict[str, Any]]:
    durations, gaps = first["durations"], first["gaps"]
    stream_p99 = percentile(durations, 99) if durations else None
    added = {p: percentile(gaps, p) - GAP_S for p in (50, 99)} if gaps else {}
    per_stream = (first["peak_kb"] - before_kb) / max(1, first["in_flight"]) if proxied else None
    per_chunk = first["cpu_s"] / (len(durations) * TOKENS) if proxied and durations else None
    over = None
    if floor is not None and proxied and name != FLOOR:
        over = [
            ratio(first["in_flight"], floor["peak_in_flight"]),
            ratio(per_stream, floor["rss_kb_per_stream"]),
            ratio(per_chunk, floor["server_cpu_s_per_chunk"]),
        ]
    cells = [
        f"{first['wall']:.2f}",
        f"{stream_p99:.2f}" if stream_p99 is not None else "n/a",
        f"{first['last_headers']:.2f}",
        str(first["in_flight"]),
        " / ".join(f"{added[p] * 1000:+.1f}" for p in (50, 99)) if added else "n/a",
        f"{first['cpu_s']:.2f}" if proxied else "n/a",
        f"{per_chunk * 1e6:.1f}" if per_chunk is not None else "n/a",
        f"{per_stream:.1f}" if per_stream is not None else "n/a",
        (f"{before_kb / 1024:.1f} → " + " / ".join(f"{kb / 1024:.1f}" for kb in after_kb)) if proxied else "n/a",
        "—" if over is None else ratios_cell(over),
        cpu_cell(first["window"]),
        str(first["overflows"]),
        str(first["errors"]),
    ]
    figures = {
        "wall_s": first["wall"],
        "ideal_s": IDEAL_S,
        "stream_p50_s": percentile(durations, 50) if durations else None,
        "stream_p99_s": stream_p99,
        "added_gap_p50_s": added.get(50),
        "added_gap_p99_s": added.get(99),
        "server_cpu_s": first["cpu_s"] if proxied else None,
        "rss_before_kb": before_kb if proxied else None,
        "rss_peak_kb": first["peak_kb"] if proxied else None,
        "rss_kb_per_stream": per_stream,
        "server_cpu_s_per_chunk": per_chunk,
        "ratio_to_floor": None
        if over is None
        else dict(zip(["peak_in_flight", "rss_kb_per_stream", "cpu_per_chunk"], over, strict=True)),
        "rss_after_rounds_kb": after_kb if proxied else None,
        "cpu_s": first["window"].seconds,
        "machine_busy": first["window"].machine_busy,
        "errors": first["errors"],
        "peak_in_flight": first["in_flight"],
        "listen_overflows": first["overflows"],
        "last_headers_s": first["last_headers"],
        "error_samples": first["error_samples"],
    }
    return cells, figures
