"""The mock provider alone: its bytes, its failure modes and what it records."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestClient

from cancelproxy.mock import MockDefaults, create_mock_app, start_mock

CHAT = "/v1/chat/completions"


def words(n: int) -> str:
    return "".join(f"w{i} " for i in range(n))


def body(stream: bool = True, usage: bool = False, **mock: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": "m-test",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there world"}],
        "stream": stream,
        "mock": mock,
    }
    if usage:
        payload["stream_options"] = {"include_usage": True}
    return payload


def events(raw: bytes) -> list[Any]:
    """SSE data payloads in order (``[DONE]`` kept as the string); comments skipped."""
    out: list[Any] = []
    for block in raw.split(b"\n\n"):
        if block.startswith(b"data: "):
            data = block[len(b"data: ") :].decode()
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def deltas(chunks: list[Any]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks if isinstance(c, dict) and c["choices"]]


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    # rate 0: no sleeps unless a test asks for them.
    return await aiohttp_client(create_mock_app(MockDefaults(tokens=5, rate=0)))


async def record(client: TestClient, tag: str, wait: str = "ended") -> dict[str, Any]:
    resp = await client.get(f"/_mock/requests/{tag}", params={"wait": wait, "timeout": "5"})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_stream_bytes_are_deterministic(client: TestClient) -> None:
    raws = []
    for _ in range(2):
        resp = await client.post(CHAT, json=body(tag="same"))
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert resp.headers["Cache-Control"] == "no-cache"
        raws.append(await resp.read())
    assert raws[0] == raws[1]
    first = raws[0].split(b"\n\n")[0]
    assert first == (
        b'data: {"id":"chatcmpl-mock-same","object":"chat.completion.chunk","created":1700000000,'
        b'"model":"m-test","system_fingerprint":"fp_mock","choices":[{"index":0,'
        b'"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}'
    )
    assert raws[0].endswith(b"data: [DONE]\n\n")


async def test_stream_content_and_finish(client: TestClient) -> None:
    resp = await client.post(CHAT, json=body(tokens=12, tag="c"))
    chunks = events(await resp.read())
    assert chunks[-1] == "[DONE]"
    assert all("usage" not in c for c in chunks[:-1])
    ds = deltas(chunks[:-1])
    assert ds[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content", "") for d in ds) == words(12)
    assert len(ds) == 1 + 12 + 1
    assert ds[-1] == {} and chunks[-2]["choices"][0]["finish_reason"] == "stop"
    rec = await record(client, "c")
    assert rec["state"] == "completed" and rec["tokens_sent"] == 12
    assert rec["model"] == "m-test" and rec["stream"] is True
    assert rec["ended_at"] >= rec["started_at"]


async def test_usage_chunk_only_with_include_usage(client: TestClient) -> None:
    chunks = events(await (await client.post(CHAT, json=body(usage=True, tokens=7))).read())
    assert all(c["usage"] is None for c in chunks[:-2])
    assert chunks[-2]["choices"] == []
    # 2 words in the system message + 3 in the user's.
    assert chunks[-2]["usage"] == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    assert chunks[-1] == "[DONE]"


async def test_reasoning_deltas_come_first(client: TestClient) -> None:
    chunks = events(await (await client.post(CHAT, json=body(usage=True, reasoning=3, tokens=2))).read())
    ds = deltas(chunks[:-2])
    assert [d for d in ds if "reasoning_content" in d] == ds[1:4]
    assert "".join(d["reasoning_content"] for d in ds[1:4]) == "r0 r1 r2 "
    assert "".join(d.get("content", "") for d in ds[4:]) == words(2)
    assert chunks[-2]["usage"]["completion_tokens"] == 5


async def test_tool_call_arguments_are_valid_json(client: TestClient) -> None:
    chunks = events(await (await client.post(CHAT, json=body(tool_call=True, tokens=9))).read())
    ds = deltas(chunks[:-1])
    assert ds[1] == {
        "tool_calls": [
            {"index": 0, "id": "call_mock_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
        ]
    }
    pieces = [d["tool_calls"][0]["function"]["arguments"] for d in ds[2:-1]]
    assert len(pieces) == 9
    assert json.loads("".join(pieces)) == {"city": "w0 w1 w2 w3 w4 w5 w6 w7 w8"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


async def test_non_stream_completion(client: TestClient) -> None:
    resp = await client.post(CHAT, json=body(stream=False, tokens=4, reasoning=2, tag="ns"))
    assert resp.status == 200
    data = await resp.json()
    assert data["id"] == "chatcmpl-mock-ns" and data["object"] == "chat.completion"
    assert data["model"] == "m-test" and data["created"] == 1700000000
    assert data["choices"] == [
        {
            "index": 0,
            "logprobs": None,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": words(4), "reasoning_content": "r0 r1 "},
        }
    ]
    assert data["usage"] == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
    rec = await record(client, "ns")
    assert rec["state"] == "completed" and rec["stream"] is False


async def test_non_stream_tool_call(client: TestClient) -> None:
    data = await (await client.post(CHAT, json=body(stream=False, tool_call=True, tokens=3))).json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"city": "w0 w1 w2"}


async def test_status_override(client: TestClient) -> None:
    resp = await client.post(CHAT, json=body(status=429, tag="busy"))
    assert resp.status == 429
    assert await resp.json() == {
        "error": {"message": "mock error", "type": "mock_error", "param": None, "code": "mock_429"}
    }
    rec = await record(client, "busy")
    assert rec["state"] == "failed" and rec["tokens_sent"] == 0


async def test_bad_mock_option_is_400(client: TestClient) -> None:
    resp = await client.post(CHAT, json=body(tokens="many"))
    assert resp.status == 400
    assert (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_keepalive_comments_during_silence(client: TestClient) -> None:
    resp = await client.post(CHAT, json=body(silence_s=0.35, keepalive_s=0.1, tokens=2))
    raw = await resp.read()
    head, _, rest = raw.partition(b"data: ")
    # Nominally 3 (at 0.1, 0.2, 0.3 s); a loaded machine's late timers may skip the last.
    assert head in (b": keep-alive\n\n" * 3, b": keep-alive\n\n" * 2)
    assert b"keep-alive" not in rest
    assert "".join(d.get("content", "") for d in deltas(events(raw)[:-1])) == words(2)


async def test_fail_after_resets_the_stream(client: TestClient) -> None:
    resp = await client.post(CHAT, json=body(fail_after=3, tokens=10, tag="boom"))
    assert resp.status == 200
    received = b""
    with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
        async for piece in resp.content.iter_any():
            received += piece
    assert b"[DONE]" not in received
    rec = await record(client, "boom")
    assert rec["state"] == "failed" and rec["tokens_sent"] == 3


async def test_burst_then_reset_writes_the_rest_first(client: TestClient) -> None:
    resp = await client.post(CHAT, json=body(fail_after=2, burst_then_reset=True, tokens=6, tag="burst"))
    received = b""
    with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
        async for piece in resp.content.iter_any():
            received += piece
    # The burst reached the client before the reset did; the end of the answer did not.
    assert "".join(d.get("content", "") for d in deltas(events(received))) == words(6)
    assert b'finish_reason":"stop' not in received and b"[DONE]" not in received
    rec = await record(client, "burst")
    assert rec["state"] == "failed" and rec["tokens_sent"] == 6


async def test_non_stream_fail_after_sends_half_a_body(client: TestClient) -> None:
    resp = await client.post(CHAT, json=body(stream=False, fail_after=1, tag="half"))
    assert resp.status == 200
    with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
        await resp.read()
    assert (await record(client, "half"))["state"] == "failed"


async def test_client_closing_while_silent_is_noticed(client: TestClient) -> None:
    resp = await client.post(CHAT, json=body(silence_s=30, tag="quiet"))
    assert resp.status == 200  # headers come first; the first delta is 30 s away
    assert (await record(client, "quiet", wait="started"))["state"] == "running"
    resp.close()
    rec = await record(client, "quiet")
    assert rec["state"] == "closed_by_client" and rec["tokens_sent"] == 0
    assert rec["ended_at"] - rec["started_at"] < 5


async def test_headers_after_silence(client: TestClient) -> None:
    sending = asyncio.ensure_future(client.post(CHAT, json=body(silence_s=30, headers_after_silence=True, tag="q2")))
    await record(client, "q2", wait="started")
    await asyncio.sleep(0.05)  # not synchronisation: a grace period in which headers must NOT arrive
    assert not sending.done()
    sending.cancel()
    assert (await record(client, "q2"))["state"] == "closed_by_client"
    resp = await client.post(CHAT, json=body(silence_s=0.05, headers_after_silence=True, tokens=2))
    assert "".join(d.get("content", "") for d in deltas(events(await resp.read()))) == words(2)
    bad = await client.post(CHAT, json=body(silence_s=1, headers_after_silence=True, keepalive_s=0.1))
    assert bad.status == 400


async def test_client_closing_mid_stream_is_noticed(client: TestClient) -> None:
    resp = await client.post(CHAT, json=body(tokens=1000, rate=50, tag="mid"))
    seen = b""
    while seen.count(b'"content":"w') < 3:
        seen += await resp.content.readany()
    resp.close()
    rec = await record(client, "mid")
    assert rec["state"] == "closed_by_client"
    assert rec["ended_at"] is not None and 3 <= rec["tokens_sent"] < 1000


async def test_non_stream_request_can_be_cancelled(client: TestClient) -> None:
    task = asyncio.ensure_future(client.post(CHAT, json=body(stream=False, silence_s=30, tag="slow")))
    assert (await record(client, "slow", wait="started"))["state"] == "running"
    task.cancel()
    rec = await record(client, "slow")
    assert rec["state"] == "closed_by_client"


async def test_wait_times_out_with_408(client: TestClient) -> None:
    resp = await client.get("/_mock/requests/never", params={"wait": "started", "timeout": "0.05"})
    assert resp.status == 408
    assert (await client.get("/_mock/requests/never")).status == 404


async def test_records_headers_list_and_clear(client: TestClient) -> None:
    await (await client.post(CHAT, json=body(), headers={"X-Trace": "abc"})).read()
    await (await client.post("/chat/completions", json=body(stream=False))).read()
    listed = (await (await client.get("/_mock/requests")).json())["requests"]
    assert [r["tag"] for r in listed] == ["req-1", "req-2"] and [r["seq"] for r in listed] == [1, 2]
    assert listed[0]["headers"]["X-Trace"] == "abc"
    assert isinstance(listed[0]["peer_port"], int) and listed[0]["peer_port"] > 0
    assert listed[1]["body"]["mock"] == {}
    assert (await client.delete("/_mock/requests")).status == 200
    assert (await (await client.get("/_mock/requests")).json()) == {"requests": []}


async def test_models(client: TestClient) -> None:
    for path in ("/v1/models", "/models"):
        data = await (await client.get(path)).json()
        assert data == {
            "object": "list",
            "data": [{"id": "mock-1", "object": "model", "created": 1700000000, "owned_by": "cancelproxy-mock"}],
        }


async def test_openai_sdk_streams_from_a_real_port() -> None:
    runner, base_url = await start_mock(defaults=MockDefaults(tokens=8, rate=0))
    try:
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        assert not base_url.endswith(":0/v1")
        async with openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as sdk:
            stream = await sdk.chat.completions.create(
                model="mock-1",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            text, usage, finish = "", None, None
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finish = chunk.choices[0].finish_reason or finish
                usage = chunk.usage or usage
            assert text == words(8) and finish == "stop"
            assert usage is not None and usage.completion_tokens == 8 and usage.prompt_tokens == 1
            tool = await sdk.chat.completions.create(
                model="mock-1",
                messages=[{"role": "user", "content": "weather?"}],
                extra_body={"mock": {"tool_call": True, "tokens": 4}},
            )
            assert tool.choices[0].message.tool_calls[0].function.name == "get_weather"
    finally:
        await runner.cleanup()
