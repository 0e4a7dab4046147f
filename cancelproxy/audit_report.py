"""``cancelproxy audit FILE``: a summary of an audit trail (see ``audit.py``).

What was asked and how it ended (counts by status, stop reason, protocol, upstream,
model), what it used (tokens, exact as the provider reported them vs the
proxy's estimates), and how fast it was (time to first token, cancel
latency, duration).

Percentiles are nearest-rank: the p-th percentile of n sorted values is the
value at 1-based rank ceil(p/100 * n). It is always one of the observed
values, needs no interpolation, and p100 is the maximum.

A line that is not a JSON object with a parseable ``ts`` and a ``status``, or
whose numbers are not numbers, is counted as skipped and reported; it does
not stop the report.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "Percentiles",
    "Summary",
    "TokenTotals",
    "nearest_rank",
    "parse_since",
    "render",
    "run_audit",
    "summarise",
]

PERCENTILES = (50, 90, 99)

_RELATIVE_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# How a null stop_reason or model is shown (JSON keys must be strings).
_NONE = "none"


def nearest_rank(sorted_values: list[float], p: int) -> float:
    """The p-th percentile (0 < p <= 100) of ascending ``sorted_values``, nearest-rank."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 < p <= 100:
        raise ValueError(f"percentile {p} not in (0, 100]")
    # ceil(p * n / 100) in integers: no float rounding can move the rank.
    rank = -(-p * len(sorted_values) // 100)
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class Percentiles:
    count: int
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Percentiles | None:
        if not values:
            return None
        ordered = sorted(values)
        p50, p90, p99 = (nearest_rank(ordered, p) for p in PERCENTILES)
        return cls(count=len(ordered), p50=p50, p90=p90, p99=p99, max=ordered[-1])


@dataclass(frozen=True)
class TokenTotals:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: TokenTotals) -> TokenTotals:
        return TokenTotals(
            self.requests + other.requests,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
        )


@dataclass(frozen=True)
class Summary:
    total: int
    skipped: int
    since: datetime | None
    first_ts: datetime | None
    last_ts: datetime | None
    by_status: dict[str, int]
    by_stop_reason: dict[str, int]
    by_protocol: dict[str, int]
    by_upstream: dict[str, int]
    by_model: dict[str, int]
    tokens_exact: TokenTotals
    tokens_estimated: TokenTotals
    ttft_ms: Percentiles | None
    cancel_ms: Percentiles | None
    duration_ms: Percentiles | None

    @property
    def tokens_all(self) -> TokenTotals:
        return self.tokens_exact + self.tokens_estimated

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""

        def iso(ts: datetime | None) -> str | None:
            return None if ts is None else ts.isoformat()

        def pct(p: Percentiles | None) -> dict[str, float] | None:
            return None if p is None else vars(p).copy()

        return {
            "total": self.total,
            "skipped": self.skipped,
            "since": iso(self.since),
            "first_ts": iso(self.first_ts),
            "last_ts": iso(self.last_ts),
            "by_status": self.by_status,
            "by_stop_reason": self.by_stop_reason,
            "by_protocol": self.by_protocol,
            "by_upstream": self.by_upstream,
            "by_model": self.by_model,
            "tokens": {
                "exact": vars(self.tokens_exact).copy(),
                "estimated": vars(self.tokens_estimated).copy(),
                "all": vars(self.tokens_all).copy(),
            },
            "ttft_ms": pct(self.ttft_ms),
            "cancel_ms": pct(self.cancel_ms),
            "duration_ms": pct(self.duration_ms),
        }


class _Malformed(Exception):
    pass


@dataclass(frozen=True)
class _Entry:
    ts: datetime
    status: str
    stop_reason: str
    protocol: str
    upstream: str
    model: str
    ttft_ms: float | None
    cancel_ms: float | None
    duration_ms: float | None
    usage: Mapping[str, Any] | None


def _parse_ts(text: str) -> datetime:
    ts = datetime.fromisoformat(text)
    # The proxy writes UTC; a timestamp without an offset is taken as UTC too.
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


def _number(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    # Python's json reads NaN and Infinity, which the proxy never writes: a
    # line holding one is not the proxy's, and int(nan) would end the report.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Malformed(key)
    return float(value)


def _label(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if value is None:
        return _NONE
    if not isinstance(value, str):
        raise _Malformed(key)
    return value


def _parse_line(line: str) -> _Entry:
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise _Malformed("not JSON") from exc
    if not isinstance(data, dict) or not isinstance(data.get("ts"), str) or not isinstance(data.get("status"), str):
        raise _Malformed("ts/status")
    try:
        ts = _parse_ts(data["ts"])
    except ValueError as exc:
        raise _Malformed("ts") from exc
    usage = data.get("usage")
    if usage is not None:
        if not isinstance(usage, dict):
            raise _Malformed("usage")
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            _number(usage, key)  # validates
        if not isinstance(usage.get("estimated", False), bool):
            raise _Malformed("usage.estimated")
    # Keys missing from older lines read as null: lenient on shape, strict on types.
    return _Entry(
        ts=ts,
        status=data["status"],
        stop_reason=_label(data, "stop_reason"),
        # Lines from before there were several protocols were all chat.
        protocol=_label(data, "protocol") if "protocol" in data else "chat",
        upstream=_label(data, "upstream"),
        model=_label(data, "model"),
        ttft_ms=_number(data, "ttft_ms"),
        cancel_ms=_number(data, "cancel_ms"),
        duration_ms=_number(data, "duration_ms"),
        usage=usage,
    )


def _tokens(usage: Mapping[str, Any]) -> TokenTotals:
    def count(key: str) -> int:
        value = usage.get(key)
        return 0 if value is None else int(value)

    return TokenTotals(1, count("prompt_tokens"), count("completion_tokens"), count("total_tokens"))


def _ranked(counter: Counter[str]) -> dict[str, int]:
    """Most frequent first; ties by name, so the output is stable."""
    return dict(sorted(counter.items(), key=lambda item: (-item[1], item[0])))


def summarise(lines: Iterable[str], since: datetime | None) -> Summary:
    """Summarise audit lines; entries before ``since`` (if given) are left out."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    total = skipped = 0
    first_ts: datetime | None = None
    last_ts: datetime | None = None
    by_status: Counter[str] = Counter()
    by_stop_reason: Counter[str] = Counter()
    by_protocol: Counter[str] = Counter()
    by_upstream: Counter[str] = Counter()
    by_model: Counter[str] = Counter()
    exact = estimated = TokenTotals()
    ttft: list[float] = []
    cancel: list[float] = []
    duration: list[float] = []
    for line in lines:
        if not line.strip():
            continue  # a blank line (a trailing newline) is nothing, not a malformed entry
        try:
            entry = _parse_line(line)
        except _Malformed:
            skipped += 1
            continue
        if since is not None and entry.ts < since:
            continue
        total += 1
        first_ts = entry.ts if first_ts is None else min(first_ts, entry.ts)
        last_ts = entry.ts if last_ts is None else max(last_ts, entry.ts)
        by_status[entry.status] += 1
        by_stop_reason[entry.stop_reason] += 1
        by_protocol[entry.protocol] += 1
        by_upstream[entry.upstream] += 1
        by_model[entry.model] += 1
        if entry.usage is not None:
            if entry.usage.get("estimated") is True:
                estimated += _tokens(entry.usage)
            else:
                exact += _tokens(entry.usage)
        for values, value in ((ttft, entry.ttft_ms), (cancel, entry.cancel_ms), (duration, entry.duration_ms)):
            if value is not None:
                values.append(value)
    return Summary(
        total=total,
        skipped=skipped,
        since=since,
        first_ts=first_ts,
        last_ts=last_ts,
        by_status=_ranked(by_status),
        by_stop_reason=_ranked(by_stop_reason),
        by_protocol=_ranked(by_protocol),
        by_upstream=_ranked(by_upstream),
        by_model=_ranked(by_model),
        tokens_exact=exact,
        tokens_estimated=estimated,
        ttft_ms=Percentiles.of(ttft),
        cancel_ms=Percentiles.of(cancel),
        duration_ms=Percentiles.of(duration),
    )


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: an ISO-8601 timestamp (UTC if no offset), or a duration ago: ``30m``, ``2h``, ``7d``.

    Units: s, m, h, d, w. Raises ValueError with a message for the user.
    """
    match = _RELATIVE_RE.match(text)
    if match is not None:
        now = datetime.now(UTC) if now is None else now
        return now - timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    try:
        return _parse_ts(text.strip())
    except ValueError:
        raise ValueError(
            f"'{text}' is neither an ISO timestamp (2025-01-31T12:00:00Z) nor a duration (30m, 2h, 7d)"
        ) from None


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """First column left-aligned, the others right-aligned, two spaces apart."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    out = []
    for row in [headers, *rows]:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        out.append("  ".join(cells).rstrip())
    return out


def _ms(value: float) -> str:
    return f"{value:.1f}"


def _percent(count: int, total: int) -> str:
    return f"{100.0 * count / total:.1f}%" if total else "-"


def render(summary: Summary) -> str:
    """The summary as text tables, for a person."""

    def iso(ts: datetime | None) -> str:
        return "-" if ts is None else ts.isoformat(timespec="seconds")

    lines = [
        f"requests: {summary.total}" + (f"  (skipped {summary.skipped} malformed lines)" if summary.skipped else "")
    ]
    if summary.since is not None:
        lines.append(f"since:    {iso(summary.since)}")
    lines.append(f"from:     {iso(summary.first_ts)}  to: {iso(summary.last_ts)}")
    for title, counts in (
        ("status", summary.by_status),
        ("stop_reason", summary.by_stop_reason),
        ("protocol", summary.by_protocol),
        ("upstream", summary.by_upstream),
        ("model", summary.by_model),
    ):
        lines.append("")
        rows = [[name, str(count), _percent(count, summary.total)] for name, count in counts.items()]
        lines += _table([title, "count", "share"], rows)
    lines.append("")
    token_rows = [
        [name, str(t.requests), str(t.prompt_tokens), str(t.completion_tokens), str(t.total_tokens)]
        for name, t in (
            ("exact", summary.tokens_exact),
            ("estimated", summary.tokens_estimated),
            ("all", summary.tokens_all),
        )
    ]
    lines += _table(["tokens", "requests", "prompt", "completion", "total"], token_rows)
    lines.append("")
    latency_rows = []
    for name, p in (
        ("time to first token", summary.ttft_ms),
        ("cancel latency", summary.cancel_ms),
        ("duration", summary.duration_ms),
    ):
        if p is None:
            latency_rows.append([name, "0", "-", "-", "-", "-"])
        else:
            latency_rows.append([name, str(p.count), _ms(p.p50), _ms(p.p90), _ms(p.p99), _ms(p.max)])
    lines += _table(["latency (ms)", "n", "p50", "p90", "p99", "max"], latency_rows)
    return "\n".join(lines) + "\n"


def run_audit(path: str, since: str | None, as_json: bool) -> int:
    """The command: summarise ``path`` (``-`` for stdin) and print it. 0, or 2 on a bad argument or file."""
    try:
        since_ts = None if since is None else parse_since(since)
    except ValueError as exc:
        print(f"cancelproxy audit: --since {exc}", file=sys.stderr)
        return 2
    try:
        if path == "-":
            summary = summarise(sys.stdin, since_ts)
        else:
            # errors="replace": a corrupt byte makes its line malformed (skipped), not the run fail.
            with open(path, encoding="utf-8", errors="replace") as lines:
                summary = summarise(lines, since_ts)
    except FileNotFoundError:
        print(f"cancelproxy audit: {path}: no such file", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cancelproxy audit: {path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        sys.stdout.write(render(summary))
    return 0
