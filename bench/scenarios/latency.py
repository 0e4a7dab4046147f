"""``latency``, ``ttft`` and ``conversation``: what a hop adds to one request, measured sequentially.

One keep-alive connection per target; targets take turns in blocks of
``BLOCK`` requests so a slow patch of the machine falls on all of them alike.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from ..client import (
    CONVERSATION_TURNS,
    JSON,
    MARKS,
    ContentCounter,
    Protocol,
    chat_body,
    check,
    conversation_body,
    read_deltas,
    read_to_end,
    session,
    stream_body,
)
from ..fleet import FLOOR
from ..procstat import total_cpu
from ..report import FLOOR_NOTE, Table, ratio, ratios_cell
from ..stats import ms, percentile, signed_ms
from ..workers import Job
from . import Context

BLOCK = 50


async def _request(http: aiohttp.ClientSession, url: str, body: bytes, mark: bytes | None) -> float:
    """``mark``: time to the first delta with this mark; None: to the whole answer."""
    started = time.perf_counter()
    async with http.post(url, data=body, headers=JSON) as response:
        check(response, "request")
        if mark is None:
            await response.read()
            return time.perf_counter() - started
        counter = ContentCounter(mark)
        await read_deltas(response, counter, 1)
        first = time.perf_counter() - started
        await read_to_end(response, counter)
        return first


async def sequential_job(
    urls: dict[str, str],
    ttft: bool,
    count: int,
    warmup: int,
    gap_s: float = 0.0,
    protocol: Protocol = "chat",
    conversation: bool = False,
) -> dict[str, list[float]]:
    """``gap_s``: a pause before each measured request (diagnostics: lets the
    previous request's handler finish before the next one is sent). ``protocol``:
    the stream format of a ttft run; ``conversation``: a chat ttft run whose body
    is a long conversation."""
    if conversation:
        body = conversation_body(tokens=1, rate=0)
    elif ttft:
        body = stream_body(protocol, tokens=1, rate=0)
    else:
        body = chat_body(stream=False, tokens=1, rate=0)
    mark = MARKS[protocol] if ttft else None
    sessions = {name: session(limit=1) for name in urls}  # one keep-alive connection each
    samples: dict[str, list[float]] = {name: [] for name in urls}
    try:
        for name, url in urls.items():
            for _ in range(warmup):
                await _request(sessions[name], url, body, mark)
        while (done := len(next(iter(samples.values())))) < count:
            for name, url in urls.items():
                for _ in range(min(BLOCK, count - done)):
                    if gap_s:
                        await asyncio.sleep(gap_s)
                    samples[name].append(await _request(sessions[name], url, body, mark))
    finally:
        for http in sessions.values():
            await http.close()
    return samples


def measure(
    ctx: Context, ttft: bool, count: int, protocol: Protocol = "chat", conversation: bool = False
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """``count`` sequential requests per target: the samples (s) and the server CPU ms per request, by target."""
    warmup = ctx.settings.latency_warmup
    ctx.fleet.clear_mock()
    urls = {t.name: t.url(protocol) for t in ctx.targets}
    job = Job(
        "bench.scenarios.latency:sequential_job",
        {
            "urls": urls,
            "ttft": ttft,
            "count": count,
            "warmup": warmup,
            "protocol": protocol,
            "conversation": conversation,
        },
    )
    servers = {t.name: t.server_pids for t in ctx.targets}
    cpu_before = {name: total_cpu(pids()) for name, pids in servers.items()}
    samples: dict[str, list[float]] = ctx.pool.run([job], timeout_s=60 + count * len(urls) * 0.05)[0]
    cpu_ms = {name: (total_cpu(pids()) - cpu_before[name]) / (count + warmup) * 1000 for name, pids in servers.items()}
    return samples, cpu_ms


def _run(ctx: Context, ttft: bool, conversation: bool = False) -> Table:
    settings = ctx.settings
    if conversation:
        count = settings.conversation_requests
    else:
        count = settings.ttft_requests if ttft else settings.latency_requests
    samples, cpu_ms = measure(ctx, ttft, count, conversation=conversation)
    if conversation:
        size = len(conversation_body(tokens=1, rate=0)) / 1000
        table = Table(
            "conversation",
            f"time to first content token of a stream whose body is a {CONVERSATION_TURNS}-turn conversation "
            f"({size:.1f} KB; tokens 1, rate 0), {count} sequential requests per target",
            [],
        )
    elif ttft:
        table = Table(
            "ttft",
            f"time to first content token of a stream (tokens 1, rate 0), {count} sequential requests per target",
            [],
        )
    else:
        table = Table(
            "latency", f"non-streaming request (tokens 1, rate 0), {count} sequential requests per target", []
        )
    table.columns = [
        "target",
        "p50 ms",
        "p99 ms",
        "added p50 ms",
        "added p99 ms",
        "server CPU ms / request",
        "÷ floor: added p50 / added p99 / CPU",
    ]
    base = {p: percentile(samples["direct"], p) for p in (50, 99)}
    floor = samples.get(FLOOR)
    floor_added = {p: percentile(floor, p) - base[p] for p in (50, 99)} if floor else {}
    for name, values in samples.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        cpu = None if name == "direct" else cpu_ms[name]
        figures: dict[str, Any] = {
            "p50_s": p50,
            "p99_s": p99,
            "server_cpu_ms_per_request": cpu,
            "samples": len(values),
        }
        cells = [ms(p50), ms(p99)]
        if name == "direct":
            cells += ["—", "—", "n/a", "—"]
        else:
            added = {p: percentile(values, p) - base[p] for p in (50, 99)}
            figures |= {"added_p50_s": added[50], "added_p99_s": added[99]}
            cells += [signed_ms(added[50]), signed_ms(added[99]), f"{cpu_ms[name]:.3f}"]
            if name == FLOOR or floor is None:
                cells.append("—")
            else:
                over = [ratio(added[50], floor_added[50]), ratio(added[99], floor_added[99])]
                over.append(ratio(cpu_ms[name], cpu_ms[FLOOR]))
                figures["ratio_to_floor"] = dict(zip(["added_p50", "added_p99", "cpu_per_request"], over, strict=True))
                cells.append(ratios_cell(over))
        table.add(name, cells, figures)
    table.notes += [
        f"one keep-alive client connection per target, {settings.latency_warmup} warm-up requests each; targets "
        f"take turns in blocks of {BLOCK}; p50/p99 nearest-rank over all samples; added = target − direct",
        "direct is the baseline (client + mock round trip, same run): what a hop adds cannot be read below it; "
        "one request at a time, so no process is saturated",
        "server CPU / request: the server's utime+stime over the run (all its threads; nginx: master + worker) "
        "divided by the requests it served, warm-up included",
        FLOOR_NOTE,
    ]
    return table


def run_latency(ctx: Context) -> Table:
    return _run(ctx, ttft=False)


def run_ttft(ctx: Context) -> Table:
    return _run(ctx, ttft=True)


def run_conversation(ctx: Context) -> Table:
    return _run(ctx, ttft=True, conversation=True)
