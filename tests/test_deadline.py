"""The stream's one deadline: moved by a number, exact when it expires, and not a swallower of cancellations."""

from __future__ import annotations

import asyncio

import pytest

from cancelproxy.deadline import Deadline


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
