"""In-progress generation requests of this process, and stopping them with an ack.

A cancel route calls :meth:`Registry.cancel`: it asks each matching request to
stop, which closes its upstream connection at once (the FIN leaves in the same
loop iteration), then waits until the relay has written the request's final
state to the store. Only then does the route answer, so a caller that reads
``"cancelled": true`` knows no more tokens are being generated or relayed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from .records import Record

__all__ = ["ActiveRequest", "Registry", "StopCause"]

# Why a relay was stopped: a cancel route, the client leaving, or the proxy
# shutting down (the record then ends "interrupted" rather than "stopped").
StopCause = Literal["cancel", "disconnect", "shutdown"]


@dataclass(eq=False)
class ActiveRequest:
    """A generation request while its relay runs; ``record`` is its live state."""

    record: Record
    stop_reason: StopCause | None = None
    stop_requested_at: float | None = None  # time.monotonic()
    upstream_closed_at: float | None = None
    # Set once the relay knows the outcome (the upstream finished or failed):
    # from then on a stop would be a lie about what happened.
    settled: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    # The relay's view of the record with the partial answer so far (reads).
    snapshot: Callable[[], Record] | None = None
    # Bumped whenever the partial answer grows: the store writer flushes only
    # the requests whose version moved since its last batch.
    version: int = 0
    _close_upstream: Callable[[], object] | None = None

    @property
    def request_id(self) -> str:
        return self.record.request_id

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


class Registry:
    """The in-progress requests of this process, by request id and by session."""

    def __init__(self) -> None:
        self._by_request: dict[str, ActiveRequest] = {}
        self._by_session: dict[str, dict[str, ActiveRequest]] = {}
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._by_request)

    def add(self, active: ActiveRequest) -> None:
        self._by_request[active.request_id] = active
        self._empty.clear()
        self._by_session.setdefault(active.record.session_id, {})[active.request_id] = active

    def remove(self, active: ActiveRequest) -> None:
        self._by_request.pop(active.request_id, None)
        session = self._by_session.get(active.record.session_id)
        if session is not None:
            session.pop(active.request_id, None)
            if not session:
                del self._by_session[active.record.session_id]
        if not self._by_request:
            self._empty.set()

    async def wait_empty(self, timeout: float) -> bool:
        """Wait until nothing is in progress; False if ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def get(self, request_id: str) -> ActiveRequest | None:
        return self._by_request.get(request_id)

    def of_session(self, session_id: str) -> list[ActiveRequest]:
        return list(self._by_session.get(session_id, {}).values())

    def all(self) -> list[ActiveRequest]:
        return list(self._by_request.values())

    async def cancel(self, actives: Iterable[ActiveRequest], reason: StopCause, timeout: float) -> list[str]:
        """Stop these requests and wait (bounded) until each one's final state is stored.

        Returns the ids of the requests that were stopped, not those that had
        already ended on their own. A request still settling when ``timeout``
        passes is left out: the caller must not be told it stopped.
        """
        stopping = [active for active in actives if active.request_stop(reason)]
        if not stopping:
            return []
        waits = {asyncio.ensure_future(active.finished.wait()): active for active in stopping}
        done, pending = await asyncio.wait(waits, timeout=timeout)
        for waiter in pending:
            waiter.cancel()
        return [waits[w].request_id for w in waits if w in done]
