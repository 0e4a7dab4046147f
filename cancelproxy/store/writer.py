"""Batched, failure-tolerant writes in front of any store backend.

- A new request's first state is written at once (``save_start``): it is in
  the store before the first byte of its answer is sent, so a crash never
  loses a request whose answer a user began to see.
- In-progress records (their partial answers) are not written per token: every
  ``flush_interval_ms`` the partials of all streams that changed are written
  together, in one transaction.
- A final state someone waits for (a cancel's ack, shutdown) is written at
  once (``save_final``, ``at_once``): a cancel is acknowledged only after it
  returns, and it returns only once the write is durable — or has failed, in
  which case the record is kept and retried with the next flush. Every other
  final state rides the next batch, which spares its request a transaction
  (an fsync, with SQLite) of its own.
- Starts and final states that arrive while a write is under way go together
  in the next transaction (group commit): 300 requests starting, or 300
  cancels, at once are a few transactions, not 300 fsyncs in a queue.
- A store that is down never fails or blocks a client: writes that fail are
  kept (up to ``max_pending``), retried on every flush, and the loss beyond
  that is logged. Whoever waits for a write can bound the wait; the write goes
  on without them.
- A final state the store does not have yet (queued, being written, or
  failed) is ``unwritten``: reads answer it rather than the older state the
  store still holds.

Order: one write at a time, in the order the batches were taken, and a batch
holds one state per request, the newest. A request's states therefore reach
the store in the order they were taken, and a partial can never land after
its final state: ``save_final`` stops the tracking, and a failed partial of a
request that has ended is dropped, not retried (``_keep``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
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


@dataclass(eq=False)
class _Urgent:
    """A write someone waits for: a request's start, or a final state."""

    # None for a start: the request's snapshot is taken when its batch is, so
    # the newest state goes (it cannot be older than what was there at start).
    final: Record | None
    waiters: list[asyncio.Future[bool]] = field(default_factory=list)


def _resolve(waiters: Iterable[asyncio.Future[bool]], written: bool) -> None:
    for waiter in waiters:
        if not waiter.done():  # a caller that stopped waiting cancelled its own
            waiter.set_result(written)


class StoreWriter:
    def __init__(
        self, store: Store, *, flush_interval_s: float, log: logging.Logger, max_pending: int = 100_000
    ) -> None:
        self.store = store
        self._interval = flush_interval_s
        self._log = log
        self._max_pending = max_pending
        self._tracked: dict[str, _Tracked] = {}
        # Final states whose write failed, newest per request id, to retry.
        self._pending: dict[str, Record] = {}
        # Every final state not yet durable (queued, being written, failed):
        # what reads answer until the store has it.
        self._unwritten: dict[str, Record] = {}
        self._flusher: asyncio.Task[None] | None = None
        # Ends the flusher between two flushes: a write under way when close
        # begins is let end, not cut off with the retries it had taken.
        self._closing = asyncio.Event()
        # One write at a time, in order: a batch of partials taken before a
        # final state must not commit after it (Redis pipelines on pooled
        # connections, unlike one SQLite connection, would not keep the order).
        # asyncio.Lock wakes its waiters first come, first served.
        self._in_order = asyncio.Lock()
        # Starts and finals to write at once, by request id, in arrival order.
        self._urgent: dict[str, _Urgent] = {}
        self._committing: asyncio.Task[None] | None = None
        self.healthy = True
        self.transactions = 0  # write transactions committed (batching shows here)

    async def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_every_interval())

    async def close(self) -> None:
        """Stop flushing, then write what is left (one last attempt)."""
        self._closing.set()
        try:
            if self._flusher is not None:
                await self._flusher
            # A final state queued meanwhile (a relay ending as shutdown stops
            # it) starts a commit of its own: close ends once none is left.
            while True:
                if self._committing is not None:
                    await self._committing
                await self.flush()
                if not self._urgent and (self._committing is None or self._committing.done()):
                    break
        finally:
            if self._pending:
                self._log.error("store: %d record states could not be written before exit", len(self._pending))

    def track(self, request: Trackable) -> None:
        """Flush this in-progress request's snapshot whenever its version moved
        (first with the next batch; ``save_start`` writes it at once)."""
        self._tracked[request.request_id] = _Tracked(request)

    def save_start(self, request: Trackable) -> asyncio.Future[bool]:
        """Track a new request, as ``track`` does, and write its state at once.

        The write is group-committed with the other starts and final states
        that arrive while a write is under way. The future is True once the
        state is durable, False if the store failed: the request is then
        written by the next flush that succeeds (its newest partial by then).
        Cancelling the future (``asyncio.wait_for``, ``asyncio.timeout``) only
        stops waiting: the write goes on. Call it once per request, before its
        ``save_final``.
        """
        self.track(request)
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._urgent.setdefault(request.request_id, _Urgent(final=None)).waiters.append(waiter)
        self._commit_soon()
        return waiter

    async def save_final(self, record: Record, *, at_once: bool = True) -> bool:
        """Write a final state; return once it is durable (False: the store
        failed, and it will be retried).

        ``at_once`` when someone waits on it (a cancel's ack, shutdown);
        otherwise it goes with the next batch, which spares a request its own
        transaction (an fsync, with SQLite). Until it is durable,
        ``unwritten`` answers it.
        """
        return await self.queue_final(record, at_once=at_once)

    def queue_final(self, record: Record, *, at_once: bool = True) -> asyncio.Future[bool]:
        """``save_final`` without waiting: the future is its outcome. Nobody
        needs a task of their own to see a final state written."""
        request_id = record.request_id
        self._tracked.pop(request_id, None)
        self._pending.pop(request_id, None)
        self._unwritten[request_id] = record
        written: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        # A start still queued goes as this final state, which is newer; its
        # waiters learn when that is durable.
        queued = self._urgent.pop(request_id, None)
        self._urgent[request_id] = _Urgent(final=record, waiters=[*(queued.waiters if queued else []), written])
        if at_once:
            self._commit_soon()
        return written

    def unwritten(self, request_id: str) -> Record | None:
        """The final state of this request that the store may not have yet
        (queued, being written, or failed and kept), if there is one."""
        record = self._unwritten.get(request_id)
        return record.copy() if record is not None else None

    def unwritten_in_session(self, session_id: str) -> list[Record]:
        """``unwritten`` for every request of a session that has such a state."""
        return [r.copy() for r in self._unwritten.values() if r.session_id == session_id]

    def _commit_soon(self) -> None:
        if self._committing is None or self._committing.done():
            self._committing = asyncio.create_task(self._commit_urgent())

    async def _commit_urgent(self) -> None:
        while self._urgent:
            batch, self._urgent = self._urgent, {}
            written = False
            try:
                written = await self._write(self._add_urgent({}, batch))
            finally:  # whatever happened: nobody waits for ever
                _resolve((w for entry in batch.values() for w in entry.waiters), written)

    def _take(self, tracked: _Tracked) -> Record | None:
        """The request's snapshot, or None if it could not be taken: a bug
        reading one answer back must not hold up every other request's write
        (nor the final states in its batch). This one is left as stored."""
        try:
            tracked.flushed_version = tracked.request.version
            return tracked.request.snapshot()
        except Exception:
            self._log.exception("store: could not take the partial answer of %s", tracked.request.request_id)
            return None

    def _add_urgent(self, batch: dict[str, Record], urgent: dict[str, _Urgent]) -> dict[str, Record]:
        for request_id, entry in urgent.items():
            if entry.final is not None:
                batch[request_id] = entry.final
            elif request_id not in batch and (tracked := self._tracked.get(request_id)) is not None:
                if (record := self._take(tracked)) is not None:
                    batch[request_id] = record
                else:
                    _resolve(entry.waiters, False)  # not in the store: not durable
        return batch

    async def flush(self) -> None:
        """Write the changed partials, the starts and final states waiting for
        a batch and everything that failed before, together."""
        # Oldest first, so that the newest state of a request wins: what
        # failed before, then the partials now, then what is queued (a final
        # state is newer than any partial; a start is taken as a partial).
        batch = dict(self._pending)
        for request_id, tracked in self._tracked.items():
            if tracked.request.version != tracked.flushed_version and (record := self._take(tracked)) is not None:
                batch[request_id] = record
        urgent, self._urgent = self._urgent, {}
        written = False
        try:
            self._add_urgent(batch, urgent)
            if not batch and not urgent:
                return
            self._pending.clear()
            written = await self._write(batch)
        finally:  # whatever happened: nobody waits for ever
            _resolve((w for entry in urgent.values() for w in entry.waiters), written)

    async def _write(self, batch: dict[str, Record]) -> bool:
        records = list(batch.values())
        if not records:
            return True
        try:
            async with self._in_order:
                await self.store.save_many(records)
        except Exception as exc:  # any backend failure: keep the data, say so, go on
            self._keep(records)
            if self.healthy:
                self._log.error("store: write failed, will retry: %s", exc)
            self.healthy = False
            return False
        except BaseException:
            # Stopped in the middle (its caller was cancelled): the store may
            # not have it, and this batch may hold the only copy of a retry.
            self._keep(records)
            raise
        self.transactions += 1
        for record in records:
            # Only this very state: a newer final may have come meanwhile.
            if self._unwritten.get(record.request_id) is record:
                del self._unwritten[record.request_id]
        if not self.healthy:
            self._log.info("store: writes succeed again")
        self.healthy = True
        return True

    def _keep(self, records: list[Record]) -> None:
        for record in records:
            tracked = self._tracked.get(record.request_id)
            if tracked is not None:
                tracked.flushed_version = -1  # a live request: the next flush re-reads it
            elif self._unwritten.get(record.request_id) is record:
                self._pending[record.request_id] = record
            # else: the partial of a request that has ended since, or a final
            # state a newer one replaced; that one has a write of its own and
            # must not be overwritten by this.
        while len(self._pending) > self._max_pending:
            lost = self._pending.pop(next(iter(self._pending)))
            self._unwritten.pop(lost.request_id, None)
            self._log.error("store: dropped the unwritten state of %s (%s)", lost.request_id, lost.status)

    async def _flush_every_interval(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._closing.wait()
            if self._closing.is_set():
                return
            try:
                await self.flush()
            except Exception:  # whatever it was, the next interval flushes again: this task must not end
                self._log.exception("store: a flush failed")
