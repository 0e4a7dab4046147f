"""What every store backend provides, and the one error they raise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..records import Record

__all__ = ["Store", "StoreError"]


class StoreError(Exception):
    """A backend could not do what was asked (down, refusing, or no longer
    the file it opened).

    Its message is fit for a log line and an error answer: it names what
    failed, never a record's data. That is why backends raise this instead of
    their drivers' errors, some of which quote the command they ran (and so
    a stored answer).
    """


class Store(Protocol):
    """Records by request id and by session.

    - ``save_many`` upserts snapshots (the caller keeps mutating its own
      records: they are serialised before it first yields) in one transaction
      or pipeline, in the order given, so the last state of a request in a
      batch is the one kept. The write is durable when it returns, which is
      what a cancel's acknowledgement and a request's first byte wait for: a
      backend that cannot promise it (its file was deleted under it) raises
      instead.
    - Every method raises ``StoreError`` on failure (``open`` may also raise
      the backend's own errors for a configuration that can never work). A
      backend retries nothing but a command whose connection broke (Redis:
      once, at once, on a new connection, whether it broke idle in the pool
      or under the command, as when the kernel gives up on a vanished host; a
      timeout is not retried); ``store.writer`` keeps failed writes and
      retries them, and read routes answer 503.
    - ``ping`` never raises: it is ``/readyz``'s answer, False whenever a
      write would not be durable now.
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
        """Whether the backend is reachable and writes to it are durable (``/readyz``)."""
        ...
