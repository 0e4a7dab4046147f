"""Generations that outlive their client (ignore_close) and the engine abort endpoints that stop them."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from cancelproxy.mock import MockDefaults, create_mock_app

from .mock_client import PATHS, PROTOCOLS, UPSTREAM_IDS, record, request_body


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(create_mock_app(MockDefaults(tokens=5, rate=0)))


async def leave_mid_stream(
    client: TestClient, protocol: str = "chat", headers: dict[str, str] | None = None, **mock: Any
) -> dict[str, Any]:
    """Start a stream, read its first piece, close the connection: the record once the mock noticed."""
    resp = await client.post(PATHS[protocol], json=request_body(protocol, **mock), headers=headers)
    await record(client, mock["tag"], wait="started")
    seen = b""
    while b"w0" not in seen:
        piece = await resp.content.readany()
        assert piece, f"the stream ended early: {seen!r}"
        seen += piece
    resp.close()
    return await record(client, mock["tag"], wait="closed")


async def aborts(client: TestClient, **params: str) -> list[dict[str, Any]]:
    resp = await client.get("/_mock/aborts", params={"timeout": "5", **params})
    assert resp.status == 200, await resp.text()
    return list((await resp.json())["aborts"])


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_ignore_close_generates_to_the_end_without_the_client(client: TestClient, protocol: str) -> None:
    closed = await leave_mid_stream(client, protocol, tokens=30, rate=200, ignore_close=True, tag="z")
    assert closed["state"] == "running" and closed["tokens_sent"] < 30
    rec = await record(client, "z")
    assert rec["state"] == "completed" and rec["tokens_sent"] == 30
    assert rec["client_closed_at"] < rec["ended_at"]


async def test_without_ignore_close_the_generation_stops_with_the_client(client: TestClient) -> None:
    closed = await leave_mid_stream(client, tokens=1000, rate=200, tag="s")
    assert closed["state"] == "closed_by_client"


async def test_non_streaming_ignore_close_goes_on_too(client: TestClient) -> None:
    task = asyncio.ensure_future(
        client.post(
            PATHS["chat"], json=request_body("chat", stream=False, tokens=20, rate=200, ignore_close=True, tag="n")
        )
    )
    await record(client, "n", wait="started")
    task.cancel()
    assert (await record(client, "n", wait="closed"))["state"] == "running"
    rec = await record(client, "n")
    assert rec["state"] == "completed" and rec["tokens_sent"] == 20


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_sglang_abort_stops_a_zombie_by_its_upstream_id(client: TestClient, protocol: str) -> None:
    await leave_mid_stream(client, protocol, tokens=100_000, rate=200, ignore_close=True, tag="zz")
    rid = UPSTREAM_IDS[protocol].format(tag="zz")
    resp = await client.post("/abort_request", json={"rid": rid})
    assert resp.status == 200 and await resp.read() == b""  # SGLang's answer: an empty 200
    rec = await record(client, "zz")
    assert rec["state"] == "aborted" and rec["tokens_sent"] < 100_000
    [entry] = await aborts(client, tag="zz", count="1")
    assert entry["kind"] == "sglang" and entry["rid"] == rid and entry["outcome"] == "stopped"
    assert entry["body"] == {"rid": rid} and entry["path"] == "/abort_request"
    await asyncio.sleep(0.1)  # not synchronisation: a grace period in which a stopped generation must not count
    assert (await record(client, "zz"))["tokens_sent"] == rec["tokens_sent"]


async def test_llamacpp_delete_stops_a_zombie_by_conversation_id(client: TestClient) -> None:
    headers = {"X-Conversation-Id": "conv-7"}
    await leave_mid_stream(client, headers=headers, tokens=100_000, rate=50, ignore_close=True, tag="ll")
    resp = await client.delete("/v1/stream/conv-7")
    assert resp.status == 200
    assert (await record(client, "ll"))["state"] == "aborted"
    [entry] = await aborts(client, tag="ll", count="1")
    assert entry["kind"] == "llamacpp" and entry["rid"] == "conv-7" and entry["method"] == "DELETE"
    # Idempotent: deleting again is fine, and says the stream had ended.
    assert (await client.delete("/stream/conv-7")).status == 200
    assert [a["outcome"] for a in await aborts(client, tag="ll", count="2")] == ["stopped", "not_running"]


async def test_llamacpp_delete_also_takes_the_upstream_id(client: TestClient) -> None:
    await leave_mid_stream(client, tokens=100_000, rate=50, ignore_close=True, tag="up")
    assert (await client.delete("/v1/stream/chatcmpl-mock-up")).status == 200
    assert (await record(client, "up"))["state"] == "aborted"


async def test_abort_of_a_connected_stream_drops_it(client: TestClient) -> None:
    resp = await client.post(PATHS["chat"], json=request_body("chat", tokens=100_000, rate=50, tag="live"))
    assert await resp.content.readany()
    assert (await client.post("/abort_request", json={"rid": "chatcmpl-mock-live"})).status == 200
    async with asyncio.timeout(10):  # a stream the abort failed to drop runs for half an hour
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            async for _ in resp.content.iter_any():
                pass
    rec = await record(client, "live")
    assert rec["state"] == "aborted" and rec["client_closed_at"] is not None


async def test_unknown_and_finished_ids_answer_200_and_are_recorded(client: TestClient) -> None:
    await (await client.post(PATHS["chat"], json=request_body("chat", tag="done"))).read()
    assert (await client.post("/abort_request", json={"rid": "chatcmpl-mock-done"})).status == 200
    assert (await client.post("/v1/abort_request", json={"rid": "nobody"})).status == 200
    listed = await aborts(client, count="2")
    assert [(a["tag"], a["outcome"]) for a in listed] == [("done", "not_running"), (None, "not_found")]
    assert (await record(client, "done"))["state"] == "completed"


async def test_a_body_without_rid_is_a_400_and_still_recorded(client: TestClient) -> None:
    resp = await client.post("/abort_request", data=b"not json")
    assert resp.status == 400 and (await resp.json())["object"] == "error"
    [entry] = await aborts(client, count="1")
    assert entry["body"] == "not json" and entry["outcome"] == "not_found"


async def test_on_abort_hang_never_answers_and_never_stops(client: TestClient) -> None:
    await leave_mid_stream(client, tokens=100_000, rate=50, ignore_close=True, on_abort="hang", tag="h")
    with pytest.raises(asyncio.TimeoutError):
        await client.post("/abort_request", json={"rid": "chatcmpl-mock-h"}, timeout=aiohttp.ClientTimeout(total=0.3))
    [entry] = await aborts(client, tag="h", count="1")
    assert entry["outcome"] == "hung"
    assert (await record(client, "h", wait="started"))["state"] == "running"


@pytest.mark.parametrize(("method", "path"), [("POST", "/abort_request"), ("DELETE", "/v1/stream/chatcmpl-mock-f")])
async def test_on_abort_fail_answers_500_and_never_stops(client: TestClient, method: str, path: str) -> None:
    await leave_mid_stream(client, tokens=100_000, rate=50, ignore_close=True, on_abort="fail", tag="f")
    resp = await client.request(method, path, json={"rid": "chatcmpl-mock-f"})
    assert resp.status == 500
    [entry] = await aborts(client, tag="f", count="1")
    assert entry["outcome"] == "failed"
    assert (await record(client, "f", wait="started"))["state"] == "running"


async def test_aborts_long_poll_times_out_and_clears(client: TestClient) -> None:
    resp = await client.get("/_mock/aborts", params={"count": "1", "timeout": "0.05"})
    assert resp.status == 408
    await client.post("/abort_request", json={"rid": "x"})
    assert len(await aborts(client)) == 1
    assert (await client.delete("/_mock/aborts")).status == 200
    assert await aborts(client) == []


async def test_bad_on_abort_is_refused(client: TestClient) -> None:
    resp = await client.post(PATHS["chat"], json=request_body("chat", on_abort="later"))
    assert resp.status == 400
    assert (await resp.json())["error"]["message"] == "mock.on_abort must be one of stop, hang, fail"
