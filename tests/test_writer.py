"""The store writer: batched partials, group-committed finals, nothing lost to an outage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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

    async def save_many(self, records: Sequence[Record]) -> None:
        # A real backend yields while it writes; some writes are slower. Whether
        # it fails is decided when the write starts.
        failing = self.down
        await asyncio.sleep(self.delays.pop(0) if self.delays else 0)
        if failing:
            raise ConnectionError("store is down")
        self.batches.append([r.request_id for r in records])
        await super().save_many(records)


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
