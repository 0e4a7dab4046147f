"""The event logs resumed readers follow: offsets by event, bounds, and when they are freed."""

from __future__ import annotations

import asyncio
import contextlib

from cancelproxy.replay import EventLog, Replays


def _log(replays: Replays | None = None, limit: int = 1 << 20) -> tuple[Replays, EventLog]:
    replays = replays or Replays(max_total_bytes=1 << 20, keep_s=60)
    return replays, replays.open("req_1", "chat", limit=limit)


async def _read_all(log: EventLog, after: int) -> bytes:
    out = b""
    async with contextlib.aclosing(log.follow(after)) as source:
        async for data in source:
            out += data
    return out


async def test_a_reader_resumes_at_the_end_of_its_nth_event() -> None:
    _, log = _log()
    log.append(b"data: a\n\n: keep-alive\n\n", [9])  # a comment is replayed, not counted
    log.append(b"data: b\n\ndata: c\n\n", [9, 18])
    log.close()
    assert log.events == 3
    assert await _read_all(log, 0) == b"data: a\n\n: keep-alive\n\ndata: b\n\ndata: c\n\n"
    assert await _read_all(log, 1) == b": keep-alive\n\ndata: b\n\ndata: c\n\n"
    assert await _read_all(log, 2) == b"data: c\n\n"
    assert await _read_all(log, 3) == b""


async def test_an_event_the_client_never_got_is_not_counted() -> None:
    _, log = _log()
    log.append(b"data: a\n\n", [9, 9])  # a hidden event: an empty span at the same end
    assert log.events == 1


async def test_a_reader_follows_live_until_the_end() -> None:
    _, log = _log()
    log.append(b"data: a\n\n", [9])
    got: list[bytes] = []

    async def read() -> None:
        async with contextlib.aclosing(log.follow(0)) as source:
            async for data in source:
                got.append(data)

    reading = asyncio.create_task(read())
    await asyncio.sleep(0)
    assert log.readers == 1
    log.append(b"data: b\n\n", [9])
    await asyncio.sleep(0)
    log.close()
    await reading
    assert b"".join(got) == b"data: a\n\ndata: b\n\n" and log.readers == 0


async def test_a_log_past_its_bound_is_given_up_and_its_readers_end() -> None:
    replays, log = _log(limit=20)
    log.append(b"data: aaaaaa\n\n", [14])
    log.append(b"data: bbbbbb\n\n", [14])
    assert log.given_up and replays.total_bytes == 0
    assert await _read_all(log, 0) == b""


async def test_the_total_budget_drops_ended_unread_logs_first() -> None:
    replays = Replays(max_total_bytes=30, keep_s=60)
    old = replays.open("old", "chat", limit=100)
    old.append(b"x" * 20, [20])
    old.close()
    new = replays.open("new", "chat", limit=100)
    new.append(b"y" * 20, [20])  # room made by dropping the ended one
    assert replays.get("old") is None and replays.get("new") is new and replays.total_bytes == 20
    other = replays.open("other", "chat", limit=100)
    other.append(b"z" * 20, [20])  # nothing ended to drop: this one cannot be kept
    assert other.given_up and not new.given_up


async def test_an_ended_log_is_kept_a_while_then_freed_once_unread() -> None:
    replays = Replays(max_total_bytes=1 << 20, keep_s=0.01)
    log = replays.open("req_1", "chat", limit=100)
    log.append(b"data: a\n\n", [9])
    log.close()
    assert replays.get("req_1") is log  # kept for a reader that comes back late
    source = log.follow(0)
    assert await anext(source) == b"data: a\n\n"  # a reader holds it past its keep time
    await asyncio.sleep(0.05)
    assert replays.get("req_1") is log
    await source.aclose()  # the last reader leaves
    assert replays.get("req_1") is None and replays.total_bytes == 0
