"""Cancel orders between replicas (cluster.RedisCluster) over a real Redis.

Two replicas live in this process, each with a LocalCancel of the test's own,
so what crosses Redis is the real thing and what a replica does with an order
is what the test says."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from cancelproxy.cluster import CancelOrder, CancelResult, RedisCluster, _pings
from cancelproxy.store.redis import beat_forever

from .helpers import until
from .redis_server import RedisServer, unique_key_prefix

HEARTBEAT_S = 0.2
ORDER = CancelOrder(credential="sha256:test", admin=False, request_id="req_1")
LOG = logging.getLogger("tests.cluster")


class Replica:
    """A RedisCluster whose local cancel records what it was asked, and
    answers as the test tells it to."""

    def __init__(self, url: str, prefix: str) -> None:
        self.client: Redis = Redis.from_url(url)
        self.cluster = RedisCluster(self.client, prefix, HEARTBEAT_S, LOG)
        self.asked: list[tuple[CancelOrder, float | None]] = []
        self.stuck = False  # its store does not answer: it waits its whole time

    async def cancel_here(self, order: CancelOrder, within_s: float | None) -> CancelResult:
        self.asked.append((order, within_s))
        if self.stuck:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within_s if within_s is not None else 30):
                    await asyncio.Event().wait()
            return CancelResult(stopped=["req_1"], not_durable=["req_1"], known=["req_1"])
        return CancelResult(stopped=["req_1"], known=["req_1"])

    async def start(self) -> None:
        await self.cluster.start(self.cancel_here)

    async def close(self) -> None:
        await self.cluster.close()
        await self.client.aclose()


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[tuple[Replica, Replica, str]]:
    prefix = unique_key_prefix()
    a, b = Replica(redis_url, prefix), Replica(redis_url, prefix)
    try:
        yield a, b, prefix
    finally:
        await a.close()
        await b.close()


async def _first_message(client: Redis, channel: str, started: asyncio.Event) -> dict[str, Any]:
    async with client.pubsub() as pubsub:
        await pubsub.subscribe(channel)
        started.set()
        async for message in pubsub.listen():
            if message["type"] == "message":
                return dict(json.loads(message["data"]))
    raise AssertionError("the subscription ended")


async def test_an_order_published_before_a_replica_subscribed_again_still_reaches_it(
    replicas: tuple[Replica, Replica, str], redis_url: str
) -> None:
    """Pub/sub delivers to whoever is subscribed at that instant: an order
    published while A's subscription was being made again (Redis restarted,
    its connection was cut) never reached A, and B named it unanswered after
    the route's whole timeout while A's stream went on."""
    a, b, prefix = replicas
    watcher = Redis.from_url(redis_url)
    try:
        # A is alive (its heartbeat is in) but not subscribed yet.
        await watcher.zadd(f"{prefix}replicas", {a.cluster.replica_id: time.time()})
        await b.start()
        watching = asyncio.Event()
        first = asyncio.create_task(_first_message(watcher, f"{prefix}cancel", watching))
        async with asyncio.timeout(10):
            await watching.wait()
            sending = asyncio.create_task(b.cluster.cancel_elsewhere(ORDER, 5))
            await first  # the order went out, with nobody but the watcher to hear it
        await a.start()
        result = await sending
    finally:
        await watcher.aclose()
    assert result.unanswered == []
    assert result.stopped == ["req_1"]
    assert [order for order, _ in a.asked] == [ORDER]


async def test_a_repeated_order_is_served_once_and_answered_each_time(
    replicas: tuple[Replica, Replica, str], redis_url: str
) -> None:
    """An answer can be lost as an order can; the sender then repeats the
    order. The replica stops once, and answers the repeat as it did first."""
    a, _, prefix = replicas
    await a.start()
    sender = Redis.from_url(redis_url)
    reply_to = f"{prefix}cancelled:replica_sender"
    order = {
        "id": "order_1",
        "reply_to": reply_to,
        "order": {"credential": "sha256:test", "admin": False, "request_id": "req_1"},
        "answer_within_s": 4.0,
    }
    try:
        async with sender.pubsub() as pubsub:
            await pubsub.subscribe(reply_to)
            replies = []
            for _ in range(2):
                await sender.publish(f"{prefix}cancel", json.dumps(order))
                async with asyncio.timeout(10):
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            replies.append(json.loads(message["data"]))
                            break
    finally:
        await sender.aclose()
    assert a.asked == [(ORDER, 4.0)]
    assert replies[0] == replies[1]
    assert replies[0]["replica"] == a.cluster.replica_id and replies[0]["stopped"] == ["req_1"]


async def test_a_replica_that_cannot_store_in_time_still_answers_before_the_route_gives_up(
    replicas: tuple[Replica, Replica, str],
) -> None:
    """A replica whose store hangs used to wait its own cancel_timeout_s (the
    same as the route's) before answering, so the route named it unanswered
    although it had stopped the stream. It now answers within a share of the
    time the route has left: stopped, not yet stored."""
    a, b, _ = replicas
    a.stuck = True
    await a.start()
    await b.start()
    result = await b.cluster.cancel_elsewhere(ORDER, 2)
    assert result.unanswered == []
    assert result.stopped == ["req_1"] and result.not_durable == ["req_1"]
    ((_, within_s),) = a.asked
    assert within_s is not None and 0 < within_s < 2


# JSON, but not a message of this protocol: a replica that hears one ignores
# it, and goes on hearing orders and answers.
_NOT_MESSAGES = [
    b"[1]",
    b'"x"',
    b"3",
    b"null",
    b"not json",
    b'{"id": ["o"], "reply_to": "r", "order": {}}',
    b'{"id": "o1", "reply_to": 5, "order": {"credential": "c", "admin": false}}',
    b'{"id": "o2", "reply_to": "r", "order": [1]}',
    b'{"id": "o3", "reply_to": "r", "order": {"credential": "c", "admin": "no", "request_id": "req_1"}}',
    b'{"id": "o4", "reply_to": "r", "order": {"credential": 1, "admin": false, "request_id": ["req_1"]}}',
]


async def test_a_replica_that_hears_something_else_than_an_order_still_hears_orders(
    replicas: tuple[Replica, Replica, str], redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, prefix = replicas
    await a.start()
    await b.start()
    publisher = Redis.from_url(redis_url)
    try:
        for junk in _NOT_MESSAGES:
            # On the channel every replica hears orders on, and on the one B hears its answers on.
            await publisher.publish(f"{prefix}cancel", junk)
            await publisher.publish(f"{prefix}cancelled:{b.cluster.replica_id}", junk)
    finally:
        await publisher.aclose()
    # Published after the junk: each replica hears it after the junk.
    result = await b.cluster.cancel_elsewhere(ORDER, 5)
    assert result.unanswered == [] and result.stopped == ["req_1"]
    assert [order for order, _ in a.asked] == [ORDER]  # nothing of the junk was served
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    ignored = [m for m in said if m.startswith(f"cluster: ignored a message on {prefix}cancel ")]
    assert len(ignored) == 2 * len(_NOT_MESSAGES), said  # each replica said so of each


async def test_a_replica_whose_handling_of_an_order_fails_still_hears_its_repeat(
    replicas: tuple[Replica, Replica, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, _ = replicas
    dispatch, failed = a.cluster._dispatch, []

    def fails_once(channel: bytes | str, data: bytes | str) -> None:
        if not failed:
            failed.append(data)
            raise RuntimeError("a bug of the replica's own")
        dispatch(channel, data)

    monkeypatch.setattr(a.cluster, "_dispatch", fails_once)
    await a.start()
    await b.start()
    result = await b.cluster.cancel_elsewhere(ORDER, 5)
    assert failed and result.unanswered == [] and result.stopped == ["req_1"]


class _Heard(logging.Handler):
    """Sets an event when a log line holding ``text`` is written (on the loop's thread)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


async def test_a_replica_as_silent_as_a_redis_outage_is_not_taken_for_gone_until_it_could_beat_again(
    redis_server: RedisServer,
) -> None:
    """Redis was away for longer than three beats and came back with the
    scores it saved. Every replica's score was then older than three beats
    until its next beat got through, and in that time the others marked its
    in-progress records interrupted (upkeep's sweep asks ``alive``) and sent
    it no cancels."""
    prefix = unique_key_prefix()
    b = Replica(redis_server.url, prefix)
    heard = _Heard("heartbeat failed")
    LOG.addHandler(heard)
    try:
        await b.start()
        other = "replica_other"  # the test plays it: it beat just before Redis went away
        scores = {other: time.time()}
        await b.client.zadd(f"{prefix}replicas", scores)
        redis_server.stop()
        async with asyncio.timeout(10):
            await heard.event.wait()
        await asyncio.sleep(1)  # the outage lasts 1 s, more than three beats (0.6 s)
        redis_server.start()
        await b.client.zadd(f"{prefix}replicas", scores)  # as a Redis that saved its data gives it back
        assert await b.cluster.alive(other) is True
        # Once B's beats got through for three beats, a replica silent all along is gone.
        await until(lambda: b.cluster.alive(other), lambda alive: not alive, bound_s=10)
    finally:
        LOG.removeHandler(heard)
        await b.close()


class _TurnsCancelIntoTimeout:
    """A Redis client call that ends the first cancel with an error of its own, as redis-py can."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.turned = False

    async def ping(self) -> None:
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if self.turned:
                raise
            self.turned = True
            raise TimeoutError("Timeout reading from the connection") from None


@pytest.mark.parametrize("loop", ["pings", "beats"])
async def test_a_loop_that_outlives_lost_connections_still_ends_when_cancelled(loop: str) -> None:
    # Seen in a run of the test above: the ping loop took the cancel of
    # close() for a lost connection and went on, and close() waited for ever.
    client = _TurnsCancelIntoTimeout()
    if loop == "pings":
        task = asyncio.create_task(_pings(client, 0.01))  # type: ignore[arg-type]
    else:
        task = asyncio.create_task(beat_forever(client.ping, 30, at_once=True))
    await client.entered.wait()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    if not done:  # it went on: a second cancel, which the client lets through, ends it
        task.cancel()
        await asyncio.wait([task])
    assert task in done and task.cancelled()
