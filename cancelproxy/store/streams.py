"""Streams in Redis, for readers on another replica: what a generation's client was sent, mirrored.

With several replicas, a reader may resume on B a generation that runs on A.
A mirrors each stream's log (``replay.EventLog``) into a Redis Stream, one
entry per chunk the client was sent::

    stream:{request_id}   XADD  d=<bytes>  e=<event ends in them, "12,40">  ... then  end=1
                          (end=given_up: the log outgrew its bound, the mirror its
                          MAXLEN entries, or a batch of it failed: the rest is not kept)
    readers:{request_id}  ZSET  reader ids scored by their last beat (a reader on B keeps A's generation alive)

``XADD`` is bounded (``MAXLEN`` entries a stream) and batched: entries are
queued and sent pipelined by one task, so the generation never waits for
Redis. B replays the entries and follows live with a blocking ``XREAD`` (no
polling loop); between blocks it checks that A is alive, and if A is gone
the stream ends as its record does: interrupted. A stream expires
``resume.keep_s`` after it ended (and, as a safety net, an hour after its
last entry if its replica died before ending it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..tasks import cancel_and_wait
from .redis import beat_forever, raise_if_cancelled

__all__ = ["RedisStreams", "RemoteEntry"]

# Entries a stream's mirror holds at most; the bytes are bounded before (a
# log stops at max_body_bytes). Past it the mirror is given up, not trimmed:
# Redis trims a stream from its start, and a reader would be replayed an
# answer without its beginning as if it were whole.
MAXLEN = 100_000
# A stream whose replica died before ending it is dropped this long after its last entry.
ORPHAN_EXPIRY_S = 3600
# How long a blocking read waits before it checks that the writing replica still lives.
_BLOCK_MS = 1000
# A blocking read that Redis has not answered this long after its block ran
# out is given up (its connection dropped by redis-py) and the replica checked
# anyway: a lost answer must not keep a reader waiting on a dead replica.
_BLOCK_GRACE_S = 5.0


@dataclass(frozen=True)
class RemoteEntry:
    data: bytes
    event_ends: list[int]
    last: bool = False  # the end marker: the stream's own replica ended it
    cut: bool = False  # ... because its log was given up: the stream did not end here


# The end markers: the stream ended, or its log was given up (the rest is not kept).
_GIVEN_UP_MARK = b"given_up"
_END: dict[str, bytes | str] = {"end": "1"}
_GIVEN_UP: dict[str, bytes | str] = {"end": _GIVEN_UP_MARK}


class RedisStreams:
    def __init__(
        self, client: Redis, key_prefix: str, *, keep_s: float, heartbeat_s: float, log: logging.Logger
    ) -> None:
        self._client = client
        self._prefix = key_prefix
        self._keep_s = keep_s
        self._heartbeat_s = heartbeat_s
        self._log = log
        self._queue: list[tuple[str, dict[str, bytes | str]]] = []
        # The batch being sent: if its send is cut off (at close), Redis may
        # have any part of it, and it is lost as a failed one is.
        self._sending: list[tuple[str, dict[str, bytes | str]]] = []
        # Entries mirrored of each stream not yet ended; -1 once given up.
        self._mirrored: dict[str, int] = {}
        self._queued = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._failing = False

    def _stream(self, request_id: str) -> str:
        return f"{self._prefix}stream:{request_id}"

    def _readers(self, request_id: str) -> str:
        return f"{self._prefix}readers:{request_id}"

    # ---- the writing replica ----------------------------------------------

    async def start(self) -> None:
        self._sender = asyncio.create_task(self._send_forever())

    async def close(self) -> None:
        if self._sender is not None:
            await cancel_and_wait(self._sender)
        if self._sending:
            self._lost(self._sending)  # cut off mid-send: its streams end given up, not clean after a hole
            self._sending = []
        with contextlib.suppress(RedisError, OSError):
            await self._send(self._take())  # what was queued before the end

    def publish(self, request_id: str, data: bytes, event_ends: list[int]) -> None:
        entries = self._mirrored.get(request_id, 0)
        if entries < 0:
            return  # given up
        if entries >= MAXLEN:
            self.give_up(request_id)
            return
        self._mirrored[request_id] = entries + 1
        self._queue.append((request_id, {"d": data, "e": ",".join(map(str, event_ends))}))
        self._queued.set()

    def end(self, request_id: str) -> None:
        if self._mirrored.pop(request_id, 0) >= 0:
            self._queue.append((request_id, _END))
            self._queued.set()

    def give_up(self, request_id: str) -> None:
        if self._mirrored.get(request_id, 0) >= 0:
            self._mirrored[request_id] = -1
            self._queue.append((request_id, _GIVEN_UP))
            self._queued.set()

    def _take(self) -> list[tuple[str, dict[str, bytes | str]]]:
        batch, self._queue = self._queue, []
        self._queued.clear()
        return batch

    async def _send_forever(self) -> None:
        while True:
            await self._queued.wait()
            batch = self._sending = self._take()
            try:
                await self._send(batch)
            except (RedisError, OSError) as exc:
                raise_if_cancelled()
                self._sending = []
                # Resume across replicas is best effort: a reader here still
                # gets the whole stream; one on another replica is cut off.
                if not self._failing:
                    self._log.warning("streams: cannot mirror streams to Redis: %s", type(exc).__name__)
                self._failing = True
                self._lost(batch)
                await asyncio.sleep(0.5)
            else:
                self._sending = []
                self._failing = False

    def _lost(self, batch: list[tuple[str, dict[str, bytes | str]]]) -> None:
        """Give up the mirror of every stream in a batch Redis may not have
        (or have in part): a reader on another replica would otherwise go on
        past the hole, or wait for an end that was lost, and be replayed an
        answer with chunks missing as if it were whole. Their given-up
        markers go first with the next batch, and nothing more of them."""
        lost = dict.fromkeys(request_id for request_id, _ in batch)
        for request_id in lost:
            if request_id in self._mirrored:  # not ended: nothing more is published
                self._mirrored[request_id] = -1
        kept = [(request_id, fields) for request_id, fields in self._queue if request_id not in lost]
        self._queue = [(request_id, _GIVEN_UP) for request_id in lost] + kept
        self._queued.set()

    async def _send(self, batch: list[tuple[str, dict[str, bytes | str]]]) -> None:
        if not batch:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            touched: dict[str, bool] = {}
            for request_id, fields in batch:
                key = self._stream(request_id)
                entry: dict[Any, Any] = fields
                pipe.xadd(key, entry)
                touched[key] = touched.get(key, False) or "end" in fields
            for key, ended in touched.items():
                pipe.expire(key, max(1, int(self._keep_s)) if ended else ORPHAN_EXPIRY_S)
            await pipe.execute()

    async def remote_readers(self, request_id: str) -> int:
        """Readers on other replicas that beat within three heartbeats."""
        try:
            return int(
                await self._client.zcount(self._readers(request_id), time.time() - 3 * self._heartbeat_s, "+inf")
            )
        except (RedisError, OSError):
            return 0

    # ---- a reading replica --------------------------------------------------

    async def exists(self, request_id: str) -> bool:
        try:
            return bool(await self._client.exists(self._stream(request_id)))
        except (RedisError, OSError):
            return False

    async def given_up(self, request_id: str) -> bool:
        """Whether the stream's mirror ends with the given-up marker: the rest was not kept."""
        try:
            last: Any = await self._client.xrevrange(self._stream(request_id), count=1)
        except (RedisError, OSError):
            return False
        return bool(last) and bool(last[0][1]) and last[0][1].get(b"end") == _GIVEN_UP_MARK

    async def appears(self, request_id: str, within_s: float) -> bool:
        """Whether the stream is in Redis, or is put there within ``within_s``:
        a replica mirrors its streams a batch behind its clients, and stores
        their final states by batches of their own."""
        try:
            async with asyncio.timeout(within_s + _BLOCK_GRACE_S):
                # XREAD from the start answers at once if the stream has an
                # entry, and otherwise blocks until its first one is added.
                found = await self._client.xread(
                    {self._stream(request_id): "0-0"}, count=1, block=max(1, round(within_s * 1000))
                )
        except (TimeoutError, RedisError, OSError):
            return False
        return bool(_entries(found))

    @contextlib.asynccontextmanager
    async def reading(self, request_id: str) -> AsyncIterator[None]:
        """While inside, this replica's reader counts as following the generation, wherever it runs."""
        key, reader = self._readers(request_id), secrets.token_hex(8)

        async def beat() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zadd(key, {reader: time.time()})
                pipe.expire(key, ORPHAN_EXPIRY_S)
                await pipe.execute()

        beating = asyncio.create_task(beat_forever(beat, self._heartbeat_s, at_once=True))
        try:
            yield
        finally:
            await cancel_and_wait(beating)
            with contextlib.suppress(RedisError, OSError):
                await self._client.zrem(key, reader)

    async def follow(self, request_id: str, alive: Callable[[], Awaitable[bool]]) -> AsyncGenerator[RemoteEntry, None]:
        """Every entry of the stream, then each new one as it comes, until its
        end marker (yielded as an empty ``last`` entry, ``cut`` if its log was
        given up), or until ``alive()``
        says its replica is gone (then nothing marks the end)."""
        key, last = self._stream(request_id), "0-0"
        while True:
            try:
                async with asyncio.timeout(_BLOCK_MS / 1000 + _BLOCK_GRACE_S):
                    found = await self._client.xread({key: last}, count=500, block=_BLOCK_MS)
            except TimeoutError:
                found = None
            entries = _entries(found)
            if not entries:
                if not await alive():
                    return
                continue
            for entry_id, fields in entries:
                last = entry_id
                if b"end" in fields:
                    yield RemoteEntry(b"", [], last=True, cut=fields[b"end"] == _GIVEN_UP_MARK)
                    return
                ends = fields.get(b"e", b"")
                yield RemoteEntry(fields.get(b"d", b""), [int(e) for e in ends.split(b",")] if ends else [])


def _entries(found: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """XREAD's answer for one stream as (entry id, fields): ``[[key, entries]]``
    in RESP2, ``{key: [entries]}`` in RESP3."""
    if not found:
        return []
    entries = next(iter(found.values())) if isinstance(found, dict) else found[0][1]
    if entries and isinstance(entries[0], list) and entries[0] and isinstance(entries[0][0], tuple):
        entries = entries[0]  # RESP3 nests the entries once more
    return [(_text(entry_id), {bytes(k): bytes(v) for k, v in fields.items()}) for entry_id, fields in entries]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
