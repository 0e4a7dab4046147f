"""A timeout for a whole exchange that moves with every step, for the price of a float.

An exchange has a deadline per step: the provider's answer (first-byte
timeout), each upstream read (idle timeout), each client write, its ending's
included (write timeout). ``asyncio.timeout`` makes a timer for each, and its
``reschedule`` cancels and makes one again, two per relayed chunk.
``Deadline`` keeps one timer for all of them, and moving the deadline only
stores a number: the timer wakes at most ``span`` seconds apart (the
shortest of the timeouts), looks at the deadline as it is then, and sleeps
again or expires. Expiry is exact; a quiet exchange costs one wake-up per
``span``.

Each ``async with`` guards one step, and the timer outlives it for the next:
an exchange shorter than ``span`` makes one timer in all. ``close()`` drops
it once the exchange is over. Moving the deadline inside a step is exact
for a deadline ``span`` or more away (every timeout is, ``span`` being the
shortest); a step may begin with any deadline, and ``sooner()`` brings it
nearer inside one (a stop's short bound), waking the timer in time for it.

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
        self._task: asyncio.Task[object] | None = None  # the task of the step it guards, if any
        self._handle: asyncio.TimerHandle | None = None

    def within(self, seconds: float) -> Deadline:
        """This deadline, moved to ``seconds`` from now: ``async with deadline.within(s):``."""
        self.when = self._loop.time() + seconds
        return self

    def sooner(self, seconds: float) -> None:
        """At most ``seconds`` from now, never later than it was: exact inside a
        step too. Between steps it does nothing: the next one sets its own."""
        if self._task is None:
            return  # nor does it arm a timer for every exchange that ends
        when = self._loop.time() + seconds
        if when >= self.when:
            return
        self.when = when
        handle = self._handle
        # The pending wake-up may be up to ``span`` away; without one, no step
        # is being guarded (the next one arms it) or it already expired.
        if handle is not None and handle.when() > when:
            handle.cancel()
            self._arm(self._loop.time())

    async def __aenter__(self) -> Deadline:
        self.expired = False
        self._task = asyncio.current_task()
        handle = self._handle
        if handle is None or handle.when() > self.when:
            # No timer, or an earlier step's that wakes too late for this
            # deadline (the rest of a budget can be shorter than ``span``).
            if handle is not None:
                handle.cancel()
            self._arm(self._loop.time())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        task, self._task = self._task, None
        if self.expired and kind is asyncio.CancelledError and task is not None and task.uncancel() == 0:
            raise TimeoutError from error

    def close(self) -> None:
        """The exchange is over: no step is left to guard."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, now: float) -> None:
        self._handle = self._loop.call_at(min(self.when, now + self._span), self._check)

    def _check(self) -> None:
        self._handle = None
        if self._task is None:
            return  # between two steps: the next one arms it again
        now = self._loop.time()
        if now < self.when:
            self._arm(now)
            return
        self.expired = True
        self._task.cancel()
