"""``memory://``: records in this process only, gone when it exits (tests, trials)."""

from __future__ import annotations

from ..records import Record

__all__ = ["MemoryStore"]


class MemoryStore:
    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        # Dicts keep insertion order: a session's ids come oldest first.
        self._sessions: dict[str, dict[str, None]] = {}

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def save(self, record: Record) -> None:
        self._records[record.request_id] = record.copy()
        self._sessions.setdefault(record.session_id, {})[record.request_id] = None

    async def get(self, request_id: str) -> Record | None:
        record = self._records.get(request_id)
        return record.copy() if record is not None else None

    async def session(self, session_id: str) -> list[Record]:
        ids = self._sessions.get(session_id, {})
        records = [self._records[i].copy() for i in ids]
        return sorted(records, key=lambda r: r.created_at)

    async def ping(self) -> bool:
        return True
