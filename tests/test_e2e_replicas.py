"""Several proxies on one real redis-server: shared records, cancels that cross replicas."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from multidict import CIMultiDict
from redis.asyncio import Redis

from cancelproxy.records import Record
from cancelproxy.sessions import credential_fingerprint
from cancelproxy.store.redis import RedisStore

from .conftest import MockProvider, Proxy, proxy_config, start_proxy
from .helpers import TCP_ESTABLISHED, content_of, open_stream, provider_request, tcp_state, until
from .redis_server import RedisServer, unique_key_prefix

USER_KEY = "sk-user-a-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {USER_KEY}"}


def _replica(mock: MockProvider, tmp_path: Path, url: str, prefix: str) -> Proxy:
    store = {"url": url, "key_prefix": prefix, "flush_interval_ms": 50, "heartbeat_s": 0.2}
    return start_proxy(tmp_path, proxy_config(mock, store=store))


async def _get(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=AUTH) as response:
            return response.status, await response.json()


async def _post(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, headers=AUTH) as response:
            assert response.status == 200
            return dict(await response.json())


async def test_a_cancel_sent_to_b_stops_the_stream_held_by_a(
    mock_provider: MockProvider,
    redis_url: str,
    tmp_path: Path,
) -> None:
    prefix = unique_key_prefix()
    a, b = _replica(mock_provider, tmp_path, redis_url, prefix), _replica(mock_provider, tmp_path, redis_url, prefix)
    sid = f"replicated-{uuid.uuid4().hex[:8]}"
    try:
        async with openai.AsyncOpenAI(base_url=a.base_url, api_key=USER_KEY, max_retries=0) as client:
            for route in ("/sessions/{sid}/cancel", "/requests/{rid}/cancel"):
                tag = f"cross-{uuid.uuid4().hex[:8]}"
                stream = await open_stream(client, {"tokens": 500, "rate": 50, "tag": tag}, session_id=sid)
                rid = stream.response.headers["x-request-id"]
                upstream = await provider_request(mock_provider.root, tag, wait="started")
                received: list[str] = []
                reasons: list[str] = []
                ack: dict[str, Any] | None = None
                socket_at_ack = None
                async for chunk in stream:
                    for choice in chunk.choices:
                        received.append(choice.delta.content or "")
                        if choice.finish_reason:
                            reasons.append(choice.finish_reason)
                    if len(received) >= 5 and ack is None:
                        ack = await _post(b.root + route.format(sid=sid, rid=rid))  # to the OTHER replica
                        socket_at_ack = tcp_state(mock_provider.port, upstream["peer_port"])
                assert ack == {"success": True, "cancelled": True, "session_id": sid, "request_ids": [rid]}
                assert socket_at_ack != TCP_ESTABLISHED  # closed by A before B answered
                assert reasons == ["cancelled"]
                status, record = await _get(f"{b.root}/requests/{rid}")  # B reads A's record
                assert status == 200
                assert (record["status"], record["stop_reason"]) == ("stopped", "cancel")
                assert record["content"] == "".join(received)
        status, session = await _get(f"{b.root}/sessions/{sid}")
        assert status == 200 and [r["status"] for r in session["requests"]] == ["stopped", "stopped"]
        # Nothing left to stop anywhere: a harmless no, at once.
        assert (await _post(f"{b.root}/sessions/{sid}/cancel"))["cancelled"] is False
    finally:
        a.program.stop()
        b.program.stop()


async def test_a_cancel_sent_to_b_as_redis_comes_back_stops_the_stream_held_by_a(
    mock_provider: MockProvider,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """Redis restarted (empty, as without persistence). B's store is back,
    but A, and B, subscribe again to the cancel channel only after their
    backoff: an order published once then reached nobody, and B answered
    "cancelled": false after cancel_timeout_s while A's stream went on. B
    now sends the order again until A answers."""
    prefix = unique_key_prefix()
    store = {"url": redis_server.url, "key_prefix": prefix, "flush_interval_ms": 50, "heartbeat_s": 0.2}
    with _two_replicas(tmp_path, proxy_config(mock_provider, store=store)) as (a, b):
        async with openai.AsyncOpenAI(base_url=a.base_url, api_key=USER_KEY, max_retries=0) as client:
            tag = f"redis-back-{uuid.uuid4().hex[:8]}"
            stream = await open_stream(client, {"tokens": 1500, "rate": 50, "tag": tag})
            rid = stream.response.headers["x-request-id"]
            await provider_request(mock_provider.root, tag, wait="started")
            redis_server.stop()
            await asyncio.sleep(2)  # the restart takes 2 s: both replicas' subscriptions back off meanwhile
            redis_server.start()
            await until(lambda: _get(f"{b.root}/readyz"), lambda r: r[0] == 200)
            # Both replicas beat again within a beat (0.2 s), so B knows A is there.
            redis = Redis.from_url(redis_server.url)
            try:
                await until(lambda: redis.zcard(f"{prefix}replicas"), lambda n: n == 2)
            finally:
                await redis.aclose()
            ack = await _post(f"{b.root}/requests/{rid}/cancel")
            assert ack["cancelled"] is True and ack["request_ids"] == [rid], ack
            reasons = [c.choices[0].finish_reason async for c in stream if c.choices and c.choices[0].finish_reason]
            assert reasons == ["cancelled"]
            ended = await provider_request(mock_provider.root, tag, wait="ended")
            assert ended["state"] == "closed_by_client", ended


async def test_a_replica_killed_mid_stream_leaves_its_records_interrupted(
    mock_provider: MockProvider,
    redis_url: str,
    tmp_path: Path,
) -> None:
    prefix = unique_key_prefix()
    a, b = _replica(mock_provider, tmp_path, redis_url, prefix), _replica(mock_provider, tmp_path, redis_url, prefix)
    try:
        async with openai.AsyncOpenAI(base_url=a.base_url, api_key=USER_KEY, max_retries=0) as client:
            stream = await open_stream(
                client,
                {"tokens": 500, "rate": 50, "tag": f"kill-{uuid.uuid4().hex[:8]}"},
                session_id=f"doomed-{uuid.uuid4().hex[:8]}",
            )
            rid = stream.response.headers["x-request-id"]
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content == "w5 ":
                    break
            await until(lambda: _get(f"{b.root}/requests/{rid}"), lambda r: r[0] == 200 and r[1]["content"])
            assert a.program.process is not None
            a.program.process.send_signal(signal.SIGKILL)
            a.program.stop()
            await stream.close()
        _, record = await until(lambda: _get(f"{b.root}/requests/{rid}"), lambda r: r[1]["status"] != "in_progress")
        assert record["status"] == "interrupted"
        assert record["content"] == content_of(len(record["content"].split()))
    finally:
        a.program.stop()
        b.program.stop()


async def test_redis_going_away_breaks_no_client(
    mock_provider: MockProvider,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    proxy = _replica(mock_provider, tmp_path, redis_server.url, unique_key_prefix())
    try:
        assert (await _get(f"{proxy.root}/readyz"))[0] == 200
        async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=USER_KEY, max_retries=0) as client:
            running = await open_stream(client, {"tokens": 40, "rate": 40})
            redis_server.stop()
            # The stream that was running goes on to its end.
            text = "".join([c.choices[0].delta.content or "" async for c in running if c.choices])
            assert text == content_of(40)
            # New streams flow, and a local cancel still works.
            sid = f"no-redis-{uuid.uuid4().hex[:8]}"
            tag = f"no-redis-{uuid.uuid4().hex[:8]}"
            stream = await open_stream(client, {"tokens": 500, "rate": 50, "tag": tag}, session_id=sid)
            await provider_request(mock_provider.root, tag, wait="started")
            ack = await _post(f"{proxy.root}/sessions/{sid}/cancel")
            assert ack["cancelled"] is True
            reasons = [c.choices[0].finish_reason async for c in stream if c.choices and c.choices[0].finish_reason]
            assert reasons == ["cancelled"]
            assert (await _get(f"{proxy.root}/readyz"))[0] == 503
            status, body = await _get(f"{proxy.root}/sessions/{sid}")
            assert (status, body["error"]["code"]) == (503, "store_unavailable")
            # A session nothing here runs can only be looked up in the store.
            status, body = await _get(f"{proxy.root}/sessions/never-{uuid.uuid4().hex[:8]}/stream")
            assert (status, body["error"]["code"]) == (503, "store_unavailable")

            redis_server.start()  # back, on the same port
            await until(lambda: _get(f"{proxy.root}/readyz"), lambda r: r[0] == 200)
            # What could not be written while it was away is written now.
            rid = ack["request_ids"][0]
            _, record = await until(lambda: _get(f"{proxy.root}/requests/{rid}"), lambda r: r[0] == 200)
            assert (record["status"], record["stop_reason"]) == ("stopped", "cancel")
    finally:
        proxy.program.stop()


def _resuming_config(mock: MockProvider, url: str, prefix: str, **config: Any) -> dict[str, Any]:
    store = {"url": url, "key_prefix": prefix, "flush_interval_ms": 50, "heartbeat_s": 0.2}
    return proxy_config(mock, store=store, **{"on_disconnect": {"grace_s": 2, "max_grace_s": 30}, **config})


def _resuming_replica(mock: MockProvider, tmp_path: Path, url: str, prefix: str) -> Proxy:
    return start_proxy(tmp_path, _resuming_config(mock, url, prefix))


@contextlib.contextmanager
def _two_replicas(tmp_path: Path, config: dict[str, Any]) -> Iterator[tuple[Proxy, Proxy]]:
    """Replicas A and B of one config, stopped on the way out."""
    a = start_proxy(tmp_path, config)
    try:
        b = start_proxy(tmp_path, config)
        try:
            yield a, b
        finally:
            b.program.stop()
    finally:
        a.program.stop()


async def _first_events(url: str, body: dict[str, Any], n: int) -> tuple[bytes, str]:
    """Stream, read ``n`` events, drop the connection."""
    async with aiohttp.ClientSession() as session:
        response = await session.post(url, json=body, headers=AUTH)
        request_id = response.headers["X-Request-Id"]
        raw = b""
        while raw.count(b"\n\ndata: ") + raw.startswith(b"data: ") < n + 1:
            piece = await response.content.readany()
            assert piece, raw
            raw += piece
        response.close()
    return raw[: _nth_event_end(raw, n)], request_id


def _nth_event_end(raw: bytes, n: int) -> int:
    end = 0
    for _ in range(n):
        end = raw.index(b"\n\n", end) + 2
    return end


async def test_a_reader_on_b_follows_a_live_and_a_cancel_on_b_ends_it(
    mock_provider: MockProvider, redis_url: str, tmp_path: Path
) -> None:
    prefix = unique_key_prefix()
    a, b = (_resuming_replica(mock_provider, tmp_path, redis_url, prefix) for _ in range(2))
    tag = f"resume-cross-{uuid.uuid4().hex[:8]}"
    try:
        # Longer than the grace: only B's reader keeps A's generation going.
        body = {"model": "mock-1", "stream": True, "messages": [], "mock": {"tokens": 5000, "rate": 40, "tag": tag}}
        first, request_id = await _first_events(f"{a.base_url}/chat/completions", body, 3)
        upstream = await provider_request(mock_provider.root, tag)
        async with aiohttp.ClientSession() as session:
            url = f"{b.root}/requests/{request_id}/stream?after=3"
            async with session.get(url, headers=AUTH) as resumed:
                assert resumed.status == 200
                got = b""
                while got.count(b"\n\n") < 150:  # past the grace: it goes on because B reads
                    piece = await resumed.content.readany()
                    assert piece, got
                    got += piece
                ack = await _post(f"{b.root}/requests/{request_id}/cancel")
                socket_at_ack = tcp_state(mock_provider.port, upstream["peer_port"])
                got += await resumed.read()
        assert ack["request_ids"] == [request_id] and socket_at_ack != TCP_ESTABLISHED
        events = (first + got).split(b"\n\n")
        assert events[-3].startswith(b'data: {"id":"chatcmpl-mock-') and b'"finish_reason":"cancelled"' in events[-3]
        assert events[-2] == b"data: [DONE]"
        status, record = await _get(f"{b.root}/requests/{request_id}?wait=1")
        assert (record["status"], record["stop_reason"]) == ("stopped", "cancel")
    finally:
        a.program.stop()
        b.program.stop()


async def test_a_resume_on_b_after_a_was_killed_ends_as_interrupted(
    mock_provider: MockProvider, redis_url: str, tmp_path: Path
) -> None:
    prefix = unique_key_prefix()
    a, b = (_resuming_replica(mock_provider, tmp_path, redis_url, prefix) for _ in range(2))
    tag = f"resume-killed-{uuid.uuid4().hex[:8]}"
    try:
        body = {"model": "mock-1", "stream": True, "messages": [], "mock": {"tokens": 5000, "rate": 40, "tag": tag}}
        async with aiohttp.ClientSession() as session:
            response = await session.post(f"{a.base_url}/chat/completions", json=body, headers=AUTH)
            request_id = response.headers["X-Request-Id"]
            shown = b""
            while shown.count(b"\n\n") < 10:
                shown += await response.content.readany()
            assert a.program.process is not None
            a.program.process.send_signal(signal.SIGKILL)
            with contextlib.suppress(aiohttp.ClientError):
                shown += await response.read()
            url = f"{b.root}/requests/{request_id}/stream"
            try:
                async with session.get(url, headers=AUTH, timeout=aiohttp.ClientTimeout(total=60)) as resumed:
                    replayed = await resumed.read()
            except TimeoutError:
                pytest.fail(f"B's resumed stream never ended; B printed:\n{b.program.output}")
        # The partial as far as A had mirrored it (never more than its client
        # was sent), then the ending of a stopped stream.
        events = replayed.split(b"\n\n")
        assert b'"finish_reason":"cancelled"' in events[-3] and events[-2] == b"data: [DONE]"
        partial = b"".join(event + b"\n\n" for event in events[:-3])
        assert shown.startswith(partial) and partial.count(b"\n\n") >= 5
        await until(
            lambda: _get(f"{b.root}/requests/{request_id}"), lambda answer: answer[1].get("status") == "interrupted"
        )
    finally:
        a.program.stop()
        b.program.stop()


async def test_a_stream_that_ended_on_a_is_replayed_on_b_and_ends_at_once(
    mock_provider: MockProvider, redis_url: str, tmp_path: Path
) -> None:
    # The whole replay is over before the reader's first heartbeat to Redis
    # has its answer: the beat is stopped in the middle of that command.
    prefix = unique_key_prefix()
    with _two_replicas(tmp_path, _resuming_config(mock_provider, redis_url, prefix)) as (a, b):
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                body = {"model": "mock-1", "stream": True, "messages": [], "mock": {"tokens": 5, "rate": 0}}
                async with session.post(f"{a.base_url}/chat/completions", json=body, headers=AUTH) as answer:
                    shown = await answer.read()
                    request_id = answer.headers["X-Request-Id"]
                # Ended and stored: its whole stream, with its end, is in Redis.
                read = functools.partial(_get, f"{b.root}/requests/{request_id}")
                _, record = await until(read, lambda r: r[1].get("status") == "completed")
                url = f"{b.root}/requests/{request_id}/stream"
                try:
                    async with session.get(url, headers=AUTH, timeout=aiohttp.ClientTimeout(total=30)) as resumed:
                        assert resumed.status == 200
                        replayed = await resumed.read()
                except TimeoutError:
                    pytest.fail("B's replay of a stream that had ended never ended")
                assert replayed == shown and record["content"] == content_of(5)


async def test_a_reader_on_b_before_a_sent_any_event_gets_the_whole_stream(
    mock_provider: MockProvider, redis_url: str, tmp_path: Path
) -> None:
    # Nothing is mirrored yet (the provider is silent): the request is in
    # progress on A, so B follows its stream from the start, not 410.
    prefix = unique_key_prefix()
    with _two_replicas(tmp_path, _resuming_config(mock_provider, redis_url, prefix)) as (a, b):
        body = {"model": "mock-1", "stream": True, "messages": [], "mock": {"tokens": 5, "rate": 0, "silence_s": 1}}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{a.base_url}/chat/completions", json=body, headers=AUTH) as answer:
                request_id = answer.headers["X-Request-Id"]
                url = f"{b.root}/requests/{request_id}/stream"
                async with session.get(url, headers=AUTH, timeout=aiohttp.ClientTimeout(total=30)) as resumed:
                    assert resumed.status == 200, await resumed.text()
                    replayed = await resumed.read()
                shown = await answer.read()
        assert replayed == shown and shown.endswith(b"data: [DONE]\n\n")


async def test_a_mirror_that_lags_the_ended_record_is_waited_for(
    mock_provider: MockProvider, redis_url: str, tmp_path: Path
) -> None:
    # A replica stores a request's final state and mirrors its stream by
    # separate batches: under load the record can be in Redis first. The test
    # plays that replica, A: alive, its request ended, its mirror 0.3 s late.
    prefix = unique_key_prefix()
    b = _resuming_replica(mock_provider, tmp_path, redis_url, prefix)
    store = RedisStore(redis_url, prefix)
    await store.open()
    request_id = f"req_{uuid.uuid4().hex}"
    events = b'data: {"choices":[{"index":0,"delta":{"content":"w0 "}}]}\n\ndata: [DONE]\n\n'
    try:
        await store.client.zadd(f"{prefix}replicas", {"replica_a": time.time()})
        now = time.time()
        await store.save_many(
            [
                Record(
                    request_id, "s-lag", credential_fingerprint(CIMultiDict(AUTH)), "mock", "mock-1", True, now,
                    status="completed", finish_reason="stop", content="w0 ", ended_at=now, holder="replica_a",
                )
            ]
        )  # fmt: skip

        async def mirror_late() -> None:
            await asyncio.sleep(0.3)  # the lag is the scenario, not a wait for something
            key = f"{prefix}stream:{request_id}"
            await store.client.xadd(key, {"d": events, "e": f"{events.index(b'data: [DONE]')},{len(events)}"})
            await store.client.xadd(key, {"end": "1"})

        mirroring = asyncio.create_task(mirror_late())
        async with aiohttp.ClientSession() as session:
            url = f"{b.root}/requests/{request_id}/stream"
            async with session.get(url, headers=AUTH, timeout=aiohttp.ClientTimeout(total=30)) as resumed:
                assert resumed.status == 200, await resumed.text()
                assert await resumed.read() == events
        await mirroring
    finally:
        await store.close()
        b.program.stop()


async def test_a_reader_on_b_of_a_stream_a_gave_up_is_cut_off_not_ended(
    mock_provider: MockProvider, redis_url: str, tmp_path: Path
) -> None:
    # A keeps its logs within resume.max_total_bytes; past it the live log is
    # given up, and its mirror says so: B cannot have the rest either.
    prefix = unique_key_prefix()
    config = _resuming_config(mock_provider, redis_url, prefix, on_disconnect={}, resume={"max_total_bytes": 8192})
    with _two_replicas(tmp_path, config) as (a, b):
        body = {"model": "mock-1", "stream": True, "messages": [], "mock": {"tokens": 400, "rate": 100}}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{a.base_url}/chat/completions", json=body, headers=AUTH) as answer:
                request_id = answer.headers["X-Request-Id"]
                async with session.get(f"{b.root}/requests/{request_id}/stream", headers=AUTH) as resumed:
                    assert resumed.status == 200
                    with pytest.raises(aiohttp.ClientPayloadError):
                        await resumed.read()
                assert (await answer.read()).endswith(b"data: [DONE]\n\n")
            # Once given up, B answers as A does: the stream is not kept.
            async with session.get(f"{b.root}/requests/{request_id}/stream", headers=AUTH) as again:
                assert again.status == 410 and (await again.json())["error"]["code"] == "stream_not_kept"
