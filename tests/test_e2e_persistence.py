"""SQLite as users run it: a real file, kill -9, SIGTERM, restart."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from .conftest import MockProvider, Proxy, proxy_config, start_proxy
from .helpers import content_of, open_stream, provider_request, read_record

USER_KEY = "sk-user-a-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {USER_KEY}"}


def _stored(db: Path, request_id: str) -> dict[str, Any] | None:
    """The record as the SQLite file holds it, read with Python's own sqlite3."""
    with sqlite3.connect(db) as connection:
        row = connection.execute("SELECT data FROM records WHERE request_id = ?", (request_id,)).fetchone()
    return json.loads(row[0]) if row else None


async def _until_flushed(db: Path, request_id: str, min_content: int, bound_s: float = 10.0) -> dict[str, Any]:
    """Wait for the writer's batch to carry the partial answer to the file.

    The flush is a timer inside another process: there is no event to await,
    so this re-reads the file, within a generous bound.
    """
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        stored = _stored(db, request_id)
        if stored is not None and len(stored["content"].split()) >= min_content:
            return stored
        await asyncio.sleep(0.02)
    raise AssertionError(f"{request_id} was not flushed to {db} within {bound_s}s")


def _sqlite_proxy(mock: MockProvider, tmp_path: Path, **overrides: object) -> tuple[Proxy, Path]:
    db = tmp_path / "records.db"
    config = proxy_config(mock, store={"url": f"sqlite:///{db}", "flush_interval_ms": 50}, **overrides)
    return start_proxy(tmp_path, config), db


async def _logged(proxy: Proxy, text: str, bound_s: float = 10.0) -> None:
    """Wait for a line of the proxy's log (another process: re-read, within a bound)."""
    deadline = time.monotonic() + bound_s
    while not any(text in line for line in proxy.program.lines):
        if time.monotonic() > deadline:
            raise AssertionError(f"the proxy did not log {text!r} within {bound_s}s:\n{proxy.program.output}")
        await asyncio.sleep(0.02)


async def _read_on(stream: openai.AsyncStream[Any], text: list[str], reasons: list[str]) -> None:
    """The rest of ``stream``: its content into ``text``, its finish reasons into ``reasons``."""
    async for chunk in stream:
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            if choice.finish_reason:
                reasons.append(choice.finish_reason)


async def test_every_record_is_in_the_file(mock_provider: MockProvider, tmp_path: Path) -> None:
    proxy, db = _sqlite_proxy(mock_provider, tmp_path)
    try:
        async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=USER_KEY, max_retries=0) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="mock-1",
                messages=[{"role": "user", "content": "x"}],
                extra_body={"mock": {"tokens": 4, "rate": 0}},
            )
        request_id = raw.headers["x-request-id"]
        await read_record(proxy.root, request_id, USER_KEY)  # once final, it is in the file
        stored = _stored(db, request_id)
        assert stored is not None and (stored["status"], stored["content"]) == ("completed", content_of(4))
        with sqlite3.connect(db) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        proxy.program.stop()


async def test_kill_9_mid_stream_leaves_an_interrupted_record_with_its_partial(
    mock_provider: MockProvider, tmp_path: Path
) -> None:
    proxy, db = _sqlite_proxy(mock_provider, tmp_path)
    tag = f"kill9-{uuid.uuid4().hex[:8]}"
    received: list[str] = []
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=USER_KEY, max_retries=0) as client:
        stream = await open_stream(client, {"tokens": 500, "rate": 50, "tag": tag})
        request_id = stream.response.headers["x-request-id"]
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
            if len(received) == 10:
                break
        flushed = await _until_flushed(db, request_id, min_content=10)
        assert flushed["status"] == "in_progress"
        assert proxy.program.process is not None
        proxy.program.process.send_signal(signal.SIGKILL)
        proxy.program.stop()
        with_error = None
        try:
            async for _ in stream:
                pass
        except openai.APIError as exc:  # the connection died with the proxy
            with_error = exc
        assert with_error is not None
    assert (await provider_request(mock_provider.root, tag, wait="ended"))["state"] == "closed_by_client"

    restarted = start_proxy(tmp_path, proxy_config(mock_provider, store={"url": f"sqlite:///{db}"}))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(
                f"{restarted.root}/requests/{request_id}", headers={"Authorization": f"Bearer {USER_KEY}"}
            ) as r:
                record = await r.json()
    finally:
        restarted.program.stop()
    assert record["status"] == "interrupted"
    assert record["error"]["code"] == "interrupted"
    # The last flushed partial is kept: at least what had been flushed, and
    # never anything the client was not sent.
    assert len(record["content"]) >= len(flushed["content"])
    assert record["content"] == content_of(len(record["content"].split()))


async def test_sigterm_lets_short_streams_finish_and_stops_the_rest(
    mock_provider: MockProvider, tmp_path: Path
) -> None:
    proxy, db = _sqlite_proxy(mock_provider, tmp_path, shutdown_grace_s=1.5)
    assert proxy.program.process is not None
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=USER_KEY, max_retries=0) as client:
        long = await open_stream(client, {"tokens": 1000, "rate": 20})
        short = await client.chat.completions.create(
            model="mock-1",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
            extra_body={"mock": {"tokens": 10, "rate": 20}},  # half a second: within the grace
        )
        long_id, short_id = long.response.headers["x-request-id"], short.response.headers["x-request-id"]
        signalled = time.monotonic()
        proxy.program.process.send_signal(signal.SIGTERM)
        long_parts: list[str] = []
        long_reasons: list[str] = []
        short_parts: list[str] = []
        short_reasons: list[str] = []
        await asyncio.gather(  # both end without raising
            _read_on(long, long_parts, long_reasons), _read_on(short, short_parts, short_reasons)
        )
        long_text, short_text = "".join(long_parts), "".join(short_parts)
    exit_code = await asyncio.to_thread(proxy.program.process.wait, 30)
    exited_after = time.monotonic() - signalled
    proxy.program.stop()
    assert exit_code == 0
    assert exited_after < 1.5 + 5  # the grace, plus the time to write clean ends
    assert (short_text, short_reasons) == (content_of(10), ["stop"])
    assert long_reasons == ["cancelled"]
    long_record, short_record = _stored(db, long_id), _stored(db, short_id)
    assert long_record is not None and short_record is not None
    assert (long_record["status"], long_record["content"]) == ("interrupted", long_text)
    assert (short_record["status"], short_record["content"]) == ("completed", content_of(10))


async def _readiness(root: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{root}/readyz") as response:
            return response.status


def _logged_by_the_store(proxy: Proxy, level: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in proxy.program.lines if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "cancelproxy.store.sqlite" and line["level"] == level]


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_database_file_taken_away_while_serving_makes_the_proxy_unready(
    mock_provider: MockProvider, tmp_path: Path, how: str
) -> None:
    proxy, db = _sqlite_proxy(mock_provider, tmp_path)
    try:
        async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=USER_KEY, max_retries=0) as client:
            first = await client.chat.completions.with_raw_response.create(
                model="mock-1", messages=[{"role": "user", "content": "x"}], extra_body={"mock": {"tokens": 4}}
            )
            await read_record(proxy.root, first.headers["x-request-id"], USER_KEY)
            assert await _readiness(proxy.root) == 200
            if how == "deleted":
                # SQLite keeps writing to the open, unlinked files: nothing would survive a restart.
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink()
            else:
                # What restoring a backup does: another file renamed over this one.
                restored = tmp_path / "restored.db"
                shutil.copyfile(db, restored)
                os.replace(restored, db)
            assert await _readiness(proxy.root) == 503
            # No client is failed for it: a new stream runs to its end.
            stream = await open_stream(client, {"tokens": 5, "rate": 0})
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text == content_of(5)
            assert await _readiness(proxy.root) == 503
    finally:
        proxy.program.stop()
    # Said once, as an error, however often readiness is asked and writes fail.
    assert len(_logged_by_the_store(proxy, "error")) == 1, proxy.program.output


async def test_a_locked_store_does_not_turn_a_stop_into_not_cancelled(
    mock_provider: MockProvider, tmp_path: Path
) -> None:
    """The file locked by another process: 15 of 16 cancels answered "cancelled": false after ~15 s,
    though every upstream had closed within milliseconds."""
    proxy, db = _sqlite_proxy(mock_provider, tmp_path)
    try:
        async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=USER_KEY, max_retries=0) as client:
            tags = [f"locked-{uuid.uuid4().hex[:8]}" for _ in range(16)]
            streams = [await open_stream(client, mock={"tokens": 1000, "rate": 20, "tag": tag}) for tag in tags]
            for tag in tags:
                await provider_request(mock_provider.root, tag, wait="started")
            locker = sqlite3.connect(db, isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")  # every write of the proxy now waits, then fails
            try:
                started = time.monotonic()
                async with aiohttp.ClientSession() as http:

                    async def cancel(request_id: str) -> dict[str, Any]:
                        url = f"{proxy.root}/requests/{request_id}/cancel"
                        async with http.post(url, headers={"Authorization": f"Bearer {USER_KEY}"}) as answer:
                            return dict(await answer.json())

                    acks = await asyncio.gather(*(cancel(s.response.headers["x-request-id"]) for s in streams))
                elapsed = time.monotonic() - started
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            for tag in tags:  # every provider connection was closed by the stop
                assert (await provider_request(mock_provider.root, tag, wait="ended"))["state"] == "closed_by_client"
            for stream in streams:
                await stream.close()
        assert all(ack["cancelled"] is True for ack in acks), acks
        assert elapsed < 10 + 2  # cancel_timeout_s, and a margin for a busy machine
        assert any(ack.get("durable") is False for ack in acks)  # and it says so
        for stream in streams:  # the kept final states land once the lock is gone
            record = await read_record(proxy.root, stream.response.headers["x-request-id"], USER_KEY)
            assert (record["status"], record["stop_reason"]) == ("stopped", "cancel")
    finally:
        proxy.program.stop()


async def test_kill_9_under_load_loses_no_request_whose_id_a_client_had(
    mock_provider: MockProvider, tmp_path: Path
) -> None:
    """15–51 of 300 such requests were 404 after a restart: a record was first written with the next batch."""
    db = tmp_path / "records.db"
    # A long flush interval: only a write at the request's start can have put it there.
    config = proxy_config(mock_provider, store={"url": f"sqlite:///{db}", "flush_interval_ms": 60_000})
    proxy = start_proxy(tmp_path, config)
    seen: list[str] = []
    enough = asyncio.Event()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def stream() -> None:
            body = {"model": "mock-1", "stream": True, "messages": [], "mock": {"tokens": 1000, "rate": 5}}
            try:
                async with session.post(f"{proxy.base_url}/chat/completions", json=body, headers=AUTH) as answer:
                    seen.append(answer.headers["X-Request-Id"])
                    if len(seen) >= 150:
                        enough.set()
                    await answer.read()
            except aiohttp.ClientError:
                pass  # the proxy died under it

        streams = [asyncio.create_task(stream()) for _ in range(300)]
        await asyncio.wait_for(enough.wait(), 60)
        assert proxy.program.process is not None
        proxy.program.process.send_signal(signal.SIGKILL)
        await asyncio.gather(*streams)
    proxy.program.stop()
    had = list(seen)
    restarted = start_proxy(tmp_path, proxy_config(mock_provider, store={"url": f"sqlite:///{db}"}))
    try:
        async with aiohttp.ClientSession() as session:
            missing = []
            for request_id in had:
                async with session.get(f"{restarted.root}/requests/{request_id}", headers=AUTH) as r:
                    if r.status != 200:
                        missing.append(request_id)
    finally:
        restarted.program.stop()
    assert len(had) >= 150 and missing == []


async def test_a_second_sigterm_stops_what_is_in_progress_now_and_stores_it(
    mock_provider: MockProvider, tmp_path: Path
) -> None:
    proxy, db = _sqlite_proxy(mock_provider, tmp_path, shutdown_grace_s=60)
    process = proxy.program.process
    assert process is not None
    text: list[str] = []
    reasons: list[str] = []
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=USER_KEY, max_retries=0) as client:
        stream = await open_stream(client, {"tokens": 1000, "rate": 20})
        request_id = stream.response.headers["x-request-id"]
        process.send_signal(signal.SIGTERM)
        await _logged(proxy, "a second SIGTERM or SIGINT stops them now")
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        await _read_on(stream, text, reasons)  # ends without raising
    exit_code = await asyncio.to_thread(process.wait, 30)
    exited_after = time.monotonic() - signalled
    proxy.program.stop()
    assert exit_code == 0
    assert exited_after < 10  # not the 60 s of grace
    assert "SIGTERM again: stopping the requests in progress now" in proxy.program.output
    assert reasons == ["cancelled"]
    stored = _stored(db, request_id)
    assert stored is not None
    assert (stored["status"], stored["content"]) == ("interrupted", "".join(text))


async def test_a_third_sigterm_exits_without_waiting_for_final_states_that_cannot_be_stored(
    mock_provider: MockProvider, tmp_path: Path
) -> None:
    proxy, db = _sqlite_proxy(mock_provider, tmp_path, shutdown_grace_s=60)
    process = proxy.program.process
    assert process is not None
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=USER_KEY, max_retries=0) as client:
        stream = await open_stream(client, {"tokens": 1000, "rate": 20})
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")  # every write of the proxy now waits, then fails: no final state lands
        try:
            process.send_signal(signal.SIGTERM)
            await _logged(proxy, "a second SIGTERM or SIGINT stops them now")
            process.send_signal(signal.SIGTERM)
            await _logged(proxy, "a third SIGTERM or SIGINT exits without waiting for them")
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            exit_code = await asyncio.to_thread(process.wait, 30)
            exited_after = time.monotonic() - signalled
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        await stream.close()
    output = proxy.program.output
    proxy.program.stop()
    assert exit_code == 1, output
    # Not the 60 s of grace: only the store call under way (SQLite's 5 s busy timeout).
    assert exited_after < 10, output
    assert "SIGTERM a third time: exiting without waiting any longer" in output
