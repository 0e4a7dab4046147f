"""Background upkeep of the store: orphaned requests and retention.

- A request left ``in_progress`` by a proxy that is gone (killed, crashed, or a
  Redis replica whose heartbeat stopped) is marked ``interrupted``, keeping the
  partial answer last flushed. At start this finds what an earlier process of
  this proxy left behind; with Redis it also runs every few heartbeats.
- Records that ended longer ago than ``store.retention`` are deleted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from .cluster import Cluster
from .config import StoreConfig
from .records import Record, Usage
from .store import Store
from .store.writer import StoreWriter
from .tasks import cancel_and_wait

__all__ = ["Upkeep", "interrupted"]


def interrupted(record: Record, now: float) -> Record:
    """The final state of a request whose proxy stopped while it ran."""
    record = record.copy()
    record.status = "interrupted"
    record.ended_at = now
    record.error = {"message": "the proxy stopped while this request was in progress", "code": "interrupted"}
    if record.usage is None:
        # Only the flushed text is known here, not the deltas: ~4 characters a token.
        completion = math.ceil(len(record.content + record.reasoning_content) / 4)
        record.usage = Usage.estimate(0, completion)
    return record


class Upkeep:
    def __init__(
        self,
        store: Store,
        writer: StoreWriter,
        cluster: Cluster,
        config: StoreConfig,
        log: logging.Logger,
        *,
        sweep: bool,
    ) -> None:
        self._store = store
        self._writer = writer
        self._cluster = cluster
        self._config = config
        self._log = log
        self._sweep = sweep  # other replicas may die while we run (Redis)
        self._task: asyncio.Task[None] | None = None

    async def interrupt_orphans(self) -> int:
        """Mark the in-progress records of replicas that are gone; how many."""
        now = time.time()
        orphans = [
            interrupted(record, now)
            for record in await self._store.in_progress()
            if record.holder is None or not await self._cluster.alive(record.holder)
        ]
        for record in orphans:
            await self._writer.save_final(record)
        if orphans:
            self._log.warning("store: marked %d requests interrupted (their proxy stopped)", len(orphans))
        return len(orphans)

    async def prune(self) -> int:
        if self._config.retention_s is None:
            return 0
        removed = await self._store.prune(time.time() - self._config.retention_s)
        if removed:
            self._log.info("store: pruned %d records older than the retention", removed)
        return removed

    async def start(self) -> None:
        try:
            await self.interrupt_orphans()
        except Exception as exc:
            self._log.error("store: could not look for interrupted requests: %s", exc)
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _run(self) -> None:
        sweep_every = self._config.heartbeat_s * 3
        prune_every = min(self._config.retention_s / 10, 3600.0) if self._config.retention_s else math.inf
        next_prune = time.monotonic()
        while True:
            await asyncio.sleep(min(sweep_every, max(prune_every, 1.0)))
            try:
                if self._sweep:
                    await self.interrupt_orphans()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + prune_every
                    await self.prune()
            except Exception as exc:  # a store outage: try again next round
                self._log.warning("store: upkeep failed, will retry: %s", exc)
