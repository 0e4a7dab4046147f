"""The Redis store over a real network, whose host can vanish (network_host.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from cancelproxy.records import Record
from cancelproxy.store.redis import CONNECT_TIMEOUT_S, TCP_USER_TIMEOUT_S, RedisStore

from .conftest import MockProvider, Proxy, proxy_config, start_proxy
from .helpers import provider_request, sse_content
from .network_host import RemoteRedis
from .redis_server import unique_key_prefix

AUTH = {"Authorization": "Bearer sk-user-a-0123456789abcdef"}


@pytest.fixture
def remote_redis() -> Iterator[RemoteRedis]:
    with RemoteRedis() as redis:
        yield redis


async def _chat(root: str) -> str:
    """A small answer, not streamed; its request id."""
    body = {"model": "mock-1", "messages": [{"role": "user", "content": "hi"}], "mock": {"tokens": 3, "rate": 0}}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{root}/v1/chat/completions", json=body, headers=AUTH) as response:
            assert response.status == 200, await response.text()
            await response.read()
            return response.headers["X-Request-Id"]


async def _stored_final(url: str, prefix: str, request_id: str, bound_s: float) -> Record:
    """The record as Redis holds it, once it holds its final state. Each read
    is a new connection of its own (the store the test opens here)."""
    deadline = time.monotonic() + bound_s
    while True:
        store = RedisStore(url, prefix)
        try:
            record = await store.get(request_id)
        finally:
            await store.close()
        if record is not None and record.status != "in_progress":
            return record
        if time.monotonic() > deadline:
            raise AssertionError(f"{request_id} not stored in its final state within {bound_s}s: {record}")
        await asyncio.sleep(0.2)


async def test_writes_go_on_over_new_connections_once_the_redis_host_of_the_open_ones_vanished(
    mock_provider: MockProvider, tmp_path: Path, remote_redis: RemoteRedis
) -> None:
    """A Redis host that dies, or whose address a failover moves, answers
    nothing on the connections that were open: no reset, only silence. Linux
    retransmits unacknowledged data for ~15 minutes before it says so, and the
    store's writes go one at a time, so every later write waited behind the
    first one stuck. Now a connection whose data stays unacknowledged for
    seconds is closed by the kernel, and the write is retried on a new one."""
    prefix = unique_key_prefix()
    store = {"url": remote_redis.url, "key_prefix": prefix, "flush_interval_ms": 50}
    proxy = start_proxy(tmp_path, proxy_config(mock_provider, store=store))
    try:
        first = await _chat(proxy.root)
        assert (await _stored_final(remote_redis.url, prefix, first, 15)).status == "completed"

        assert remote_redis.vanish_for_open_connections() >= 1
        second = await _chat(proxy.root)  # answered: the wait for its first write is bounded
        # Generous: the kernel gives up after TCP_USER_TIMEOUT_S (store/redis.py) on each
        # stale pooled connection a write picks, and redis-py then reconnects.
        record = await _stored_final(remote_redis.url, prefix, second, 90)
        assert record.status == "completed"
        assert record.content == "w0 w1 w2 "
    finally:
        proxy.program.stop()


async def _open_streams(
    session: aiohttp.ClientSession,
    proxy: Proxy,
    mock: MockProvider,
    count: int,
    responses: list[aiohttp.ClientResponse],
) -> list[tuple[str, str]]:
    """``count`` long streams through ``proxy``, left open (their responses
    added to ``responses``, for the caller to close): (request id, the mock's
    tag) of each."""
    opened = []
    for _ in range(count):
        tag = f"across-{uuid.uuid4().hex[:8]}"
        body = {
            "model": "mock-1",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
            "mock": {"tokens": 2000, "rate": 20, "tag": tag},
        }
        response = await session.post(f"{proxy.root}/v1/chat/completions", json=body, headers=AUTH)
        responses.append(response)
        assert response.status == 200, await response.text()
        await provider_request(mock.root, tag, wait="started")
        opened.append((response.headers["X-Request-Id"], tag))
    return opened


async def _upstream_closed(session: aiohttp.ClientSession, mock: MockProvider, tag: str, within_s: float) -> bool:
    """Whether the proxy closed the generation's connection (the mock long-polls for it)."""
    params = {"wait": "closed", "timeout": str(within_s)}
    async with session.get(f"{mock.root}/_mock/requests/{tag}", params=params) as response:
        return response.status == 200


async def test_cancels_cross_replicas_again_once_the_redis_host_of_their_subscriptions_vanished(
    mock_provider: MockProvider, tmp_path: Path, remote_redis: RemoteRedis
) -> None:
    """A replica hears cancels for its requests on a subscription, an idle
    connection. When its Redis host vanished, an order published for it
    reached only the dead connection until keepalive ended it (~20 s), and
    then redis-py's listen() took the ETIMEDOUT for the end of a time limit:
    it read the dead connection again at once, for ever, and the replica
    stopped serving anything. Now the replica pings its subscription every
    beat: one silent for two beats is cut off, the replica subscribes again
    on a new connection, and a cancel sent to the other replica reaches it."""
    prefix = unique_key_prefix()
    store = {"url": remote_redis.url, "key_prefix": prefix, "flush_interval_ms": 50, "heartbeat_s": 1}
    # A cancel that no replica answers is answered after 1 s, so that tries come often.
    config = proxy_config(mock_provider, store=store, limits={"cancel_timeout_s": 1})
    a = start_proxy(tmp_path, config)
    b = start_proxy(tmp_path, config)
    bounded = aiohttp.ClientTimeout(total=30)
    streams: list[aiohttp.ClientResponse] = []
    try:
        async with aiohttp.ClientSession(timeout=bounded) as session:
            # Opened before: while A's writes wait on vanished connections, a
            # new stream's start waits its bound, and tries would be far apart.
            (first, _), *to_cancel = await _open_streams(session, a, mock_provider, 16, streams)

            async def cancel_on_b(request_id: str) -> float:
                """B's answer to a cancel; how long it took."""
                asked = time.monotonic()
                async with session.post(f"{b.root}/requests/{request_id}/cancel", headers=AUTH) as answer:
                    assert answer.status == 200, await answer.text()
                return time.monotonic() - asked

            await cancel_on_b(first)
            assert remote_redis.vanish_for_open_connections() >= 2
            vanished_at = time.monotonic()
            # Until A's subscription is known dead, an order published for A
            # reaches only the dead connection: the cancels before then are
            # not expected to stop anything. Two beats of silence tell, and a
            # stale pooled connection may cost a try; keepalive alone took
            # 15-20 s. Meanwhile A's final states wait on its vanished
            # connections, so B may answer that A did not confirm in time:
            # whether A stopped is read at the provider.
            answer_times = []
            for request_id, tag in to_cancel:
                answer_times.append(await cancel_on_b(request_id))
                if await _upstream_closed(session, mock_provider, tag, within_s=0.5):
                    break
            else:
                raise AssertionError("no cancel sent to B stopped a stream on A")
            stopped_after = time.monotonic() - vanished_at
            # Each answered within cancel_timeout_s (1 s), not when a vanished connection gave up.
            assert max(answer_times) < 3, answer_times
            assert stopped_after < 10, f"the first stop through B came {stopped_after:.1f} s after the vanish"
    finally:
        for stream in streams:
            stream.close()
        a.program.stop()
        b.program.stop()


async def test_a_replica_goes_on_beating_while_the_redis_host_of_its_connections_vanishes(
    mock_provider: MockProvider, tmp_path: Path, remote_redis: RemoteRedis
) -> None:
    """A replica silent for three heartbeats is taken for gone: the others
    mark its requests interrupted while they run, and a cancel sent to them
    answers that nothing runs. A beat stuck on a connection whose Redis host
    vanished was silent until the kernel gave the connection up (10 s, three
    beats of 1 s many times over); now a beat is bounded and the next goes on
    a new connection."""
    prefix = unique_key_prefix()
    heartbeat_s = 1.0
    store = {"url": remote_redis.url, "key_prefix": prefix, "flush_interval_ms": 50, "heartbeat_s": heartbeat_s}
    proxy = start_proxy(tmp_path, proxy_config(mock_provider, store=store))
    replicas = f"{prefix}replicas"
    watcher = RedisStore(remote_redis.url, prefix)
    try:
        [(_, first_beat)] = await watcher.client.zrange(replicas, 0, -1, withscores=True)
        assert remote_redis.vanish_for_open_connections() >= 1  # the watcher's own connection too
        await watcher.close()
        watcher = RedisStore(remote_redis.url, prefix)  # a new connection, which is not dropped
        # Watched for as long as the stuck connection lasts, and a little more.
        watched_until = time.monotonic() + TCP_USER_TIMEOUT_S + 5
        silences = []
        while time.monotonic() < watched_until:
            [(_, beat)] = await watcher.client.zrange(replicas, 0, -1, withscores=True)
            silences.append(time.time() - beat)
            await asyncio.sleep(0.1)
        assert beat > first_beat
        assert max(silences) < 3 * heartbeat_s, f"silent for {max(silences):.1f} s"
    finally:
        await watcher.close()
        proxy.program.stop()


async def test_a_reader_on_b_is_cut_off_when_a_batch_of_the_mirror_it_follows_is_lost(
    mock_provider: MockProvider, tmp_path: Path, remote_redis: RemoteRedis
) -> None:
    """A mirrors each stream into Redis in batches for readers on B. A batch
    that failed (here: on a connection whose Redis host vanished) was dropped,
    and the next went on: B's reader was replayed the answer with those chunks
    missing and a clean end, as if it were whole. Now the streams of a lost
    batch are given up, and their readers on B are cut off."""
    prefix = unique_key_prefix()
    # Beats far apart: neither replica takes the other for gone during the blackout.
    store = {"url": remote_redis.url, "key_prefix": prefix, "flush_interval_ms": 50, "heartbeat_s": 5}
    a = start_proxy(tmp_path, proxy_config(mock_provider, store=store))
    b = start_proxy(tmp_path, proxy_config(mock_provider, store=store))
    body = {
        "model": "mock-1",
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
        "mock": {"tokens": 600, "rate": 40},  # 15 s: past the 10 s a lost batch may take to fail
    }
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session:
            async with session.post(f"{a.root}/v1/chat/completions", json=body, headers=AUTH) as stream:
                request_id = stream.headers["X-Request-Id"]
                sent = bytearray(await stream.content.readuntil(b"\n\n"))

                following = asyncio.Event()

                async def read_on_b() -> tuple[bytes, bool]:
                    """What B's reader got, and whether its stream ended cleanly."""
                    got = bytearray()
                    url = f"{b.root}/requests/{request_id}/stream?after=0"
                    try:
                        async with session.get(url, headers=AUTH) as reader:
                            assert reader.status == 200, await reader.text()
                            async for chunk in reader.content.iter_any():
                                got += chunk
                                following.set()
                    except aiohttp.ClientPayloadError:
                        return bytes(got), False
                    finally:
                        following.set()  # also if it failed: the test then says how
                    return bytes(got), True

                reading = asyncio.create_task(read_on_b())
                await following.wait()
                # New connections too wait past CONNECT_TIMEOUT_S: whichever
                # connection A's mirror sends its next batch on, that batch fails.
                blackout_s = CONNECT_TIMEOUT_S + 0.5
                assert await asyncio.to_thread(remote_redis.vanish_for_open_connections, blackout_s) >= 2
                sent += await stream.read()
            got, ended_cleanly = await reading
        assert "streams: cannot mirror streams to Redis" in a.program.output  # the batch was lost
        assert not ended_cleanly
        assert sse_content(bytes(sent)).startswith(sse_content(got))
    finally:
        a.program.stop()
        b.program.stop()
