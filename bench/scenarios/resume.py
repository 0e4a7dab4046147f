"""``resume``: a stream dropped mid-way and resumed from a new connection, through cancelproxy.

S chat streams (rate 50, each its own ``mock.tag``) are sent with
``X-Disconnect-Grace``, started over a short ramp; each client reads the first
``READ_FIRST`` events, drops its connection, and ``RECONNECT_S`` later sends
``GET /requests/{id}/stream?after=READ_FIRST`` on a new connection and reads to
the end. Timed: request sent → first byte of the body, for the fresh stream
and for its resume (both on new connections, both from ``time.monotonic()``
before the request). Kept: each stream's bytes as sent (what cancelproxy holds
per stream until ``resume.keep_s`` after it ended), and the proxy's RSS grown
over the run, read before those logs expire. Checked: the events read plus the
resumed part equal what the mock sends a direct request with the same body
(the same tag gives the same bytes). Only cancelproxy has the route.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import aiohttp

from cancelproxy.config import ResumeConfig

from ..client import JSON, Opener, chat_body, check, session, sleep_until
from ..procstat import CpuWindow, total_rss_kb
from ..report import CPU_COLUMN, Table, bottleneck, cpu_cell
from ..stats import ms, percentile, signed_ms
from ..workers import Job
from . import Context

RATE = 50.0
READ_FIRST = 10  # events (the role delta, then content deltas) read before the drop
GRACE_S = 30  # X-Disconnect-Grace: the generation goes on without a reader (at most on_disconnect.max_grace_s)
# The pause between the drop and the resume: a reload takes longer. By then the
# events after the READ_FIRST-th are in the proxy's log (one comes every 20 ms),
# so the first resumed byte is replayed, not waited for from the provider.
RECONNECT_S = 0.1
RAMP_PER_STREAM_S = 1 / 200  # streams started at 200 a second: each first byte is timed, not a burst's queue
# After the last stream: the proxy's writer flushes every 200 ms; let freed buffers be freed before RSS is read.
SETTLE_S = 0.5
KEEP_S = ResumeConfig.keep_s  # the harness's cancelproxy runs with the default


def event_end(data: bytes, count: int) -> int | None:
    """The offset just past the ``count``-th event in ``data``, or None if it has fewer.
    Every event of the mock ends with a blank line, and it sends no comments
    (no ``keepalive_s``): blank lines count the events."""
    end = 0
    for _ in range(count):
        found = data.find(b"\n\n", end)
        if found < 0:
            return None
        end = found + 2
    return end


async def _one(
    http: aiohttp.ClientSession,
    resumer: aiohttp.ClientSession,
    opener: Opener,
    root: str,
    tag: str,
    tokens: int,
    start_at: float,
) -> dict[str, Any]:
    await sleep_until(start_at)
    body = chat_body(stream=True, tokens=tokens, rate=RATE, tag=tag)
    phase = "stream start"
    try:
        sent = time.monotonic()
        async with await opener.post(
            http, f"{root}/v1/chat/completions", body, {**JSON, "X-Disconnect-Grace": str(GRACE_S)}
        ) as response:
            check(response, "stream")
            request_id = response.headers["X-Request-Id"]
            phase = "first events"
            head, first_at = b"", None  # a few reads: joined as they come
            while (end := event_end(head, READ_FIRST)) is None:
                data = await response.content.readany()
                if not data:
                    raise RuntimeError(f"the stream ended before {READ_FIRST} events")
                if first_at is None:
                    first_at = time.monotonic()
                head += data
            response.close()  # the drop: the generation goes on for GRACE_S
        await asyncio.sleep(RECONNECT_S)
        phase = "resume"
        resumed = time.monotonic()
        url = f"{root}/requests/{request_id}/stream"
        async with resumer.get(url, params={"after": str(READ_FIRST)}) as answer:
            check(answer, "resume")
            tail: list[bytes] = []
            resumed_first = None
            while data := await answer.content.readany():
                if resumed_first is None:
                    resumed_first = time.monotonic()
                tail.append(data)
        ended = time.monotonic()
    except (aiohttp.ClientError, OSError, RuntimeError) as exc:
        raise RuntimeError(f"{phase}: {type(exc).__name__}: {exc}") from exc
    if resumed_first is None:
        raise RuntimeError("resume: no byte after the first events")
    assert first_at is not None
    return {
        "tag": tag,
        "first_byte_s": first_at - sent,
        "resume_first_byte_s": resumed_first - resumed,
        "ended": ended,
        "bytes": b"".join([head[:end], *tail]),
        "head_bytes": end,
    }


async def resume_job(root: str, tags: list[str], starts: list[float], tokens: int, timeout_s: float) -> dict[str, Any]:
    """``tags[i]`` streamed from ``starts[i]``, dropped and resumed; each on connections of its own."""
    opener = Opener()
    async with session(force_close=True) as http, session(force_close=True) as resumer:
        async with asyncio.timeout(timeout_s):
            done = await asyncio.gather(
                *(_one(http, resumer, opener, root, tag, tokens, at) for tag, at in zip(tags, starts, strict=True)),
                return_exceptions=True,
            )
    return {
        "streams": [d for d in done if isinstance(d, dict)],
        "errors": [
            str(d) if isinstance(d, RuntimeError) else f"{type(d).__name__}: {d}"
            for d in done
            if not isinstance(d, dict)
        ],
    }


async def direct_job(mock_root: str, tags: list[str], tokens: int, timeout_s: float) -> dict[str, bytes]:
    """The mock's own bytes for each tag's body: what a resumed stream must add up to."""
    opener = Opener()

    async def one(http: aiohttp.ClientSession, tag: str) -> tuple[str, bytes]:
        body = chat_body(stream=True, tokens=tokens, rate=RATE, tag=tag)
        async with await opener.post(http, f"{mock_root}/v1/chat/completions", body) as response:
            check(response, "direct")
            return tag, await response.read()

    async with session(limit=0) as http, asyncio.timeout(timeout_s):
        return dict(await asyncio.gather(*(one(http, tag) for tag in tags)))


def _first_difference(got: bytes, want: bytes) -> int:
    return next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))


COLUMNS = [
    "target",
    "streams",
    "fresh stream: first byte p50 / p99 ms",
    "resume: first byte p50 / p99 ms",
    "added p50 / p99 ms",
    "KB kept / stream",
    "RSS KB / stream",
    "RSS MB before → after",
    CPU_COLUMN,
    "errors",
]


def run(ctx: Context) -> Table:
    n, tokens = ctx.settings.resume_streams, ctx.settings.resume_tokens
    table = Table(
        "resume",
        f"{n} chat streams (rate {RATE:g}, {tokens} chunks, X-Disconnect-Grace: {GRACE_S}): {READ_FIRST} events "
        f"read, connection dropped, GET /requests/{{id}}/stream?after={READ_FIRST} on a new connection to the end",
        COLUMNS,
    )
    for target in ctx.targets:
        if target.name != "cancelproxy":
            table.add(target.name, ["n/a", "n/a (no resume route)", *["n/a"] * (len(COLUMNS) - 3)], {})
    proxy = ctx.fleet.target("cancelproxy")
    assert proxy is not None
    ctx.fleet.clear_mock()
    tags = [f"{ctx.run_id}-resume-{i}" for i in range(n)]
    start_at = ctx.start_at()
    starts = [start_at + i * RAMP_PER_STREAM_S for i in range(n)]
    share = [list(range(w, n, ctx.pool.size)) for w in range(ctx.pool.size)]
    timeout_s = 60 + n * RAMP_PER_STREAM_S + tokens / RATE
    jobs = [
        Job(
            "bench.scenarios.resume:resume_job",
            {
                "root": proxy.root,
                "tags": [tags[i] for i in indices],
                "starts": [starts[i] for i in indices],
                "tokens": tokens,
                "timeout_s": timeout_s,
            },
        )
        for indices in share
    ]
    rss_before = total_rss_kb(proxy.server_pids())
    meter = ctx.cpu_meter(proxy)
    meter.start()
    results = ctx.pool.run(jobs, timeout_s=timeout_s + 30)
    streams = [s for r in results for s in r["streams"]]
    errors = [e for r in results for e in r["errors"]]
    window = meter.stop(wall_s=max((s["ended"] for s in streams), default=time.monotonic()) - start_at)
    time.sleep(SETTLE_S)
    rss_after = total_rss_kb(proxy.server_pids())
    kept_s = time.monotonic() - min((s["ended"] for s in streams), default=time.monotonic())

    direct = ctx.pool.run(
        [
            Job(
                "bench.scenarios.resume:direct_job",
                {
                    "mock_root": ctx.fleet.mock_root,
                    "tags": [tags[i] for i in indices],
                    "tokens": tokens,
                    "timeout_s": timeout_s,
                },
            )
            for indices in share
        ],
        timeout_s=timeout_s + 30,
    )
    want = {tag: data for r in direct for tag, data in r.items()}
    mismatches = [
        f"{s['tag']}: first difference at byte {_first_difference(s['bytes'], want[s['tag']])} of "
        f"{len(want[s['tag']])} (the first {READ_FIRST} events are {s['head_bytes']} bytes), "
        f"{len(s['bytes']) - len(want[s['tag']]):+d} bytes against the mock's"
        for s in streams
        if s["bytes"] != want[s["tag"]]
    ]
    _add_row(table, n, streams, errors, mismatches, (rss_before, rss_after), window)
    limit = bottleneck(window, ctx.fleet_cores, ctx.settings.clients)
    if limit:
        table.notes.append(f"limited by {limit}")
    table.notes += [
        f"streams started over {n * RAMP_PER_STREAM_S:.2f} s, each on a new connection; after {READ_FIRST} events "
        f"(the role delta, then content deltas) the client closes it, waits {RECONNECT_S:g} s (by then the events "
        "after those are in the proxy's log: the resume replays them first) and resumes on another new connection",
        "first byte: the instant before the request (before its connect) → the first body byte read; fresh stream = "
        "the stream's own request (a ttft-like figure from the same run, under the same load); added = resume − "
        "fresh, percentile by percentile",
        "KB kept / stream: the stream's bytes as sent (the events read + the resumed part), the mean over the "
        f"streams: what cancelproxy holds per stream until resume.keep_s ({KEEP_S:g} s) after it ended",
        f"RSS / stream: (the proxy's VmRSS {SETTLE_S:g} s after the last stream ended − VmRSS before the run) ÷ "
        f"streams, read {kept_s:.1f} s after the first stream ended, within resume.keep_s ({KEEP_S:g} s): every log "
        "still kept. RSS grows only past the process's high-water mark, so after scenarios with more streams in "
        "flight (slow_streams) this reads low, and the allocator's granularity makes it noisy for few streams: "
        "`--only resume` reads it on a fresh proxy",
        "errors: streams that failed, and resumed streams whose events read + resumed part differ from the bytes the "
        "mock sends a direct request with the same body (same mock.tag)",
    ]
    if kept_s >= KEEP_S:
        table.notes.append(f"RSS read {kept_s:.1f} s after the first stream ended: its log may be gone already")
    return table


def _add_row(
    table: Table,
    n: int,
    streams: list[dict[str, Any]],
    failures: list[str],
    mismatches: list[str],
    rss_kb: tuple[int, int],
    window: CpuWindow,
) -> None:
    """cancelproxy's row; ``rss_kb``: its VmRSS before and after the run."""
    rss_before, rss_after = rss_kb
    fresh = [s["first_byte_s"] for s in streams]
    resumed = [s["resume_first_byte_s"] for s in streams]
    sizes = [len(s["bytes"]) for s in streams]
    figures: dict[str, Any] = {"streams": len(streams), "requested": n}
    if streams:
        figures |= {f"first_byte_p{p}_s": percentile(fresh, p) for p in (50, 99)}
        figures |= {f"resume_first_byte_p{p}_s": percentile(resumed, p) for p in (50, 99)}
        figures |= {
            f"added_p{p}_s": figures[f"resume_first_byte_p{p}_s"] - figures[f"first_byte_p{p}_s"] for p in (50, 99)
        }
        figures["bytes_kept_per_stream"] = sum(sizes) / len(sizes)
    figures |= {
        "rss_before_kb": rss_before,
        "rss_after_kb": rss_after,
        "rss_kb_per_stream": (rss_after - rss_before) / n,
        "cpu_s": window.seconds,
        "failures": len(failures),
        "mismatches": len(mismatches),
        "errors": len(failures) + len(mismatches),
        "error_samples": (failures + mismatches)[:5],
    }

    def pair(key: str, show: Any = ms) -> str:
        return "n/a" if not streams else f"{show(figures[f'{key}_p50_s'])} / {show(figures[f'{key}_p99_s'])}"

    table.add(
        "cancelproxy",
        [
            str(len(streams)),
            pair("first_byte"),
            pair("resume_first_byte"),
            pair("added", signed_ms),
            "n/a" if not streams else f"{figures['bytes_kept_per_stream'] / 1024:.1f}",
            f"{figures['rss_kb_per_stream']:.1f}",
            f"{rss_before / 1024:.1f} → {rss_after / 1024:.1f}",
            cpu_cell(window),
            str(figures["errors"]),
        ],
        figures,
    )
    if failures:
        kinds = collections.Counter(": ".join(e.split(": ")[:2]) for e in failures)
        table.notes.append(
            f"{len(failures)} streams failed: " + ", ".join(f"{count} × {kind}" for kind, count in kinds.items())
        )
    if mismatches:
        table.notes.append(
            f"{len(mismatches)} resumed streams differ from the mock's own bytes; the first: {mismatches[0]}"
        )
