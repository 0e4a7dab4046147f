"""Stop, end to end: the official SDK → ``python proxy.py`` → the mock provider.

Each test checks the provider's side too: the kernel's state of the
provider's socket, and the mock's own record of when it saw the close.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import openai
import pytest

from .conftest import MockProvider, Proxy
from .helpers import TCP_ESTABLISHED, content_of, open_stream, provider_request, read_record, tcp_state

USER_KEY = "sk-user-a-0123456789abcdef"
# A generous bound, far below the provider's silence: the proxy must see the
# client leave at once, not at its next write. The benchmark gives real figures.
CLOSE_BOUND_S = 0.5

CANCEL_ROUTES = {
    "session": "/sessions/{sid}/cancel",
    "frontend": "/api/chat/cancel/{sid}",
    "request": "/requests/{rid}/cancel",
}


def _client(proxy: Proxy, key: str = USER_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.base_url, api_key=key, max_retries=0)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def _post(url: str, key: str = USER_KEY) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, headers={"Authorization": f"Bearer {key}"}) as response:
            return response.status, await response.json()


@pytest.mark.parametrize("route", sorted(CANCEL_ROUTES))
async def test_cancel_mid_stream(proxy: Proxy, mock_provider: MockProvider, route: str) -> None:
    sid, tag = _unique("sess"), _unique(f"cancel-{route}")
    async with _client(proxy) as client:
        stream = await open_stream(
            client, session_id=sid, prompt="tell me a long story", mock={"tokens": 500, "rate": 50, "tag": tag}
        )
        request_id = stream.response.headers["x-request-id"]
        assert stream.response.headers["x-session-id"] == sid
        upstream = await provider_request(mock_provider.root, tag, wait="started")

        received: list[str] = []
        finish_reasons: list[str] = []
        ack: dict[str, Any] | None = None
        socket_at_ack: str | None = None
        async for chunk in stream:  # must end without raising
            for choice in chunk.choices:
                if choice.delta.content:
                    received.append(choice.delta.content)
                if choice.finish_reason:
                    finish_reasons.append(choice.finish_reason)
            if len(received) >= 5 and ack is None:
                url = proxy.root + CANCEL_ROUTES[route].format(sid=sid, rid=request_id)
                status, ack = await _post(url)
                socket_at_ack = tcp_state(mock_provider.port, upstream["peer_port"])
                assert status == 200

    assert ack == {"success": True, "cancelled": True, "session_id": sid, "request_ids": [request_id]}
    # The provider's socket had received the FIN before the ack was sent.
    assert socket_at_ack != TCP_ESTABLISHED
    assert finish_reasons == ["cancelled"]
    content = "".join(received)
    assert 5 <= len(received) < 500
    assert content == content_of(len(received))

    seen = await provider_request(mock_provider.root, tag, wait="ended")
    assert seen["state"] == "closed_by_client"

    record = await read_record(proxy.root, request_id, USER_KEY)
    assert record["status"] == "stopped"
    assert record["stop_reason"] == "cancel"
    assert record["finish_reason"] == "cancelled"
    assert record["content"] == content  # exactly what the client was sent
    assert record["session_id"] == sid
    assert record["usage"]["estimated"] is True
    assert record["usage"]["completion_tokens"] == len(received)
    assert "credential" not in record

    # Cancelling twice is harmless.
    status, again = await _post(proxy.root + CANCEL_ROUTES[route].format(sid=sid, rid=request_id))
    assert (status, again) == (200, {"success": False, "cancelled": False, "session_id": sid, "request_ids": []})

    # The next turn of the same session is independent: no ghost tokens.
    async with _client(proxy) as client:
        follow = await client.chat.completions.create(
            model="mock-1",
            messages=[{"role": "user", "content": "next question"}],
            stream=True,
            extra_body={"mock": {"tokens": 8, "rate": 0}},
            extra_headers={"X-Session-Id": sid},
        )
        next_id = follow.response.headers["x-request-id"]
        next_content = "".join([c.choices[0].delta.content or "" async for c in follow if c.choices])
    assert next_content == content_of(8)
    assert (await read_record(proxy.root, next_id, USER_KEY))["content"] == content_of(8)
    assert (await read_record(proxy.root, request_id, USER_KEY))["content"] == content  # never changes again

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proxy.root}/sessions/{sid}", headers={"Authorization": f"Bearer {USER_KEY}"}) as r:
            session_view = await r.json()
    assert [r["request_id"] for r in session_view["requests"]] == [request_id, next_id]
    assert [r["status"] for r in session_view["requests"]] == ["stopped", "completed"]


async def test_cancel_while_provider_is_silent(proxy: Proxy, mock_provider: MockProvider) -> None:
    """A reasoning model thinking, or a queued request: no token yet, only keep-alives."""
    sid, tag = _unique("sess"), _unique("cancel-silent")
    async with _client(proxy) as client:
        stream = await open_stream(
            client,
            session_id=sid,
            prompt="tell me a long story",
            mock={"silence_s": 60, "keepalive_s": 0.2, "tag": tag},
        )
        request_id = stream.response.headers["x-request-id"]
        upstream = await provider_request(mock_provider.root, tag, wait="started")
        status, ack = await _post(f"{proxy.root}/sessions/{sid}/cancel")
        socket_at_ack = tcp_state(mock_provider.port, upstream["peer_port"])
        chunks = [chunk async for chunk in stream]
    assert status == 200 and ack["request_ids"] == [request_id]
    assert socket_at_ack != TCP_ESTABLISHED
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == ["cancelled"]
    record = await read_record(proxy.root, request_id, USER_KEY)
    assert (record["status"], record["stop_reason"], record["content"]) == ("stopped", "cancel", "")


async def test_cancel_before_the_provider_answers(proxy: Proxy, mock_provider: MockProvider) -> None:
    """The provider has not even sent its headers: the stream still ends cleanly."""
    sid, tag = _unique("sess"), _unique("cancel-queued")
    async with _client(proxy) as client:
        creating = asyncio.create_task(
            open_stream(
                client,
                session_id=sid,
                prompt="tell me a long story",
                mock={"silence_s": 60, "headers_after_silence": True, "tag": tag},
            )
        )
        upstream = await provider_request(mock_provider.root, tag, wait="started")
        status, ack = await _post(f"{proxy.root}/sessions/{sid}/cancel")
        socket_at_ack = tcp_state(mock_provider.port, upstream["peer_port"])
        stream = await creating
        chunks = [chunk async for chunk in stream]
    assert status == 200 and ack["cancelled"] is True
    assert socket_at_ack != TCP_ESTABLISHED
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == ["cancelled"]


async def test_cancel_non_streaming_answers_499(proxy: Proxy, mock_provider: MockProvider) -> None:
    sid, tag = _unique("sess"), _unique("cancel-nonstream")
    async with _client(proxy) as client:
        creating = asyncio.create_task(
            client.chat.completions.create(
                model="mock-1",
                messages=[{"role": "user", "content": "hi"}],
                extra_body={"mock": {"tokens": 100, "rate": 10, "tag": tag}},
                extra_headers={"X-Session-Id": sid},
            )
        )
        upstream = await provider_request(mock_provider.root, tag, wait="started")
        status, ack = await _post(f"{proxy.root}/api/chat/cancel/{sid}")
        socket_at_ack = tcp_state(mock_provider.port, upstream["peer_port"])
        with pytest.raises(openai.APIStatusError) as raised:
            await creating
    assert status == 200 and ack["cancelled"] is True
    assert socket_at_ack != TCP_ESTABLISHED
    assert raised.value.status_code == 499
    assert raised.value.body["code"] == "request_cancelled"  # type: ignore[index]
    (request_id,) = ack["request_ids"]
    assert raised.value.response.headers["x-request-id"] == request_id
    record = await read_record(proxy.root, request_id, USER_KEY)
    assert (record["status"], record["stop_reason"], record["stream"]) == ("stopped", "cancel", False)


async def test_client_closes_mid_stream(proxy: Proxy, mock_provider: MockProvider) -> None:
    sid, tag = _unique("sess"), _unique("disconnect")
    async with _client(proxy) as client:
        stream = await open_stream(
            client, session_id=sid, prompt="tell me a long story", mock={"tokens": 500, "rate": 50, "tag": tag}
        )
        request_id = stream.response.headers["x-request-id"]
        received: list[str] = []
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
            if len(received) == 5:
                break
        closed_at = time.monotonic()
        await stream.close()
        seen = await provider_request(mock_provider.root, tag, wait="ended")
    assert seen["state"] == "closed_by_client"
    assert seen["ended_at"] - closed_at < CLOSE_BOUND_S
    record = await read_record(proxy.root, request_id, USER_KEY)
    assert (record["status"], record["stop_reason"]) == ("stopped", "disconnect")
    # The client may have had more in its buffers than it read: the record
    # holds what was sent, which starts with what was read.
    assert record["content"].startswith("".join(received))
    assert record["content"] == content_of(record["usage"]["completion_tokens"])


@pytest.mark.parametrize("keepalive", [None, 0.2], ids=["silent", "keepalive-comments"])
async def test_client_closes_while_provider_is_silent(
    proxy: Proxy, mock_provider: MockProvider, keepalive: float | None
) -> None:
    sid, tag = _unique("sess"), _unique("disconnect-silent")
    mock: dict[str, Any] = {"silence_s": 60, "tag": tag}
    if keepalive:
        mock["keepalive_s"] = keepalive
    async with _client(proxy) as client:
        stream = await open_stream(client, session_id=sid, prompt="tell me a long story", mock=mock)
        request_id = stream.response.headers["x-request-id"]
        await provider_request(mock_provider.root, tag, wait="started")
        closed_at = time.monotonic()
        await stream.close()
        seen = await provider_request(mock_provider.root, tag, wait="ended")
    assert seen["state"] == "closed_by_client"
    assert seen["ended_at"] - closed_at < CLOSE_BOUND_S
    record = await read_record(proxy.root, request_id, USER_KEY)
    assert (record["status"], record["stop_reason"], record["content"]) == ("stopped", "disconnect", "")


async def test_client_gives_up_on_a_non_streaming_request(proxy: Proxy, mock_provider: MockProvider) -> None:
    sid, tag = _unique("sess"), _unique("disconnect-nonstream")
    async with _client(proxy) as client:
        creating = asyncio.create_task(
            client.chat.completions.create(
                model="mock-1",
                messages=[{"role": "user", "content": "hi"}],
                extra_body={"mock": {"tokens": 100, "rate": 2, "tag": tag}},
                extra_headers={"X-Session-Id": sid},
            )
        )
        await provider_request(mock_provider.root, tag, wait="started")
        closed_at = time.monotonic()
        creating.cancel()
        with pytest.raises(asyncio.CancelledError):
            await creating
        seen = await provider_request(mock_provider.root, tag, wait="ended")
    assert seen["state"] == "closed_by_client"
    assert seen["ended_at"] - closed_at < CLOSE_BOUND_S
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proxy.root}/sessions/{sid}", headers={"Authorization": f"Bearer {USER_KEY}"}) as r:
            (record,) = (await r.json())["requests"]
    record = await read_record(proxy.root, record["request_id"], USER_KEY)
    assert (record["status"], record["stop_reason"]) == ("stopped", "disconnect")


async def test_a_cancel_racing_the_natural_end_is_never_not_found(proxy: Proxy, mock_provider: MockProvider) -> None:
    """Its own request, just ending: 22–71 of 100 such races answered 404."""
    async with aiohttp.ClientSession() as session, _client(proxy) as client:
        statuses: list[int] = []
        for _ in range(100):
            stream = await open_stream(client, mock={"tokens": 2, "rate": 0})
            request_id = stream.response.headers["x-request-id"]
            async for _chunk in stream:
                pass
            url = f"{proxy.root}/requests/{request_id}/cancel"
            async with session.post(url, headers={"Authorization": f"Bearer {USER_KEY}"}) as answer:
                statuses.append(answer.status)
                body = await answer.json()
                assert body["session_id"] == stream.response.headers["x-session-id"], body
    assert statuses == [200] * 100
