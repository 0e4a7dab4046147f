"""The store contract, run against every backend, and what each backend adds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import pytest

from cancelproxy.records import Record, Usage
from cancelproxy.store import redis as redis_store
from cancelproxy.store.base import Store, StoreError
from cancelproxy.store.memory import MemoryStore
from cancelproxy.store.redis import MAX_CONNECTIONS as REDIS_MAX_CONNECTIONS
from cancelproxy.store.redis import RedisStore
from cancelproxy.store.sqlite import SCHEMA_VERSION, SchemaVersionError, SQLiteStore

# The fixtures must be names of this module for pytest to find them.
from .redis_server import RedisServer, unique_key_prefix

StoreT = TypeVar("StoreT", bound=Store)


def make_record(request_id: str, session_id: str = "s1", created_at: float = 1000.0, **fields: Any) -> Record:
    return Record(request_id, session_id, "fp-default", "mock", "mock-1", True, created_at, **fields)


def ended(request_id: str, ended_at: float, session_id: str = "s1", created_at: float = 1000.0) -> Record:
    return make_record(request_id, session_id, created_at, status="completed", finish_reason="stop", ended_at=ended_at)


def full_record() -> Record:
    """Every field away from its default, nested values included."""
    return Record(
        request_id="req-full", session_id="sess-full", credential="fp:0123abcd", upstream="keyed",
        model="mock-large", stream=False, created_at=1_700_000_000.125, status="stopped", stop_reason="cancel",
        finish_reason="tool_calls", content='partial ✓ "quoted"\nanswer', reasoning_content="thinking…",
        tool_calls=[
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}},
            {"index": 1, "id": "call_2", "type": "function", "function": {"name": "noop", "arguments": ""}},
        ],
        usage=Usage(prompt_tokens=12, completion_tokens=3, total_tokens=15, reasoning_tokens=2, cached_tokens=4),
        upstream_id="chatcmpl-xyz", error={"type": "upstream_error", "message": "broke off", "status": 502},
        first_token_at=1_700_000_000.5, ended_at=1_700_000_001.75, holder="replica-a",
    )  # fmt: skip


def ids(records: list[Record]) -> list[str]:
    return [r.request_id for r in records]


@contextlib.asynccontextmanager
async def opened(store: StoreT) -> AsyncIterator[StoreT]:
    """The store, open; closed however the test ends (an open one fails or hangs the run)."""
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    backend: Store
    if request.param == "memory":
        backend = MemoryStore()
    elif request.param == "sqlite":
        backend = SQLiteStore(str(tmp_path / "records.db"))
    else:
        # Only the redis case asks for a server, so the others run without one.
        backend = RedisStore(request.getfixturevalue("redis_url"), request.getfixturevalue("redis_key_prefix"))
    async with opened(backend):
        yield backend
        if isinstance(backend, RedisStore):
            # Leave nothing behind on a server that may be shared (REDIS_URL).
            async for key in backend.client.scan_iter(match=f"{backend.key_prefix}*"):
                await backend.client.delete(key)


# ---- the contract, for every backend ------------------------------------------


def test_a_copy_is_equal_and_its_changes_stay_its_own() -> None:
    record = make_record(
        "req_1",
        content="partial",
        tool_calls=[{"id": "t", "function": {"name": "f", "arguments": "{"}}],
        usage=Usage(1, 2, 3),
    )
    clone = record.copy()
    assert clone == record and type(clone) is Record and clone is not record
    clone.status = "stopped"
    clone.content += " more"
    clone.tool_calls[0]["id"] = "other"
    clone.tool_calls.append({"id": "u"})
    assert (record.status, record.content) == ("in_progress", "partial")
    assert record.tool_calls == [{"id": "t", "function": {"name": "f", "arguments": "{"}}]


async def test_round_trip_keeps_every_field(store: Store) -> None:
    record = full_record()
    await store.save_many([record])
    loaded = await store.get("req-full")
    assert loaded == record and loaded is not record
    assert await store.get("no-such-request") is None


async def test_round_trip_keeps_values_beyond_what_orjson_writes(store: Store) -> None:
    # From an upstream's JSON, as the json module parses it: an integer past
    # 64 bits, a lone surrogate (an escape cut in half).
    record = make_record("r-odd", content="half \ud800 of a pair", usage=Usage(0, 0, 2**70))
    await store.save_many([record])
    assert await store.get("r-odd") == record


async def test_save_many_stores_a_snapshot(store: Store) -> None:
    record = make_record("r1", content="before")
    await store.save_many([record])
    # The caller keeps mutating its record; the store must not follow.
    record.content = "after"
    record.tool_calls.append({"index": 0, "id": "late"})
    loaded = await store.get("r1")
    assert loaded is not None and loaded.content == "before" and loaded.tool_calls == []


async def test_upsert_keeps_one_record_in_its_final_state(store: Store) -> None:
    await store.save_many([make_record("r1", content="par")])
    await store.save_many(
        [make_record("r1", content="partial", status="stopped", stop_reason="cancel", ended_at=1001.0)]
    )
    loaded = await store.get("r1")
    assert loaded is not None
    assert (loaded.status, loaded.stop_reason, loaded.content, loaded.ended_at) == (
        "stopped",
        "cancel",
        "partial",
        1001.0,
    )
    assert ids(await store.session("s1")) == ["r1"]


async def test_session_is_oldest_first_and_isolated(store: Store) -> None:
    # Saved newest first, across batches, to show the order comes from created_at.
    await store.save_many([make_record("c", created_at=1003.0), make_record("other", "s2", created_at=1000.0)])
    await store.save_many([make_record("a", created_at=1001.0)])
    await store.save_many([make_record("b", created_at=1002.0)])
    assert ids(await store.session("s1")) == ["a", "b", "c"]
    assert ids(await store.session("s2")) == ["other"]
    assert await store.session("s3") == []


async def test_in_progress_lists_exactly_the_unfinished(store: Store) -> None:
    await store.save_many([make_record("r1"), make_record("r2", "s2"), ended("r3", 1001.0)])
    assert {r.request_id for r in await store.in_progress()} == {"r1", "r2"}
    await store.save_many([make_record("r1", status="failed", ended_at=1002.0)])
    assert ids(await store.in_progress()) == ["r2"]
    await store.save_many([make_record("r2", "s2", status="interrupted", ended_at=1003.0)])
    assert await store.in_progress() == []


async def test_prune_deletes_only_records_ended_before_the_cutoff(store: Store) -> None:
    old = [ended("old1", 100.0, created_at=50.0), ended("old2", 200.0, "s2", created_at=60.0)]
    kept = [ended("at-cutoff", 250.0, created_at=70.0), ended("new", 300.0, created_at=80.0)]
    await store.save_many([*old, *kept, make_record("running", created_at=90.0)])
    assert await store.prune(250.0) == 2
    assert await store.get("old1") is None and await store.get("old2") is None
    assert ids(await store.session("s1")) == ["at-cutoff", "new", "running"]
    assert await store.session("s2") == []
    assert ids(await store.in_progress()) == ["running"]
    assert await store.prune(250.0) == 0
    assert await store.prune(1e12) == 2  # in-progress records are never pruned
    assert ids(await store.session("s1")) == ["running"]


async def test_save_many_is_one_transaction(store: Store) -> None:
    records = [make_record(f"r{i:03}", created_at=1000.0 + i) for i in range(200)]
    before = getattr(store, "transactions", 0)
    await store.save_many(records)
    await store.save_many([])  # nothing to write: no transaction at all
    assert ids(await store.session("s1")) == [r.request_id for r in records]
    if isinstance(store, MemoryStore):
        return  # no transactions to count
    assert store.transactions == before + 1


async def test_ping(store: Store) -> None:
    assert await store.ping() is True


# ---- SQLite ---------------------------------------------------------------------


async def test_sqlite_survives_close_and_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "records.db")
    async with opened(SQLiteStore(path)) as first:
        await first.save_many([full_record(), make_record("r1", "sess-full", created_at=1.0)])
    async with opened(SQLiteStore(path)) as second:
        assert await second.get("req-full") == full_record()
        assert ids(await second.session("sess-full")) == ["r1", "req-full"]
        assert ids(await second.in_progress()) == ["r1"]


async def test_sqlite_file_is_in_wal_mode_at_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    async with opened(SQLiteStore(str(path))):
        pass
    # Asked on a connection of its own: WAL mode and the version are in the file.
    async with aiosqlite.connect(path) as db:
        async with db.execute("PRAGMA journal_mode") as cursor:
            assert await cursor.fetchone() == ("wal",)
        async with db.execute("PRAGMA user_version") as cursor:
            assert await cursor.fetchone() == (SCHEMA_VERSION,)


async def test_sqlite_a_partial_flush_rewrites_no_index_it_does_not_change(tmp_path: Path) -> None:
    """A later state named the session and start time too, and SQLite rewrote the
    session index's page at every flush of every live stream."""
    path = tmp_path / "records.db"
    async with opened(SQLiteStore(str(path))) as store:
        live = make_record("live")
        await store.save_many([live])
        wal = Path(f"{path}-wal")
        before = wal.stat().st_size
        for _ in range(10):
            live.content += "w "
            await store.save_many([live])
        written = wal.stat().st_size - before
    with contextlib.closing(sqlite3.connect(path)) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    # A WAL frame is a page and its 24-byte header. Each flush: the row's page and
    # the in-progress index's (its status is set again, to the same value).
    assert written == 10 * 2 * (page_size + 24)


async def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store = SQLiteStore(str(path))
    try:
        with pytest.raises(SchemaVersionError, match=rf"schema version {SCHEMA_VERSION + 1} is newer"):
            await store.open()
        assert await store.ping() is False  # and open() left no connection behind
    finally:
        await store.close()  # should the open succeed, its thread would keep pytest from exiting
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)  # left as it was


async def test_sqlite_failed_batch_writes_nothing(tmp_path: Path) -> None:
    async with opened(SQLiteStore(str(tmp_path / "records.db"))) as store:
        bad = make_record("bad")
        bad.session_id = None  # type: ignore[assignment]  # violates NOT NULL
        with pytest.raises(StoreError, match="NOT NULL constraint failed"):
            await store.save_many([make_record("good"), bad])
        assert await store.get("good") is None
        assert store.transactions == 0
        await store.save_many([make_record("good")])  # no transaction was left open
        assert await store.get("good") is not None
    assert await store.ping() is False


async def test_sqlite_reads_rows_older_versions_wrote(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    async with opened(SQLiteStore(str(path))):
        pass
    # As every version before orjson wrote a row: json.dumps of the record's dict.
    record = full_record()
    data = json.dumps(record.to_dict(), separators=(",", ":"), ensure_ascii=False)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)",
            (record.request_id, record.session_id, record.created_at, record.status, record.ended_at, data),
        )
    async with opened(SQLiteStore(str(path))) as store:
        assert await store.get(record.request_id) == record
        await store.save_many([record])
    with contextlib.closing(sqlite3.connect(path)) as db:
        (written,) = db.execute("SELECT data FROM records").fetchone()
    assert isinstance(written, str) and json.loads(written) == json.loads(data)  # the same JSON, as TEXT


def _store_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "cancelproxy.store.sqlite" and r.levelname == "ERROR"]


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
async def test_sqlite_is_not_ready_and_refuses_writes_once_a_file_is_deleted(
    tmp_path: Path, suffix: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "records.db"
    async with opened(SQLiteStore(str(path))) as store:
        await store.save_many([make_record("r1")])
        assert await store.ping() is True
        Path(f"{path}{suffix}").unlink()
        assert await store.ping() is False
        with pytest.raises(StoreError, match=f"{path}{suffix} was deleted"):
            await store.save_many([make_record("r2")])
        assert await store.ping() is False
        assert store.transactions == 1  # nothing was written to the file no one will find
        assert await store.get("r1") is not None  # what it holds is still read
    assert len(_store_errors(caplog)) == 1


async def test_sqlite_is_not_ready_once_its_file_is_replaced_and_heals_when_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, aside = tmp_path / "records.db", tmp_path / "aside.db"
    async with opened(SQLiteStore(str(path))) as store:
        await store.save_many([make_record("r1")])
        os.rename(path, aside)
        shutil.copyfile(aside, tmp_path / "copy.db")
        os.replace(tmp_path / "copy.db", path)  # a restored backup: another file at the path
        assert await store.ping() is False
        with pytest.raises(StoreError, match="replaced by another file"):
            await store.save_many([make_record("r2")])
        os.replace(aside, path)  # the file it opened, back where it was
        assert await store.ping() is True
        await store.save_many([make_record("r2")])
    async with opened(SQLiteStore(str(path))) as reopened:
        assert await reopened.get("r2") is not None
    assert len(_store_errors(caplog)) == 1


# ---- Redis ----------------------------------------------------------------------


async def test_redis_indexes_follow_the_status(redis_url: str, redis_key_prefix: str) -> None:
    async with opened(RedisStore(redis_url, redis_key_prefix)) as store:
        client, p = store.client, redis_key_prefix
        await store.save_many([make_record("r1", created_at=5.0)])
        assert await client.smembers(f"{p}inprog") == {b"r1"}
        assert await client.zrange(f"{p}sess:s1", 0, -1, withscores=True) == [(b"r1", 5.0)]
        assert await client.zcard(f"{p}ended") == 0
        await store.save_many([ended("r1", 7.5, created_at=5.0)])
        assert await client.smembers(f"{p}inprog") == set()
        assert await client.zscore(f"{p}ended", "r1") == 7.5
        assert await store.prune(10.0) == 1
        # Nothing is left of the pruned record: not its JSON, not an index entry.
        assert [key async for key in client.scan_iter(match=f"{p}*")] == []


async def test_redis_reads_a_record_a_newer_replica_wrote(redis_url: str, redis_key_prefix: str) -> None:
    """Replicas of two versions share the store during a rolling upgrade: a
    field the older one does not know made its reads of that session fail."""
    async with opened(RedisStore(redis_url, redis_key_prefix)) as store:
        record = full_record()
        await store.save_many([record])
        newer = {**json.loads(record.to_json()), "a_later_field": {"x": 1}}
        await store.client.set(f"{redis_key_prefix}rec:{record.request_id}", json.dumps(newer))
        assert await store.get(record.request_id) == record
        assert await store.session(record.session_id) == [record]


async def test_redis_in_progress_leaves_out_a_record_that_ended_while_it_was_read(
    redis_url: str, redis_key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The index and the records are read by two commands: another replica
    # may store a final state between them.
    async with opened(RedisStore(redis_url, redis_key_prefix)) as store:
        async with opened(RedisStore(redis_url, redis_key_prefix)) as other:
            await store.save_many([make_record("r1"), make_record("r2", created_at=1001.0)])
            smembers = store.client.smembers

            async def then_r1_ends(name: str) -> Any:
                members = await smembers(name)
                await other.save_many([ended("r1", 2000.0)])
                return members

            monkeypatch.setattr(store.client, "smembers", then_r1_ends)
            assert ids(await store.in_progress()) == ["r2"]
            record = await store.get("r1")  # it did end in between
            assert record is not None and record.status == "completed"


async def test_redis_key_prefixes_do_not_see_each_other(redis_url: str) -> None:
    async with opened(RedisStore(redis_url, unique_key_prefix())) as ours:
        async with opened(RedisStore(redis_url, unique_key_prefix())) as theirs:
            await ours.save_many([make_record("r1")])
            assert await theirs.get("r1") is None
            assert await theirs.session("s1") == [] and await theirs.in_progress() == []
            await ours.save_many([ended("r1", 1.0)])
            assert await theirs.prune(1e12) == 0
            assert await ours.get("r1") is not None
            assert await ours.prune(2.0) == 1


async def test_redis_errors_while_down_and_recovers_on_restart(redis_server: RedisServer) -> None:
    async with opened(RedisStore(redis_server.url, unique_key_prefix())) as store:
        await store.save_many([make_record("r1")])
        redis_server.stop()
        assert await store.ping() is False
        with pytest.raises(StoreError):
            await store.save_many([make_record("r2")])
        assert store.transactions == 1
        redis_server.start()  # same port, empty: the server keeps nothing
        assert await store.ping() is True
        await store.save_many([make_record("r2")])
        assert await store.get("r2") is not None
        assert store.transactions == 2


async def test_redis_that_never_answers_is_not_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    # Packets dropped, not refused: the connection is made, no answer comes.
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    monkeypatch.setattr(redis_store, "PING_TIMEOUT_S", 0.2)
    store = RedisStore(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0", unique_key_prefix())
    try:
        async with asyncio.timeout(10):  # generous: the bound under test is 0.2 s
            assert await store.ping() is False
    finally:
        await store.close()
        server.close()
        for writer in accepted:
            writer.close()
            await writer.wait_closed()
        await server.wait_closed()


async def test_redis_open_raises_when_unreachable(redis_server: RedisServer) -> None:
    redis_server.stop()
    store = RedisStore(redis_server.url, unique_key_prefix())
    try:
        with pytest.raises(StoreError):
            await store.open()
    finally:
        await store.close()  # closing after a failed open is harmless


async def test_redis_reconnects_the_connections_a_restart_broke(redis_server: RedisServer) -> None:
    async with opened(RedisStore(redis_server.url, unique_key_prefix())) as store:
        await asyncio.gather(*(store.get(f"r{i}") for i in range(20)))  # 20 connections in the pool
        redis_server.stop()
        redis_server.start()  # same port, empty: each pooled connection was closed by the old server
        assert await asyncio.gather(*(store.get(f"r{i}") for i in range(20))) == [None] * 20
        redis_server.stop()
        redis_server.start()
        await asyncio.gather(*(store.save_many([make_record(f"r{i}")]) for i in range(5)))
        assert len(await store.session("s1")) == 5
        redis_server.stop()
        redis_server.start()
        assert await store.ping() is True


async def test_redis_serves_more_concurrent_commands_than_its_pool_holds(redis_url: str) -> None:
    async with opened(RedisStore(redis_url, unique_key_prefix())) as store:
        await store.save_many([make_record("r1")])
        found = await asyncio.gather(*(store.get("r1") for _ in range(REDIS_MAX_CONNECTIONS + 50)))
        assert all(record is not None for record in found)


async def test_redis_errors_quote_no_record(redis_server: RedisServer) -> None:
    # A short prefix and id, as the quoted command is cut at 100 characters.
    async with opened(RedisStore(redis_server.url, "p:")) as store:
        await store.client.config_set("maxmemory", 1)  # every write is refused: OOM
        secret = "sess-1b0e8f"
        with pytest.raises(StoreError, match="OutOfMemoryError") as raised:
            await store.save_many([make_record("r", secret, content="the answer so far")])
        assert secret not in "".join(traceback.format_exception(raised.value))


async def test_a_batch_larger_than_one_statement_is_one_transaction(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "big.db"))
    await store.open()
    try:
        records = [make_record(f"r{i}", session_id="big") for i in range(1234)]
        await store.save_many(records)
        assert store.transactions == 1
        assert [r.request_id for r in await store.session("big")] == [r.request_id for r in records]
    finally:
        await store.close()
