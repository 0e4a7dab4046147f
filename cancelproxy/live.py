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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from .protocols.base import Transcript
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
    _close_upstream: Callable[[], object] | None = None

    @property
    def request_id(self) -> str:
        return self.record.request_id

    @property
    def session_id(self) -> str:
        return self.record.session_id

    @property
    def credential(self) -> str:
        return self.record.credential

    def snapshot(self) -> Record:
        """The record as it stands now, the partial answer included."""
        record = self.record.copy()
        if record.is_final:
            return record  # the final state, answer and all
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

    def close_upstream(self) -> None:
        if self._close_upstream is not None:
            close, self._close_upstream = self._close_upstream, None
            close()
            self.upstream_closed_at = time.monotonic()

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
