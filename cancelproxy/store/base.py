"""What every store backend provides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..records import Record

__all__ = ["Store"]


class Store(Protocol):
    """Records by request id and by session.

    ``save_many`` upserts snapshots (the caller keeps mutating its own
    records) in one transaction or pipeline, and the write is durable when it
    returns: a cancel is acknowledged right after a final state is saved.
    Backends raise on failure; the caller (``store.writer``) retries and logs.
    """

    async def open(self) -> None:
        """Connect, and create or migrate the schema."""
        ...

    async def close(self) -> None: ...

    async def save_many(self, records: Sequence[Record]) -> None: ...

    async def get(self, request_id: str) -> Record | None: ...

    async def session(self, session_id: str) -> list[Record]:
        """The session's records, oldest first."""
        ...

    async def in_progress(self) -> list[Record]:
        """Every record whose status is ``in_progress`` (for recovery sweeps)."""
        ...

    async def prune(self, ended_before: float) -> int:
        """Delete records that ended before this time (epoch seconds); how many."""
        ...

    async def ping(self) -> bool:
        """Whether the backend is reachable (``/readyz``)."""
        ...
