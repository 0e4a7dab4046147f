"""Batched, failure-tolerant writes in front of any store backend.

- In-progress records (their partial answers) are not written per token: every
  ``flush_interval_ms`` the partials of all streams that changed are written
  together, in one transaction.
- A final state is written at once (``save_final``): a cancel is acknowledged
  only after it returns, and it returns only once the write is durable — or
  has failed, in which case the record is kept and retried with the next flush.
  Final states that arrive while a write is under way go together in the next
  transaction (group commit): 300 cancels at once are a few transactions,
  not 300 fsyncs in a queue.
- A store that is down never fails a client: writes that fail are kept (up to
  ``max_pending``), retried on every flush, and the loss beyond that is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Protocol

from ..records import Record
from .base import Store

__all__ = ["StoreWriter", "Trackable"]


class Trackable(Protocol):
    """A request in progress, as the writer sees it (``live.LiveRequest``)."""

    @property
    def request_id(self) -> str: ...

    @property
    def version(self) -> int:
        """Moves whenever the partial answer grew."""
        ...

    def snapshot(self) -> Record: ...


@dataclass(eq=False)
class _Tracked:
    request: Trackable
    flushed_version: int = -1


class StoreWriter:
    def __init__(
        self, store: Store, *, flush_interval_s: float, log: logging.Logger, max_pending: int = 100_000
    ) -> None:
        self.store = store
        self._interval = flush_interval_s
        self._log = log
        self._max_pending = max_pending
        self._tracked: dict[str, _Tracked] = {}
        # Records whose write failed, newest state per request id, to retry.
        self._pending: dict[str, Record] = {}
        self._flusher: asyncio.Task[None] | None = None
        # One write at a time, in order: a batch of partials taken before a
        # final state must not commit after it (Redis pipelines on pooled
        # connections, unlike one SQLite connection, would not keep the order).
        self._in_order = asyncio.Lock()
        self._finals: list[tuple[Record, asyncio.Future[bool]]] = []
        self._committing: asyncio.Task[None] | None = None
        self.healthy = True
        self.transactions = 0  # write transactions committed (batching shows here)

    async def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_every_interval())

    async def close(self) -> None:
        """Stop flushing, then write what is left (one last attempt)."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._committing is not None:
            await self._committing
        await self.flush()
        if self._pending:
            self._log.error("store: %d record states could not be written before exit", len(self._pending))

    def track(self, request: Trackable) -> None:
        """Flush this in-progress request's snapshot whenever its version moved."""
        self._tracked[request.request_id] = _Tracked(request)

    async def save_final(self, record: Record, *, at_once: bool = True) -> bool:
        """Write a final state; return once it is durable (False: the store
        failed, and it will be retried).

        ``at_once`` when someone waits on it (a cancel's ack, shutdown);
        otherwise it goes with the next batch, which spares a request its own
        transaction (an fsync, with SQLite).
        """
        self._tracked.pop(record.request_id, None)
        self._pending.pop(record.request_id, None)
        written: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._finals.append((record, written))
        if at_once and (self._committing is None or self._committing.done()):
            self._committing = asyncio.create_task(self._commit_finals())
        return await asyncio.shield(written)

    async def _commit_finals(self) -> None:
        while self._finals:
            batch, self._finals = self._finals, []
            ok = await self._write([record for record, _ in batch])
            for _, written in batch:
                written.set_result(ok)

    async def flush(self) -> None:
        """Write the changed partials, the final states waiting for a batch and
        everything that failed before, together."""
        batch = dict(self._pending)
        for request_id, tracked in self._tracked.items():
            version = tracked.request.version
            if version != tracked.flushed_version:
                tracked.flushed_version = version
                batch[request_id] = tracked.request.snapshot()
        finals, self._finals = self._finals, []
        batch.update((record.request_id, record) for record, _ in finals)
        if not batch:
            return
        self._pending.clear()
        written = await self._write(list(batch.values()))
        for _, future in finals:
            future.set_result(written)

    async def _write(self, records: list[Record]) -> bool:
        try:
            async with self._in_order:
                await self.store.save_many(records)
        except Exception as exc:  # any backend failure: keep the data, say so, go on
            self._keep(records)
            if self.healthy:
                self._log.error("store: write failed, will retry: %s", exc)
            self.healthy = False
            return False
        self.transactions += 1
        if not self.healthy:
            self._log.info("store: writes succeed again")
        self.healthy = True
        return True

    def _keep(self, records: list[Record]) -> None:
        for record in records:
            tracked = self._tracked.get(record.request_id)
            if tracked is not None:
                tracked.flushed_version = -1  # a live request: the next flush re-reads it
            elif record.status != "in_progress":
                self._pending[record.request_id] = record
            # else: the partial of a request that has ended since; its final
            # state has a write of its own and must not be overwritten by this.
        while len(self._pending) > self._max_pending:
            lost = self._pending.pop(next(iter(self._pending)))
            self._log.error("store: dropped the unwritten state of %s (%s)", lost.request_id, lost.status)

    async def _flush_every_interval(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()
