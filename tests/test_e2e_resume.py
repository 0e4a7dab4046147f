"""Resume: a reader that comes back gets the rest of the answer, in its protocol's bytes, and Stop still works.

Against ``python proxy.py``: a stream is read for a few events, dropped, and
resumed with ``GET /requests/{id}/stream?after=N`` from a new connection.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from .conftest import MockProvider, Proxy, proxy_config, start_proxy
from .helpers import TCP_ESTABLISHED, provider_request, read_record, tcp_state
from .scripted_upstream import LAST_CHUNK, Script, chunk, scripted_upstream

KEY = "sk-resume-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
CLOSE_BOUND_S = 0.5
PATHS = {"chat": "chat/completions", "responses": "responses", "messages": "messages"}


def _body(protocol: str, mock: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "mock-1", "stream": True, "mock": mock}
    if protocol == "responses":
        body["input"] = "a long story"
    else:
        body["messages"] = [{"role": "user", "content": "a long story"}]
    if protocol == "messages":
        body["max_tokens"] = 100_000
    return body


@pytest.fixture(scope="module")
def resuming_proxy(mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    config = proxy_config(mock_provider, on_disconnect={"grace_s": 0, "max_grace_s": 30}, limits={"write_timeout_s": 1})
    proxy = start_proxy(tmp_path_factory.mktemp("resume"), config)
    yield proxy
    proxy.program.stop()


def _events(raw: bytes) -> list[bytes]:
    """The SSE events of ``raw`` a client dispatches (blocks with a data line), each with its blank line."""
    return [
        block + b"\n\n" for block in raw.split(b"\n\n") if any(line.startswith(b"data:") for line in block.split(b"\n"))
    ]


async def _first_events(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], grace: float | None, n: int
) -> tuple[bytes, str, float]:
    """Stream, read exactly ``n`` events, drop the connection: (those bytes, request id, when dropped)."""
    headers = {**AUTH, **({"X-Disconnect-Grace": str(grace)} if grace is not None else {})}
    response = await session.post(url, json=body, headers=headers)
    request_id = response.headers["X-Request-Id"]
    raw = b""
    while len(_events(raw)) < n:
        piece = await response.content.readany()
        assert piece, raw
        raw += piece
    response.close()  # the connection goes with it
    cut = raw.split(b"\n\n")
    kept, count = [], 0
    for block in cut:
        kept.append(block)
        if any(line.startswith(b"data:") for line in block.split(b"\n")):
            count += 1
            if count == n:
                break
    return b"\n\n".join(kept) + b"\n\n", request_id, time.monotonic()


async def _resume(session: aiohttp.ClientSession, root: str, request_id: str, after: int) -> bytes:
    async with session.get(f"{root}/requests/{request_id}/stream", params={"after": str(after)}, headers=AUTH) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/event-stream")
        return await r.read()


async def _content_words(session: aiohttp.ClientSession, root: str, request_id: str) -> int:
    async with session.get(f"{root}/requests/{request_id}", headers=AUTH) as r:
        return len((await r.json())["content"].split())


async def _direct(mock: MockProvider, protocol: str, body: dict[str, Any]) -> bytes:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{mock.base_url}/{PATHS[protocol]}", json=body) as r:
            return await r.read()


async def _requests_tagged(mock: MockProvider, tag: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{mock.root}/_mock/requests") as r:
            return sum(1 for record in (await r.json())["requests"] if record["tag"] == tag)


@pytest.mark.parametrize("protocol", sorted(PATHS))
async def test_a_stream_dropped_and_resumed_within_the_grace_is_whole(
    resuming_proxy: Proxy, mock_provider: MockProvider, protocol: str
) -> None:
    tag = f"resume-{protocol}-{uuid.uuid4().hex[:8]}"
    body = _body(protocol, {"tokens": 60, "rate": 40, "tag": tag})
    async with aiohttp.ClientSession() as session:
        first, request_id, _ = await _first_events(session, f"{resuming_proxy.base_url}/{PATHS[protocol]}", body, 10, 5)
        rest = await _resume(session, resuming_proxy.root, request_id, 5)
    assert await _requests_tagged(mock_provider, tag) == 1  # the provider never saw a second request
    direct = await _direct(mock_provider, protocol, body)
    assert first + rest == direct
    record = await read_record(resuming_proxy.root, request_id, KEY)
    assert (record["status"], record["stop_reason"]) == ("completed", None)
    assert record["content"] == "".join(f"w{i} " for i in range(60))


async def test_without_grace_a_drop_stops_and_a_resume_ends_stopped(
    resuming_proxy: Proxy, mock_provider: MockProvider
) -> None:
    tag = f"resume-nograce-{uuid.uuid4().hex[:8]}"
    body = _body("chat", {"tokens": 500, "rate": 40, "tag": tag})
    async with aiohttp.ClientSession() as session:
        first, request_id, dropped_at = await _first_events(
            session, f"{resuming_proxy.base_url}/chat/completions", body, None, 5
        )
        seen = await provider_request(mock_provider.root, tag, wait="ended")
        assert seen["state"] == "closed_by_client" and seen["ended_at"] - dropped_at < CLOSE_BOUND_S
        record = await read_record(resuming_proxy.root, request_id, KEY)
        started = time.monotonic()
        rest = await _resume(session, resuming_proxy.root, request_id, 5)
        assert time.monotonic() - started < 5  # an ended stream replays and ends at once
    assert (record["status"], record["stop_reason"]) == ("stopped", "disconnect")
    events = _events(first + rest)
    ending = json.loads(events[-2].removeprefix(b"data: "))
    assert ending["choices"][0]["finish_reason"] == "cancelled" and events[-1] == b"data: [DONE]\n\n"
    shown = "".join(
        json.loads(e[6:])["choices"][0]["delta"].get("content") or ""
        for e in events[:-2]
        if json.loads(e[6:])["choices"]
    )
    assert shown == record["content"]


async def test_a_grace_that_runs_out_stops_the_generation(resuming_proxy: Proxy, mock_provider: MockProvider) -> None:
    tag = f"resume-expired-{uuid.uuid4().hex[:8]}"
    body = _body("chat", {"tokens": 5000, "rate": 40, "tag": tag})
    async with aiohttp.ClientSession() as session:
        _, request_id, dropped_at = await _first_events(
            session, f"{resuming_proxy.base_url}/chat/completions", body, 1, 3
        )
    seen = await provider_request(mock_provider.root, tag, wait="ended")
    assert seen["state"] == "closed_by_client"
    assert 1 <= seen["ended_at"] - dropped_at < 1 + CLOSE_BOUND_S + 1  # the grace, and a generous bound
    record = await read_record(resuming_proxy.root, request_id, KEY)
    assert (record["status"], record["stop_reason"]) == ("stopped", "disconnect")


async def test_three_readers_one_stalled(resuming_proxy: Proxy, mock_provider: MockProvider) -> None:
    """Two readers get every byte; the one that does not read is dropped; the generation goes on."""
    tag = f"resume-three-{uuid.uuid4().hex[:8]}"
    # Far more than socket buffers hold, so the stalled reader's writes block.
    body = _body("chat", {"tokens": 40_000, "rate": 0, "silence_s": 0.5, "tag": tag})
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"{resuming_proxy.base_url}/chat/completions", json=body, headers=AUTH)
        request_id = response.headers["X-Request-Id"]
        stalled = socket.create_connection(("127.0.0.1", resuming_proxy.port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(
            f"GET /requests/{request_id}/stream HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode()
        )
        readers = [_resume(session, resuming_proxy.root, request_id, 0) for _ in range(2)]
        original, *resumed = await asyncio.gather(response.read(), *readers)
    direct = await _direct(mock_provider, "chat", body)
    assert original == direct and resumed == [direct, direct]
    # The proxy gave up on the stalled reader (write_timeout_s 1): its side of
    # the connection is closed although this end never read. The kernel's
    # state of it is the only witness; it is re-read within a generous bound.
    port = stalled.getsockname()[1]
    deadline = time.monotonic() + 10
    while tcp_state(resuming_proxy.port, port) == TCP_ESTABLISHED and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert tcp_state(resuming_proxy.port, port) != TCP_ESTABLISHED
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stalled.close()
    record = await read_record(resuming_proxy.root, request_id, KEY)
    assert record["status"] == "completed"


async def test_a_cancel_ends_every_resumed_reader(resuming_proxy: Proxy, mock_provider: MockProvider) -> None:
    tag = f"resume-cancel-{uuid.uuid4().hex[:8]}"
    body = _body("responses", {"tokens": 5000, "rate": 40, "tag": tag})
    async with aiohttp.ClientSession() as session:
        _, request_id, _ = await _first_events(session, f"{resuming_proxy.base_url}/responses", body, 10, 4)
        upstream = await provider_request(mock_provider.root, tag)
        readers = [asyncio.create_task(_resume(session, resuming_proxy.root, request_id, 4)) for _ in range(2)]
        # The generation goes on for them: wait (re-reading the record, bounded) until it went further.
        deadline = time.monotonic() + 10
        while await _content_words(session, resuming_proxy.root, request_id) < 8 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        async with session.post(f"{resuming_proxy.root}/requests/{request_id}/cancel", headers=AUTH) as r:
            ack = await r.json()
            socket_at_ack = tcp_state(mock_provider.port, upstream["peer_port"])
        bodies = await asyncio.gather(*readers)
    assert ack["cancelled"] is True and socket_at_ack != TCP_ESTABLISHED
    for raw in bodies:
        last = json.loads(_events(raw)[-1].split(b"data: ", 1)[1])
        assert last["type"] == "response.completed" and last["response"]["status"] == "cancelled"


async def test_openai_pythons_own_decoder_reads_a_resumed_stream(resuming_proxy: Proxy) -> None:
    """Keep-alive comments included: after an ``id:`` line, openai-python raises on one; the proxy adds none."""
    body = _body("chat", {"tokens": 30, "rate": 40, "silence_s": 1, "keepalive_s": 0.1})
    async with aiohttp.ClientSession() as session:
        first, request_id, _ = await _first_events(session, f"{resuming_proxy.base_url}/chat/completions", body, 10, 2)
    assert b": keep-alive" in first  # the log replays them too, from the start
    async with openai.AsyncOpenAI(base_url=resuming_proxy.base_url, api_key=KEY, max_retries=0) as client:
        async with httpx2.AsyncClient() as http:
            url = f"{resuming_proxy.root}/requests/{request_id}/stream"
            async with http.stream("GET", url, params={"after": "0"}, headers=AUTH) as response:
                stream = openai.AsyncStream(cast_to=ChatCompletionChunk, response=response, client=client)
                chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f"w{i} " for i in range(30))


async def test_access_and_bad_input(resuming_proxy: Proxy) -> None:
    body = _body("chat", {"tokens": 3, "rate": 0})
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{resuming_proxy.base_url}/chat/completions", json=body, headers=AUTH) as r:
            request_id, session_id = r.headers["X-Request-Id"], r.headers["X-Session-Id"]
            whole = await r.read()
        for path in (f"/requests/{request_id}/stream", f"/sessions/{session_id}/stream"):
            async with session.get(
                resuming_proxy.root + path, headers={"Authorization": "Bearer sk-other-01234567"}
            ) as r:
                assert r.status == 404
            # Below zero; a digit int() does not read; more digits than int() reads.
            for after in ("-1", "\u00b2", "9" * 5000):
                async with session.get(resuming_proxy.root + path, params={"after": after}, headers=AUTH) as r:
                    assert r.status == 400 and (await r.json())["error"]["param"] == "after", after
        async with session.get(f"{resuming_proxy.root}/sessions/{session_id}/stream", headers=AUTH) as r:
            assert await r.read() == whole  # the session's newest request, from its start


async def test_a_generation_carried_on_past_its_first_byte_budget_goes_on(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Once its client left, the rest of an answer is bounded by the idle timeout, not the first byte's."""
    config = proxy_config(mock_provider, limits={"first_byte_timeout_s": 1}, on_disconnect={"grace_s": 10})
    proxy = start_proxy(tmp_path_factory.mktemp("carried"), config)
    try:
        body = _body("chat", {"tokens": 60, "rate": 20})
        async with aiohttp.ClientSession() as session:
            # Past the first-byte budget before the client leaves: 30 events at 20 a second.
            first, request_id, _ = await _first_events(session, f"{proxy.base_url}/chat/completions", body, 30, 30)
            rest = await _resume(session, proxy.root, request_id, 30)
        record = await read_record(proxy.root, request_id, KEY)
    finally:
        proxy.program.stop()
    assert (record["status"], record["content"]) == ("completed", "".join(f"w{i} " for i in range(60)))
    assert rest.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("after", [None, "100000"], ids=["following", "ahead"])
async def test_a_reader_whose_stream_outgrows_the_budget_is_cut_off_not_ended(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory, after: str | None
) -> None:
    # The logs together may hold resume.max_total_bytes: past it a live log is
    # given up. A reader following it cannot have the rest, and must not be
    # handed a clean end as if the answer were whole. A reader "ahead" has more
    # events than this replica's log (it read them elsewhere) and waits for the
    # log to catch up: given up meanwhile, it is cut off alike (it was an
    # IndexError and a 500).
    config = proxy_config(mock_provider, resume={"max_total_bytes": 8192})
    proxy = start_proxy(tmp_path_factory.mktemp("resume-budget"), config)
    try:
        async with aiohttp.ClientSession() as session:
            body = _body("chat", {"tokens": 400, "rate": 100})
            params = {"after": after} if after is not None else {}
            async with session.post(f"{proxy.base_url}/chat/completions", json=body, headers=AUTH) as answer:
                request_id = answer.headers["X-Request-Id"]
                url = f"{proxy.root}/requests/{request_id}/stream"
                async with session.get(url, params=params, headers=AUTH) as resumed:
                    assert resumed.status == 200
                    with pytest.raises(aiohttp.ClientPayloadError):
                        await resumed.read()
                shown = await answer.read()
            assert shown.endswith(b"data: [DONE]\n\n")  # the client itself gets it all
            async with session.get(url, headers=AUTH) as again:
                assert again.status == 410 and (await again.json())["error"]["code"] == "stream_not_kept"
    finally:
        proxy.program.stop()
    assert "Traceback" not in proxy.program.output, proxy.program.output


async def test_a_reader_ahead_of_a_stream_that_sent_no_event_gets_its_end(tmp_path: Path) -> None:
    # An event-stream error answer with no event in it: a reader that says it
    # has some gets the end of the stream, not a broken connection.
    error_head = (
        b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    async with scripted_upstream() as upstream:
        await upstream.scripts.put(Script(error_head, [chunk(b": slow down\n\n"), LAST_CHUNK]))
        config = {
            "upstreams": [{"name": "scripted", "base_url": upstream.base_url, "models": ["*"]}],
            "store": {"url": "memory://"},
        }
        proxy = start_proxy(tmp_path, config)
        try:
            async with aiohttp.ClientSession() as session:
                body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
                async with session.post(f"{proxy.base_url}/chat/completions", json=body, headers=AUTH) as answer:
                    assert answer.status == 429
                    request_id = answer.headers["X-Request-Id"]
                    assert await answer.read() == b": slow down\n\n"
                await read_record(proxy.root, request_id, KEY)
                url = f"{proxy.root}/requests/{request_id}/stream"
                async with session.get(url, params={"after": "1"}, headers=AUTH) as resumed:
                    assert resumed.status == 200
                    assert await resumed.read() == b": slow down\n\n"
        finally:
            proxy.program.stop()
