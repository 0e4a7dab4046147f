"""``disconnect``: the client closes its connection → the provider's connection closed.

Two cases: mid-stream (rate 50, after 2 deltas), and a provider that sent its
headers and is silent (``silence_s`` 60). t0 = ``time.monotonic()`` right
before ``response.close()``; latency = the mock's ``ended_at`` − t0. Targets
take turns request by request.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from ..client import JSON, ContentCounter, chat_body, check, mock_record, read_deltas, session
from ..fleet import FLOOR
from ..report import FLOOR_NOTE, Table, ratio, ratios_cell
from ..stats import ms, percentile
from ..workers import Job
from . import Context

RATE = 50.0
TOKENS = 500  # 10 s: never reached
READ_FIRST = 2
SILENCE_S = 60.0
WARMUP = 3
KINDS = {"stream": "mid-stream (rate 50)", "silent": "silent provider (headers sent, silence_s 60)"}


async def _one(
    http: aiohttp.ClientSession, observer: aiohttp.ClientSession, url: str, mock_root: str, tag: str, kind: str
) -> dict[str, Any]:
    if kind == "stream":
        body = chat_body(stream=True, tokens=TOKENS, rate=RATE, tag=tag)
    else:
        body = chat_body(stream=True, silence_s=SILENCE_S, tag=tag)
    async with http.post(url, data=body, headers=JSON) as response:
        check(response, "stream")
        if kind == "stream":
            await read_deltas(response, ContentCounter(), READ_FIRST)
        closed = time.monotonic()
        response.close()
    record = await mock_record(observer, mock_root, tag)
    return {"close_s": record["ended_at"] - closed, "state": record["state"]}


async def disconnect_job(
    urls: dict[str, str], mock_root: str, kind: str, count: int, run_id: str
) -> dict[str, list[dict[str, Any]]]:
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in urls}
    async with session() as http, session() as observer:
        for i in range(WARMUP + count):
            for name, url in urls.items():
                sample = await _one(http, observer, url, mock_root, f"{run_id}-{kind}-{name}-{i}", kind)
                if i >= WARMUP:
                    samples[name].append(sample)
    return samples


def run(ctx: Context) -> Table:
    count = ctx.settings.disconnect_repeats
    table = Table(
        "disconnect",
        f"client closes its connection → provider connection closed, {count} times per target and case",
        ["target", "case", "p50 ms", "p99 ms", "max ms", "÷ floor: p50 / p99"],
        text_columns=2,
    )
    urls = {t.name: t.chat_url for t in ctx.targets}
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for kind in KINDS:
        ctx.fleet.clear_mock()
        job = Job(
            "bench.scenarios.disconnect:disconnect_job",
            {"urls": urls, "mock_root": ctx.fleet.mock_root, "kind": kind, "count": count, "run_id": ctx.run_id},
        )
        results[kind] = ctx.pool.run([job], timeout_s=60 + count * len(urls))[0]
    for name in urls:
        figures: dict[str, Any] = {}
        for kind, label in KINDS.items():
            samples = results[kind][name]
            values = [s["close_s"] for s in samples]
            stats = {
                "p50_s": percentile(values, 50),
                "p99_s": percentile(values, 99),
                "max_s": max(values),
                "samples": len(values),
                "not_closed_by_client": sum(s["state"] != "closed_by_client" for s in samples),
            }
            floor = table.data.get(FLOOR, {}).get(kind)
            over = None
            if floor is not None and name not in ("direct", FLOOR):
                over = [ratio(stats["p50_s"], floor["p50_s"]), ratio(stats["p99_s"], floor["p99_s"])]
                stats["ratio_to_floor"] = {"p50": over[0], "p99": over[1]}
            figures[kind] = stats
            cells = [ms(stats["p50_s"]), ms(stats["p99_s"]), ms(stats["max_s"])]
            table.rows.append([name, label, *cells, "—" if over is None else ratios_cell(over)])
            if stats["not_closed_by_client"]:
                table.notes.append(
                    f"{name}, {kind}: {stats['not_closed_by_client']} provider connections ended "
                    "otherwise than closed by the client"
                )
        table.data[name] = figures
    table.notes.append(
        "direct is the baseline: the mock noticing its own client's FIN; one request at a time, so no process is "
        "saturated"
    )
    table.notes.append(FLOOR_NOTE)
    return table
