"""Stopping a background task without eating the caller's own cancel.

The usual ``task.cancel()`` then ``with suppress(CancelledError): await task``
cannot tell the task's ``CancelledError`` from the caller's: if the caller is
cancelled while it waits (a shutdown given up on, a ``close()`` under a
timeout), the suppress swallows that cancel too and the caller runs on as if
nothing had been asked of it.
"""

from __future__ import annotations

import asyncio


async def cancel_and_wait(task: asyncio.Task[object]) -> None:
    """Cancel ``task`` and wait until it has ended.

    The task's own cancel is taken here. A cancel of the caller while it waits
    is raised to the caller, as for any other await (the task, cancelled
    already, then ends without it). A cancel the caller is already handling,
    as in a ``finally`` run because it was cancelled, is not raised again, so
    the rest of that clean-up runs. An exception the task ended with instead
    (it had failed before, or failed while ending) is raised too: it is the
    caller's to log or to let through.
    """
    task.cancel()
    # asyncio.wait raises only the caller's own cancel, never the task's, and
    # leaves the task's outcome to be read here.
    await asyncio.wait([task])
    if not task.cancelled():
        task.result()
