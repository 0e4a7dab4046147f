"""cancel_and_wait: the task's cancel is taken, the caller's is not."""

from __future__ import annotations

import asyncio

import pytest

from cancelproxy.tasks import cancel_and_wait


class SlowToEnd:
    """A task that, once cancelled, waits for ``may_end`` before it ends: the window
    in which the caller of ``cancel_and_wait`` can itself be cancelled."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.may_end = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            self.cancelled.set()
            # Bounded, so that a failed test's clean-up does not wait for ever.
            async with asyncio.timeout(10):
                await self.may_end.wait()


async def fails_on_cancel() -> None:
    try:
        await asyncio.Event().wait()
    finally:
        raise ValueError("failed while ending")


async def test_the_tasks_own_cancel_is_taken() -> None:
    task = asyncio.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)  # let it start
    await cancel_and_wait(task)
    assert task.cancelled()


async def test_a_task_that_had_already_ended_is_waited_for_without_error() -> None:
    task = asyncio.create_task(asyncio.sleep(0))
    await task
    await cancel_and_wait(task)
    assert task.done() and not task.cancelled()


async def test_a_cancel_of_the_caller_while_it_waits_reaches_the_caller() -> None:
    slow = SlowToEnd()
    await asyncio.sleep(0)
    caller = asyncio.create_task(cancel_and_wait(slow.task))
    await slow.cancelled.wait()
    caller.cancel()
    slow.may_end.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert caller.cancelled()


async def test_a_timeout_around_the_wait_still_fires() -> None:
    slow = SlowToEnd()
    await asyncio.sleep(0)
    timeouts: list[asyncio.Timeout] = []

    async def close_within_a_timeout() -> None:
        async with asyncio.timeout(None) as timeout:
            timeouts.append(timeout)
            await cancel_and_wait(slow.task)

    closing = asyncio.create_task(close_within_a_timeout())
    await slow.cancelled.wait()
    timeouts[0].reschedule(asyncio.get_running_loop().time())  # the deadline passes while it waits
    slow.may_end.set()
    with pytest.raises(TimeoutError):
        await closing


async def test_an_exception_the_task_ended_with_is_raised() -> None:
    task = asyncio.create_task(fails_on_cancel())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="failed while ending"):
        await cancel_and_wait(task)


async def test_a_clean_up_in_finally_runs_on_after_waiting() -> None:
    """A task cancelled while it runs stops its helper in ``finally`` and then
    does the rest of its clean-up: the cancel it is handling is not raised again."""
    cleaned_up = asyncio.Event()
    started = asyncio.Event()

    async def with_a_helper() -> None:
        helper = asyncio.create_task(asyncio.Event().wait())
        try:
            started.set()
            await asyncio.Event().wait()
        finally:
            await cancel_and_wait(helper)
            cleaned_up.set()

    owner = asyncio.create_task(with_a_helper())
    await started.wait()
    owner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await owner
    assert cleaned_up.is_set()


async def test_several_tasks_are_cancelled_together_and_a_failure_is_raised_after_all_ended() -> None:
    first, second = SlowToEnd(), SlowToEnd()
    await asyncio.sleep(0)

    failing = asyncio.create_task(fails_on_cancel())
    await asyncio.sleep(0)
    closing = asyncio.create_task(cancel_and_wait(first.task, failing, second.task))
    # Both slow tasks got their cancel before either was allowed to end (one
    # after the other, the second would wait for ever for the first).
    async with asyncio.timeout(10):
        await first.cancelled.wait()
        await second.cancelled.wait()
    first.may_end.set()
    second.may_end.set()
    with pytest.raises(ValueError, match="failed while ending"):
        await closing
    assert first.task.cancelled() and second.task.cancelled()


async def test_no_tasks_is_nothing_to_wait_for() -> None:
    await cancel_and_wait()
