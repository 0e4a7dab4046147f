"""``redis://``: records in Redis, shared by every replica of the proxy.

Layout, every key under ``key_prefix``::

    rec:{request_id}   string      the whole record as JSON
    sess:{session_id}  sorted set  the session's request ids, scored by created_at
    inprog             set         request ids whose status is in_progress
    ended              sorted set  request ids scored by ended_at (for prune)

``save_many`` writes records and indexes in one MULTI/EXEC, so a reader never
sees a record without its index entries. How durable an acknowledged write is
depends on the server: only ``appendonly yes`` with ``appendfsync always``
survives a power loss.

A pooled connection outlives a Redis restart only as a closed socket, and
redis-py (with RESP3, its default) hands it out unchecked: the client
reconnects and retries a command once when its connection fails, so a
restart costs no read or write an error. Every command here is idempotent
(SET, ZADD, SADD/SREM, DEL of known keys), so running one twice is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as BrokenConnection
from redis.exceptions import RedisError, ResponseError

from ..records import Record
from .base import StoreError

__all__ = ["RedisStore", "beat_forever", "raise_if_cancelled"]

# Without a connect timeout, an unreachable host (packets dropped, not
# refused) would hang open() and every /readyz ping until the OS gives up.
CONNECT_TIMEOUT_S = 5.0
# No socket timeout (redis-py 8 sets 5 s unless told): the client is shared
# with pub/sub, whose reads idle, and a wait that must be short is bounded by
# its caller (a cancel's ack, a blocking read, PING_TIMEOUT_S). With one,
# redis-py wraps each send in asyncio.wait_for, which before Python 3.12 drops
# a cancellation that comes as the send completes: a task stopped in the
# middle of a command (a resumed reader's heartbeat, a flusher at shutdown,
# any asyncio.timeout) would go on as if never stopped.
SOCKET_TIMEOUT_S = None
# A connection whose sent data stays unacknowledged this long is closed by
# the kernel (TCP_USER_TIMEOUT), and the command fails over to a new one. A
# Redis host that dies, or whose address a failover moves, sends no reset:
# Linux would otherwise retransmit for ~15 minutes, and since the store's
# writes go one at a time, every write would wait behind the stuck one. The
# ACKs come from the kernel, not the Redis process, so a busy Redis never
# trips it. The unsent data goes with the connection: a write given up is
# never delivered later, after the newer write that retried it.
TCP_USER_TIMEOUT_S = 10
# Keepalive probes on a connection idle this long (a pooled one, pub/sub's):
# unanswered, they too end it within TCP_USER_TIMEOUT_S.
TCP_KEEPALIVE_IDLE_S = 10
TCP_KEEPALIVE_INTERVAL_S = 5
# /readyz: a Redis that does not answer a PING in this long is not ready.
PING_TIMEOUT_S = 2.0
# Connections per process. Past them a command waits for one to be free
# (redis-py's default pool fails it instead: the 101st concurrent read would
# answer 503, a cancel order would not be published); the bound keeps a
# burst from opening thousands of sockets on a Redis every replica shares.
MAX_CONNECTIONS = 256
POOL_WAIT_S = 5.0
# Once, at once, and only on a broken connection: if Redis is really down, a
# refused connection fails again in microseconds, and a timeout (an
# unreachable host) is not retried, so an outage never doubles a caller's wait.
RETRIES_ON_A_BROKEN_CONNECTION = 1
# Records deleted per round trip by prune: bounds the size of one MULTI/EXEC
# (Redis runs it without serving anyone else) on a first prune of a big backlog.
PRUNE_BATCH = 500


def _keepalive_options() -> dict[int, int]:
    """The TCP timers above, those of them the platform has (TCP_USER_TIMEOUT
    is Linux's; macOS calls TCP_KEEPIDLE TCP_KEEPALIVE)."""
    wanted = {
        "TCP_USER_TIMEOUT": TCP_USER_TIMEOUT_S * 1000,  # milliseconds
        "TCP_KEEPIDLE": TCP_KEEPALIVE_IDLE_S,
        "TCP_KEEPALIVE": TCP_KEEPALIVE_IDLE_S,
        "TCP_KEEPINTVL": TCP_KEEPALIVE_INTERVAL_S,
    }
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


def raise_if_cancelled() -> None:
    """Raise the cancel of this task if one was asked for and a Redis call ate it.

    A cancelled redis-py call does not always end in ``CancelledError``: the
    cancel channel's ping task was once seen "cancelling" and still pinging,
    its cancel taken inside ``pubsub.ping()`` for a lost connection (an error
    the loop suppresses; a ``TimeoutError`` is an ``OSError`` too). A loop that
    lives through lost connections then never ends, and whatever awaits it
    (``close()``, shutdown) waits for ever. asyncio still knows the cancel was
    asked for, and ``asyncio.timeout`` takes back its own, so this raises only
    for a cancel from outside.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def beat_forever(
    beat: Callable[[], Awaitable[object]],
    every_s: float,
    *,
    at_once: bool,
    failed: Callable[[BaseException], None] | None = None,
) -> None:
    """Run ``beat`` every ``every_s`` (the first at once, or after a beat),
    each bounded to half a beat, and the next sooner when one fails.

    Whoever beats counts as gone once silent for three beats (a replica, a
    reader on another replica). A beat stuck on a connection whose Redis host
    vanished would be silent until TCP_USER_TIMEOUT_S ends the connection,
    far longer. redis-py drops a connection whose command is cancelled, so
    the next beat goes on a new one.
    """
    pause = 0.0 if at_once else every_s
    while True:
        await asyncio.sleep(pause)
        try:
            async with asyncio.timeout(every_s / 2):
                await beat()
            pause = every_s
        except (TimeoutError, RedisError, OSError) as exc:
            raise_if_cancelled()
            if failed is not None:
                failed(exc)
            pause = every_s / 2
        raise_if_cancelled()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _dump(record: Record) -> bytes:
    return record.to_json()


def _load(raw: bytes | str) -> Record:
    return Record.from_json(raw)


@contextlib.asynccontextmanager
async def _mapped(what: str) -> AsyncIterator[None]:
    """redis-py's errors as ``StoreError``.

    A command Redis refuses inside a pipeline comes back with the command
    quoted in its message (a record's JSON, for a SET): only its kind is kept,
    which says why (OutOfMemoryError, ReadOnlyError, NoPermissionError...).
    """
    try:
        yield
    except ResponseError as exc:
        raise StoreError(f"redis: {what} refused ({type(exc).__name__})") from None
    except (RedisError, OSError) as exc:
        raise StoreError(f"redis: {what} failed: {exc}") from exc


class RedisStore:
    def __init__(self, url: str, key_prefix: str = "cancelproxy:") -> None:
        self.key_prefix = key_prefix
        # Public so that another module can reuse the connection pool for pub/sub.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=POOL_WAIT_S,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_keepalive=True,
            socket_keepalive_options=_keepalive_options(),
            retry=Retry(NoBackoff(), retries=RETRIES_ON_A_BROKEN_CONNECTION, supported_errors=(BrokenConnection,)),
        )
        self.client: Redis = Redis.from_pool(pool)  # closing the client closes its pool
        # Committed save_many transactions: the proxy reports it to show that
        # writes are batched.
        self.transactions = 0
        self._inprog = f"{key_prefix}inprog"
        self._ended = f"{key_prefix}ended"

    def _rec(self, request_id: str) -> str:
        return f"{self.key_prefix}rec:{request_id}"

    def _sess(self, session_id: str) -> str:
        return f"{self.key_prefix}sess:{session_id}"

    async def open(self) -> None:
        # Fail now, at startup, rather than at the first save.
        try:
            async with _mapped("connect"):
                await self.client.ping()
        except BaseException:
            await self.client.aclose()
            raise

    async def close(self) -> None:
        await self.client.aclose()

    async def save_many(self, records: Sequence[Record]) -> None:
        if not records:
            return
        async with _mapped("write"), self.client.pipeline(transaction=True) as pipe:
            for record in records:
                rid = record.request_id
                pipe.set(self._rec(rid), _dump(record))
                pipe.zadd(self._sess(record.session_id), {rid: record.created_at})
                # Both directions, every time: the index follows the status
                # the record has now, whatever it had before.
                if record.status == "in_progress":
                    pipe.sadd(self._inprog, rid)
                else:
                    pipe.srem(self._inprog, rid)
                if record.ended_at is not None:
                    pipe.zadd(self._ended, {rid: record.ended_at})
                else:
                    pipe.zrem(self._ended, rid)
            await pipe.execute()
        self.transactions += 1

    async def get(self, request_id: str) -> Record | None:
        async with _mapped("read"):
            raw = await self.client.get(self._rec(request_id))
        return _load(raw) if raw is not None else None

    async def _records(self, ids: Iterable[bytes | str]) -> list[Record]:
        """The records of these ids that still exist, in the same order."""
        keys = [self._rec(_text(i)) for i in ids]
        if not keys:
            return []  # MGET with no keys is an error
        async with _mapped("read"):
            raws = await self.client.mget(keys)
        return [_load(raw) for raw in raws if raw is not None]

    async def session(self, session_id: str) -> list[Record]:
        # The set is ordered by created_at; ids that a concurrent prune has
        # just deleted are skipped.
        async with _mapped("read"):
            ids = await self.client.zrange(self._sess(session_id), 0, -1)
        return await self._records(cast("list[bytes]", ids))

    async def in_progress(self) -> list[Record]:
        async with _mapped("read"):
            ids = await self.client.smembers(self._inprog)
        # Two commands, not one snapshot: a record may have turned final
        # between them, and its index entry gone with it.
        records = [r for r in await self._records(ids) if r.status == "in_progress"]
        return sorted(records, key=lambda r: r.created_at)

    async def prune(self, ended_before: float) -> int:
        async with _mapped("prune"):
            return await self._prune(ended_before)

    async def _prune(self, ended_before: float) -> int:
        deleted = 0
        # "(" makes the bound exclusive: ended_at < ended_before, as documented.
        cutoff = f"({float(ended_before)!r}"
        while True:
            # Always from offset 0: each round removes its ids from `ended`.
            batch = await self.client.zrange(self._ended, "-inf", cutoff, byscore=True, offset=0, num=PRUNE_BATCH)
            ids = [_text(i) for i in cast("list[bytes]", batch)]
            if not ids:
                return deleted
            # The session of each record is inside its JSON: read them first.
            raws = await self.client.mget([self._rec(i) for i in ids])
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(*(self._rec(i) for i in ids))
                for rid, raw in zip(ids, raws, strict=True):
                    if raw is not None:
                        pipe.zrem(self._sess(_load(raw).session_id), rid)
                pipe.srem(self._inprog, *ids)
                pipe.zrem(self._ended, *ids)
                results = await pipe.execute()
            deleted += int(results[0])  # DEL answers how many keys existed

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                return bool(await self.client.ping())
        except (TimeoutError, RedisError, OSError):
            return False
