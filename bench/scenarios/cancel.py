"""``cancel``: POST /requests/{id}/cancel → the provider's connection closed.

Each stream (rate 50, far more tokens than it lives for) has its own mock tag
and X-Session-Id; the client reads a few deltas, then cancels. Latency = the
mock's ``ended_at`` − the instant just before the cancel was sent (both
``time.monotonic()``, one clock on Linux). Only cancelproxy has cancel routes.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import aiohttp

from ..client import (
    JSON,
    ContentCounter,
    Opener,
    chat_body,
    check,
    listen_overflows,
    mock_record,
    mock_records,
    read_deltas,
    read_to_end,
    session,
    sleep_until,
)
from ..procstat import CpuWindow
from ..report import CPU_COLUMN, Table, bottleneck, cpu_cell
from ..stats import ms, percentile
from ..workers import Job
from . import Context

RATE = 50.0
TOKENS = 600  # 12 s at rate 50: outlives every cancel; the mock builds them all upfront, so no more
READ_FIRST = 3  # deltas read before the cancel
WARMUP = 3


def tokens_after_ack(record: dict[str, Any], acked: float) -> int:
    """Tokens the provider sent after the client had the cancel's answer: 0 if its
    last one was sent before; else at most 1 + ⌊Δ·rate⌋ (deltas are ≥ 1/rate apart)."""
    last = record["last_token_at"]
    if last is None or last <= acked:
        return 0
    return min(int(record["tokens_sent"]), 1 + int((last - acked) * RATE))


async def _one(
    http: aiohttp.ClientSession,
    canceller: aiohttp.ClientSession,
    opener: Opener,
    root: str,
    tag: str,
    start_at: float | None,
    cancel_at: float | None,
) -> tuple[str, float, float]:
    """One stream cancelled: (tag, cancel sent, answer received)."""
    if start_at is not None:
        await sleep_until(start_at)
    body = chat_body(stream=True, tokens=TOKENS, rate=RATE, tag=tag)
    url = f"{root}/v1/chat/completions"
    phase = "stream start"
    try:
        async with await opener.post(http, url, body, {**JSON, "X-Session-Id": tag}) as response:
            check(response, "stream")
            request_id = response.headers["X-Request-Id"]
            counter = ContentCounter()
            phase = "first deltas"
            await read_deltas(response, counter, READ_FIRST)
            reader = asyncio.create_task(read_to_end(response, counter))  # on to the clean end
            try:
                if cancel_at is not None:
                    await sleep_until(cancel_at)
                phase = "cancel"
                sent = time.monotonic()
                async with canceller.post(f"{root}/requests/{request_id}/cancel") as answer:
                    check(answer, "cancel")
                    reply = await answer.json()
                acked = time.monotonic()
                phase = "end of the cancelled stream"
                await reader
            finally:
                reader.cancel()
    except (aiohttp.ClientError, OSError, RuntimeError) as exc:
        raise RuntimeError(f"{phase}: {type(exc).__name__}: {exc}") from exc
    if reply.get("cancelled") is not True:
        raise RuntimeError(f"cancel: answered {reply}")
    return tag, sent, acked


def _sample(record: dict[str, Any], sent: float, acked: float) -> dict[str, Any]:
    return {
        "cancel_s": record["ended_at"] - sent,
        "ack_s": acked - sent,
        "after": tokens_after_ack(record, acked),
        "state": record["state"],
        "closed_after_ack": record["ended_at"] > acked,
    }


async def _warm(http: aiohttp.ClientSession, root: str, connections: int) -> None:
    """Open up to ``connections`` keep-alive connections, so a cancel is not timed
    with a TCP connect (concurrent requests each need a connection of their own)."""

    async def get() -> None:
        async with http.get(f"{root}/healthz") as response:
            await response.read()

    await asyncio.gather(*(get() for _ in range(connections)))


async def sequential_job(root: str, mock_root: str, count: int, run_id: str) -> list[dict[str, Any]]:
    samples = []
    opener = Opener()
    async with session() as http, session() as canceller, session() as observer:
        await _warm(canceller, root, 1)
        for i in range(WARMUP + count):
            tag, sent, acked = await _one(http, canceller, opener, root, f"{run_id}-cancel1-{i}", None, None)
            if i >= WARMUP:
                samples.append(_sample(await mock_record(observer, mock_root, tag), sent, acked))
    return samples


async def concurrent_job(
    root: str,
    mock_root: str,
    indices: list[int],
    total: int,
    run_id: str,
    start_at: float,
    ramp_s: float,
    cancel_from: float,
    window_s: float,
    new_connections: bool = False,
) -> dict[str, Any]:
    """Streams ``indices`` of ``total``: started over ``ramp_s``, cancelled one by one
    over ``window_s`` from ``cancel_from``, while the others stream on.
    ``new_connections``: each cancel opens a connection of its own (and closes it
    after), so its time includes the connect to a busy server."""
    prefix = f"{run_id}-cancel{'C' if new_connections else 'N'}"
    opener = Opener()
    async with session() as http, session(force_close=new_connections) as canceller, session() as observer:
        if not new_connections:
            # An idle keep-alive connection per stream for its cancel, as each user's
            # browser would have: a cancel is timed from its request, not from a TCP
            # connect to a busy server.
            await _warm(canceller, root, len(indices))
        await sleep_until(start_at)
        overflows = listen_overflows()
        async with asyncio.timeout(cancel_from - time.monotonic() + window_s + 60):
            done = await asyncio.gather(
                *(
                    _one(
                        http,
                        canceller,
                        opener,
                        root,
                        f"{prefix}-{i}",
                        start_at + ramp_s * i / total,
                        cancel_from + window_s * i / total,
                    )
                    for i in indices
                ),
                return_exceptions=True,
            )
        ok = [d for d in done if isinstance(d, tuple)]
        errors = [
            str(d) if isinstance(d, RuntimeError) else f"{type(d).__name__}: {d}"
            for d in done
            if not isinstance(d, tuple)
        ]
        # Every provider connection must end, cancelled or not: wait for all of them.
        overflows = listen_overflows() - overflows
        records = await mock_records(observer, mock_root, {f"{prefix}-{i}" for i in indices}, 60)
    return {
        "samples": [_sample(records[tag], sent, acked) for tag, sent, acked in ok],
        "errors": errors,
        "overflows": overflows,
    }


COLUMNS = [
    "target",
    "streams",
    "cancel → provider closed p50 / p99 ms",
    "ack p50 / p99 ms",
    "tokens after ack: total / streams",
    CPU_COLUMN,
    "SYN drops",
    "errors",
]
TOKENS_NOTE = (
    "tokens after ack: per stream 0 if the mock's last_token_at ≤ the instant the client had the cancel's "
    f"answer, else at most 1 + ⌊Δ·{RATE:g}⌋; acks include the record's final write to SQLite"
)
SYN_NOTE = (
    "SYN drops: the kernel's ListenOverflows during the run (a full listen queue; each drop costs a client a "
    "≥ 1 s retransmit, and the cancel or stream start waits for it)"
)


def no_cancel_rows(ctx: Context, table: Table) -> None:
    for target in ctx.targets:
        if target.name != "cancelproxy":
            table.add(target.name, ["n/a", "n/a (no cancel route)", "n/a", "n/a", "n/a", "n/a", "n/a"], {})


def run(ctx: Context) -> Table:
    settings = ctx.settings
    n = settings.cancel_concurrent
    table = Table(
        "cancel",
        f"cancel → provider connection closed (streams at rate {RATE:g}, {READ_FIRST} deltas "
        "read, then POST /requests/{id}/cancel)",
        COLUMNS,
    )
    no_cancel_rows(ctx, table)
    proxy = ctx.fleet.target("cancelproxy")
    assert proxy is not None
    ctx.fleet.clear_mock()
    job = Job(
        "bench.scenarios.cancel:sequential_job",
        {
            "root": proxy.root,
            "mock_root": ctx.fleet.mock_root,
            "count": settings.cancel_sequential,
            "run_id": ctx.run_id,
        },
    )
    meter = ctx.cpu_meter(proxy)
    meter.start()
    overflows = listen_overflows()
    one_at_a_time = ctx.pool.run([job], timeout_s=60 + settings.cancel_sequential)[0]
    add_row(
        table,
        f"cancelproxy, 1 at a time × {settings.cancel_sequential}",
        one_at_a_time,
        meter.stop(),
        [],
        listen_overflows() - overflows,
    )
    label = f"cancelproxy, {n} concurrent"
    ramp_s, window_s, window = run_concurrent(ctx, table, label, new_connections=False)
    table.notes += [
        f"{n} concurrent: started over {ramp_s:.1f} s, then cancelled one by one over {window_s:.1f} s while the "
        f"others stream on: the proxy relays up to {n} × {RATE:g} = {n * RATE:,.0f} deltas/s meanwhile; every stream's "
        "cancel has an idle keep-alive connection opened beforehand (a user's browser would have one)",
        SYN_NOTE,
        TOKENS_NOTE,
    ]
    limit = bottleneck(window, ctx.fleet_cores, settings.clients)
    if limit:
        table.notes.append(f"{n} concurrent: limited by {limit}")
    return table


def run_concurrent(ctx: Context, table: Table, label: str, new_connections: bool) -> tuple[float, float, CpuWindow]:
    """``settings.cancel_concurrent`` streams through cancelproxy, cancelled one by
    one while the others stream on; a row of ``table``. (ramp s, cancel window s, CPU)."""
    n = ctx.settings.cancel_concurrent
    proxy = ctx.fleet.target("cancelproxy")
    assert proxy is not None
    ctx.fleet.clear_mock()
    ramp_s = n / 500  # asked for at 500 new streams a second (the Opener bounds those still connecting)
    start_at = ctx.start_at(1.0 if new_connections else 3.0)  # after any cancel connections are open
    cancel_from = start_at + ramp_s + 1.0
    window_s = n / 250
    per_worker = [list(range(w, n, ctx.pool.size)) for w in range(ctx.pool.size)]
    jobs = [
        Job(
            "bench.scenarios.cancel:concurrent_job",
            {
                "root": proxy.root,
                "mock_root": ctx.fleet.mock_root,
                "indices": indices,
                "total": n,
                "run_id": ctx.run_id,
                "start_at": start_at,
                "ramp_s": ramp_s,
                "cancel_from": cancel_from,
                "window_s": window_s,
                "new_connections": new_connections,
            },
        )
        for indices in per_worker
    ]
    meter = ctx.cpu_meter(proxy)
    meter.start()
    results = ctx.pool.run(jobs, timeout_s=150 + window_s)
    window = meter.stop(wall_s=cancel_from + window_s - start_at)
    overflows = max(r["overflows"] for r in results)  # one kernel counter, read by each process
    errors = [e for r in results for e in r["errors"]]
    add_row(table, label, [s for r in results for s in r["samples"]], window, errors, overflows)
    return ramp_s, window_s, window


def add_row(
    table: Table, label: str, samples: list[dict[str, Any]], window: CpuWindow, errors: list[str], overflows: int
) -> None:
    cancel = [s["cancel_s"] for s in samples]
    ack = [s["ack_s"] for s in samples]
    after = [s["after"] for s in samples]
    not_closed = sum(1 for s in samples if s["state"] != "closed_by_client")
    figures: dict[str, Any] = {f"cancel_p{p}_s": percentile(cancel, p) for p in (50, 99)}
    figures |= {f"ack_p{p}_s": percentile(ack, p) for p in (50, 99)}
    figures |= {
        "tokens_after_ack": sum(after),
        "streams_with_tokens_after_ack": sum(1 for a in after if a),
        "samples": len(samples),
        "provider_not_closed_by_client": not_closed,
        "cancel_max_s": max(cancel),
        "cpu_s": window.seconds,
        "errors": len(errors),
        "listen_overflows": overflows,
        "provider_noticed_close_after_ack": sum(1 for s in samples if s["closed_after_ack"]),
        "error_samples": errors[:5],
    }
    table.add(
        label,
        [
            str(len(samples)),
            f"{ms(figures['cancel_p50_s'])} / {ms(figures['cancel_p99_s'])}",
            f"{ms(figures['ack_p50_s'])} / {ms(figures['ack_p99_s'])}",
            f"{figures['tokens_after_ack']} / {figures['streams_with_tokens_after_ack']}",
            cpu_cell(window),
            str(overflows),
            str(len(errors)),
        ],
        figures,
    )
    if errors:
        kinds = collections.Counter(": ".join(e.split(": ")[:2]) for e in errors)
        failures = ", ".join(f"{n} × {k}" for k, n in kinds.items())
        table.notes.append(f"{label}: {len(errors)} streams failed: {failures}")
    late = [s for s in samples if s["closed_after_ack"]]
    if late:
        table.notes.append(
            f"{label}: for {len(late)} streams the mock recorded its connection's end only after the client had the "
            f"ack (mock at {window.share('mock'):.0%} of a core, machine {window.machine_busy:.0%} busy); "
            f"{sum(1 for s in late if s['after'])} of the {figures['streams_with_tokens_after_ack']} streams with "
            "tokens after the ack are among them"
        )
    if not_closed:
        table.notes.append(f"{label}: {not_closed} provider connections ended otherwise than closed by the client")
