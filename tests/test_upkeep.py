"""Orphaned in-progress records become interrupted; old records are pruned."""

from __future__ import annotations

import logging
import time

from cancelproxy.cluster import LocalCluster
from cancelproxy.config import StoreConfig
from cancelproxy.records import Record, Usage
from cancelproxy.store import MemoryStore
from cancelproxy.store.writer import StoreWriter
from cancelproxy.upkeep import Upkeep

LOG = logging.getLogger("test")


def _record(request_id: str, holder: str | None, status: str = "in_progress", ended_at: float | None = None) -> Record:
    record = Record(
        request_id=request_id,
        session_id="s",
        credential="none",
        upstream="u",
        model="m",
        stream=True,
        created_at=0.0,
        holder=holder,
        content="w0 w1 w2 w3 ",
    )
    record.status = status  # type: ignore[assignment]
    record.ended_at = ended_at
    return record


def _upkeep(store: MemoryStore, cluster: LocalCluster, retention_s: float | None = 3600) -> Upkeep:
    writer = StoreWriter(store, flush_interval_s=3600, log=LOG)
    return Upkeep(store, writer, cluster, StoreConfig(retention_s=retention_s), LOG, sweep=False)


async def test_records_of_gone_replicas_are_interrupted_with_their_partial() -> None:
    store, cluster = MemoryStore(), LocalCluster()
    await store.save_many(
        [_record("earlier-process", "replica_dead"), _record("no-holder", None), _record("mine", cluster.replica_id)]
    )
    assert await _upkeep(store, cluster).interrupt_orphans() == 2
    for request_id in ("earlier-process", "no-holder"):
        record = await store.get(request_id)
        assert record is not None
        assert (record.status, record.content, record.error["code"]) == ("interrupted", "w0 w1 w2 w3 ", "interrupted")  # type: ignore[index]
        assert record.usage == Usage(prompt_tokens=0, completion_tokens=3, total_tokens=3, estimated=True)
        assert record.ended_at is not None
    assert (await store.get("mine")).status == "in_progress"  # type: ignore[union-attr]


async def test_prune_removes_only_what_ended_before_the_retention() -> None:
    store, cluster = MemoryStore(), LocalCluster()
    now = time.time()
    await store.save_many(
        [
            _record("old", None, "completed", ended_at=now - 7200),
            _record("recent", None, "completed", ended_at=now - 60),
            _record("running", cluster.replica_id),
        ]
    )
    assert await _upkeep(store, cluster).prune() == 1
    assert await store.get("old") is None
    assert await store.get("recent") is not None and await store.get("running") is not None
    assert await _upkeep(store, cluster, retention_s=None).prune() == 0
