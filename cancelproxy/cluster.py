"""Replicas: which are alive, and stopping requests that run on another one.

With a local store (memory, SQLite) there is one replica, this process. With
Redis, several proxies share records and a cancel may reach a replica that
does not run the request. The cancel order is then published to every live
replica; each stops what it holds of it exactly as a local cancel does
(upstream closed, final state stored) and answers. The route answers once
every live replica has answered, or ``cancel_timeout_s`` has passed.

Pub/sub delivers to whoever is subscribed at that instant, and a replica
whose subscription is being made again (Redis restarted, its connection was
cut) is not. So the order is sent again every ``_ORDER_REPEAT_S`` until every
replica answered; a replica serves each order once and answers a repeat with
the answer it gave, which may itself have been lost the same way. Each copy
gives the replica a share of the time the route has left, so a replica that
cannot store the final state in time still answers before the route gives up
on it.

The order is broadcast instead of looked up in the store because a request
that started a moment ago may not be in the store yet (partials are flushed
in batches); the replicas' registries are always current.

Each replica refreshes its score in a sorted set (its heartbeat). One whose
score is older than three beats is gone: its in-progress records are marked
interrupted by the others (``upkeep.py``) instead of being waited on for ever.
Time in which Redis was away does not count: a replica whose own beats
failed gives the others three beats, once they get through, to beat again.
Each also pings its own subscription every beat, and makes it again when it
stays silent for two: a subscription whose Redis host vanished hears nothing,
and nothing tells it so but its own timers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as BrokenConnection
from redis.exceptions import RedisError

from .store.redis import beat_forever, raise_if_cancelled
from .tasks import cancel_and_wait

__all__ = ["CancelOrder", "CancelResult", "Cluster", "LocalCluster", "RedisCluster"]

# How often an order goes out again while a replica has not answered it. A
# replica answers in milliseconds when it heard the order, so a repeat is
# only sent for a lost one (or a slow stop, which ignores it), and a lost
# order costs at most this much beyond the replica's own resubscription.
_ORDER_REPEAT_S = 0.5
# The share of the route's remaining time a replica may spend on an order
# before it answers with what it has (stopped, not yet stored); the rest is
# for the answer's way back.
_ANSWER_SHARE = 0.8


@dataclass(frozen=True)
class CancelOrder:
    """What to stop: a session's requests or one request, on behalf of a credential."""

    credential: str
    admin: bool
    session_id: str | None = None
    request_id: str | None = None
    response_id: str | None = None  # a Responses API id, as the upstream named it


@dataclass
class CancelResult:
    """What an order did on one replica, or on all of them together."""

    stopped: list[str] = field(default_factory=list)
    # Stopped, but their final state is not yet in the store (it is kept and retried).
    not_durable: list[str] = field(default_factory=list)
    # The order's requests found in progress, stopped or not: one that was
    # just ending on its own is the caller's, not "not found".
    known: list[str] = field(default_factory=list)
    session_id: str | None = None
    unanswered: list[str] = field(default_factory=list)  # replicas that did not answer in time
    # For a response_id order: the Response object as it stands after the stop.
    response: dict[str, Any] | None = None
    # Here: how long the stopped requests took to end, then to be stored (seconds).
    ending_s: float = 0.0
    storing_s: float = 0.0

    def add(self, other: CancelResult) -> None:
        self.stopped += other.stopped
        self.not_durable += other.not_durable
        self.known += other.known
        self.session_id = self.session_id or other.session_id
        self.unanswered += other.unanswered
        self.response = self.response or other.response


# Stops what this replica runs of an order, answering within the time given
# (seconds; None: the replica's own cancel_timeout_s).
LocalCancel = Callable[[CancelOrder, float | None], Awaitable[CancelResult]]


class Cluster(Protocol):
    replica_id: str
    # No other replica can hold a request (one process, a local store).
    alone: bool

    async def start(self, cancel_here: LocalCancel) -> None: ...

    async def close(self) -> None: ...

    async def alive(self, holder: str) -> bool: ...

    async def cancel_elsewhere(self, order: CancelOrder, timeout: float) -> CancelResult: ...


class LocalCluster:
    """One replica: this process runs everything that is in progress."""

    alone = True

    def __init__(self) -> None:
        self.replica_id = f"replica_{secrets.token_hex(6)}"

    async def start(self, cancel_here: LocalCancel) -> None:
        pass

    async def close(self) -> None:
        pass

    async def alive(self, holder: str) -> bool:
        return holder == self.replica_id

    async def cancel_elsewhere(self, order: CancelOrder, timeout: float) -> CancelResult:
        return CancelResult()


async def _messages(pubsub: PubSub, silent_for_s: float) -> AsyncIterator[dict[str, Any]]:
    """``pubsub.listen()``, except that a subscription that falls silent has lost its connection.

    ``_pings`` sends a PING on it every beat, whose PONG comes back as a
    message: one silent for two beats is cut off, as when its Redis host
    vanished (nothing answers then, not even with a reset). Left to TCP,
    keepalive would tell only ~20 s later, and every cancel sent to another
    replica for this one's requests would go unheard until then.

    A read that answers nothing is a lost connection too. redis-py 8 reads a
    subscription with no time limit, and takes the kernel's ETIMEDOUT
    (keepalive or TCP_USER_TIMEOUT gave up), which Python raises as
    TimeoutError, for the end of a time limit: it answers None and keeps the
    dead connection. ``listen()`` then reads it again at once, for ever,
    without yielding to the loop, and the whole proxy stops serving. A read
    without a time limit answers None for nothing else here (the pool has no
    health checks, whose replies it also hides).
    """
    while True:
        try:
            async with asyncio.timeout(silent_for_s):
                response = await pubsub.parse_response(block=True)
        except TimeoutError:
            raise BrokenConnection(f"the cancel channel was silent for {silent_for_s:g} s, pings included") from None
        if response is None:
            raise BrokenConnection("the cancel channel's connection timed out")
        message = await pubsub.handle_message(response)  # type: ignore[no-untyped-call]
        if message is not None:
            yield message


async def _pings(pubsub: PubSub, every_s: float) -> None:
    """A PING on the subscription every beat, for ``_messages`` to hear its PONG."""
    while True:
        await asyncio.sleep(every_s)
        with contextlib.suppress(RedisError, OSError):  # the listener tells a lost connection
            await pubsub.ping()
        raise_if_cancelled()


class RedisCluster:
    alone = False

    def __init__(self, client: aioredis.Redis, key_prefix: str, heartbeat_s: float, log: logging.Logger) -> None:
        self.replica_id = f"replica_{secrets.token_hex(6)}"
        self._client = client
        self._heartbeat_s = heartbeat_s
        self._log = log
        self._replicas_key = f"{key_prefix}replicas"
        self._cancel_channel = f"{key_prefix}cancel"
        self._reply_channel = f"{key_prefix}cancelled:{self.replica_id}"
        self._waiting: dict[str, _Replies] = {}  # the orders this replica sent, by id
        self._served: dict[str, _Served] = {}  # the orders it heard, by id, while a repeat may come
        self._tasks: set[asyncio.Task[object]] = set()
        self._subscribed = asyncio.Event()
        self._cancel_here: LocalCancel | None = None
        self._last_beat = time.time()  # when this replica's beat last got through
        self._outage: _Outage | None = None  # the latest time its beats did not

    @property
    def _gone_after_s(self) -> float:
        return self._heartbeat_s * 3

    async def start(self, cancel_here: LocalCancel) -> None:
        self._cancel_here = cancel_here
        with contextlib.suppress(RedisError, OSError):
            await self._beat()
        self._spawn(beat_forever(self._beat, self._heartbeat_s, at_once=False, failed=self._beat_failed))
        self._spawn(self._listen())
        # An order published before we listen would be lost: wait for the
        # subscription (bounded, so a Redis outage does not block the start).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._subscribed.wait()

    async def close(self) -> None:
        await cancel_and_wait(*self._tasks)
        with contextlib.suppress(RedisError, OSError):
            await self._client.zrem(self._replicas_key, self.replica_id)

    async def alive(self, holder: str) -> bool:
        if holder == self.replica_id:
            return True
        try:
            beat = await self._client.zscore(self._replicas_key, holder)
        except (RedisError, OSError):
            return True  # unknown: never interrupt another replica's work on a guess
        return beat is not None and beat >= self._alive_after()

    def _alive_after(self) -> float:
        """The oldest score of a replica that is not gone: three beats ago.

        While this replica's own beats fail, and for three beats after they
        get through again, a replica counts as alive if it beat in the three
        beats before they failed: Redis was away for it too, and its score is
        as old as the outage (a restarted Redis gives back the scores it
        saved). Otherwise, once Redis is back, its in-progress records would
        be marked interrupted, and cancels not sent to it, until it beats.
        """
        now = time.time()
        since = now - self._gone_after_s
        if self._outage is not None and self._outage.counts(now, self._gone_after_s):
            since = min(since, self._outage.began - self._gone_after_s)
        return since

    async def cancel_elsewhere(self, order: CancelOrder, timeout: float) -> CancelResult:
        # All of it within ``timeout``, the Redis commands too: on a
        # connection whose Redis host vanished, each would wait until the
        # kernel gives the connection up (TCP_USER_TIMEOUT). redis-py drops a
        # connection whose command is cancelled.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                others = await self._live_replicas()
        except (TimeoutError, RedisError, OSError) as exc:
            self._log.error("cluster: cannot reach the other replicas: %s", str(exc) or "no answer in time")
            return CancelResult()
        others.discard(self.replica_id)
        if not others:
            return CancelResult()
        correlation = secrets.token_hex(8)
        replies = _Replies(expected=others)
        self._waiting[correlation] = replies
        order_fields = asdict(order)
        failed = False
        try:
            async with asyncio.timeout_at(deadline):
                while not replies.complete.is_set():
                    message = {
                        "id": correlation,
                        "reply_to": self._reply_channel,
                        "order": order_fields,
                        "answer_within_s": _ANSWER_SHARE * max(0.0, deadline - loop.time()),
                    }
                    # The PUBLISH too: one stuck on a vanished connection is
                    # dropped with it, and the repeat goes on a new one.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_ORDER_REPEAT_S):
                            # Logged once per order: a repeat may get through.
                            sent = await self._publish(self._cancel_channel, message, "publish", report=not failed)
                            failed = failed or not sent
                            await replies.complete.wait()
        except TimeoutError:
            pass  # the replicas that did not answer are named
        finally:
            del self._waiting[correlation]
        replies.result.unanswered = sorted(replies.expected)
        return replies.result

    async def _live_replicas(self) -> set[str]:
        members = await self._client.zrangebyscore(self._replicas_key, self._alive_after(), "+inf")
        return {m.decode() if isinstance(m, bytes) else str(m) for m in members}

    async def _beat(self) -> None:
        now = time.time()
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.zadd(self._replicas_key, {self.replica_id: now})
            # Forget replicas gone a hundred times as long (an outage does not
            # count), so the set does not grow for ever.
            pipe.zremrangebyscore(self._replicas_key, "-inf", self._alive_after() - 99 * self._gone_after_s)
            await pipe.execute()
        self._last_beat = time.time()
        if self._outage is not None and self._outage.ended is None:
            self._outage.ended = self._last_beat

    def _beat_failed(self, exc: BaseException) -> None:
        self._log.warning("cluster: heartbeat failed: %s", str(exc) or "no answer in time")
        if self._outage is not None and self._outage.counts(time.time(), self._gone_after_s):
            self._outage.ended = None  # the same outage, back before the others could beat again
        else:
            self._outage = _Outage(began=self._last_beat)

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self._client.pubsub()
            pinging: asyncio.Task[None] | None = None
            try:
                await pubsub.subscribe(self._cancel_channel, self._reply_channel)
                self._subscribed.set()
                backoff = 0.1
                pinging = asyncio.create_task(_pings(pubsub, self._heartbeat_s))
                async for message in _messages(pubsub, silent_for_s=2 * self._heartbeat_s):
                    if message.get("type") == "message":
                        try:
                            self._dispatch(message["channel"], message["data"])
                        except Exception:
                            # Whatever one message did, the replica must go
                            # on hearing cancels: this listener is its only ear.
                            self._log.exception("cluster: could not handle a message on the cancel channel")
            except (RedisError, OSError) as exc:
                raise_if_cancelled()
                self._log.warning("cluster: lost the cancel channel, reconnecting: %s", exc)
                await asyncio.sleep(backoff)
                # At most a beat apart: once Redis is back, this replica hears
                # orders again within a beat (a refused connect costs nothing).
                backoff = min(backoff * 2, self._heartbeat_s)
            finally:
                if pinging is not None:
                    await cancel_and_wait(pinging)
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _dispatch(self, channel: bytes | str, data: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        answer = name == self._reply_channel
        try:
            message: Any = json.loads(data)
        except ValueError:
            message = None
        # Anyone who can reach Redis can publish here: only orders and answers
        # of the shape replicas send are taken; the rest is logged and dropped.
        if not isinstance(message, dict) or not isinstance(message.get("id"), str):
            self._log.warning("cluster: ignored a message on %s that is not %s", name, _KIND[answer])
            return
        if answer:
            replies = self._waiting.get(message["id"])
            if replies is not None:
                replies.add(message)
        elif message.get("reply_to") != self._reply_channel:  # not our own order
            order = _order(message.get("order"))
            if order is None or not isinstance(message.get("reply_to"), str):
                self._log.warning("cluster: ignored a message on %s that is not %s", name, _KIND[answer])
                return
            order_id = message["id"]
            served = self._served.get(order_id)
            if served is None:
                served = self._served[order_id] = _Served()
                within_s = _seconds(message.get("answer_within_s"))
                # Forgotten once its sender has stopped repeating it.
                remember_s = (within_s or 0.0) / _ANSWER_SHARE + _ORDER_REPEAT_S
                asyncio.get_running_loop().call_later(remember_s, self._served.pop, order_id, None)
                # Its own task: the listener must keep reading while this waits for the stop.
                self._spawn(self._serve(message, order, served, within_s))
            elif served.reply is not None:  # the answer was lost: the same answer again
                self._spawn(self._publish(message["reply_to"], served.reply, "answer"))
            # else: still being served; the answer goes when it is ready

    async def _serve(
        self, message: dict[str, Any], order: CancelOrder, served: _Served, within_s: float | None
    ) -> None:
        assert self._cancel_here is not None
        try:
            result = await self._cancel_here(order, within_s)
        except Exception:
            # A task of its own: nobody else would hear of it. The sender
            # names this replica unanswered.
            self._log.exception("cluster: could not serve the cancel order %s", message["id"])
            return
        served.reply = {
            "id": message["id"],
            "replica": self.replica_id,
            "stopped": result.stopped,
            "not_durable": result.not_durable,
            "known": result.known,
            "session_id": result.session_id,
            "response": result.response,
        }
        await self._publish(message["reply_to"], served.reply, "answer")

    async def _publish(self, channel: str, message: dict[str, Any], what: str, *, report: bool = True) -> bool:
        """PUBLISH ``message``; False if Redis did not take it (logged if ``report``)."""
        try:
            await self._client.publish(channel, json.dumps(message))
        except (RedisError, OSError) as exc:
            if report:
                self._log.error("cluster: could not %s a cancel: %s", what, exc)
            return False
        return True

    def _spawn(self, coroutine: Awaitable[object]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


_KIND = {False: "a cancel order", True: "an answer to a cancel order"}
_ORDER_TEXT = ("session_id", "request_id", "response_id")


def _order(fields: object) -> CancelOrder | None:
    """The order another replica sent, or None if it is not one: ``CancelOrder``'s
    fields and no others, each of its type (an ``admin`` of ``"no"`` would
    otherwise grant what ``true`` does)."""
    if not isinstance(fields, dict) or set(fields) - {"credential", "admin", *_ORDER_TEXT}:
        return None
    credential, admin = fields.get("credential"), fields.get("admin")
    if not isinstance(credential, str) or not isinstance(admin, bool):
        return None
    if not all(isinstance(fields.get(key), (str, type(None))) for key in _ORDER_TEXT):
        return None
    return CancelOrder(credential=credential, admin=admin, **{key: fields.get(key) for key in _ORDER_TEXT})


def _seconds(value: object) -> float | None:
    """A duration another replica sent: a finite non-negative number, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        return None
    return float(value)


@dataclass(eq=False)
class _Outage:
    """A time this replica's beats did not get through (wall-clock seconds)."""

    began: float  # the last beat that got through before
    ended: float | None = None  # the first that got through again

    def counts(self, now: float, gone_after_s: float) -> bool:
        """Still going, or over too lately for the others to have beaten since."""
        return self.ended is None or now - self.ended < gone_after_s


@dataclass(eq=False)
class _Served:
    """An order this replica heard: its answer, once it has one."""

    reply: dict[str, Any] | None = None


@dataclass(eq=False)
class _Replies:
    expected: set[str]
    result: CancelResult = field(default_factory=CancelResult)
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    answered: set[str] = field(default_factory=set)

    def add(self, reply: dict[str, Any]) -> None:
        replica = str(reply.get("replica"))
        if replica in self.answered:  # a repeated order's repeated answer
            return
        self.answered.add(replica)
        self.expected.discard(replica)

        def ids(key: str) -> list[str]:
            value = reply.get(key)
            return [str(i) for i in value] if isinstance(value, list) else []

        session_id, response = reply.get("session_id"), reply.get("response")
        self.result.add(
            CancelResult(
                stopped=ids("stopped"),
                not_durable=ids("not_durable"),
                known=ids("known"),
                session_id=session_id if isinstance(session_id, str) else None,
                response=response if isinstance(response, dict) else None,
            )
        )
        if not self.expected:
            self.complete.set()
