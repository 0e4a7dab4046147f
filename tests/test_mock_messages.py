"""The mock's Anthropic Messages wire format, byte by byte."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cancelproxy.mock import MockDefaults, create_mock_app

from .mock_client import record, request_body, sse, words

PATH = "/v1/messages"
PING = b'event: ping\ndata: {"type": "ping"}\n\n'


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(create_mock_app(MockDefaults(tokens=3, rate=0)))


async def stream_raw(client: TestClient, **mock: Any) -> bytes:
    resp = await client.post(PATH, json=request_body("messages", **mock))
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    return await resp.read()


async def stream(client: TestClient, **mock: Any) -> list[Any]:
    events = sse(await stream_raw(client, **mock))
    assert all(name == data["type"] for name, data in events)  # the SDK skips events without a name
    return [data for _, data in events]


def shape(events: list[Any]) -> list[str]:
    """Each event's type, with a delta's type after a colon."""
    return [e["type"] + (f":{e['delta']['type']}" if e["type"] == "content_block_delta" else "") for e in events]


async def test_text_stream_sequence(client: TestClient) -> None:
    events = await stream(client, tag="t")
    assert shape(events) == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta:text_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0]["message"] == {
        "id": "msg_mock_t",
        "type": "message",
        "role": "assistant",
        "model": "m-test",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        # Five prompt words: "be brief" (system) + "hello there world".
        "usage": {
            "input_tokens": 5,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 1,
        },
    }
    assert events[1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert "".join(e["delta"]["text"] for e in events[3:6]) == words(3)
    assert events[-2] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 3},
    }
    rec = await record(client, "t")
    assert rec["protocol"] == "messages" and rec["id"] == "msg_mock_t" and rec["tokens_sent"] == 3


async def test_thinking_block_first_closed_by_a_signature(client: TestClient) -> None:
    events = await stream(client, reasoning=2)
    assert shape(events)[1:7] == [
        "content_block_start",
        "ping",
        "content_block_delta:thinking_delta",
        "content_block_delta:thinking_delta",
        "content_block_delta:signature_delta",
        "content_block_stop",
    ]
    assert events[1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert "".join(e["delta"]["thinking"] for e in events[3:5]) == "r0 r1 "
    assert events[5]["delta"]["signature"]
    assert events[7] == {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}
    assert all(e["index"] == 1 for e in events[8:-2])
    assert events[-2]["usage"] == {"output_tokens": 5}


async def test_tool_use_block_streams_input_json(client: TestClient) -> None:
    events = await stream(client, tool_call=True)
    assert events[1]["content_block"] == {"type": "tool_use", "id": "toolu_mock_1", "name": "get_weather", "input": {}}
    pieces = [e["delta"] for e in events if e["type"] == "content_block_delta"]
    assert {p["type"] for p in pieces} == {"input_json_delta"} and pieces[0]["partial_json"] == ""
    assert json.loads("".join(p["partial_json"] for p in pieces)) == {"city": "w0 w1 w2"}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


async def test_refusal_stops_with_reason_refusal(client: TestClient) -> None:
    events = await stream(client, refusal=True)
    assert events[-2]["delta"]["stop_reason"] == "refusal"


async def test_keepalives_are_ping_events_after_message_start(client: TestClient) -> None:
    raw = await stream_raw(client, silence_s=0.35, keepalive_s=0.1)
    start, _, rest = raw.partition(b"\n\n")
    assert start.startswith(b"event: message_start\n")
    # Nominally 3 (at 0.1, 0.2, 0.3 s); a loaded machine's late timers may skip the last.
    assert rest.startswith(PING * 2) and not rest.startswith(PING * 4)
    assert b"keep-alive" not in raw


async def test_error_event_mid_stream(client: TestClient) -> None:
    events = await stream(client, error_after=1, tag="e")
    assert shape(events)[-2:] == ["content_block_delta:text_delta", "error"]
    assert events[-1] == {"type": "error", "error": {"type": "overloaded_error", "message": "mock error mid-stream"}}
    assert (await record(client, "e"))["state"] == "failed"


async def test_non_streaming_is_the_message_object(client: TestClient) -> None:
    resp = await client.post("/messages", json=request_body("messages", stream=False, reasoning=1, tool_call=True))
    data = await resp.json()
    assert [block["type"] for block in data["content"]] == ["thinking", "tool_use"]
    assert data["content"][0]["thinking"] == "r0 " and data["content"][0]["signature"]
    assert data["content"][1]["input"] == {"city": "w0 w1 w2"}
    assert data["stop_reason"] == "tool_use" and data["usage"]["output_tokens"] == 4
    text = await (await client.post(PATH, json=request_body("messages", stream=False))).json()
    assert text["content"] == [{"type": "text", "text": words(3)}] and text["stop_reason"] == "end_turn"


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "invalid_request_error"), (429, "rate_limit_error"), (500, "api_error"), (529, "overloaded_error")],
)
async def test_errors_are_anthropic_shaped(client: TestClient, status: int, kind: str) -> None:
    resp = await client.post(PATH, json=request_body("messages", status=status))
    assert resp.status == status
    assert await resp.json() == {"type": "error", "error": {"type": kind, "message": "mock error"}}


async def test_bad_body_is_an_anthropic_400(client: TestClient) -> None:
    resp = await client.post(PATH, json=request_body("messages", nope=1))
    assert resp.status == 400
    assert (await resp.json())["error"] == {"type": "invalid_request_error", "message": "unknown mock option 'nope'"}
