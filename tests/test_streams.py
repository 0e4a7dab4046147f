"""The Redis mirror's reading side, against a Redis that never answers (a read, a reader's beat)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from cancelproxy.store import streams
from cancelproxy.store.streams import RedisStreams, RemoteEntry


class _SilentRedis:
    """Takes every XREAD and never answers it: an answer lost on the way."""

    def __init__(self) -> None:
        self.reads = 0

    async def xread(self, *args: Any, **kwargs: Any) -> Any:
        self.reads += 1
        await asyncio.Event().wait()


async def test_a_read_redis_never_answers_still_ends_on_a_dead_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "_BLOCK_MS", 10)
    monkeypatch.setattr(streams, "_BLOCK_GRACE_S", 0.05)
    redis = _SilentRedis()
    mirror = RedisStreams(cast(Redis, redis), "t:", keep_s=1, heartbeat_s=0.1, log=logging.getLogger("test"))

    async def dead() -> bool:
        return False

    async with asyncio.timeout(10):  # generous: the bound under test is 0.06 s
        got = [entry async for entry in mirror.follow("req_1", dead)]
    assert got == [] and redis.reads == 1


class _SilentPipelines:
    """Takes every pipeline's commands and never answers them: a connection
    whose Redis host vanished, until the kernel gives it up."""

    def __init__(self) -> None:
        self.sent = 0
        self.third_sent = asyncio.Event()

    def pipeline(self, transaction: bool = True) -> _SilentPipelines:
        return self

    async def __aenter__(self) -> _SilentPipelines:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    def zadd(self, *args: Any, **kwargs: Any) -> None:
        return None

    def expire(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def execute(self) -> None:
        self.sent += 1
        if self.sent == 3:
            self.third_sent.set()
        await asyncio.Event().wait()

    async def zrem(self, *args: Any) -> int:
        return 0


async def test_a_readers_beat_redis_never_answers_is_given_up_and_sent_again() -> None:
    # A reader keeps another replica's generation going while it beats within
    # three heartbeats: a beat stuck for as long as its connection lasts
    # (10 s on a vanished host) would let that generation stop under it.
    redis = _SilentPipelines()
    mirror = RedisStreams(cast(Redis, redis), "t:", keep_s=1, heartbeat_s=0.1, log=logging.getLogger("test"))
    async with mirror.reading("req_1"):
        async with asyncio.timeout(10):  # generous: a beat is given up after 0.05 s
            await redis.third_sent.wait()


async def test_a_stream_with_more_entries_than_a_mirror_keeps_ends_cut_not_trimmed(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, redis_key_prefix: str
) -> None:
    # Trimmed from its start, a mirror would replay a stream without its
    # beginning as if whole: past its bound it says it was given up instead.
    monkeypatch.setattr(streams, "MAXLEN", 3)
    client = Redis.from_url(redis_url)
    mirror = RedisStreams(client, redis_key_prefix, keep_s=5, heartbeat_s=0.1, log=logging.getLogger("test"))
    await mirror.start()
    try:
        for n in range(5):
            mirror.publish("req_1", f"data: {n}\n\n".encode(), [9])
        mirror.end("req_1")

        async def alive() -> bool:
            return True

        async with asyncio.timeout(10):
            got = [entry async for entry in mirror.follow("req_1", alive)]
    finally:
        await mirror.close()
        await client.aclose()
    assert [entry.data for entry in got[:-1]] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
    assert got[-1].last and got[-1].cut


class _FirstSendUnanswered:
    """A real Redis whose first pipeline is sent and never answered: a
    mirror's send under way (Redis may have any part of it) when it closes."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self.sending = asyncio.Event()

    def pipeline(self, transaction: bool = True) -> Any:
        pipe = self._client.pipeline(transaction=transaction)
        if not self.sending.is_set():
            self.sending.set()

            async def unanswered() -> None:
                await asyncio.Event().wait()

            pipe.execute = unanswered  # type: ignore[method-assign]
        return pipe


async def test_a_batch_whose_send_close_cut_off_leaves_the_stream_cut_not_whole(
    redis_url: str, redis_key_prefix: str
) -> None:
    # The rest of the stream, its end included, is sent at close: after a
    # batch that may be missing, a reader on another replica would be
    # replayed an answer with chunks missing as if whole.
    client = Redis.from_url(redis_url)
    held = _FirstSendUnanswered(client)
    mirror = RedisStreams(cast(Redis, held), redis_key_prefix, keep_s=5, heartbeat_s=0.1, log=logging.getLogger("test"))
    reader = RedisStreams(client, redis_key_prefix, keep_s=5, heartbeat_s=0.1, log=logging.getLogger("test"))
    try:
        await mirror.start()
        try:
            mirror.publish("req_1", b"data: 0\n\n", [9])
            async with asyncio.timeout(10):
                await held.sending.wait()
            mirror.publish("req_1", b"data: 1\n\n", [9])
            mirror.end("req_1")
        finally:
            await mirror.close()

        async def alive() -> bool:
            return True

        async with asyncio.timeout(10):
            got = [entry async for entry in reader.follow("req_1", alive)]
    finally:
        await client.aclose()
    assert got == [RemoteEntry(b"", [], last=True, cut=True)]
