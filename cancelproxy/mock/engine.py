"""The generations in progress, by the ids an inference engine would know them by.

Some engines keep generating after their client has gone (SGLang's zombie
requests; llama.cpp on purpose when asked to): only an explicit abort stops
them. With ``ignore_close`` the mock behaves so, and this is where such
generations live on, owned by the app, until they end or are aborted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from .plan import Json, Plan
from .recorder import Recorder

__all__ = ["Engine", "Running"]


@dataclass(eq=False)
class Running:
    """One generation the engine could still be asked to stop."""

    record: Json
    plan: Plan
    ids: tuple[str, ...]  # the upstream id, and the conversation id when the client sent one
    transport: asyncio.BaseTransport | None  # the client's connection
    zombie: asyncio.Task[None] | None = field(default=None)


class Engine:
    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self._by_id: dict[str, Running] = {}
        self._zombies: set[asyncio.Task[None]] = set()

    def start(self, record: Json, plan: Plan, transport: asyncio.BaseTransport | None, *ids: str) -> Running:
        running = Running(record, plan, ids, transport)
        for rid in ids:
            self._by_id[rid] = running  # a reused tag names its newest generation
        return running

    def end(self, running: Running) -> None:
        for rid in running.ids:
            if self._by_id.get(rid) is running:
                del self._by_id[rid]

    def find(self, rid: str) -> Running | None:
        return self._by_id.get(rid)

    def keep_generating(self, running: Running, generating: Coroutine[Any, Any, None]) -> None:
        """Go on without the client, as a task the app owns (and cancels on shutdown)."""
        running.transport = None
        running.zombie = zombie = asyncio.get_running_loop().create_task(generating)
        self._zombies.add(zombie)

        def ended(_: asyncio.Task[None]) -> None:
            self._zombies.discard(zombie)
            self.end(running)

        zombie.add_done_callback(ended)

    def stop(self, running: Running) -> None:
        """An abort: end the generation, and the client's stream if it is still connected."""
        self._recorder.finish(running.record, "aborted")
        if running.zombie is not None:
            running.zombie.cancel()
        elif running.transport is not None:
            # Still connected: the engine drops the stream. Our handler then sees the
            # close like any other, and the record keeps the "aborted" it got first.
            running.transport.close()
        self.end(running)

    async def close(self) -> None:
        zombies = list(self._zombies)
        for task in zombies:
            task.cancel()
        await asyncio.gather(*zombies, return_exceptions=True)
