"""A generation request while it runs: the one object the registry, routes, writer and cluster see.

``LiveRequest`` owns everything about a request in progress: its record, the
transcript of what its client was sent so far, how (and whether) it is being
stopped, the way to close its upstream connection, and the event that says
its final state is stored. The relay that moves its bytes holds it; it holds
nothing of the relay, so a finished request is freed by reference counting
alone, with no cycle for the garbage collector to find.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from .protocols.base import Answer, Transcript
from .records import Record

__all__ = ["LiveRequest", "StopCause"]

# Why a request was stopped: a cancel route, the client leaving, or the proxy
# shutting down (the record then ends "interrupted" rather than "stopped").
StopCause = Literal["cancel", "disconnect", "shutdown"]


@dataclass(eq=False)
class LiveRequest:
    record: Record  # what was asked; its final state once ``ended`` is set
    transcript: Transcript  # what the client was sent so far
    stop_reason: StopCause | None = None
    stop_requested_at: float | None = None  # time.monotonic()
    upstream_closed_at: float | None = None
    # Set once the outcome is known (the upstream finished or failed): from
    # then on a stop would be a lie about what happened.
    settled: bool = False
    # Set once the final state is known (the client has its end, the
    # upstream is closed): a cancel may say "cancelled" from here on.
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    # Set once the final state's write returned; ``durable`` says whether it
    # is in the store, or failed and waits for a retry (the store is down).
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    durable: bool = False
    # Bumped whenever the partial answer grows: the store writer flushes only
    # the requests whose version moved since its last batch.
    version: int = 0
    # Who follows it: its own client (until it leaves) and readers that
    # resumed it. With none left for ``grace_s``, it is stopped ("disconnect").
    grace_s: float = 0.0
    readers: int = 1
    most_readers: int = 1
    resumes: int = 0
    # Readers on other replicas (Redis): they keep it alive too.
    remote_readers: Callable[[str], Awaitable[int]] | None = None
    _close_upstream: Callable[[], object] | None = None
    _grace_timer: asyncio.TimerHandle | None = None
    _confirming: asyncio.Task[None] | None = None

    @property
    def request_id(self) -> str:
        return self.record.request_id

    @property
    def session_id(self) -> str:
        return self.record.session_id

    @property
    def credential(self) -> str:
        return self.record.credential

    def snapshot(self, answer: Answer | None = None) -> Record:
        """The record as it stands now, the partial answer included (``answer``:
        the transcript's, if the caller has just read it)."""
        record = self.record.copy()
        if record.is_final:
            return record  # the final state, answer and all
        if answer is None:
            answer = self.transcript.answer()
        record.content = answer.content
        record.reasoning_content = answer.reasoning_content
        record.tool_calls = answer.tool_calls
        record.upstream_id = answer.upstream_id
        return record

    def tokens_sent(self) -> None:
        """The client was handed more of the answer."""
        self.version += 1
        if self.record.first_token_at is None and self.transcript.tokens:
            self.record.first_token_at = time.time()

    def attach_upstream(self, close: Callable[[], object]) -> None:
        """Give the relay's way to close the upstream connection right now."""
        self._close_upstream = close
        if self.stop_reason is not None:
            self.close_upstream()

    def detach_upstream(self) -> None:
        """The way to close it is no longer valid (its await is over)."""
        self._close_upstream = None

    def close_upstream(self) -> None:
        if self._close_upstream is not None:
            close, self._close_upstream = self._close_upstream, None
            close()
            self.upstream_closed_at = time.monotonic()

    def reader_joined(self) -> None:
        """A reader resumed it: it is followed again, whatever grace was running."""
        self.readers += 1
        self.resumes += 1
        self.most_readers = max(self.most_readers, self.readers)
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None

    def reader_left(self) -> bool:
        """A reader (its own client, or a resumed one) is gone; True if the
        generation goes on (others follow, or the grace is running)."""
        self.readers -= 1
        if self.readers > 0 or self.settled or self.stop_reason is not None:
            return self.readers > 0 and not self.settled and self.stop_reason is None
        if self.grace_s <= 0:
            self.request_stop("disconnect")
            return False
        self._start_grace()
        return True

    def _start_grace(self) -> None:
        # One timer at a time: ``done`` cancels only the one it knows of, and
        # another left running would go on to stop or confirm on its own.
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        self._grace_timer = asyncio.get_running_loop().call_later(self.grace_s, self._grace_over)

    def _grace_over(self) -> None:
        self._grace_timer = None
        if self.readers > 0:
            return
        if self.remote_readers is None:
            self.request_stop("disconnect")
            return
        self._confirming = asyncio.ensure_future(self._confirm_gone(self.remote_readers))

    async def _confirm_gone(self, remote_readers: Callable[[str], Awaitable[int]]) -> None:
        """The grace ran out here: stop unless a reader on another replica follows."""
        remote = await remote_readers(self.request_id)
        if self.readers > 0 or self._grace_timer is not None:
            # A reader resumed here while Redis was asked: it keeps the
            # generation alive, or, gone again, it started a grace of its own,
            # which is to run its full length.
            return
        if remote > 0 and self.stop_reason is None and not self.settled:
            self._start_grace()
        else:
            self.request_stop("disconnect")

    def done(self) -> None:
        """It is over: no grace is left running for it."""
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        if self._confirming is not None:
            self._confirming.cancel()
            self._confirming = None

    def request_stop(self, reason: StopCause) -> bool:
        """Stop this request; False if it already ended on its own.

        Idempotent: a second stop keeps the first reason.
        """
        if self.settled and self.stop_reason is None:
            return False
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_requested_at = time.monotonic()
        self.close_upstream()
        return True
