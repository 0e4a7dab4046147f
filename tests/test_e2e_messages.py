"""Anthropic Messages and legacy completions through ``python proxy.py``, with the official SDKs.

The anthropic SDK's ``messages.stream()`` helper and its plain iterator end
cleanly on a cancel (``stop_reason`` = cancel_finish_reason, then
``message_stop``), ``get_final_message()`` returns the partial; openai-python's
``completions.create(stream=True)`` ends on a ``text_completion`` chunk whose
``finish_reason`` is "cancelled".
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import anthropic
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

KEY = "sk-messages-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}  # what anthropic 2's SDK sends its api_key as
CLOSE_BOUND_S = 0.5
HI = [{"role": "user", "content": "hi"}]


def _claude(proxy: Proxy | MockProvider) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=proxy.root, api_key=KEY, max_retries=0)


async def test_a_whole_stream_is_byte_identical_to_a_direct_one(proxy: Proxy, mock_provider: MockProvider) -> None:
    body = {
        "model": "mock-1",
        "max_tokens": 50,
        "messages": HI,
        "stream": True,
        "mock": {"tokens": 20, "rate": 0, "reasoning": 2},
    }
    raw: list[bytes] = []
    async with aiohttp.ClientSession() as session:
        for root in (mock_provider.base_url, proxy.base_url):
            async with session.post(
                f"{root}/messages", json={**body, "mock": {**body["mock"], "tag": "msg-bytes"}}, headers=AUTH
            ) as r:
                raw.append(await r.read())
                request_id = r.headers.get("X-Request-Id")
    assert raw[0] == raw[1]
    assert request_id is not None
    record = await read_record(proxy.root, request_id, KEY)
    assert (record["protocol"], record["status"], record["content"]) == ("messages", "completed", content_of(20))
    assert (record["reasoning_content"], record["finish_reason"]) == ("r0 r1 ", "end_turn")
    assert record["usage"] == {"prompt_tokens": 1, "completion_tokens": 22, "total_tokens": 23, "cached_tokens": 0}


@pytest.mark.parametrize("route", ["/sessions/{sid}/cancel", "/requests/{rid}/cancel"])
async def test_cancel_ends_the_helper_with_the_partial_message(
    proxy: Proxy, mock_provider: MockProvider, route: str
) -> None:
    sid, tag = unique("msg-sess"), unique("msg-cancel")
    shown: list[str] = []
    async with _claude(proxy) as claude:
        async with claude.messages.stream(
            model="mock-1", max_tokens=1000, messages=HI, **sdk_extra({"tokens": 500, "rate": 50, "tag": tag}, sid)
        ) as stream:
            request_id = stream.response.headers["x-request-id"]
            upstream = await provider_request(mock_provider.root, tag, wait="started")
            async for event in stream:  # must end without raising
                if event.type == "text":
                    shown.append(event.text)
                    if len(shown) == 5:
                        ack = await post_ok(proxy.root + route.format(sid=sid, rid=request_id), AUTH)
                        socket_at_ack = tcp_state(mock_provider.port, upstream["peer_port"])
            message = await stream.get_final_message()
    assert ack["request_ids"] == [request_id] and socket_at_ack != TCP_ESTABLISHED
    assert message.stop_reason == "cancelled"  # type: ignore[comparison-overlap]
    assert "".join(block.text for block in message.content if block.type == "text") == "".join(shown)
    record = await read_record(proxy.root, request_id, KEY)
    assert (record["status"], record["stop_reason"], record["content"]) == ("stopped", "cancel", "".join(shown))
    # message_start said what the prompt cost: only the output is counted.
    assert record["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": len(shown),
        "total_tokens": 1 + len(shown),
        "estimated": True,
    }


async def test_the_plain_iterator_ends_on_message_stop(proxy: Proxy, mock_provider: MockProvider) -> None:
    sid, tag = unique("msg-sess"), unique("msg-plain")
    async with _claude(proxy) as claude:
        stream = await claude.messages.create(
            model="mock-1",
            max_tokens=1000,
            messages=HI,
            stream=True,
            **sdk_extra({"tokens": 500, "rate": 50, "tag": tag}, sid),
        )
        types: list[str] = []
        async for event in stream:
            types.append(event.type)
            if types.count("content_block_delta") == 2:
                await post_ok(f"{proxy.root}/sessions/{sid}/cancel", AUTH)
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]


async def test_a_client_that_leaves_closes_the_provider(proxy: Proxy, mock_provider: MockProvider) -> None:
    tag = unique("msg-leave")
    async with _claude(proxy) as claude:
        stream = await claude.messages.create(
            model="mock-1",
            max_tokens=1000,
            messages=HI,
            stream=True,
            **sdk_extra({"tokens": 500, "rate": 50, "tag": tag}),
        )
        request_id = stream.response.headers["x-request-id"]
        async for event in stream:
            if event.type == "content_block_delta":
                break
        closed_at = time.monotonic()
        await stream.close()
        seen = await provider_request(mock_provider.root, tag, wait="ended")
    assert seen["state"] == "closed_by_client" and seen["ended_at"] - closed_at < CLOSE_BOUND_S
    record = await read_record(proxy.root, request_id, KEY)
    assert (record["status"], record["stop_reason"]) == ("stopped", "disconnect")


@pytest.mark.parametrize("knob", ["fail_after", "error_after"])
async def test_an_upstream_that_breaks_raises_in_the_sdk_and_fails_the_record(proxy: Proxy, knob: str) -> None:
    async with _claude(proxy) as claude:
        stream = await claude.messages.create(
            model="mock-1", max_tokens=100, messages=HI, stream=True, **sdk_extra({"tokens": 20, "rate": 0, knob: 3})
        )
        request_id = stream.response.headers["x-request-id"]
        shown: list[str] = []
        with pytest.raises(anthropic.APIError):
            async for event in stream:
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    shown.append(event.delta.text)
    record = await read_record(proxy.root, request_id, KEY)
    # A reset may take bytes still in flight with it; what the SDK showed is what was kept.
    assert (record["status"], record["content"]) == ("failed", "".join(shown)) and record["error"]


async def test_the_proxys_own_errors_take_anthropics_shape(proxy: Proxy, mock_provider: MockProvider) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{proxy.base_url}/messages", data=b"{not json", headers=AUTH) as answer:
            assert answer.status == 400
            body = await answer.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    sid, tag = unique("msg-sess"), unique("msg-nonstream")
    async with _claude(proxy) as claude:
        creating = asyncio.create_task(
            claude.messages.create(
                model="mock-1", max_tokens=100, messages=HI, **sdk_extra({"tokens": 100, "rate": 10, "tag": tag}, sid)
            )
        )
        await provider_request(mock_provider.root, tag, wait="started")
        await post_ok(f"{proxy.root}/sessions/{sid}/cancel", AUTH)
        with pytest.raises(anthropic.APIStatusError) as raised:
            await creating
    assert raised.value.status_code == 499
    assert raised.value.body["error"]["code"] == "request_cancelled"  # type: ignore[index]


async def test_a_configured_key_goes_upstream_as_x_api_key(proxy: Proxy, mock_provider: MockProvider) -> None:
    tag = unique("msg-keyed")
    async with _claude(proxy) as claude:
        await claude.messages.create(
            model="keyed-1", max_tokens=10, messages=HI, **sdk_extra({"tokens": 2, "rate": 0, "tag": tag})
        )
    headers = {k.lower(): v for k, v in (await provider_request(mock_provider.root, tag))["headers"].items()}
    assert headers["x-api-key"] == "sk-upstream-secret-0123456789" and "authorization" not in headers


async def test_another_credential_can_neither_read_nor_cancel(proxy: Proxy, mock_provider: MockProvider) -> None:
    tag = unique("msg-access")
    async with _claude(proxy) as claude:
        stream = await claude.messages.create(
            model="mock-1",
            max_tokens=1000,
            messages=HI,
            stream=True,
            **sdk_extra({"tokens": 300, "rate": 50, "tag": tag}),
        )
        request_id, sid = stream.response.headers["x-request-id"], stream.response.headers["x-session-id"]
        async with aiohttp.ClientSession() as session:
            for header in ({"x-api-key": KEY}, {"Authorization": "Bearer sk-other-0123456789"}, {}):
                async with session.post(f"{proxy.root}/sessions/{sid}/cancel", headers=header) as r:
                    assert (await r.json())["cancelled"] is False
                async with session.get(f"{proxy.root}/requests/{request_id}", headers=header) as r:
                    assert r.status == 404
        await stream.close()


async def test_completions_stream_cancel_and_leave(proxy: Proxy, mock_provider: MockProvider) -> None:
    sid, tag = unique("cmpl-sess"), unique("cmpl-cancel")
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0) as client:
        whole = await client.completions.create(
            model="mock-1", prompt="hi", stream=True, **sdk_extra({"tokens": 7, "rate": 0})
        )
        assert "".join([c.choices[0].text async for c in whole if c.choices]) == content_of(7)
        stream = await client.completions.create(
            model="mock-1", prompt="hi", stream=True, **sdk_extra({"tokens": 500, "rate": 50, "tag": tag}, sid)
        )
        request_id = stream.response.headers["x-request-id"]
        upstream = await provider_request(mock_provider.root, tag, wait="started")
        shown, finishes = [], []
        async for chunk in stream:
            for choice in chunk.choices:
                shown.append(choice.text)
                if choice.finish_reason:
                    finishes.append(choice.finish_reason)
            if len(shown) == 4:
                await post_ok(f"{proxy.root}/requests/{request_id}/cancel", AUTH)
                socket_at_ack = tcp_state(mock_provider.port, upstream["peer_port"])
    assert finishes == ["cancelled"] and socket_at_ack != TCP_ESTABLISHED
    record = await read_record(proxy.root, request_id, KEY)
    assert (record["protocol"], record["status"], record["content"]) == ("completions", "stopped", "".join(shown))
    assert record["usage"]["estimated"] is True


async def test_completions_usage_is_asked_and_hidden(proxy: Proxy, mock_provider: MockProvider) -> None:
    body = {"model": "mock-1", "prompt": "a b", "stream": True, "mock": {"tokens": 5, "rate": 0, "tag": "cmpl-bytes"}}
    raw: list[bytes] = []
    async with aiohttp.ClientSession() as session:
        for root in (mock_provider.base_url, proxy.base_url):
            async with session.post(f"{root}/completions", json=body, headers=AUTH) as r:
                raw.append(await r.read())
                request_id = r.headers.get("X-Request-Id")
    assert raw[0] == raw[1]  # the client never asked for usage: it sees none
    assert b'"usage"' not in raw[1]
    assert request_id is not None
    record = await read_record(proxy.root, request_id, KEY)
    assert record["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
