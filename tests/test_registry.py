"""Stopping in-progress requests, with an ack only once each is final."""

from __future__ import annotations

import asyncio

from cancelproxy.live import LiveRequest
from cancelproxy.protocols.base import RequestFacts
from cancelproxy.protocols.chat import ChatTranscript
from cancelproxy.records import Record
from cancelproxy.registry import Registry


def _active(request_id: str, session_id: str = "s") -> LiveRequest:
    record = Record(
        request_id=request_id,
        session_id=session_id,
        credential="none",
        upstream="u",
        model="m",
        stream=True,
        created_at=0.0,
    )
    return LiveRequest(record, ChatTranscript(RequestFacts(request_id, "m", True)))


def test_lookup_by_request_and_session() -> None:
    registry = Registry()
    a, b, c = _active("a", "s1"), _active("b", "s1"), _active("c", "s2")
    for active in (a, b, c):
        registry.add(active)
    assert registry.get("b") is b and len(registry) == 3
    assert registry.of_session("s1") == [a, b]
    registry.remove(a)
    registry.remove(b)
    assert registry.of_session("s1") == [] and registry.get("a") is None and len(registry) == 1


def test_stop_closes_the_upstream_once_and_keeps_the_first_reason() -> None:
    closes: list[str] = []
    active = _active("a")
    active.attach_upstream(lambda: closes.append("closed"))
    assert active.request_stop("cancel")
    assert active.request_stop("disconnect")
    assert closes == ["closed"]
    assert active.stop_reason == "cancel" and active.upstream_closed_at is not None


def test_a_stop_requested_before_the_upstream_is_attached_closes_it_on_attach() -> None:
    closes: list[str] = []
    active = _active("a")
    assert active.request_stop("cancel")
    active.attach_upstream(lambda: closes.append("closed"))
    assert closes == ["closed"]


def test_a_request_that_ended_on_its_own_is_not_stopped() -> None:
    active = _active("a")
    active.settled = True
    assert not active.request_stop("cancel")
    assert active.stop_reason is None


async def test_cancel_answers_only_after_the_final_state() -> None:
    registry = Registry()
    active = _active("a")
    registry.add(active)
    order: list[str] = []

    async def relay_finishing() -> None:
        await asyncio.sleep(0)  # the relay notices the close on a later turn
        active.ended.set()
        await asyncio.sleep(0)
        order.append("final state stored")
        active.durable = True
        active.finished.set()

    finishing = asyncio.create_task(relay_finishing())
    stopped = await registry.cancel([active], "cancel", timeout=5)
    order.append("ack")
    await finishing
    assert (stopped.request_ids, stopped.not_durable) == (["a"], [])
    assert order == ["final state stored", "ack"]


async def test_cancel_leaves_out_a_request_that_does_not_finish_in_time() -> None:
    active = _active("a")
    stopped = await Registry().cancel([active], "cancel", timeout=0.01)
    assert stopped.request_ids == []
    assert active.stop_reason == "cancel"


async def test_a_stop_is_a_stop_whatever_the_store_does() -> None:
    """A final state that is known but not stored in time: "cancelled", and said not durable."""
    stuck, failed = _active("stuck"), _active("failed")
    for live in (stuck, failed):
        live.ended.set()
    failed.finished.set()  # its write returned, unsuccessfully: durable stays False
    stopped = await Registry().cancel([stuck, failed], "cancel", timeout=0.05)
    assert stopped.request_ids == ["stuck", "failed"]
    assert stopped.not_durable == ["stuck", "failed"]


async def test_the_ack_comes_the_loop_pass_after_the_final_states_are_stored() -> None:
    """On a loop busy with streams every pass is a wait for the ack: the cancel
    wakes once, in the pass after what it waits for is set, not through a task per request."""
    lives = [_active("a"), _active("b")]
    cancelling = asyncio.create_task(Registry().cancel(lives, "cancel", timeout=5))
    await asyncio.sleep(0)  # it is waiting now
    for live in lives:  # the relays have written the ends, and the writer has stored them
        live.ended.set()
        live.durable = True
        live.finished.set()
    passes = 0
    while not cancelling.done():
        await asyncio.sleep(0)
        passes += 1
    assert (await cancelling).request_ids == ["a", "b"]
    assert passes == 1
