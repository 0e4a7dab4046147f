"""``sqlite:///path.db``: records in one SQLite file, for a single host.

Each record is kept whole as JSON (the simplest faithful round trip of every
field); only what is queried has a column of its own.

A database deleted or replaced while it is open goes on working for SQLite:
it writes to the files it holds open, which no one will find again, and every
record is gone at the next start. So the store remembers which files it
opened (the database, its -wal and its -shm) and checks, before and after each
write and on every ping, that they are still the files at those paths. If not,
it says so once, refuses writes (the writer keeps them in memory) and is not
ready. It does not open the path again by itself: a file reaped by a cleaner,
removed to start afresh or replaced by a restored backup look the same from
here, and a guess would either hide a loss behind a green /readyz or migrate
whatever file was put there. A restart, the operator's call, opens what is at
the path then; putting the same files back heals the store at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence

import aiosqlite

from ..records import Record
from .base import StoreError

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "SchemaVersionError"]

_log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000

# MIGRATIONS[n] takes a database from schema version n to n + 1; version 0 is
# a new, empty file. To change the schema, append a step: never edit a step
# that has shipped, files out there already ran it. The version is kept in
# PRAGMA user_version, which lives in the file header and commits with the step.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE records (
            request_id TEXT PRIMARY KEY,
            session_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            status     TEXT NOT NULL,
            ended_at   REAL,
            data       TEXT NOT NULL
        )
        """,
        "CREATE INDEX records_session ON records (session_id, created_at)",
        # Recovery sweeps only ever look for in-progress records, a small
        # minority: a partial index stays small and is all they need.
        "CREATE INDEX records_in_progress ON records (created_at) WHERE status = 'in_progress'",
        "CREATE INDEX records_ended ON records (ended_at) WHERE ended_at IS NOT NULL",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# A later state of a request sets only what can change: SQLite rewrites the
# entry of every index on a column named here, changed or not, and a request's
# session and start time never change. Naming them too would make every
# partial flush write the session index's page again (3 pages to the WAL, not 2).
_UPSERT = """
    INSERT INTO records (request_id, session_id, created_at, status, ended_at, data)
    VALUES {rows}
    ON CONFLICT (request_id) DO UPDATE SET
        status = excluded.status,
        ended_at = excluded.ended_at,
        data = excluded.data
"""


# Rows per INSERT: one statement is one transaction (autocommit) and one trip
# to aiosqlite's thread, where BEGIN, executemany and COMMIT are three. 6
# parameters a row stays far below SQLite's limit of 32,766 per statement.
_ROWS_PER_STATEMENT = 500


@functools.lru_cache(maxsize=64)
def _upsert(rows: int) -> str:
    return _UPSERT.format(rows=", ".join(["(?, ?, ?, ?, ?, ?)"] * rows))


class SchemaVersionError(RuntimeError):
    """The file was written by a newer version of cancelproxy."""


def _row(record: Record) -> tuple[str, str, float, str, float | None, str]:
    # Decoded to str: bound as TEXT, as the rows of older versions are (a BLOB
    # would read as JSONB to SQLite's own json functions).
    data = record.to_json().decode()
    return (record.request_id, record.session_id, record.created_at, record.status, record.ended_at, data)


def _record(data: str) -> Record:
    return Record.from_json(data)


@contextlib.asynccontextmanager
async def _mapped(what: str) -> AsyncIterator[None]:
    """sqlite3 errors as ``StoreError`` (their messages never hold bound values).

    aiosqlite raises ValueError once the connection is gone.
    """
    try:
        yield
    except (sqlite3.Error, ValueError) as exc:
        raise StoreError(f"sqlite: {what} failed: {exc}") from exc


FileIdentity = tuple[int, int]  # (st_dev, st_ino): which file a path names


async def _rollback(db: aiosqlite.Connection) -> None:
    # The error that made us roll back is the one worth raising: a failing
    # ROLLBACK (the connection is gone, or SQLite already rolled back) must
    # not replace it.
    with contextlib.suppress(sqlite3.Error, ValueError):
        await db.execute("ROLLBACK")


class SQLiteStore:
    def __init__(self, path: str) -> None:
        self.path = path
        # Committed save_many transactions: the proxy reports it to show that
        # writes are batched.
        self.transactions = 0
        self._db: aiosqlite.Connection | None = None
        # One connection is shared by every caller. Without the lock, a read
        # could run between a batch's INSERTs and its COMMIT and see rows that
        # are then rolled back, and a second BEGIN would fail outright.
        self._lock = asyncio.Lock()
        # The files opened, by path; set by open().
        self._files: dict[str, FileIdentity] = {}
        self._moved_said = False

    async def open(self) -> None:
        # isolation_level=None: no implicit transactions from the sqlite3
        # module; save_many and the migrations say exactly where theirs begin.
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # WAL: readers never block the writer, and a commit is one
            # sequential append to the log.
            await db.execute("PRAGMA journal_mode = WAL")
            # In WAL mode, NORMAL fsyncs only at checkpoints, so a power loss
            # can take back transactions that had already committed. FULL
            # fsyncs the log on every commit: a record is on disk when
            # save_many returns, which the cancel acknowledgement relies on.
            await db.execute("PRAGMA synchronous = FULL")
            await self._migrate(db)
        except BaseException:
            await db.close()
            raise
        self._db = db
        self._files = {}
        # After the migration's write: in WAL mode the -wal and -shm files now
        # exist and stay while the connection is open. In another journal mode
        # (a file system without shared memory refuses WAL) only the database
        # stays, its journal comes and goes with each transaction.
        for name in (self.path, f"{self.path}-wal", f"{self.path}-shm"):
            with contextlib.suppress(FileNotFoundError):
                found = os.stat(name)
                self._files[name] = (found.st_dev, found.st_ino)

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        # BEGIN IMMEDIATE takes the write lock before the version is read, so
        # two processes opening a new file cannot both run a step.
        await db.execute("BEGIN IMMEDIATE")
        try:
            async with db.execute("PRAGMA user_version") as cursor:
                row = await cursor.fetchone()
            version = int(row[0]) if row is not None else 0
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self.path}: schema version {version} is newer than this cancelproxy "
                    f"understands (up to {SCHEMA_VERSION}); upgrade cancelproxy or use another file"
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version = {step + 1}")
            await db.execute("COMMIT")
        except BaseException:
            await _rollback(db)
            raise

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    @property
    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("sqlite: the store is not open")
        return self._db

    def _moved(self) -> str | None:
        """How the files opened differ from those at their paths now, if they do."""
        for name, opened in self._files.items():
            try:
                found = os.stat(name)
            except FileNotFoundError:
                return f"{name} was deleted while in use"
            except OSError as exc:  # its directory is gone or unreadable
                return f"{name} cannot be checked: {exc.strerror}"
            if (found.st_dev, found.st_ino) != opened:
                return f"{name} was replaced by another file while in use"
        return None

    def _still_opened(self) -> None:
        """Raise unless writes still reach the files that will be opened at the next start."""
        moved = self._moved()
        if moved is None:
            if self._moved_said:
                self._moved_said = False
                _log.info("store: %s is back, writes are durable again", self.path)
            return
        if not self._moved_said:
            self._moved_said = True
            _log.error(
                "store: %s: what is written now would be lost at the next start, so writes are refused "
                "(kept in memory) and the store is not ready; restart the proxy to open %s again",
                moved,
                self.path,
            )
        raise StoreError(f"sqlite: {moved}")

    async def save_many(self, records: Sequence[Record]) -> None:
        if not records:
            return
        # Serialize before taking the lock: these are snapshots of records
        # the caller keeps mutating.
        rows = [_row(record) for record in records]
        async with self._lock, _mapped("write"):
            db = self._conn
            self._still_opened()  # nothing goes to files no one will find
            if len(rows) <= _ROWS_PER_STATEMENT:
                # One statement outside a transaction is a transaction of its own.
                await db.execute(_upsert(len(rows)), [value for row in rows for value in row])
            else:
                await db.execute("BEGIN IMMEDIATE")
                try:
                    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
                        part = rows[start : start + _ROWS_PER_STATEMENT]
                        await db.execute(_upsert(len(part)), [value for row in part for value in row])
                    await db.execute("COMMIT")
                except BaseException:
                    await _rollback(db)
                    raise
            self.transactions += 1
            # The files may have gone while the commit ran: durable means
            # durable in the files the next start opens.
            self._still_opened()

    async def get(self, request_id: str) -> Record | None:
        async with self._lock, _mapped("read"):
            async with self._conn.execute("SELECT data FROM records WHERE request_id = ?", (request_id,)) as cursor:
                row = await cursor.fetchone()
        return _record(row[0]) if row is not None else None

    async def session(self, session_id: str) -> list[Record]:
        # rowid breaks ties in created_at by first insertion (an upsert keeps
        # the rowid), as the memory store does.
        query = "SELECT data FROM records WHERE session_id = ? ORDER BY created_at, rowid"
        async with self._lock, _mapped("read"):
            async with self._conn.execute(query, (session_id,)) as cursor:
                rows = await cursor.fetchall()
        return [_record(row[0]) for row in rows]

    async def in_progress(self) -> list[Record]:
        query = "SELECT data FROM records WHERE status = 'in_progress' ORDER BY created_at"
        async with self._lock, _mapped("read"):
            async with self._conn.execute(query) as cursor:
                rows = await cursor.fetchall()
        return [_record(row[0]) for row in rows]

    async def prune(self, ended_before: float) -> int:
        # One statement in autocommit mode is its own transaction.
        async with self._lock, _mapped("prune"):
            async with self._conn.execute("DELETE FROM records WHERE ended_at < ?", (ended_before,)) as cursor:
                return cursor.rowcount

    async def ping(self) -> bool:
        if self._db is None:
            return False
        try:
            async with self._lock, _mapped("ping"):
                async with self._db.execute("SELECT 1") as cursor:
                    await cursor.fetchone()
                self._still_opened()
        except StoreError:
            return False
        return True
