"""The Redis mirror's reading side, against a Redis that never answers a blocking read."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from cancelproxy.store import streams
from cancelproxy.store.streams import RedisStreams


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
