"""``responses``: Responses API streams (``POST /v1/responses``) beside chat ones, through every target.

The same two measurements as ``ttft`` and ``throughput``, once per stream
format: time to the first text delta of sequential streams (tokens 1, rate 0),
and content chunks per second of concurrent streams at rate 0 with the
server's CPU per chunk. A Responses event is an ``event:`` line and a ``data:``
line; its text deltas are a little smaller than chat's chunks, but the stream
opens with two events that each carry the whole Response object and ends with
one that carries the whole output: more per stream for a proxy that records
it. Chunks are counted by a byte mark in each format (chat's
``"content":"w``, a Responses stream's ``"type":"response.output_text.delta"``),
no parsing. The floor and nginx pass the route through like any other.
"""

from __future__ import annotations

from typing import Any

from ..client import PROTOCOLS, Protocol
from ..fleet import FLOOR, Target
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
from ..stats import ms, percentile, signed_ms
from . import Context, latency, throughput

# The figures of a row divided by the floor's of the same format, and a Responses row's by its target's chat row.
_RATIOS = ("added_p50_s", "chunks_per_s", "server_cpu_s_per_chunk")
_TO_CHAT = ("ttft_p50_s", "chunks_per_s", "server_cpu_s_per_chunk")
# A figure taken in each round, and the row's key for its value in each.
_BY_ROUND = {"chunks_per_s": "rounds", "server_cpu_s_per_chunk": "cpu_per_chunk_rounds"}


def run(ctx: Context) -> Table:
    settings = ctx.settings
    count = settings.responses_ttft_requests
    streams, chunks, rounds = settings.responses_streams, settings.responses_chunks, settings.responses_rounds
    table = Table(
        "responses",
        f"Responses API streams beside chat: first text delta of {count} sequential streams per target and format "
        f"(tokens 1, rate 0); {streams} concurrent streams × {chunks} chunks at rate 0, median of {rounds} round(s)",
        [
            "target",
            "stream",
            "ttft p50 ms",
            "ttft p99 ms",
            "added p50 / p99 ms",
            "server CPU ms / request",
            "chunks/s",
            "server CPU µs / chunk",
            "÷ floor: added p50 / chunks/s / CPU per chunk",
            "÷ chat: ttft p50 / chunks/s / CPU per chunk",
            CPU_COLUMN,
            "errors",
        ],
        text_columns=2,
    )
    ttft = {protocol: latency.measure(ctx, True, count, protocol) for protocol in PROTOCOLS}
    rounds_of = ctx.in_turns(
        rounds,
        lambda target: {
            protocol: throughput.measure_round(ctx, target, protocol, streams, chunks) for protocol in PROTOCOLS
        },
    )
    figures: dict[str, dict[Protocol, dict[str, Any]]] = {}
    for target in ctx.targets:
        figures[target.name] = {}
        for protocol in PROTOCOLS:
            samples, cpu_ms = ttft[protocol]
            measured = [by_protocol[protocol] for by_protocol in rounds_of[target.name]]
            figures[target.name][protocol] = _figures(target, samples, cpu_ms, measured)
    for name, by_protocol in figures.items():
        for protocol, row in by_protocol.items():
            _add_row(ctx, table, name, protocol, row, figures.get(FLOOR, {}).get(protocol), by_protocol["chat"])
        table.data[name] = {
            protocol: {k: v for k, v in row.items() if k != "window"} for protocol, row in by_protocol.items()
        }
    table.notes += [
        f"ttft: as the ttft table, per format: one keep-alive connection per target, {settings.latency_warmup} warm-up "
        f"requests each, targets take turns in blocks of {latency.BLOCK}; the clock stops at the first chunk carrying "
        "the format's delta mark (chat: the first content delta, after the role delta; Responses: the first "
        "response.output_text.delta, after response.created, response.in_progress, output_item.added and "
        "content_part.added); added = target − direct of the same format; server CPU / request: the server's "
        "utime+stime over that format's run ÷ its requests, warm-up included",
        "chunks/s, server CPU / chunk, CPU %: as the throughput table, per format (chunks counted by the format's "
        "delta mark in the bytes, no parsing); the rounds take turns, every target in each, its two formats one "
        "after the other; a row is its median round by chunks/s (the CPU column and the limits below too), and its "
        "chunks/s and CPU per chunk ÷ floor and ÷ chat the median of each round's ratio to the floor's (chat's) in "
        "the same round",
        "÷ chat: a Responses row's figure divided by the same target's chat row (ttft p50, not its added part: "
        "direct has none)",
        FLOOR_NOTE,
    ]
    return table


def _figures(
    target: Target, samples: dict[str, list[float]], cpu_ms: dict[str, float], measured: list[throughput.Round]
) -> dict[str, Any]:
    name = target.name
    values, base = samples[name], samples["direct"]
    chosen = throughput.median_round(measured)
    row: dict[str, Any] = {
        "ttft_p50_s": percentile(values, 50),
        "ttft_p99_s": percentile(values, 99),
        "ttft_samples": len(values),
        "server_cpu_ms_per_request": None if name == "direct" else cpu_ms[name],
        "chunks_per_s": chosen.chunks_per_s,
        "server_cpu_s_per_chunk": throughput.cpu_per_chunk(target, chosen),
        "wall_s": chosen.wall_s,
        "cpu_s": chosen.window.seconds,
        "errors": chosen.errors,
        "error_samples": chosen.error_samples,
        "rounds": [m.chunks_per_s for m in measured],
        "cpu_per_chunk_rounds": [throughput.cpu_per_chunk(target, m) for m in measured],
        "window": chosen.window,
    }
    if name != "direct":
        row |= {f"added_p{p}_s": percentile(values, p) - percentile(base, p) for p in (50, 99)}
    return row


def _ratio(row: dict[str, Any], other: dict[str, Any], key: str) -> float | None:
    """``row``'s figure ``key`` as a multiple of ``other``'s: for one taken in each
    round, the median of the rounds' ratios (``Context.in_turns``)."""
    by_round = _BY_ROUND.get(key)
    if by_round is None:
        return ratio(row[key], other.get(key))
    return median_ratio(ratios_by_round(row[by_round], other[by_round]))


def _add_row(
    ctx: Context,
    table: Table,
    name: str,
    protocol: Protocol,
    row: dict[str, Any],
    floor: dict[str, Any] | None,
    chat: dict[str, Any],
) -> None:
    over = None
    if floor is not None and name not in ("direct", FLOOR):
        over = [_ratio(row, floor, k) for k in _RATIOS]
        row["ratio_to_floor"] = dict(zip(["added_p50", "chunks_per_s", "cpu_per_chunk"], over, strict=True))
    to_chat = None
    if protocol != "chat":
        to_chat = [_ratio(row, chat, k) for k in _TO_CHAT]
        row["ratio_to_chat"] = dict(zip(["ttft_p50", "chunks_per_s", "cpu_per_chunk"], to_chat, strict=True))
    per_request, per_chunk = row["server_cpu_ms_per_request"], row["server_cpu_s_per_chunk"]
    table.rows.append(
        [
            name,
            protocol,
            ms(row["ttft_p50_s"]),
            ms(row["ttft_p99_s"]),
            "—" if name == "direct" else f"{signed_ms(row['added_p50_s'])} / {signed_ms(row['added_p99_s'])}",
            "n/a" if per_request is None else f"{per_request:.3f}",
            f"{row['chunks_per_s']:,.0f}",
            "n/a" if per_chunk is None else f"{per_chunk * 1e6:.1f}",
            "—" if over is None else ratios_cell(over),
            "—" if to_chat is None else ratios_cell(to_chat),
            cpu_cell(row["window"]),
            str(row["errors"]),
        ]
    )
    limit = bottleneck(row["window"], ctx.fleet_cores, ctx.settings.clients)
    if limit:
        table.notes.append(f"{name}, {protocol}: limited by {limit}")
