"""The store writer: batched partials, group-committed finals, nothing lost to an outage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

from cancelproxy.records import Record
from cancelproxy.store import MemoryStore
from cancelproxy.store.writer import StoreWriter


class CountingStore(MemoryStore):
    """A memory store that counts transactions and can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.down = False
        self.delays: list[float] = []  # per call, in order: how long the write takes
        # Per call, in order: the write stays under way until its gate is set.
        self.gates: list[asyncio.Event] = []
        self.calls = 0
        self.called = asyncio.Event()  # set whenever a write starts
        self.history: list[tuple[str, str, str]] = []  # (request_id, status, content) as committed

    async def save_many(self, records: Sequence[Record]) -> None:
        # A real backend yields while it writes; some writes are slower. Whether
        # it fails is decided when the write starts.
        failing = self.down
        # Serialised before the first yield, as the real backends do.
        states = [(r.request_id, r.status, r.content) for r in records]
        self.calls += 1
        self.called.set()
        gate = self.gates.pop(0) if self.gates else None
        await asyncio.sleep(self.delays.pop(0) if self.delays else 0)
        if gate is not None:
            await gate.wait()
        if failing:
            raise ConnectionError("store is down")
        self.batches.append([r.request_id for r in records])
        self.history += states
        await super().save_many(records)

    async def until_called(self, calls: int) -> None:
        """Until ``calls`` writes have started (each under way, or done)."""
        while self.calls < calls:
            self.called.clear()
            await self.called.wait()


def _record(request_id: str, status: str = "in_progress", content: str = "") -> Record:
    record = Record(
        request_id=request_id, session_id="s", credential="none", upstream="u", model="m", stream=True, created_at=0.0
    )
    record.status = status  # type: ignore[assignment]
    record.content = content
    return record


@dataclass
class Tracked:
    """A request in progress as the writer sees it: an id, a version, a snapshot."""

    request_id: str
    read: Callable[[], Record]
    read_version: Callable[[], int]

    @property
    def version(self) -> int:
        return self.read_version()

    def snapshot(self) -> Record:
        return self.read()


def _track(writer: StoreWriter, request_id: str, snapshot: Callable[[], Record], version: Callable[[], int]) -> None:
    writer.track(Tracked(request_id, snapshot, version))


def _writer(store: CountingStore) -> StoreWriter:
    return StoreWriter(store, flush_interval_s=3600, log=logging.getLogger("test"))


async def test_partials_of_all_streams_go_in_one_transaction_and_only_when_changed() -> None:
    store = CountingStore()
    writer = _writer(store)
    versions = {f"r{i}": 0 for i in range(50)}
    for request_id in versions:
        _track(
            writer,
            request_id,
            lambda rid=request_id: _record(rid, content=f"v{versions[rid]}"),
            lambda rid=request_id: versions[rid],
        )
    await writer.flush()
    assert len(store.batches) == 1 and len(store.batches[0]) == 50
    versions["r7"] += 1
    await writer.flush()
    await writer.flush()  # nothing moved since
    assert store.batches[1:] == [["r7"]]
    assert (await store.get("r7")).content == "v1"  # type: ignore[union-attr]


async def test_finals_arriving_together_are_committed_together() -> None:
    store = CountingStore()
    writer = _writer(store)
    results = await asyncio.gather(*(writer.save_final(_record(f"r{i}", "completed")) for i in range(100)))
    assert all(results)
    assert sum(len(b) for b in store.batches) == 100
    assert len(store.batches) <= 3, [len(b) for b in store.batches]
    assert writer.transactions == len(store.batches)


async def test_a_store_outage_loses_nothing_and_is_retried() -> None:
    store = CountingStore()
    writer = _writer(store)
    store.down = True
    assert await writer.save_final(_record("a", "stopped", "w0 w1 ")) is False
    assert writer.healthy is False and await store.get("a") is None
    store.down = False
    await writer.flush()
    stored = await store.get("a")
    assert stored is not None and (stored.status, stored.content) == ("stopped", "w0 w1 ")
    assert writer.healthy is True


async def test_a_final_state_is_never_overwritten_by_an_older_partial() -> None:
    store = CountingStore()
    writer = _writer(store)
    _track(writer, "a", lambda: _record("a", content="partial"), lambda: 1)
    store.delays = [0.05, 0.0]  # the batch of partials is slow, the final quick
    flushing = asyncio.create_task(writer.flush())
    await asyncio.sleep(0)  # one loop step: the flush takes its snapshot and starts writing
    await writer.save_final(_record("a", "completed", "whole answer"))
    await flushing
    stored = await store.get("a")
    assert stored is not None and (stored.status, stored.content) == ("completed", "whole answer")


async def test_close_writes_what_is_left() -> None:
    store = CountingStore()
    writer = _writer(store)
    await writer.start()
    _track(writer, "a", lambda: _record("a", content="so far"), lambda: 3)
    await writer.close()
    assert (await store.get("a")).content == "so far"  # type: ignore[union-attr]


async def test_a_failed_partial_of_a_request_that_has_ended_is_not_retried_over_its_final() -> None:
    store = CountingStore()
    writer = _writer(store)
    _track(writer, "a", lambda: _record("a", content="partial"), lambda: 1)
    store.down = True
    store.delays = [0.05]  # the batch of partials is under way, and fails
    flushing = asyncio.create_task(writer.flush())
    await asyncio.sleep(0)  # one loop step: the flush takes its snapshot and starts writing
    finishing = asyncio.create_task(writer.save_final(_record("a", "stopped", "partial")))
    await asyncio.sleep(0)
    store.down = False  # back before the final is written
    await flushing
    assert await finishing is True
    await writer.flush()  # the retry of what failed
    stored = await store.get("a")
    assert stored is not None and stored.status == "stopped"


async def test_a_final_nobody_waits_for_rides_the_next_batch() -> None:
    store = CountingStore()
    writer = _writer(store)
    saving = asyncio.create_task(writer.save_final(_record("a", "completed", "done"), at_once=False))
    await asyncio.sleep(0)
    assert store.batches == [] and not saving.done()  # no transaction of its own
    _track(writer, "b", lambda: _record("b", content="so far"), lambda: 1)
    await writer.flush()
    assert await saving is True
    assert store.batches == [["b", "a"]] or store.batches == [["a", "b"]]


# ---- save_start: a request's first state, durable before its answer ------------


class Live:
    """A running request as the relay holds it: a record that grows, and a version."""

    def __init__(self, request_id: str) -> None:
        self.record = _record(request_id)
        self.version = 0

    def grow(self, text: str) -> None:
        self.record.content += text
        self.version += 1

    @property
    def request_id(self) -> str:
        return self.record.request_id

    def snapshot(self) -> Record:
        return self.record.copy()

    def start(self, writer: StoreWriter) -> asyncio.Future[bool]:
        return writer.save_start(self)

    def final(self, status: str = "completed") -> Record:
        return _record(self.record.request_id, status, self.record.content)


async def _stored(store: CountingStore, request_id: str) -> tuple[str, str]:
    record = await store.get(request_id)
    assert record is not None, f"{request_id} is not in the store"
    return record.status, record.content


async def test_a_start_is_in_the_store_when_its_write_says_durable() -> None:
    store = CountingStore()
    writer = _writer(store)
    live = Live("a")
    assert await live.start(writer) is True
    assert await _stored(store, "a") == ("in_progress", "")
    await writer.flush()  # nothing moved since: no second write
    assert store.batches == [["a"]] and writer.transactions == 1
    live.grow("w0 ")
    await writer.flush()  # and it is tracked: its partials follow
    assert await _stored(store, "a") == ("in_progress", "w0 ")


async def test_300_starts_while_a_write_is_under_way_are_one_more_transaction() -> None:
    store = CountingStore()
    writer = _writer(store)
    under_way = asyncio.Event()
    store.gates = [under_way]
    lives = [Live(f"r{i}") for i in range(300)]
    first = lives[0].start(writer)
    await store.until_called(1)  # its write is under way...
    rest = [live.start(writer) for live in lives[1:]]  # ...while the others arrive
    under_way.set()
    assert all(await asyncio.gather(first, *rest))
    assert [len(batch) for batch in store.batches] == [1, 299]
    assert writer.transactions == 2


async def test_300_starts_arriving_together_are_one_transaction() -> None:
    store = CountingStore()
    writer = _writer(store)
    assert all(await asyncio.gather(*(Live(f"r{i}").start(writer) for i in range(300))))
    assert [len(batch) for batch in store.batches] == [300]


async def test_starts_and_finals_arriving_during_a_write_go_together() -> None:
    store = CountingStore()
    writer = _writer(store)
    under_way = asyncio.Event()
    store.gates = [under_way]
    first = Live("first").start(writer)
    await store.until_called(1)
    starts = [Live(f"s{i}").start(writer) for i in range(3)]
    finals = [asyncio.ensure_future(writer.save_final(_record(f"f{i}", "stopped"))) for i in range(3)]
    lazy = asyncio.ensure_future(writer.save_final(_record("lazy", "completed"), at_once=False))
    await asyncio.sleep(0)  # the finals are queued
    under_way.set()
    assert all(await asyncio.gather(first, *starts, *finals, lazy))
    assert store.batches[0] == ["first"]
    assert sorted(store.batches[1]) == ["f0", "f1", "f2", "lazy", "s0", "s1", "s2"]
    assert len(store.batches) == 2


async def test_a_failed_start_is_written_by_the_next_flush_with_its_newest_partial() -> None:
    store = CountingStore()
    writer = _writer(store)
    live = Live("a")
    store.down = True
    assert await live.start(writer) is False
    assert writer.healthy is False and await store.get("a") is None
    live.grow("w0 w1 ")
    store.down = False
    await writer.flush()
    assert await _stored(store, "a") == ("in_progress", "w0 w1 ")
    assert writer.healthy is True


async def test_a_caller_may_stop_waiting_for_a_start_and_the_write_goes_on() -> None:
    store = CountingStore()
    writer = _writer(store)
    stuck = asyncio.Event()  # a store that does not answer
    store.gates = [stuck]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(Live("a").start(writer), timeout=0.05)
    also_waiting = asyncio.ensure_future(writer.save_final(_record("b", "completed")))
    stuck.set()  # it answers after all
    assert await also_waiting is True
    await writer.close()
    assert await _stored(store, "a") == ("in_progress", "")


async def test_a_final_arriving_while_its_start_is_queued_is_written_instead() -> None:
    store = CountingStore()
    writer = _writer(store)
    under_way = asyncio.Event()
    store.gates = [under_way]
    other = Live("other").start(writer)
    await store.until_called(1)
    live = Live("a")
    started = live.start(writer)
    live.grow("whole answer")
    finishing = asyncio.ensure_future(writer.save_final(live.final()))
    await asyncio.sleep(0)
    under_way.set()
    assert await other and await started and await finishing
    assert store.history[1:] == [("a", "completed", "whole answer")]  # one write of it: the final state


@pytest.mark.parametrize("failing", ["start", "partial", "both", "none"])
async def test_a_final_state_is_never_overwritten_by_its_start_or_partials(failing: str) -> None:
    store = CountingStore()
    writer = _writer(store)
    gates = [asyncio.Event(), asyncio.Event()]
    store.gates = list(gates)  # the start's write, then the partials' batch: each held under way
    live = Live("a")
    store.down = failing in ("start", "both")  # decided as each write starts
    started = live.start(writer)
    await store.until_called(1)
    store.down = failing in ("partial", "both")
    live.grow("w0 ")
    flushing = asyncio.ensure_future(writer.flush())
    await asyncio.sleep(0)  # the flush took "w0 " and waits behind the start
    live.grow("w1 ")
    gates[0].set()
    await store.until_called(2)  # the partials' batch is under way
    store.down = False
    finishing = asyncio.ensure_future(writer.save_final(live.final("stopped")))  # queued behind it
    await asyncio.sleep(0)
    gates[1].set()
    assert await started is (failing not in ("start", "both"))
    await flushing
    assert await finishing is True
    await writer.flush()  # the retries of whatever failed: none may land now
    await writer.flush()
    assert await _stored(store, "a") == ("stopped", "w0 w1 ")
    assert store.history[-1] == ("a", "stopped", "w0 w1 ")


async def test_the_states_of_a_request_reach_the_store_in_order() -> None:
    store = CountingStore()
    writer = _writer(store)
    store.delays = [0.01, 0.0, 0.02, 0.0, 0.01]  # some writes slower than others
    live = Live("a")
    waits: list[asyncio.Future[bool]] = [live.start(writer)]
    for word in ("w0 ", "w1 ", "w2 "):
        live.grow(word)
        waits.append(asyncio.ensure_future(writer.flush()))
        await asyncio.sleep(0)
    waits.append(asyncio.ensure_future(writer.save_final(live.final())))
    await asyncio.gather(*waits)
    contents = [content for _, _, content in store.history]
    assert contents == sorted(contents, key=len)  # never an older state after a newer one
    assert store.history[-1] == ("a", "completed", "w0 w1 w2 ")


# ---- unwritten: the final states the store does not have yet --------------------


async def test_a_final_state_is_unwritten_until_durable() -> None:
    store = CountingStore()
    writer = _writer(store)
    saving = asyncio.ensure_future(writer.save_final(_record("a", "completed", "done"), at_once=False))
    await asyncio.sleep(0)
    queued = writer.unwritten("a")
    assert queued is not None and (queued.status, queued.content) == ("completed", "done")
    assert [r.request_id for r in writer.unwritten_in_session("s")] == ["a"]
    under_way = asyncio.Event()
    store.gates = [under_way]
    flushing = asyncio.ensure_future(writer.flush())
    await store.until_called(1)
    assert writer.unwritten("a") is not None  # being written is not written
    under_way.set()
    await flushing
    assert await saving is True
    assert writer.unwritten("a") is None and writer.unwritten_in_session("s") == []
    assert writer.unwritten("never-seen") is None


async def test_a_failed_final_state_is_unwritten_until_a_retry_lands() -> None:
    store = CountingStore()
    writer = _writer(store)
    store.down = True
    assert await writer.save_final(_record("a", "stopped", "w0 ")) is False
    held = writer.unwritten("a")
    assert held is not None and held.status == "stopped"
    held.content = "changed by a reader"  # a copy: the writer's own is untouched
    await writer.flush()  # still down
    assert writer.unwritten("a").content == "w0 "  # type: ignore[union-attr]
    store.down = False
    await writer.flush()
    assert writer.unwritten("a") is None
    assert await _stored(store, "a") == ("stopped", "w0 ")


async def test_an_older_final_landing_does_not_hide_a_newer_one() -> None:
    store = CountingStore()
    writer = _writer(store)
    gates = [asyncio.Event(), asyncio.Event()]
    store.gates = list(gates)
    first = asyncio.ensure_future(writer.save_final(_record("a", "stopped", "w0 ")))
    await store.until_called(1)
    second = asyncio.ensure_future(writer.save_final(_record("a", "interrupted", "w0 ")))
    await asyncio.sleep(0)
    gates[0].set()
    await first
    assert writer.unwritten("a").status == "interrupted"  # type: ignore[union-attr]
    gates[1].set()
    await second
    assert writer.unwritten("a") is None
    assert await _stored(store, "a") == ("interrupted", "w0 ")


async def test_a_final_state_dropped_past_max_pending_is_no_longer_unwritten() -> None:
    store = CountingStore()
    writer = StoreWriter(store, flush_interval_s=3600, log=logging.getLogger("test"), max_pending=2)
    store.down = True
    for i in range(3):
        await writer.save_final(_record(f"r{i}", "completed"))
    assert writer.unwritten("r0") is None  # the oldest went
    assert writer.unwritten("r1") is not None and writer.unwritten("r2") is not None


async def test_a_partial_that_cannot_be_taken_holds_up_no_other_and_the_flushes_go_on() -> None:
    store = CountingStore()
    writer = StoreWriter(store, flush_interval_s=0.01, log=logging.getLogger("test"))
    versions = {"broken": 0, "fine": 0}

    def broken() -> Record:
        raise RecursionError("a bug reading the answer back")

    writer.track(Tracked("broken", broken, lambda: versions["broken"]))
    writer.track(Tracked("fine", lambda: _record("fine", content=f"v{versions['fine']}"), lambda: versions["fine"]))
    await writer.start()
    try:
        async with asyncio.timeout(10):  # a flusher that died never writes again
            for version in range(1, 4):
                versions["broken"] = versions["fine"] = version
                calls = store.calls
                await store.until_called(calls + 1)
                while len(store.history) < version:  # the write just started lands
                    await asyncio.sleep(0)
    finally:
        await writer.close()
    assert [content for request_id, _, content in store.history if request_id == "fine"][:3] == ["v1", "v2", "v3"]
    assert "broken" not in {request_id for request_id, _, _ in store.history}


# ---- close: nothing queued is lost when the writer stops -------------------------


async def test_close_keeps_a_retried_final_the_flusher_was_writing() -> None:
    # At shutdown the flusher may be in the middle of retrying a final state
    # that failed before: stopped there, it would take that state with it.
    store = CountingStore()
    writer = StoreWriter(store, flush_interval_s=0.01, log=logging.getLogger("test"))
    store.down = True
    assert await writer.save_final(_record("a", "stopped", "w0 ")) is False
    store.down = False
    under_way = asyncio.Event()
    store.gates = [under_way]
    await writer.start()
    async with asyncio.timeout(10):
        await store.until_called(2)  # the flusher's retry is under way
    closing = asyncio.ensure_future(writer.close())
    await asyncio.sleep(0)  # close has begun
    under_way.set()
    await closing
    assert await _stored(store, "a") == ("stopped", "w0 ")
    assert writer.unwritten("a") is None


async def test_close_waits_for_a_final_queued_after_it_began() -> None:
    store = CountingStore()
    writer = _writer(store)
    gates = [asyncio.Event(), asyncio.Event()]
    store.gates = list(gates)  # close's own flush, then the late final's commit
    _track(writer, "a", lambda: _record("a", content="so far"), lambda: 1)
    closing = asyncio.ensure_future(writer.close())
    await store.until_called(1)
    late = writer.queue_final(_record("b", "interrupted"))  # a relay ending as shutdown stops it
    gates[0].set()
    await store.until_called(2)
    gates[1].set()
    await closing
    assert late.done() and late.result() is True
    assert await _stored(store, "b") == ("interrupted", "")


async def test_a_flush_cancelled_in_the_middle_of_its_write_keeps_its_batch() -> None:
    store = CountingStore()
    writer = _writer(store)
    store.down = True
    assert await writer.save_final(_record("a", "stopped", "w0 ")) is False
    store.down = False
    store.gates = [asyncio.Event()]  # a write that does not end by itself
    flushing = asyncio.ensure_future(writer.flush())
    await store.until_called(2)
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert writer.unwritten("a") is not None
    await writer.flush()
    assert await _stored(store, "a") == ("stopped", "w0 ")


@pytest.mark.parametrize("taken_by", ["commit", "flush"])
async def test_a_start_that_cannot_be_taken_holds_up_no_other_urgent_write(taken_by: str) -> None:
    store = CountingStore()
    writer = _writer(store)

    def broken() -> Record:
        raise ValueError("a bug reading the answer back")

    started = writer.save_start(Tracked("broken", broken, lambda: 1))
    # Queued together with the start: the commit it started takes both, or a
    # flush that comes first does.
    finishing = writer.queue_final(_record("b", "stopped", "w0 "), at_once=taken_by == "commit")
    if taken_by == "flush":
        await writer.flush()
    async with asyncio.timeout(10):
        assert await finishing is True
        assert await started is False  # never written: not durable
    assert await _stored(store, "b") == ("stopped", "w0 ")
    assert writer.unwritten("b") is None
