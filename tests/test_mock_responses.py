"""The mock's Responses API wire format, byte by byte."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cancelproxy.mock import MockDefaults, create_mock_app

from .mock_client import record, request_body, sse, words

PATH = "/v1/responses"
TEXT_EVENTS = [
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 3,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(create_mock_app(MockDefaults(tokens=3, rate=0)))


async def stream(client: TestClient, path: str = PATH, **mock: Any) -> list[tuple[str | None, Any]]:
    resp = await client.post(path, json=request_body("responses", **mock))
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    raw = await resp.read()
    assert b"[DONE]" not in raw
    events = sse(raw)
    # Every event names its type twice (the SDKs dispatch on data.type) and counts from 0.
    assert all(name == data["type"] for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    return events


def types(events: list[tuple[str | None, Any]]) -> list[str]:
    return [data["type"] for _, data in events]


async def test_text_stream_sequence_and_final_response(client: TestClient) -> None:
    events = await stream(client, tag="t")
    assert types(events) == ["response.created", "response.in_progress", *TEXT_EVENTS, "response.completed"]
    created = events[0][1]["response"]
    assert created["id"] == "resp_mock_t" and created["status"] == "in_progress" and created["output"] == []
    assert created["object"] == "response" and created["model"] == "m-test" and created["usage"] is None
    assert created["instructions"] == "be brief"
    added = events[2][1]
    assert added["output_index"] == 0
    assert added["item"] == {
        "id": "msg_mock_t",
        "type": "message",
        "status": "in_progress",
        "content": [],
        "role": "assistant",
    }
    deltas = [d for _, d in events if d["type"] == "response.output_text.delta"]
    assert "".join(d["delta"] for d in deltas) == words(3)
    assert all(d["item_id"] == "msg_mock_t" and d["content_index"] == 0 for d in deltas)
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": words(3)}
    assert events[-3][1]["part"] == part
    final = events[-1][1]["response"]
    assert final["status"] == "completed" and final["id"] == "resp_mock_t"
    assert final["output"] == [{**added["item"], "status": "completed", "content": [part]}]
    # Five prompt words: "be brief" (instructions) + "hello there world" (input).
    assert final["usage"] == {
        "input_tokens": 5,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 8,
    }
    rec = await record(client, "t")
    assert rec["protocol"] == "responses" and rec["id"] == "resp_mock_t"
    assert rec["state"] == "completed" and rec["tokens_sent"] == 3


async def test_reasoning_item_comes_first_with_summary_deltas(client: TestClient) -> None:
    events = await stream(client, reasoning=2, tag="r")
    assert types(events)[2:9] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
    ]
    assert types(events)[9:] == [*TEXT_EVENTS, "response.completed"]
    assert events[2][1]["item"] == {"id": "rs_mock_r", "type": "reasoning", "summary": []}
    assert events[6][1]["text"] == "r0 r1 " and events[6][1]["summary_index"] == 0
    assert events[9][1]["output_index"] == 1
    final = events[-1][1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["output"][0]["summary"] == [{"type": "summary_text", "text": "r0 r1 "}]
    assert final["usage"]["output_tokens"] == 5 and final["usage"]["output_tokens_details"]["reasoning_tokens"] == 2
    assert (await record(client, "r"))["tokens_sent"] == 5


async def test_function_call_item_streams_its_arguments(client: TestClient) -> None:
    events = await stream(client, tool_call=True, tag="f")
    assert types(events)[2:] == [
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * 3,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    item = events[2][1]["item"]
    assert item == {
        "id": "fc_mock_f",
        "type": "function_call",
        "status": "in_progress",
        "arguments": "",
        "call_id": "call_mock_1",
        "name": "get_weather",
    }
    pieces = "".join(d["delta"] for _, d in events if d["type"] == "response.function_call_arguments.delta")
    assert json.loads(pieces) == {"city": "w0 w1 w2"} and events[-3][1]["arguments"] == pieces
    assert events[-1][1]["response"]["output"] == [{**item, "status": "completed", "arguments": pieces}]


async def test_refusal_is_a_refusal_part(client: TestClient) -> None:
    events = await stream(client, refusal=True)
    assert types(events)[3:8] == [
        "response.content_part.added",
        *["response.refusal.delta"] * 3,
        "response.refusal.done",
    ]
    assert events[3][1]["part"] == {"type": "refusal", "refusal": ""}
    assert events[7][1]["refusal"] == words(3)
    content = events[-1][1]["response"]["output"][0]["content"]
    assert content == [{"type": "refusal", "refusal": words(3)}]


async def test_error_after_ends_with_response_failed_and_the_partial_output(client: TestClient) -> None:
    events = await stream(client, error_after=2, tokens=5, tag="e")
    assert types(events)[-3:] == ["response.output_text.delta"] * 2 + ["response.failed"]
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed" and failed["error"] == {
        "code": "server_error",
        "message": "mock error mid-stream",
    }
    assert failed["output"][0]["status"] == "incomplete"
    assert failed["output"][0]["content"][0]["text"] == "w0 w1 "
    rec = await record(client, "e")
    assert rec["state"] == "failed" and rec["tokens_sent"] == 2


async def test_route_without_v1_and_echoed_request_fields(client: TestClient) -> None:
    body = request_body("responses", tag="plain")
    body |= {"tools": [{"type": "function", "name": "get_weather"}], "metadata": {"k": "v"}, "store": False}
    raw = await (await client.post("/responses", json=body)).read()
    response = sse(raw)[0][1]["response"]
    assert response["tools"] == body["tools"] and response["metadata"] == {"k": "v"} and response["store"] is False


async def test_non_streaming_is_the_response_object(client: TestClient) -> None:
    resp = await client.post(PATH, json=request_body("responses", stream=False, reasoning=1, tag="ns"))
    assert resp.status == 200
    data = await resp.json()
    assert data["id"] == "resp_mock_ns" and data["object"] == "response" and data["status"] == "completed"
    assert [item["type"] for item in data["output"]] == ["reasoning", "message"]
    assert data["output"][1]["content"][0]["text"] == words(3)
    assert data["usage"]["total_tokens"] == 5 + 4


async def test_errors_are_openai_shaped(client: TestClient) -> None:
    resp = await client.post(PATH, json=request_body("responses", status=503))
    assert resp.status == 503
    assert await resp.json() == {
        "error": {"message": "mock error", "type": "mock_error", "param": None, "code": "mock_503"}
    }
    bad = await client.post(PATH, json=request_body("responses", tokens="many"))
    assert bad.status == 400 and (await bad.json())["error"]["type"] == "invalid_request_error"
