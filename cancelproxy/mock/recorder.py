"""What the provider saw: the generations it ran and the aborts it was sent.

Records are plain dicts: they are served as JSON as-is (``/_mock/requests``,
``/_mock/aborts``), and tests long-poll them instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from aiohttp import web

from .plan import Json, Plan

__all__ = ["AbortLog", "AbortOutcome", "Recorder", "State"]

State = Literal["running", "completed", "failed", "closed_by_client", "aborted"]
# stopped: a running generation was ended; not_running: it had ended already;
# not_found: no generation has that id; hung / failed: its on_abort knob said so.
AbortOutcome = Literal["stopped", "not_running", "not_found", "hung", "failed"]

_T = TypeVar("_T")


class _Changes:
    """Wakes every waiter on each change: a Condition without a lock, so that
    ``notify()`` stays synchronous (callable inside ``except CancelledError``)."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def until(self, found: Callable[[], _T | None], timeout: float) -> _T | None:
        try:
            async with asyncio.timeout(timeout):
                while (value := found()) is None:
                    await self._changed.wait()
                return value
        except TimeoutError:
            return None


def _peer_port(request: web.Request) -> int | None:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return peer[1] if peer else None


class Recorder:
    """The generations, in arrival order."""

    def __init__(self) -> None:
        self.records: list[Json] = []
        self._seq = 0
        self._changes = _Changes()

    def add(self, request: web.Request, plan: Plan, body: Json, upstream_id: Callable[[str], str]) -> Json:
        # seq never restarts, even after a clear: default tags stay unique.
        self._seq += 1
        tag = plan.tag or f"req-{self._seq}"
        record: Json = {
            "tag": tag,
            "seq": self._seq,
            "protocol": plan.protocol,
            "id": upstream_id(tag),  # what the engine calls it: the id in its answer
            "stream": plan.stream,
            "model": plan.model,
            "state": "running",
            "tokens_sent": 0,
            "started_at": time.monotonic(),
            "ended_at": None,
            "last_token_at": None,
            # When the client's connection closed; with ignore_close the
            # generation goes on after it, so this and ended_at differ.
            "client_closed_at": None,
            # peer_port lets a test find this connection in the kernel's socket tables.
            "peer_port": _peer_port(request),
            "headers": dict(request.headers),
            "body": body,
        }
        self.records.append(record)
        self._changes.notify()
        return record

    def finish(self, record: Json, state: State) -> None:
        # The first ending wins: the cancellation that follows our own abort()
        # must not turn "failed" into "closed_by_client".
        if record["state"] == "running":
            record["state"] = state
            record["ended_at"] = time.monotonic()
            self._changes.notify()

    def client_closed(self, record: Json) -> None:
        if record["client_closed_at"] is None:
            record["client_closed_at"] = time.monotonic()
            self._changes.notify()

    def latest(self, tag: str, until: str = "started") -> Json | None:
        """The newest record tagged ``tag`` once it has ``until``: started, ended, or
        closed (its client's connection; a generation with ignore_close goes on)."""
        record = next((r for r in reversed(self.records) if r["tag"] == tag), None)
        if record is None or (until == "ended" and record["state"] == "running"):
            return None
        if until == "closed" and record["client_closed_at"] is None:
            return None
        return record

    async def wait(self, tag: str, until: str, timeout: float) -> Json | None:
        return await self._changes.until(lambda: self.latest(tag, until), timeout)

    def clear(self) -> None:
        self.records.clear()


class AbortLog:
    """The aborts the engine endpoints were sent, in arrival order."""

    def __init__(self) -> None:
        self.aborts: list[Json] = []
        self._seq = 0
        self._changes = _Changes()

    def add(self, request: web.Request, kind: str, rid: Any, body: Any, record: Json | None) -> Json:
        self._seq += 1
        entry: Json = {
            "seq": self._seq,
            "kind": kind,  # "sglang" (POST /abort_request) or "llamacpp" (DELETE /v1/stream/{id})
            "rid": rid,
            "tag": record["tag"] if record else None,
            "outcome": None,  # set by resolve() once the abort has been acted on
            "at": time.monotonic(),
            "method": request.method,
            "path": request.path,
            "headers": dict(request.headers),
            "body": body,
        }
        self.aborts.append(entry)
        return entry

    def resolve(self, entry: Json, outcome: AbortOutcome) -> None:
        entry["outcome"] = outcome
        self._changes.notify()

    def matching(self, tag: str | None) -> list[Json]:
        resolved = (a for a in self.aborts if a["outcome"] is not None)
        return [a for a in resolved if tag is None or a["tag"] == tag]

    async def wait(self, tag: str | None, count: int, timeout: float) -> list[Json] | None:
        def enough() -> list[Json] | None:
            found = self.matching(tag)
            return found if len(found) >= count else None

        return await self._changes.until(enough, timeout)

    def clear(self) -> None:
        self.aborts.clear()
