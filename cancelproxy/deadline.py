"""A timeout for a whole stream that moves with every chunk, for the price of a float.

A stream has a deadline per step: the first byte, each upstream read (idle
timeout), each client write (write timeout). ``asyncio.timeout``'s
``reschedule`` cancels and makes a timer each time, two per relayed chunk.
``Deadline`` keeps one timer, and moving the deadline only stores a number:
the timer wakes at most ``span`` seconds apart (the shortest of the timeouts),
looks at the deadline as it is then, and sleeps again or expires. Expiry is
exact; an idle stream costs one wake-up per ``span``.

Like ``asyncio.timeout``, it expires by cancelling the task inside it and
turns that cancellation into ``TimeoutError`` when it leaves, unless another
cancellation (the client leaving, shutdown) is pending too.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["Deadline"]


class Deadline:
    __slots__ = ("_handle", "_loop", "_span", "_task", "expired", "when")

    def __init__(self, when: float, *, span: float) -> None:
        self.when = when  # loop time; move it freely
        self.expired = False
        self._span = span
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> Deadline:
        self._task = asyncio.current_task()
        self._arm(self._loop.time())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> bool:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        task, self._task = self._task, None
        if self.expired and kind is asyncio.CancelledError and task is not None and task.uncancel() == 0:
            raise TimeoutError from error
        return False

    def _arm(self, now: float) -> None:
        self._handle = self._loop.call_at(min(self.when, now + self._span), self._check)

    def _check(self) -> None:
        now = self._loop.time()
        if now < self.when:
            self._arm(now)
            return
        self._handle = None
        if self._task is not None:
            self.expired = True
            self._task.cancel()
