"""Pass-through, end to end: what a client that never cancels gets is the provider's answer."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp
import openai
import pytest
from multidict import CIMultiDict

from .conftest import MockProvider, Proxy
from .helpers import content_of, provider_request, read_record, sse_content

USER_KEY = "sk-user-a-0123456789abcdef"


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def _raw(
    url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, CIMultiDict[str], bytes]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.post(url, json=body, headers=headers or {}) as response:
            return response.status, CIMultiDict(response.headers), await response.read()


async def test_sdk_stream_through_the_proxy(proxy: Proxy) -> None:
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=USER_KEY, max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="mock-1",
            messages=[{"role": "user", "content": "hello there"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"mock": {"tokens": 30, "rate": 0, "reasoning": 3}},
        )
        request_id = stream.response.headers["x-request-id"]
        session_id = stream.response.headers["x-session-id"]
        chunks = [chunk async for chunk in stream]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == content_of(30)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 33
    assert request_id.startswith("req_") and session_id.startswith("sess_")

    record = await read_record(proxy.root, request_id, USER_KEY)
    assert record["status"] == "completed"
    assert record["stop_reason"] is None
    assert record["content"] == content
    assert record["reasoning_content"] == "".join(f"r{i} " for i in range(3))
    assert record["finish_reason"] == "stop"
    assert record["usage"] == {"prompt_tokens": 2, "completion_tokens": 33, "total_tokens": 35}
    assert record["upstream"] == "mock" and record["model"] == "mock-1" and record["stream"] is True
    assert record["upstream_id"].startswith("chatcmpl-mock-")
    assert record["created_at"] <= record["first_token_at"] <= record["ended_at"]


async def test_sdk_non_streaming_through_the_proxy(proxy: Proxy) -> None:
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=USER_KEY, max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="mock-1",
            messages=[{"role": "user", "content": "hello"}],
            extra_body={"mock": {"tokens": 12, "rate": 0}},
        )
        completion = raw.parse()
    assert completion.choices[0].message.content == content_of(12)
    record = await read_record(proxy.root, raw.headers["x-request-id"], USER_KEY)
    assert (record["status"], record["stream"], record["content"]) == ("completed", False, content_of(12))
    assert record["usage"]["completion_tokens"] == 12 and "estimated" not in record["usage"]


async def test_sdk_tool_call_stream_is_recorded(proxy: Proxy) -> None:
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=USER_KEY, max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="mock-1",
            messages=[{"role": "user", "content": "weather?"}],
            stream=True,
            extra_body={"mock": {"tokens": 6, "rate": 0, "tool_call": True}},
        )
        request_id = stream.response.headers["x-request-id"]
        arguments = "".join(
            [
                call.function.arguments or ""
                async for chunk in stream
                if chunk.choices and chunk.choices[0].delta.tool_calls
                for call in chunk.choices[0].delta.tool_calls
                if call.function
            ]
        )
    record = await read_record(proxy.root, request_id, USER_KEY)
    assert record["finish_reason"] == "tool_calls"
    (call,) = record["tool_calls"]
    assert call["id"] == "call_mock_1" and call["function"]["name"] == "get_weather"
    assert call["function"]["arguments"] == arguments
    json.loads(arguments)


@pytest.mark.parametrize("client_asks_usage", [True, False], ids=["client-asks-usage", "proxy-asks-usage"])
async def test_raw_stream_bytes_equal_a_direct_request(
    proxy: Proxy, mock_provider: MockProvider, client_asks_usage: bool
) -> None:
    body: dict[str, Any] = {
        "model": "mock-1",
        "messages": [{"role": "user", "content": "same bytes please"}],
        "stream": True,
        "mock": {"tokens": 25, "rate": 0, "reasoning": 2, "tag": _unique("bytes")},
    }
    if client_asks_usage:
        body["stream_options"] = {"include_usage": True}
    direct_status, direct_headers, direct = await _raw(f"{mock_provider.base_url}/chat/completions", body)
    status, headers, proxied = await _raw(f"{proxy.base_url}/chat/completions", body)
    assert (status, direct_status) == (200, 200)
    assert proxied == direct
    assert (b'"usage"' in proxied) is client_asks_usage
    assert sse_content(proxied) == content_of(25)
    assert headers["Content-Type"] == direct_headers["Content-Type"]
    assert headers["Cache-Control"] == "no-cache"
    assert "Content-Length" not in headers
    # Either way the record has the provider's exact usage.
    record = await read_record(proxy.root, headers["X-Request-Id"], None)  # it was made without a key
    assert record["usage"] == {"prompt_tokens": 3, "completion_tokens": 27, "total_tokens": 30}


async def test_non_streaming_bytes_and_status_equal_a_direct_request(proxy: Proxy, mock_provider: MockProvider) -> None:
    body = {
        "model": "mock-1",
        "messages": [{"role": "user", "content": "x"}],
        "mock": {"tokens": 5, "rate": 0, "tag": _unique("json-bytes")},
    }
    proxied = await _raw(f"{proxy.base_url}/chat/completions", body)
    direct = await _raw(f"{mock_provider.base_url}/chat/completions", body)
    assert (proxied[0], proxied[2]) == (direct[0], direct[2]) == (200, direct[2])
    assert proxied[1]["Content-Type"] == direct[1]["Content-Type"]
    # Byte for byte, so the provider's length holds (and no chunked framing).
    assert proxied[1]["Content-Length"] == direct[1]["Content-Length"] == str(len(direct[2]))
    assert "Transfer-Encoding" not in proxied[1]
    error_body = {**body, "mock": {"status": 429}}
    direct = await _raw(f"{mock_provider.base_url}/chat/completions", error_body)
    proxied = await _raw(f"{proxy.base_url}/chat/completions", error_body)
    assert (proxied[0], proxied[2]) == (direct[0], direct[2]) == (429, direct[2])


async def test_upstream_errors_pass_through_to_the_sdk(proxy: Proxy) -> None:
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=USER_KEY, max_retries=0) as client:
        try:
            await client.chat.completions.create(
                model="mock-1", messages=[{"role": "user", "content": "x"}], extra_body={"mock": {"status": 429}}
            )
        except openai.RateLimitError as exc:
            request_id = exc.response.headers["x-request-id"]
            assert exc.body["code"] == "mock_429"  # type: ignore[index]
        else:
            raise AssertionError("a 429 from the provider must reach the client")
    record = await read_record(proxy.root, request_id, USER_KEY)
    assert record["status"] == "failed"
    assert record["error"]["status"] == 429


async def test_plain_routes_pass_through_with_query_and_headers(proxy: Proxy, mock_provider: MockProvider) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proxy.base_url}/models?limit=5&after=a%2Fb") as proxied:
            proxied_body = await proxied.read()
            assert proxied.status == 200
            assert proxied.headers["X-Request-Id"].startswith("req_")
        async with session.get(f"{mock_provider.base_url}/models") as direct:
            assert proxied_body == await direct.read()
        async with session.get(f"{proxy.root}/mock/v1/models") as prefixed:
            assert prefixed.status == 200 and await prefixed.read() == proxied_body


async def test_headers_crossing_the_proxy(proxy: Proxy, mock_provider: MockProvider) -> None:
    tag = _unique("headers")
    body = {"model": "mock-1", "messages": [], "mock": {"tokens": 1, "rate": 0, "tag": tag}}
    status, _, _ = await _raw(
        f"{proxy.base_url}/chat/completions",
        body,
        {
            "Authorization": "Bearer sk-client-own-key",
            "X-Session-Id": "chat-42",
            "X-Custom": "kept",
            "User-Agent": "my-app/1.0",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "dropped",
        },
    )
    assert status == 200
    seen = {k.lower(): v for k, v in (await provider_request(mock_provider.root, tag))["headers"].items()}
    assert seen["authorization"] == "Bearer sk-client-own-key"  # drop-in: the client's key goes through
    assert seen["x-custom"] == "kept"
    assert seen["host"] == f"127.0.0.1:{mock_provider.port}"
    assert "x-session-id" not in seen and "x-hop" not in seen
    assert seen["user-agent"] == "my-app/1.0"  # the client's, not aiohttp's


async def test_configured_key_replaces_the_clients(proxy: Proxy, mock_provider: MockProvider) -> None:
    tag = _unique("keyed")
    body = {"model": "keyed-1", "messages": [], "mock": {"tokens": 1, "rate": 0, "tag": tag}}
    status, _, _ = await _raw(f"{proxy.base_url}/chat/completions", body, {"Authorization": "Bearer sk-client"})
    assert status == 200
    seen = {k.lower(): v for k, v in (await provider_request(mock_provider.root, tag))["headers"].items()}
    assert seen["authorization"] == "Bearer sk-upstream-secret-0123456789"


async def test_upstream_prefix_route(proxy: Proxy) -> None:
    body = {"model": "anything", "messages": [], "mock": {"tokens": 3, "rate": 0}}
    status, headers, raw = await _raw(f"{proxy.root}/mock/v1/chat/completions", body)
    assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"] == content_of(3)
    status, _, raw = await _raw(f"{proxy.root}/nosuch/v1/chat/completions", body)
    assert status == 404 and json.loads(raw)["error"]["code"] == "unknown_upstream"
