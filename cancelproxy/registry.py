"""In-progress generation requests of this process, and stopping them with an ack.

A cancel route calls :meth:`Registry.cancel`: it asks each matching request to
stop, which closes its upstream connection at once (the FIN leaves in the same
loop iteration), then waits until the relay has written the request's final
state to the store. Only then does the route answer, so a caller that reads
``"cancelled": true`` knows no more tokens are being generated or relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .live import LiveRequest, StopCause

__all__ = ["Registry", "Stopped"]


@dataclass
class Stopped:
    """What a cancel stopped: the requests, and those whose final state is not yet in the store."""

    request_ids: list[str] = field(default_factory=list)
    not_durable: list[str] = field(default_factory=list)
    # Where the wait went (seconds): until the final states were known, then stored.
    ending_s: float = 0.0
    storing_s: float = 0.0


class Registry:
    """The in-progress requests of this process, by request id and by session."""

    def __init__(self) -> None:
        self._by_request: dict[str, LiveRequest] = {}
        self._by_session: dict[str, dict[str, LiveRequest]] = {}
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._by_request)

    def add(self, live: LiveRequest) -> None:
        self._by_request[live.request_id] = live
        self._empty.clear()
        self._by_session.setdefault(live.session_id, {})[live.request_id] = live

    def remove(self, live: LiveRequest) -> None:
        self._by_request.pop(live.request_id, None)
        session = self._by_session.get(live.session_id)
        if session is not None:
            session.pop(live.request_id, None)
            if not session:
                del self._by_session[live.session_id]
        if not self._by_request:
            self._empty.set()

    async def wait_empty(self, timeout: float) -> bool:
        """Wait until nothing is in progress; False if ``timeout`` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._empty.wait()
        except TimeoutError:
            return False
        return True

    def get(self, request_id: str) -> LiveRequest | None:
        return self._by_request.get(request_id)

    def of_session(self, session_id: str) -> list[LiveRequest]:
        return list(self._by_session.get(session_id, {}).values())

    def all(self) -> list[LiveRequest]:
        return list(self._by_request.values())

    async def cancel(self, lives: Iterable[LiveRequest], reason: StopCause, timeout: float) -> Stopped:
        """Stop these requests and wait (bounded) until each one's final state is known and stored.

        Leaves out the requests that had already ended on their own, and any
        whose final state is still not known when ``timeout`` passes: the
        caller must not be told those stopped.
        """
        return await self.until_stopped(self.stop(lives, reason), timeout)

    def stop(self, lives: Iterable[LiveRequest], reason: StopCause) -> list[LiveRequest]:
        """Stop these requests now (their upstream connections close here and
        now, before any await); those that had already ended on their own are left out."""
        return [live for live in lives if live.request_stop(reason)]

    async def until_stopped(self, stopping: list[LiveRequest], timeout: float) -> Stopped:
        """Wait (bounded) until each stopped request's final state is known and stored."""
        if not stopping:
            return Stopped()
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout
        ended = await _within(stopping, lambda live: live.ended, timeout)
        known = loop.time()
        await _within(ended, lambda live: live.finished, max(0.0, deadline - known))
        return Stopped(
            request_ids=[live.request_id for live in ended],
            not_durable=[live.request_id for live in ended if not (live.finished.is_set() and live.durable)],
            ending_s=known - started,
            storing_s=loop.time() - known,
        )


async def _within(
    lives: list[LiveRequest], event_of: Callable[[LiveRequest], asyncio.Event], timeout: float
) -> list[LiveRequest]:
    """Those of ``lives`` whose event is set within ``timeout``, in order."""
    # One event after another under one deadline: they are set independently,
    # so this ends when the last is set, as a wait for all at once would. It
    # wakes one loop pass after that, where a task per event and
    # ``asyncio.wait`` took three; on a loop busy with streams each pass is
    # what an ack waits for.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            for live in lives:
                await event_of(live).wait()  # no wait at all for one already set
    return [live for live in lives if event_of(live).is_set()]
