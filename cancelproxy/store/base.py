"""What every store backend provides."""

from __future__ import annotations

from typing import Protocol

from ..records import Record

__all__ = ["Store"]


class Store(Protocol):
    """Records by request id and by session.

    ``save`` stores a snapshot: the caller may keep mutating its own record.
    A backend must make a saved final state durable before ``save`` returns,
    because a cancel is acknowledged right after it.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def save(self, record: Record) -> None: ...

    async def get(self, request_id: str) -> Record | None: ...

    async def session(self, session_id: str) -> list[Record]:
        """The session's records, oldest first."""
        ...

    async def ping(self) -> bool:
        """Whether the backend is reachable (``/readyz``)."""
        ...
