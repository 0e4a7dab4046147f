"""The exchange's one deadline: moved by a number, exact when it expires, one timer for all
its steps, and not a swallower of cancellations."""

from __future__ import annotations

import asyncio

import pytest

from cancelproxy.deadline import Deadline


def _count_timers(loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The times of the timers the loop is asked for from now on."""
    timers: list[float] = []
    call_at = loop.call_at

    def counted(when: float, *args: object) -> asyncio.TimerHandle:
        timers.append(when)
        return call_at(when, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "call_at", counted)
    return timers


async def test_it_expires_as_a_timeout_error_at_its_deadline() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with Deadline(started + 0.05, span=0.02):
            await asyncio.Event().wait()
    assert 0.05 <= loop.time() - started < 1.0


async def test_moving_it_keeps_the_work_alive() -> None:
    loop = asyncio.get_running_loop()
    async with Deadline(loop.time() + 0.05, span=0.02) as deadline:
        for _ in range(10):
            await asyncio.sleep(0.02)  # each step well within the deadline, all of them well past it
            deadline.when = loop.time() + 0.05
    assert not deadline.expired


async def test_a_shorter_deadline_set_after_a_longer_one_still_fires_on_time() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with Deadline(loop.time() + 60, span=0.05) as deadline:
            deadline.when = loop.time() + 0.1
            started = loop.time()
            await asyncio.Event().wait()
    assert 0.1 <= loop.time() - started < 1.0


async def test_another_cancellation_is_not_taken_for_a_timeout() -> None:
    async def wait_inside() -> None:
        async with Deadline(asyncio.get_running_loop().time() + 0.01, span=0.01):
            await asyncio.Event().wait()

    task = asyncio.create_task(wait_inside())
    await asyncio.sleep(0)
    task.cancel()  # the client left, before the deadline
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_its_steps_share_one_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    # A request's steps (the provider's answer, the stream, the ending) are
    # guarded by one deadline: a timer each was ~5 µs of every request.
    loop = asyncio.get_running_loop()
    timers = _count_timers(loop, monkeypatch)
    deadline = Deadline(loop.time() + 60, span=30)
    for seconds in (60, 45, 30):
        async with deadline.within(seconds):
            await asyncio.sleep(0)
    deadline.close()
    assert len(timers) == 1


async def test_a_step_that_begins_with_a_nearer_deadline_still_ends_on_time() -> None:
    # An earlier step's timer wakes up to ``span`` later: the rest of a
    # first-byte budget can be nearer than that.
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop.time() + 60, span=30)
    async with deadline:
        pass
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with deadline.within(0.05):
            await asyncio.Event().wait()
    assert 0.05 <= loop.time() - started < 1.0
    deadline.close()


async def test_between_steps_nothing_is_cancelled() -> None:
    # The timer outlives a step; past the deadline with no step guarded, the
    # task is doing something else (answering its client), not timing out.
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop.time() + 0.02, span=0.01)
    async with deadline:
        pass
    await asyncio.sleep(0.1)  # well past the deadline, outside any step: the work under test
    assert not deadline.expired
    deadline.close()


async def test_a_nearer_deadline_set_inside_a_step_fires_on_time() -> None:
    # A stop cuts a blocked client write short: the timer was armed up to
    # ``span`` later than the new deadline, and must not wake that late.
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop.time() + 60, span=30)
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(10):  # only so that a late timer fails the bound below, not the run
            async with deadline:
                loop.call_soon(deadline.sooner, 0.05)  # from outside, as a cancel route does
                await asyncio.Event().wait()
    assert deadline.expired
    assert 0.05 <= loop.time() - started < 1.0
    deadline.close()


async def test_a_sooner_deadline_never_moves_it_later() -> None:
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop.time() + 0.05, span=0.05)
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(10):
            async with deadline:
                deadline.sooner(60)
                await asyncio.Event().wait()
    assert deadline.expired and loop.time() - started < 1.0
    deadline.close()


async def test_between_steps_a_sooner_deadline_arms_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every relay calls it as it ends, between its steps: a timer re-armed
    # there would be one more timer for every request.
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop.time() + 300, span=30)
    async with deadline:
        pass
    timers = _count_timers(loop, monkeypatch)
    deadline.sooner(2.5)
    assert timers == []
    deadline.close()
