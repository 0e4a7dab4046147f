"""Whatever JSON an upstream answers with, the request's record is stored.

An upstream's error object, or the input of a tool call, is JSON the proxy
keeps in the record, its audit line and its row. Nested absurdly deep (a
validating server that echoes a client's input in its error does it for the
client), it must not stop any of them from being written. Each test restarts
the proxy on the same SQLite file and reads the records back: what a read
answered before the restart may have come from memory.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .conftest import Proxy, start_proxy
from .helpers import read_record
from .scripted_upstream import LAST_CHUNK, Script, ScriptedUpstream, chunk, scripted_upstream, sse_head

KEY = "sk-upstream-json-0123456789abcdef"
# Deeper than Python's recursion limit lets json.dumps go, within what orjson
# reads (1,024 levels).
DEPTH = 1000


def _deep(leaf: object = 1) -> bytes:
    return b'{"a":' * DEPTH + json.dumps(leaf).encode() + b"}" * DEPTH


def _json_answer(status: int, body: bytes) -> Script:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    return Script(head, [body])


def _chat_stream(text: str) -> Script:
    delta = {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
    end = {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    events = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in (delta, end)) + b"data: [DONE]\n\n"
    return Script(sse_head(), [chunk(events), LAST_CHUNK])


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with scripted_upstream() as scripted:
        yield scripted


def _config(upstream: ScriptedUpstream, tmp_path: Path) -> dict[str, Any]:
    return {
        "upstreams": [{"name": "scripted", "base_url": upstream.base_url, "models": ["*"]}],
        "store": {"url": f"sqlite:///{tmp_path / 'records.db'}"},
    }


async def _post(proxy: Proxy, path: str, body: dict[str, Any]) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{proxy.base_url}/{path}", json=body, headers={"Authorization": f"Bearer {KEY}"}
        ) as response:
            await response.read()
            return response.status, response.headers["X-Request-Id"]


async def _read_after_restart(upstream: ScriptedUpstream, tmp_path: Path, *request_ids: str) -> list[dict[str, Any]]:
    proxy = start_proxy(tmp_path, _config(upstream, tmp_path))
    try:
        return [await read_record(proxy.root, request_id, KEY) for request_id in request_ids]
    finally:
        proxy.program.stop()


async def test_an_error_nested_deeper_than_any_encoder_goes_is_stored(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    await upstream.scripts.put(_json_answer(400, b'{"error":{"message":"bad input","input":' + _deep() + b"}}"))
    await upstream.scripts.put(_chat_stream("fine"))
    proxy = start_proxy(tmp_path, _config(upstream, tmp_path))
    try:
        chat = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        status, failed_id = await _post(proxy, "chat/completions", chat)
        assert status == 400  # the upstream's own answer, relayed
        status, fine_id = await _post(proxy, "chat/completions", {**chat, "stream": True})
        assert status == 200
    finally:
        assert proxy.program.stop() == 0
    failed, fine = await _read_after_restart(upstream, tmp_path, failed_id, fine_id)
    assert failed["status"] == "failed" and failed["error"]["message"] == "bad input"
    assert failed["error"]["status"] == 400 and "nested deeper than" in json.dumps(failed["error"])
    assert fine["status"] == "completed" and fine["content"] == "fine"


async def test_a_tool_call_input_nested_deeper_than_any_encoder_goes_is_stored(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    message = (
        b'{"id":"msg_1","type":"message","role":"assistant","model":"m","stop_reason":"tool_use",'
        b'"content":[{"type":"text","text":"calling"},{"type":"tool_use","id":"tu_1","name":"f","input":'
        + _deep()
        + b'}],"usage":{"input_tokens":3,"output_tokens":2}}'
    )
    await upstream.scripts.put(_json_answer(200, message))
    proxy = start_proxy(tmp_path, _config(upstream, tmp_path))
    try:
        body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        status, request_id = await _post(proxy, "messages", body)
        assert status == 200
    finally:
        assert proxy.program.stop() == 0
    (record,) = await _read_after_restart(upstream, tmp_path, request_id)
    assert record["status"] == "completed" and record["content"] == "calling"
    (call,) = record["tool_calls"]
    assert call["id"] == "tu_1" and call["function"]["name"] == "f"


def _responses_event(kind: str, sequence: int, **fields: object) -> bytes:
    data = json.dumps({"type": kind, "sequence_number": sequence, **fields}).encode()
    return f"event: {kind}\n".encode() + b"data: " + data + b"\n\n"


async def test_a_cancelled_ending_repeating_a_response_nested_that_deep_is_still_written(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    # The Response object repeats the client's tools; the cancelled ending repeats the Response.
    created = (
        b'event: response.created\ndata: {"type":"response.created","sequence_number":0,"response":'
        b'{"id":"resp_1","object":"response","status":"in_progress","output":[],"tools":[' + _deep() + b"]}}\n\n"
    )
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    events = created + b"".join(
        [
            _responses_event("response.output_item.added", 1, output_index=0, item=item),
            _responses_event(
                "response.content_part.added", 2, item_id="msg_1", output_index=0, content_index=0, part=part
            ),
            _responses_event(
                "response.output_text.delta", 3, item_id="msg_1", output_index=0, content_index=0, delta="partial"
            ),
        ]
    )
    await upstream.scripts.put(Script(sse_head(), [chunk(events)], end="hold"))
    proxy = start_proxy(tmp_path, _config(upstream, tmp_path))
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        async with aiohttp.ClientSession() as session:
            body = {"model": "m", "input": "x", "stream": True}
            async with session.post(f"{proxy.base_url}/responses", json=body, headers=headers) as response:
                assert response.status == 200
                request_id = response.headers["X-Request-Id"]
                seen = b""
                while b"partial" not in seen:
                    seen += await response.content.readany()
                async with session.post(f"{proxy.root}/requests/{request_id}/cancel", headers=headers) as cancel:
                    assert cancel.status == 200, await cancel.text()
                seen += await response.content.read()
    finally:
        assert proxy.program.stop() == 0
    ending = seen.split(b"event: response.completed\ndata: ")[1].split(b"\n\n")[0]
    assert json.loads(ending)["response"]["status"] == "cancelled"
    (record,) = await _read_after_restart(upstream, tmp_path, request_id)
    assert (record["status"], record["stop_reason"], record["content"]) == ("stopped", "cancel", "partial")


async def test_usage_that_counts_below_zero_is_junk_and_the_record_is_stored(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    body = json.dumps(
        {
            "id": "c",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": -5, "completion_tokens": 2, "total_tokens": -3},
        }
    ).encode()
    await upstream.scripts.put(_json_answer(200, body))
    proxy = start_proxy(tmp_path, _config(upstream, tmp_path))
    try:
        status, request_id = await _post(proxy, "chat/completions", {"model": "m", "messages": []})
        assert status == 200
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{proxy.root}/metrics") as response:
                assert response.status == 200
    finally:
        assert proxy.program.stop() == 0
    (record,) = await _read_after_restart(upstream, tmp_path, request_id)
    assert (record["status"], record["content"]) == ("completed", "ok")
    assert record["usage"]["completion_tokens"] == 2 and record["usage"]["prompt_tokens"] == 0
