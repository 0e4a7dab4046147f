"""Stopping a background task without eating the caller's own cancel.

The usual ``task.cancel()`` then ``with suppress(CancelledError): await task``
cannot tell the task's ``CancelledError`` from the caller's: if the caller is
cancelled while it waits (a shutdown given up on, a ``close()`` under a
timeout), the suppress swallows that cancel too and the caller runs on as if
nothing had been asked of it.
"""

from __future__ import annotations

import asyncio


async def cancel_and_wait(*tasks: asyncio.Task[object]) -> None:
    """Cancel ``tasks`` and wait until each has ended.

    Their own cancels are taken here. A cancel of the caller while it waits is
    raised to the caller, as for any other await (the tasks, cancelled already,
    then end without it). A cancel the caller is already handling, as in a
    ``finally`` run because it was cancelled, is not raised again, so the rest
    of that clean-up runs. An exception a task ended with instead (it had
    failed before, or failed while ending) is raised once all have ended: it
    is the caller's to log or to let through.
    """
    if not tasks:
        return
    for task in tasks:  # all at once: they end side by side, not one after another
        task.cancel()
    # asyncio.wait raises only the caller's own cancel, never a task's, and
    # leaves each task's outcome to be read here.
    await asyncio.wait(tasks)
    # Every outcome read, so none is logged as "never retrieved".
    failures = [error for task in tasks if not task.cancelled() and (error := task.exception()) is not None]
    if failures:
        raise failures[0]
