"""The Responses API through ``python proxy.py``: openai-python's plain iterator and ``.stream()`` helper.

Stopped through each cancel route and through ``responses.cancel(id)``, the
helper still returns a final response, ``status == "cancelled"`` with the
partial text, and nothing raises; the provider's socket is closed before the
ack; the record holds exactly what the SDK showed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from .conftest import MockProvider, Proxy
from .helpers import (
    TCP_ESTABLISHED,
    content_of,
    post_ok,
    provider_request,
    read_record,
    sdk_extra,
    tcp_state,
    unique,
)

KEY = "sk-responses-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
CLOSE_BOUND_S = 0.5
ROUTES = {
    "session": "/sessions/{sid}/cancel",
    "frontend": "/api/chat/cancel/{sid}",
    "request": "/requests/{rid}/cancel",
}


def _client(proxy: Proxy | MockProvider, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.base_url, api_key=key, max_retries=0)


async def test_a_whole_stream_is_byte_identical_to_a_direct_one(proxy: Proxy, mock_provider: MockProvider) -> None:
    body = {"model": "mock-1", "input": "hi", "stream": True, "mock": {"tokens": 30, "rate": 0, "reasoning": 3}}
    raw: list[bytes] = []
    async with aiohttp.ClientSession() as session:
        for root in (mock_provider.base_url, proxy.base_url):
            tag = {"tag": "responses-bytes"}
            async with session.post(
                f"{root}/responses", json={**body, "mock": {**body["mock"], **tag}}, headers=AUTH
            ) as r:
                raw.append(await r.read())
                if root == proxy.base_url:
                    request_id = r.headers["X-Request-Id"]
    assert raw[0] == raw[1]
    record = await read_record(proxy.root, request_id, KEY)
    assert (record["protocol"], record["status"], record["content"]) == ("responses", "completed", content_of(30))
    assert record["reasoning_content"] == "".join(f"r{i} " for i in range(3))
    assert record["upstream_id"] == "resp_mock_responses-bytes"
    assert record["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": 33,
        "total_tokens": 34,
        "reasoning_tokens": 3,
        "cached_tokens": 0,
    }


async def test_the_helper_and_a_function_call(proxy: Proxy) -> None:
    async with _client(proxy) as client:
        async with client.responses.stream(
            model="mock-1", input="hi", **sdk_extra({"tokens": 4, "rate": 0, "tool_call": True})
        ) as stream:
            final = await stream.get_final_response()
            request_id = stream._response.headers["x-request-id"]  # type: ignore[attr-defined]
    (call,) = [item for item in final.output if item.type == "function_call"]
    record = await read_record(proxy.root, request_id, KEY)
    assert record["tool_calls"] == [
        {"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    ]
    assert record["status"] == "completed" and record["finish_reason"] == "completed"


@pytest.mark.parametrize("route", [*sorted(ROUTES), "responses.cancel"])
async def test_cancel_ends_the_helper_with_a_cancelled_response(
    proxy: Proxy, mock_provider: MockProvider, route: str
) -> None:
    sid, tag = unique("resp-sess"), unique(f"resp-cancel-{route}")
    shown: list[str] = []
    ack: Any = None
    async with _client(proxy) as client:
        async with client.responses.stream(
            model="mock-1", input="a long story", **sdk_extra({"tokens": 500, "rate": 50, "tag": tag}, sid)
        ) as stream:
            request_id = stream._response.headers["x-request-id"]  # type: ignore[attr-defined]
            upstream = await provider_request(mock_provider.root, tag, wait="started")
            response_id = None
            async for event in stream:  # must end without raising
                if event.type == "response.created":
                    response_id = event.response.id
                if event.type == "response.output_text.delta":
                    shown.append(event.delta)
                if len(shown) == 5 and ack is None:
                    if route == "responses.cancel":
                        assert response_id is not None
                        ack = await client.responses.cancel(response_id)
                    else:
                        ack = await post_ok(proxy.root + ROUTES[route].format(sid=sid, rid=request_id), AUTH)
                    socket_at_ack = tcp_state(mock_provider.port, upstream["peer_port"])
            final = await stream.get_final_response()
    assert socket_at_ack != TCP_ESTABLISHED  # the provider had its FIN before the ack
    if route == "responses.cancel":
        assert (ack.id, ack.status, ack.output_text) == (response_id, "cancelled", "".join(shown))
    else:
        assert ack["request_ids"] == [request_id]
    assert (final.status, final.output_text) == ("cancelled", "".join(shown))
    assert 5 <= len(shown) < 500
    record = await read_record(proxy.root, request_id, KEY)
    assert (record["status"], record["stop_reason"], record["content"]) == ("stopped", "cancel", "".join(shown))
    assert record["usage"]["estimated"] is True and record["usage"]["completion_tokens"] == len(shown)
    seen = await provider_request(mock_provider.root, tag, wait="ended")
    assert seen["state"] == "closed_by_client"


async def test_the_plain_iterator_ends_on_the_cancelled_response(proxy: Proxy, mock_provider: MockProvider) -> None:
    sid, tag = unique("resp-sess"), unique("resp-plain")
    async with _client(proxy) as client:
        stream = await client.responses.create(
            model="mock-1", input="x", stream=True, **sdk_extra({"tokens": 500, "rate": 50, "tag": tag}, sid)
        )
        await provider_request(mock_provider.root, tag, wait="started")
        types: list[str] = []
        async for event in stream:
            types.append(event.type)
            if types.count("response.output_text.delta") == 2:
                await post_ok(f"{proxy.root}/sessions/{sid}/cancel", AUTH)
    assert types[-1] == "response.completed" and event.response.status == "cancelled"  # type: ignore[union-attr]
    assert [e.sequence_number for e in [event]] == [len(types) - 1]  # type: ignore[union-attr]


async def test_a_cancel_before_the_provider_answers_still_ends_the_stream(
    proxy: Proxy, mock_provider: MockProvider
) -> None:
    """No event was sent yet: the ending opens the response (response.created) before completing it."""
    sid, tag = unique("resp-sess"), unique("resp-queued")
    async with _client(proxy) as client:
        mock = {"silence_s": 60, "headers_after_silence": True, "tag": tag}
        creating = asyncio.create_task(
            client.responses.create(model="mock-1", input="x", stream=True, **sdk_extra(mock, sid))
        )
        await provider_request(mock_provider.root, tag, wait="started")
        await post_ok(f"{proxy.root}/sessions/{sid}/cancel", AUTH)
        events = [event async for event in await creating]
    assert [e.type for e in events] == ["response.created", "response.completed"]
    assert [e.sequence_number for e in events] == [0, 1]
    assert events[-1].response.status == "cancelled" and events[-1].response.output == []  # type: ignore[union-attr]


async def test_a_client_that_leaves_closes_the_provider(proxy: Proxy, mock_provider: MockProvider) -> None:
    tag = unique("resp-leave")
    async with _client(proxy) as client:
        stream = await client.responses.create(
            model="mock-1", input="x", stream=True, **sdk_extra({"tokens": 500, "rate": 50, "tag": tag})
        )
        request_id = stream.response.headers["x-request-id"]
        async for event in stream:
            if event.type == "response.output_text.delta":
                break
        closed_at = time.monotonic()
        await stream.close()
        seen = await provider_request(mock_provider.root, tag, wait="ended")
    assert seen["state"] == "closed_by_client" and seen["ended_at"] - closed_at < CLOSE_BOUND_S
    record = await read_record(proxy.root, request_id, KEY)
    assert (record["status"], record["stop_reason"]) == ("stopped", "disconnect")


@pytest.mark.parametrize("knob", ["fail_after", "error_after"])
async def test_an_upstream_that_breaks_fails_the_stream_and_the_record(proxy: Proxy, knob: str) -> None:
    async with _client(proxy) as client:
        stream = await client.responses.create(
            model="mock-1", input="x", stream=True, **sdk_extra({"tokens": 20, "rate": 0, knob: 3})
        )
        request_id = stream.response.headers["x-request-id"]
        shown: list[str] = []
        with pytest.raises(openai.APIError):
            async for event in stream:
                if event.type == "response.output_text.delta":
                    shown.append(event.delta)
                if event.type == "response.failed":
                    raise openai.APIError(event.response.error.message, request=stream.response.request, body=None)  # type: ignore[union-attr]
    record = await read_record(proxy.root, request_id, KEY)
    assert (record["status"], record["content"]) == ("failed", "".join(shown)) and record["error"]


async def test_a_non_streaming_response_and_its_cancel(proxy: Proxy, mock_provider: MockProvider) -> None:
    async with _client(proxy) as client:
        whole = await client.responses.create(model="mock-1", input="x", **sdk_extra({"tokens": 6, "rate": 0}))
        assert whole.output_text == content_of(6)
        sid, tag = unique("resp-sess"), unique("resp-nonstream")
        creating = asyncio.create_task(
            client.responses.create(
                model="mock-1", input="x", **sdk_extra({"tokens": 100, "rate": 10, "tag": tag}, sid)
            )
        )
        await provider_request(mock_provider.root, tag, wait="started")
        await post_ok(f"{proxy.root}/sessions/{sid}/cancel", AUTH)
        with pytest.raises(openai.APIStatusError) as raised:
            await creating
    assert raised.value.status_code == 499
    assert raised.value.body["code"] == "request_cancelled"  # type: ignore[index]


async def test_another_credential_can_neither_read_nor_cancel(proxy: Proxy, mock_provider: MockProvider) -> None:
    tag = unique("resp-access")
    async with _client(proxy) as client, _client(proxy, "sk-someone-else-0123456789") as other:
        stream = await client.responses.create(
            model="mock-1", input="x", stream=True, **sdk_extra({"tokens": 300, "rate": 50, "tag": tag})
        )
        request_id = stream.response.headers["x-request-id"]
        async for event in stream:
            if event.type == "response.created":
                with pytest.raises(openai.NotFoundError):
                    await other.responses.cancel(event.response.id)  # not ours: forwarded, and the mock knows none
                async with aiohttp.ClientSession() as session:
                    for method, path in (
                        ("GET", f"/requests/{request_id}"),
                        ("POST", f"/requests/{request_id}/cancel"),
                    ):
                        async with session.request(
                            method, proxy.root + path, headers={"Authorization": "Bearer sk-someone-else-0123456789"}
                        ) as r:
                            assert r.status == 404
                await client.responses.cancel(event.response.id)
    record = await read_record(proxy.root, request_id, KEY)
    assert (record["status"], record["stop_reason"]) == ("stopped", "cancel")


NODE_SCRIPT = """
import OpenAI from "openai";
const [base, mode, key] = process.argv.slice(2);
const client = new OpenAI({ baseURL: base, apiKey: key, maxRetries: 0 });
const sid = `node-${mode}-${Date.now()}`;
const mock = { tokens: 500, rate: 50 };
const stream = client.responses.stream(
  { model: "mock-1", input: "a long story", mock },
  { headers: { "X-Session-Id": sid } },
);
let shown = "";
let responseId = null;
stream.on("response.created", (e) => { responseId = e.response.id; });
stream.on("response.output_text.delta", async (e) => {
  shown += e.delta;
  if (shown.split(" ").length === 4) {
    if (mode === "cancel") await client.responses.cancel(responseId);
    else await fetch(base.replace(/\\/v1$/, "") + `/sessions/${sid}/cancel`, {
      method: "POST", headers: { Authorization: `Bearer ${key}` },
    });
  }
});
const final = await stream.finalResponse();
console.log(JSON.stringify({ status: final.status, text: final.output_text, shown, id: final.id, responseId }));
"""


@pytest.mark.parametrize("mode", ["route", "cancel"])
async def test_openai_node_helper_finishes_on_a_cancel(proxy: Proxy, node_sdks: Path, mode: str) -> None:
    """openai-node's helper replaces its snapshot with the terminal event's response: it must carry the partial."""
    (node_sdks / "responses-cancel.mjs").write_text(NODE_SCRIPT)
    result = await asyncio.to_thread(
        subprocess.run,
        ["node", "responses-cancel.mjs", proxy.base_url, mode, KEY],
        cwd=node_sdks,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["status"] == "cancelled" and out["id"] == out["responseId"]
    assert out["text"] and out["shown"].startswith(out["text"])  # the partial output, as far as it was sent
