"""The audit trail: the sink that writes it and the command that summarises it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cancelproxy.audit import AuditSink, install_sighup
from cancelproxy.audit_report import nearest_rank, parse_since, render, run_audit, summarise

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def entry(n: int = 0, **overrides: Any) -> dict[str, Any]:
    """An audit entry as the proxy writes it; ``n`` makes its ids (and, by default, its ts) distinct."""
    data: dict[str, Any] = {
        "ts": (T0 + timedelta(hours=n)).isoformat(timespec="milliseconds"),
        "request_id": f"req_{n}",
        "session_id": "chat-1",
        "upstream": "openai",
        "model": "gpt-4o-mini",
        "stream": True,
        "status": "completed",
        "stop_reason": None,
        "finish_reason": "stop",
        "ttft_ms": None,
        "duration_ms": None,
        "cancel_ms": None,
        "usage": None,
        "bytes_out": 100,
        "client": "127.0.0.1",
        "credential": "sha256:abc",
        "error": None,
    }
    data.update(overrides)
    return data


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- AuditSink -------------------------------------------------------------


def test_sink_appends_one_compact_line_per_entry(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text(json.dumps(entry(0)) + "\n")  # an existing trail is appended to
    sink = AuditSink(str(path))
    sink.open()
    sink.write(entry(1, model="déjà-vu"))
    sink.write(entry(2))
    # Flushed per line: visible before close.
    raw = path.read_text()
    sink.close()
    assert raw.endswith("\n") and raw.count("\n") == 3
    assert [e["request_id"] for e in lines_of(path)] == ["req_0", "req_1", "req_2"]
    assert lines_of(path)[1] == entry(1, model="déjà-vu")
    assert ": " not in raw.splitlines()[1] and ", " not in raw.splitlines()[1]  # compact


def test_sink_creates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "new.jsonl"
    sink = AuditSink(str(path))
    sink.open()
    sink.write(entry(1))
    sink.close()
    assert lines_of(path) == [entry(1)]


def test_sink_writes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    sink = AuditSink("-")
    sink.open()
    sink.write(entry(1))
    sink.write(entry(2, status="stopped", stop_reason="cancel"))
    sink.reopen()  # a no-op for stdout
    sink.write(entry(3))
    sink.close()
    out = capsys.readouterr().out
    assert [json.loads(line) for line in out.splitlines()] == [
        entry(1),
        entry(2, status="stopped", stop_reason="cancel"),
        entry(3),
    ]


def test_reopen_after_logrotate_moved_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    rotated = tmp_path / "audit.jsonl.1"
    sink = AuditSink(str(path))
    sink.open()
    sink.write(entry(1))
    path.rename(rotated)
    sink.write(entry(2))  # still the open file, now under its new name
    sink.reopen()
    sink.write(entry(3))
    sink.close()
    assert [e["request_id"] for e in lines_of(rotated)] == ["req_1", "req_2"]
    assert [e["request_id"] for e in lines_of(path)] == ["req_3"]


async def test_sighup_reopens(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = AuditSink(str(path))
    sink.open()
    loop = asyncio.get_running_loop()
    assert install_sighup(loop, sink)
    try:
        sink.write(entry(1))
        path.rename(tmp_path / "audit.jsonl.1")
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(200):
            if path.exists():
                break
            await asyncio.sleep(0.01)
        sink.write(entry(2))
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        sink.close()
    assert [e["request_id"] for e in lines_of(path)] == ["req_2"]


def test_a_failing_write_is_logged_once_and_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    sink = AuditSink("/dev/full")  # opens fine; every flush fails with ENOSPC
    sink.open()
    with caplog.at_level(logging.ERROR, logger="cancelproxy.audit"):
        sink.write(entry(1))
        sink.write(entry(2))
    sink.close()
    errors = [r for r in caplog.records if r.name == "cancelproxy.audit" and r.levelno == logging.ERROR]
    assert len(errors) == 1 and "/dev/full" in errors[0].getMessage()


def test_an_unwritable_path_does_not_raise_and_recovers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "missing-dir" / "audit.jsonl"
    sink = AuditSink(str(path))
    # At the start, a bad path is an error the operator should see.
    with pytest.raises(OSError):
        sink.open()
    with caplog.at_level(logging.WARNING, logger="cancelproxy.audit"):
        sink.write(entry(1))  # dropped, logged
        sink.reopen()  # what SIGHUP calls: must not raise either
        path.parent.mkdir()
        sink.write(entry(2))  # the next write opens it
    sink.close()
    assert lines_of(path) == [entry(2)]
    messages = [r.getMessage() for r in caplog.records if r.name == "cancelproxy.audit"]
    assert any("cannot write" in m for m in messages)
    assert any("writing to" in m and "again" in m for m in messages)


def test_an_unserialisable_entry_is_dropped_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = AuditSink(str(path))
    sink.open()
    sink.write({("a", "tuple"): "key"})  # json cannot write a tuple key
    sink.write(entry(1, ts=T0))  # a datetime is written as text, not lost
    sink.close()
    assert [e["ts"] for e in lines_of(path)] == [str(T0)]


# --- percentiles -----------------------------------------------------------


def test_nearest_rank_known_values() -> None:
    values = [15.0, 20.0, 35.0, 40.0, 50.0]
    assert [nearest_rank(values, p) for p in (5, 30, 40, 50, 100)] == [15.0, 20.0, 20.0, 35.0, 50.0]
    hundred = [float(i) for i in range(1, 101)]
    assert [nearest_rank(hundred, p) for p in (1, 50, 90, 99, 100)] == [1.0, 50.0, 90.0, 99.0, 100.0]
    ten = [float(i) for i in range(10, 101, 10)]
    assert [nearest_rank(ten, p) for p in (50, 90, 99)] == [50.0, 90.0, 100.0]
    assert nearest_rank([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        nearest_rank([], 50)
    with pytest.raises(ValueError):
        nearest_rank([1.0], 0)


# --- summarise / render ----------------------------------------------------

EXACT = {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30, "estimated": False}
ESTIMATED = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12, "estimated": True}
MALFORMED = [
    "not json at all",
    "[1, 2, 3]",
    json.dumps(entry(99, ts="yesterday")),
    json.dumps(entry(98, ttft_ms="fast")),
]


def synthetic_log() -> list[str]:
    """Ten entries an hour apart from T0, with numbers the tests know."""
    entries = []
    for n in range(10):
        fields: dict[str, Any] = {"ttft_ms": 10.0 * (n + 1), "duration_ms": 100 * (n + 1)}
        if n < 7:
            fields["usage"] = EXACT
        elif n < 9:
            fields["usage"] = ESTIMATED
        if n >= 7:
            fields.update(upstream="mock", model="mock-1")
        entries.append(entry(n, **fields))
    # 6 completed, 3 stopped (2 cancelled, 1 disconnected), 1 failed
    entries[1].update(status="stopped", stop_reason="cancel", cancel_ms=0.5)
    entries[4].update(status="stopped", stop_reason="cancel", cancel_ms=4.0)
    entries[8].update(status="stopped", stop_reason="disconnect", cancel_ms=1.5)
    entries[9].update(status="failed", usage=None, error={"code": "upstream_error"})
    lines = [json.dumps(e) for e in entries]
    return lines[:3] + MALFORMED[:2] + lines[3:] + [""] + MALFORMED[2:]


def test_a_line_with_nan_or_infinity_is_skipped_as_malformed() -> None:
    # Python's json reads them; int(nan) ended the report with a traceback.
    good = json.dumps(entry(0, usage=EXACT))
    bad = [
        json.dumps(entry(1, usage={**EXACT, "prompt_tokens": float("nan")})),
        json.dumps(entry(2, ttft_ms=float("inf"))),
    ]
    assert "NaN" in bad[0] and "Infinity" in bad[1]
    s = summarise([good, *bad], since=None)
    assert (s.total, s.skipped) == (1, 2)


def test_summarise_counts_tokens_and_percentiles() -> None:
    s = summarise(synthetic_log(), since=None)
    assert s.total == 10 and s.skipped == 4
    assert s.by_status == {"completed": 6, "stopped": 3, "failed": 1}
    assert list(s.by_status) == ["completed", "stopped", "failed"]  # most frequent first
    assert s.by_stop_reason == {"none": 7, "cancel": 2, "disconnect": 1}
    assert s.by_upstream == {"openai": 7, "mock": 3}
    assert s.by_model == {"gpt-4o-mini": 7, "mock-1": 3}
    assert (
        s.tokens_exact.requests,
        s.tokens_exact.prompt_tokens,
        s.tokens_exact.completion_tokens,
        s.tokens_exact.total_tokens,
    ) == (7, 70, 140, 210)
    assert (
        s.tokens_estimated.requests,
        s.tokens_estimated.prompt_tokens,
        s.tokens_estimated.completion_tokens,
        s.tokens_estimated.total_tokens,
    ) == (2, 10, 14, 24)
    assert s.tokens_all.total_tokens == 234 and s.tokens_all.requests == 9
    assert s.ttft_ms is not None and (s.ttft_ms.count, s.ttft_ms.p50, s.ttft_ms.p90, s.ttft_ms.p99, s.ttft_ms.max) == (
        10,
        50.0,
        90.0,
        100.0,
        100.0,
    )
    assert s.cancel_ms is not None and (
        s.cancel_ms.count,
        s.cancel_ms.p50,
        s.cancel_ms.p90,
        s.cancel_ms.p99,
        s.cancel_ms.max,
    ) == (3, 1.5, 4.0, 4.0, 4.0)
    assert s.duration_ms is not None and (s.duration_ms.p50, s.duration_ms.max) == (500.0, 1000.0)
    assert s.first_ts == T0 and s.last_ts == T0 + timedelta(hours=9)


def test_summarise_of_nothing() -> None:
    s = summarise([], since=None)
    assert s.total == 0 and s.skipped == 0 and s.by_status == {}
    assert s.ttft_ms is None and s.cancel_ms is None and s.duration_ms is None
    assert "requests: 0" in render(s)


def test_since_absolute_filters_older_entries() -> None:
    s = summarise(synthetic_log(), since=parse_since("2025-01-01T05:00:00Z"))
    # entries 5..9: 5,6,7 completed, 8 stopped (disconnect), 9 failed
    assert s.total == 5
    assert s.by_status == {"completed": 3, "failed": 1, "stopped": 1}
    assert s.skipped == 4  # malformed lines are reported whatever the window
    assert s.cancel_ms is not None and s.cancel_ms.count == 1 and s.cancel_ms.max == 1.5
    # a timestamp without an offset is UTC, as the proxy writes
    assert summarise(synthetic_log(), since=datetime(2025, 1, 1, 5)).total == 5


def test_since_relative() -> None:
    now = T0 + timedelta(hours=9, minutes=30)
    assert parse_since("2h", now=now) == T0 + timedelta(hours=7, minutes=30)
    assert parse_since("30m", now=now) == T0 + timedelta(hours=9)
    assert parse_since("7d", now=now) == now - timedelta(days=7)
    assert summarise(synthetic_log(), since=parse_since("2h", now=now)).total == 2  # entries 8 and 9
    assert summarise(synthetic_log(), since=parse_since("7d", now=now)).total == 10
    with pytest.raises(ValueError, match="neither an ISO timestamp"):
        parse_since("last tuesday")


def _row(text: str, first: str) -> list[str]:
    for line in text.splitlines():
        if line.startswith(first + " "):
            return line[len(first) :].split()
    raise AssertionError(f"no row {first!r} in:\n{text}")


def test_render_shows_the_numbers() -> None:
    text = render(summarise(synthetic_log(), since=None))
    assert text.startswith("requests: 10  (skipped 4 malformed lines)\n")
    assert _row(text, "completed") == ["6", "60.0%"]
    assert _row(text, "cancel") == ["2", "20.0%"]
    assert _row(text, "mock-1") == ["3", "30.0%"]
    assert _row(text, "exact") == ["7", "70", "140", "210"]
    assert _row(text, "estimated") == ["2", "10", "14", "24"]
    assert _row(text, "all") == ["9", "80", "154", "234"]
    assert _row(text, "time to first token") == ["10", "50.0", "90.0", "100.0", "100.0"]
    assert _row(text, "cancel latency") == ["3", "1.5", "4.0", "4.0", "4.0"]


def test_run_audit_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("\n".join(synthetic_log()) + "\n")
    assert run_audit(str(path), None, as_json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total"] == 10 and data["skipped"] == 4
    assert data["by_status"] == {"completed": 6, "stopped": 3, "failed": 1}
    assert data["tokens"]["exact"]["total_tokens"] == 210 and data["tokens"]["estimated"]["total_tokens"] == 24
    assert data["ttft_ms"] == {"count": 10, "p50": 50.0, "p90": 90.0, "p99": 100.0, "max": 100.0}
    assert data["first_ts"] == T0.isoformat()


def test_run_audit_bad_since(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    assert run_audit(str(path), "soon", as_json=False) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--since" in err


# --- the command, end to end -------------------------------------------------


def _audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cancelproxy", "audit", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_cli_audit(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("\n".join(synthetic_log()) + "\n")
    result = _audit(str(path))
    assert result.returncode == 0, result.stderr
    assert "requests: 10  (skipped 4 malformed lines)" in result.stdout
    assert _row(result.stdout, "exact") == ["7", "70", "140", "210"]
    assert _row(result.stdout, "time to first token") == ["10", "50.0", "90.0", "100.0", "100.0"]

    result = _audit(str(path), "--json", "--since", "2025-01-01T08:00:00+00:00")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["by_status"] == {"failed": 1, "stopped": 1}


def test_cli_audit_relative_since(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    path = tmp_path / "audit.jsonl"
    old, recent = (
        entry(1, ts=(now - timedelta(days=3)).isoformat()),
        entry(2, ts=(now - timedelta(hours=1)).isoformat()),
    )
    path.write_text(json.dumps(old) + "\n" + json.dumps(recent) + "\n")
    for since, total in (("2h", 1), ("7d", 2), ("30m", 0)):
        result = _audit(str(path), "--json", "--since", since)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["total"] == total, since


def test_cli_audit_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    result = _audit(str(missing))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"cancelproxy audit: {missing}: no such file\n"
