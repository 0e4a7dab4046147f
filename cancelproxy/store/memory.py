"""``memory://``: records in this process only, gone when it exits (tests, trials)."""

from __future__ import annotations

from collections.abc import Sequence

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

    async def save_many(self, records: Sequence[Record]) -> None:
        for record in records:
            self._records[record.request_id] = record.copy()
            self._sessions.setdefault(record.session_id, {})[record.request_id] = None

    async def get(self, request_id: str) -> Record | None:
        record = self._records.get(request_id)
        return record.copy() if record is not None else None

    async def session(self, session_id: str) -> list[Record]:
        ids = self._sessions.get(session_id, {})
        return sorted((self._records[i].copy() for i in ids), key=lambda r: r.created_at)

    async def in_progress(self) -> list[Record]:
        return [r.copy() for r in self._records.values() if r.status == "in_progress"]

    async def prune(self, ended_before: float) -> int:
        old = [r for r in self._records.values() if r.ended_at is not None and r.ended_at < ended_before]
        for record in old:
            del self._records[record.request_id]
            session = self._sessions.get(record.session_id, {})
            session.pop(record.request_id, None)
            if not session:
                self._sessions.pop(record.session_id, None)
        return len(old)

    async def ping(self) -> bool:
        return True
