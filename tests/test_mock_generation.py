"""The knobs every protocol shares: pacing, silences, breaks and a client leaving, run on all four."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from cancelproxy.mock import MockDefaults, create_mock_app

from .mock_client import PATHS, PROTOCOLS, UPSTREAM_IDS, record, request_body, sse, text_of, words

# The bytes only a complete answer ends with.
ENDINGS = {
    "chat": b"data: [DONE]",
    "completions": b"data: [DONE]",
    "responses": b"event: response.completed",
    "messages": b"event: message_stop",
}
ERROR_MARKERS = {
    "chat": b'data: {"error":',
    "completions": b'data: {"error":',
    "responses": b"event: response.failed",
    "messages": b"event: error",
}

pytestmark = pytest.mark.parametrize("protocol", PROTOCOLS)


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    # rate 0: no sleeps unless a test asks for them.
    return await aiohttp_client(create_mock_app(MockDefaults(tokens=5, rate=0)))


async def post(client: TestClient, protocol: str, **mock: Any) -> aiohttp.ClientResponse:
    stream = mock.pop("stream", True)
    return await client.post(PATHS[protocol], json=request_body(protocol, stream=stream, **mock))


async def read_until_reset(resp: aiohttp.ClientResponse) -> bytes:
    received = b""
    with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
        async for piece in resp.content.iter_any():
            received += piece
    return received


async def test_same_words_same_bytes_and_a_predictable_id(client: TestClient, protocol: str) -> None:
    raws = [await (await post(client, protocol, tokens=8, tag="same")).read() for _ in range(2)]
    assert raws[0] == raws[1]
    assert text_of(protocol, sse(raws[0])) == words(8)
    assert ENDINGS[protocol] in raws[0]
    assert UPSTREAM_IDS[protocol].format(tag="same").encode() in raws[0]
    rec = await record(client, "same")
    assert rec["protocol"] == protocol and rec["state"] == "completed" and rec["tokens_sent"] == 8
    assert rec["id"] == UPSTREAM_IDS[protocol].format(tag="same")


async def test_routes_without_v1(client: TestClient, protocol: str) -> None:
    resp = await client.post(PATHS[protocol].removeprefix("/v1"), json=request_body(protocol))
    assert text_of(protocol, sse(await resp.read())) == words(5)


async def test_rate_paces_the_pieces(client: TestClient, protocol: str) -> None:
    resp = await post(client, protocol, tokens=4, rate=20, tag="paced")
    await resp.read()
    rec = await record(client, "paced")
    # Three gaps of 1/20 s between four pieces (an upper bound would be a timing test).
    assert rec["last_token_at"] - rec["started_at"] >= 0.15


async def test_fail_after_resets_the_stream(client: TestClient, protocol: str) -> None:
    received = await read_until_reset(await post(client, protocol, fail_after=3, tokens=10, tag="boom"))
    assert text_of(protocol, sse(received)) == words(3)
    assert ENDINGS[protocol] not in received
    rec = await record(client, "boom")
    assert rec["state"] == "failed" and rec["tokens_sent"] == 3


async def test_burst_then_reset_writes_the_rest_first(client: TestClient, protocol: str) -> None:
    received = await read_until_reset(await post(client, protocol, fail_after=2, burst_then_reset=True, tokens=6))
    assert text_of(protocol, sse(received)) == words(6)
    assert ENDINGS[protocol] not in received


async def test_error_after_reports_in_the_stream_then_ends(client: TestClient, protocol: str) -> None:
    raw = await (await post(client, protocol, error_after=2, tag="err")).read()  # a clean end of body
    assert ERROR_MARKERS[protocol] in raw and ENDINGS[protocol] not in raw
    assert text_of(protocol, sse(raw)) == words(2)
    rec = await record(client, "err")
    assert rec["state"] == "failed" and rec["tokens_sent"] == 2


async def test_non_stream_fail_after_sends_half_a_body(client: TestClient, protocol: str) -> None:
    resp = await post(client, protocol, stream=False, fail_after=1, tag="half")
    assert resp.status == 200
    with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
        await resp.read()
    assert (await record(client, "half"))["state"] == "failed"


async def test_non_stream_error_after_is_a_server_error(client: TestClient, protocol: str) -> None:
    resp = await post(client, protocol, stream=False, error_after=1)
    assert resp.status == (529 if protocol == "messages" else 500)


async def test_status_knob(client: TestClient, protocol: str) -> None:
    resp = await post(client, protocol, status=429, tag="busy")
    assert resp.status == 429
    rec = await record(client, "busy")
    assert rec["state"] == "failed" and rec["tokens_sent"] == 0


async def test_keepalives_during_silence(client: TestClient, protocol: str) -> None:
    raw = await (await post(client, protocol, silence_s=0.25, keepalive_s=0.1, tokens=2)).read()
    keepalive = b'event: ping\ndata: {"type": "ping"}\n\n' if protocol == "messages" else b": keep-alive\n\n"
    # Nominally 2 (at 0.1 and 0.2 s); a loaded machine's late timers may skip the last.
    assert 1 <= raw.count(keepalive) - (protocol == "messages") <= 2
    assert text_of(protocol, sse(raw)) == words(2)


async def test_client_closing_while_silent_is_noticed(client: TestClient, protocol: str) -> None:
    resp = await post(client, protocol, silence_s=30, tag="quiet")
    assert resp.status == 200  # headers come first; the first piece is 30 s away
    assert (await record(client, "quiet", wait="started"))["state"] == "running"
    resp.close()
    rec = await record(client, "quiet")
    assert rec["state"] == "closed_by_client" and rec["tokens_sent"] == 0
    assert rec["client_closed_at"] is not None and rec["ended_at"] - rec["started_at"] < 5


async def test_client_closing_mid_stream_is_noticed(client: TestClient, protocol: str) -> None:
    resp = await post(client, protocol, tokens=1000, rate=50, tag="mid")
    seen = b""
    while seen.count(b"w") < 3:
        piece = await resp.content.readany()
        assert piece, f"the stream ended early: {seen!r}"
        seen += piece
    resp.close()
    rec = await record(client, "mid")
    assert rec["state"] == "closed_by_client" and 3 <= rec["tokens_sent"] < 1000


async def test_headers_after_silence(client: TestClient, protocol: str) -> None:
    sending = asyncio.ensure_future(post(client, protocol, silence_s=30, headers_after_silence=True, tag="q2"))
    await record(client, "q2", wait="started")
    await asyncio.sleep(0.05)  # not synchronisation: a grace period in which headers must NOT arrive
    assert not sending.done()
    sending.cancel()
    assert (await record(client, "q2"))["state"] == "closed_by_client"


async def test_non_stream_request_can_be_cancelled(client: TestClient, protocol: str) -> None:
    task = asyncio.ensure_future(post(client, protocol, stream=False, silence_s=30, tag="slow"))
    await record(client, "slow", wait="started")
    task.cancel()
    assert (await record(client, "slow"))["state"] == "closed_by_client"
