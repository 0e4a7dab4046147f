"""What a generation's client was sent, kept so that a reader who comes back can have the rest.

An ``EventLog`` holds a stream's bytes as they went to its client (the
upstream's events, and the proxy's own ending), and where each event ended:
a reader that already has N events resumes at the end of the N-th, in the
protocol's own bytes. Events are what an SSE client dispatches (a block with
a data field); comments such as ``: keep-alive`` are replayed where they
were, but not counted. The proxy never adds ``id:`` lines: after one,
openai-python fails on the next keep-alive comment.

Appending never waits for a reader: each reader follows at its own pace from
its own offset, woken when the log grows, so a slow one slows nobody.

Logs are bounded: one holds at most ``limits.max_body_bytes`` (past that it is
given up, and its stream cannot be resumed), all of them together at most
``resume.max_total_bytes`` (the oldest ended logs go first). An ended log is
kept ``resume.keep_s`` for a reader that comes back late, and while readers
still follow it.
"""

from __future__ import annotations

import asyncio
import bisect
from array import array
from collections import OrderedDict
from collections.abc import AsyncGenerator
from typing import Protocol

__all__ = ["EventLog", "Mirror", "Replays"]


class Mirror(Protocol):
    """Where logs are copied for readers on other replicas (``store.streams``)."""

    def publish(self, request_id: str, data: bytes, event_ends: list[int]) -> None: ...

    def end(self, request_id: str) -> None: ...

    def give_up(self, request_id: str) -> None:
        """The log outgrew its bound: what follows it was not kept."""
        ...


class EventLog:
    def __init__(
        self, request_id: str, protocol: str, *, limit: int, replays: Replays, mirror: Mirror | None = None
    ) -> None:
        self.request_id = request_id
        self.protocol = protocol
        self._limit = limit
        self._replays = replays
        self._mirror = mirror
        self._chunks: list[bytes] = []
        # Offsets as machine integers: 8 bytes each, where a list of ints costs 36.
        self._starts = array("q")  # the offset where each chunk begins
        self._ends = array("q")  # the offset just past each event
        self.size = 0
        self.closed = False  # the stream ended: nothing more will come
        self.given_up = False  # grew past its bound: it cannot be resumed
        self.readers = 0
        # Made by a reader that waits for more: appending to a log nobody
        # follows (nearly all of them) costs no event.
        self._grew: asyncio.Event | None = None

    @property
    def events(self) -> int:
        return len(self._ends)

    def append(self, data: bytes, event_ends: list[int]) -> None:
        """``data`` as the client was sent it; ``event_ends`` where events end in it
        (an event of no bytes, one the client never got, is not counted)."""
        if self.closed or self.given_up or not data:
            return
        if self.size + len(data) > self._limit or not self._replays.reserve(self, len(data)):
            self._give_up()
            return
        base, last = self.size, self._ends[-1] if self._ends else -1
        self._starts.append(base)
        self._chunks.append(data)
        counted = []
        for end in event_ends:
            if base + end > last:
                last = base + end
                self._ends.append(last)
                counted.append(end)
        self.size += len(data)
        self._wake()
        if self._mirror is not None:
            self._mirror.publish(self.request_id, data, counted)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if len(self._chunks) > 1:
                # Nothing more comes: one piece of bytes holds it with no
                # per-chunk overhead while it is kept for late readers.
                self._chunks, self._starts = [b"".join(self._chunks)], array("q", [0])
            self._wake()
            self._replays.ended(self)
            if self._mirror is not None:
                self._mirror.end(self.request_id)

    def _give_up(self) -> None:
        self.given_up = True
        if self._mirror is not None:
            self._mirror.give_up(self.request_id)
        self._replays.release(self)
        self._chunks, self._starts, self._ends = [], array("q"), array("q")
        self._wake()

    def _wake(self) -> None:
        if self._grew is not None:
            self._grew.set()
            self._grew = None

    def _waiting(self) -> asyncio.Event:
        if self._grew is None:
            self._grew = asyncio.Event()
        return self._grew

    def _read(self, offset: int) -> bytes:
        """Every byte from ``offset`` on, as far as the log goes now."""
        if offset >= self.size:
            return b""
        first = bisect.bisect_right(self._starts, offset) - 1
        head = self._chunks[first][offset - self._starts[first] :]
        return b"".join([head, *self._chunks[first + 1 :]]) if first + 1 < len(self._chunks) else head

    async def follow(self, after: int) -> AsyncGenerator[bytes, None]:
        """The stream from the end of its ``after``-th event: what was sent, then
        what comes, until it ends. Stops early if the log is given up."""
        self.readers += 1
        try:
            while self.events < after and not self.closed and not self.given_up:
                await self._waiting().wait()  # the reader is ahead of the log (it got them elsewhere)
            if self.given_up:
                return  # what the reader lacks is not kept (and the offsets went with it)
            # A log that ended short of ``after`` (perhaps with no event at
            # all) resumes past its last event: the reader has every one.
            have = min(after, self.events)
            offset = self._ends[have - 1] if have > 0 else 0
            while not self.given_up:
                grew = self._waiting()
                data = self._read(offset)
                if data:
                    offset += len(data)
                    yield data
                elif self.closed:
                    return
                else:
                    await grew.wait()
        finally:
            self.readers -= 1
            self._replays.reader_left(self)


class Replays:
    """Every request's ``EventLog`` of this process, within one memory budget."""

    def __init__(self, *, max_total_bytes: int, keep_s: float, mirror: Mirror | None = None) -> None:
        self._max_total = max_total_bytes
        self._keep_s = keep_s
        self._mirror = mirror
        self._logs: dict[str, EventLog] = {}
        # Ended logs in the order they ended: the first to go when space runs out.
        self._ended: OrderedDict[str, float] = OrderedDict()
        self.total_bytes = 0

    def open(self, request_id: str, protocol: str, *, limit: int) -> EventLog:
        log = EventLog(request_id, protocol, limit=limit, replays=self, mirror=self._mirror)
        self._logs[request_id] = log
        return log

    def get(self, request_id: str) -> EventLog | None:
        return self._logs.get(request_id)

    def __len__(self) -> int:
        return len(self._logs)

    def reserve(self, log: EventLog, nbytes: int) -> bool:
        """Room for ``nbytes`` more; ended logs nobody reads are dropped to make it."""
        while self.total_bytes + nbytes > self._max_total and self._drop_oldest_ended():
            pass
        if self.total_bytes + nbytes > self._max_total:
            return False
        self.total_bytes += nbytes
        return True

    def release(self, log: EventLog) -> None:
        self.total_bytes -= log.size

    def ended(self, log: EventLog) -> None:
        loop = asyncio.get_running_loop()
        self._ended[log.request_id] = loop.time() + self._keep_s
        loop.call_later(self._keep_s, self._expire, log.request_id)

    def reader_left(self, log: EventLog) -> None:
        if log.closed and log.readers == 0:
            self._expire(log.request_id)

    def _expire(self, request_id: str) -> None:
        log = self._logs.get(request_id)
        until = self._ended.get(request_id)
        if log is None or until is None or log.readers > 0:
            return  # still followed: the last reader to leave frees it
        if asyncio.get_running_loop().time() < until:
            return  # kept a while for a reader that comes back late
        self._remove(log)

    def _drop_oldest_ended(self) -> bool:
        for request_id in self._ended:
            log = self._logs[request_id]
            if log.readers == 0:
                self._remove(log)
                return True
        return False

    def _remove(self, log: EventLog) -> None:
        self._logs.pop(log.request_id, None)
        self._ended.pop(log.request_id, None)
        if not log.given_up:
            self.release(log)
