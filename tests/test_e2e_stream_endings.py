"""How an answer ends, whatever the upstream does: the client and the record agree
(a stream at the protocol's last event, a JSON answer at its length).

A scripted upstream (``scripted_upstream.py``) writes exact bytes and ends as
told; the client is the official SDK, and the record must equal what the SDK
showed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from .conftest import Proxy, start_proxy
from .helpers import post_ok, read_record
from .scripted_upstream import LAST_CHUNK, Script, ScriptedUpstream, chunk, scripted_upstream, sse_head

KEY = "sk-endings-0123456789abcdef"
# Far above anything these tests wait for: a stream that ends only at the
# idle timeout shows as a test that fails its bound, not as a slow pass.
IDLE_S = 60
BOUND_S = 10.0


def _event(content: str | None = None, finish: str | None = None, **extra: Any) -> bytes:
    delta = {"content": content} if content is not None else {}
    obj = {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def _responses_event(kind: str, **fields: Any) -> bytes:
    data = json.dumps({"type": kind, **fields}, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with scripted_upstream() as scripted:
        yield scripted


@pytest.fixture
def proxy(upstream: ScriptedUpstream, tmp_path: Path) -> AsyncIterator[Proxy]:
    config = {
        "upstreams": [{"name": "scripted", "base_url": upstream.base_url, "models": ["*"]}],
        "store": {"url": "memory://"},
        "limits": {"idle_timeout_s": IDLE_S, "write_timeout_s": 1, "max_event_bytes": 1 << 20},
    }
    started = start_proxy(tmp_path, config)
    yield started  # type: ignore[misc]
    started.program.stop()


async def _sdk_stream(proxy: Proxy, **options: Any) -> tuple[str, str | None, str, BaseException | None]:
    """What openai-python shows: (content, last finish_reason, request id, what it raised)."""
    shown: list[str] = []
    finish = None
    raised: BaseException | None = None
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True, **options
        )
        request_id = stream.response.headers["x-request-id"]
        try:
            async with asyncio.timeout(BOUND_S):
                async for event in stream:
                    for choice in event.choices:
                        shown.append(choice.delta.content or "")
                        finish = choice.finish_reason or finish
        except openai.APIError as exc:
            raised = exc
    return "".join(shown), finish, request_id, raised


async def test_done_then_a_socket_held_open_ends_at_done(proxy: Proxy, upstream: ScriptedUpstream) -> None:
    """It ended only at idle_timeout_s, with an error event after [DONE], recorded "failed"."""
    body = _event("a ") + _event("b ") + _event(finish="stop") + DONE
    after = _event("ghost ")  # an event after [DONE]: no client shows it
    await upstream.scripts.put(Script(sse_head(), [chunk(body), chunk(after)], end="hold"))
    content, finish, request_id, raised = await _sdk_stream(proxy)
    assert (content, finish, raised) == ("a b ", "stop", None)
    record = await read_record(proxy.root, request_id, KEY)
    assert (record["status"], record["content"], record["finish_reason"]) == ("completed", "a b ", "stop")
    # The proxy let go of the upstream that would not end.
    await asyncio.wait_for(upstream.served[-1].proxy_closed.wait(), BOUND_S)


@pytest.mark.parametrize("ending", ["eof", "chunked-terminator", "reset"])
async def test_a_body_cut_before_its_end_is_a_failure(proxy: Proxy, upstream: ScriptedUpstream, ending: str) -> None:
    """No finish_reason and no [DONE]: it reached the client as a clean end, recorded "completed"."""
    body = _event("a ") + _event("b ")
    if ending == "chunked-terminator":
        script = Script(sse_head(), [chunk(body), LAST_CHUNK], end="hold")
    else:
        script = Script(sse_head(chunked=False), [body], end="close" if ending == "eof" else "reset")
    await upstream.scripts.put(script)
    content, _, request_id, raised = await _sdk_stream(proxy)
    assert content == "a b "
    assert isinstance(raised, openai.APIError)  # the error event: the SDK knows it is cut
    record = await read_record(proxy.root, request_id, KEY)
    assert (record["status"], record["content"]) == ("failed", "a b ")
    assert record["error"]["code"] in ("upstream_truncated", "upstream_broken")


@pytest.mark.parametrize("ending", ["eof", "chunked-terminator"])
async def test_a_body_cut_mid_event_ends_with_a_clean_error_event(
    proxy: Proxy, upstream: ScriptedUpstream, ending: str
) -> None:
    """The cut-off event went out, and the error event was glued to it: openai-python
    raised a JSON decode error, not an APIError."""
    torn = _event("b ")[:40]
    body = _event("a ") + torn
    if ending == "chunked-terminator":
        script = Script(sse_head(), [chunk(body), LAST_CHUNK], end="hold")
    else:
        script = Script(sse_head(chunked=False), [body])
    await upstream.scripts.put(script)
    content, _, request_id, raised = await _sdk_stream(proxy)
    assert content == "a "
    assert isinstance(raised, openai.APIError) and raised.code == "upstream_truncated"
    record = await read_record(proxy.root, request_id, KEY)
    assert (record["status"], record["content"], record["error"]["code"]) == ("failed", "a ", "upstream_truncated")


async def test_a_finish_reason_without_done_is_a_whole_answer(proxy: Proxy, upstream: ScriptedUpstream) -> None:
    await upstream.scripts.put(Script(sse_head(), [chunk(_event("a ") + _event(finish="stop")), LAST_CHUNK]))
    content, finish, request_id, raised = await _sdk_stream(proxy)
    assert (content, finish, raised) == ("a ", "stop", None)
    assert (await read_record(proxy.root, request_id, KEY))["status"] == "completed"


async def test_a_last_event_without_its_blank_line_is_not_recorded(proxy: Proxy, upstream: ScriptedUpstream) -> None:
    """openai-python never shows it; the record held it."""
    unterminated = _event("ghost ").removesuffix(b"\n")
    await upstream.scripts.put(
        Script(sse_head(), [chunk(_event("a ") + _event(finish="stop") + unterminated), LAST_CHUNK])
    )
    content, _, request_id, raised = await _sdk_stream(proxy)
    assert (content, raised) == ("a ", None)
    assert (await read_record(proxy.root, request_id, KEY))["content"] == "a "


async def test_an_event_stream_sent_with_a_length_goes_out_chunked(proxy: Proxy, upstream: ScriptedUpstream) -> None:
    """The proxy ends an event stream at its last event: a Content-Length kept from
    the provider's would promise bytes (the ghost) that never come."""
    body = _event("a ") + _event(finish="stop") + DONE
    ghost = _event("ghost ")
    head = sse_head(chunked=False, extra=f"Content-Length: {len(body + ghost)}\r\n".encode())
    await upstream.scripts.put(Script(head, [body, ghost], end="hold"))
    async with aiohttp.ClientSession() as http:
        url = f"{proxy.base_url}/chat/completions"
        question = {"model": "m", "stream": True, "messages": []}
        async with http.post(url, json=question, headers={"Authorization": f"Bearer {KEY}"}) as response:
            assert "Content-Length" not in response.headers
            assert response.headers["Transfer-Encoding"] == "chunked"
            assert await asyncio.wait_for(response.read(), BOUND_S) == body


@pytest.mark.parametrize("cut", [False, True], ids=["whole", "cut-short"])
async def test_a_json_answer_keeps_its_length(proxy: Proxy, upstream: ScriptedUpstream, cut: bool) -> None:
    """Forwarded byte for byte, so with the provider's own Content-Length: a client
    can tell an answer the provider cut short by it."""
    body = json.dumps(
        {
            "id": "c1",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "a b"}, "finish_reason": "stop"}],
        }
    ).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    await upstream.scripts.put(Script(head, [body[:20]] if cut else [body[:20], body[20:]], pause_s=0.01))
    async with aiohttp.ClientSession() as http:
        url = f"{proxy.base_url}/chat/completions"
        async with http.post(url, json={"model": "m", "messages": []}, headers={"Authorization": f"Bearer {KEY}"}) as r:
            assert (r.headers["Content-Length"], r.headers.get("Transfer-Encoding")) == (str(len(body)), None)
            request_id = r.headers["X-Request-Id"]
            if cut:
                with pytest.raises(aiohttp.ClientPayloadError):
                    await asyncio.wait_for(r.read(), BOUND_S)
            else:
                assert await asyncio.wait_for(r.read(), BOUND_S) == body
    record = await read_record(proxy.root, request_id, KEY)
    assert (record["status"], record["content"]) == (("failed", "") if cut else ("completed", "a b"))


async def test_a_gzipped_stream_is_recorded_as_shown(proxy: Proxy, upstream: ScriptedUpstream) -> None:
    """An upstream that ignored Accept-Encoding: identity left the record empty."""
    packed = gzip.compress(_event("a ") + _event("b ") + _event(finish="stop") + DONE)
    head = sse_head(extra=b"Content-Encoding: gzip\r\n")
    await upstream.scripts.put(Script(head, [chunk(packed[:20]), chunk(packed[20:]), LAST_CHUNK]))
    content, _, request_id, raised = await _sdk_stream(proxy)
    assert (content, raised) == ("a b ", None)
    record = await read_record(proxy.root, request_id, KEY)
    assert (record["status"], record["content"]) == ("completed", "a b ")


async def test_a_media_type_in_capitals_is_a_stream_that_cancels_cleanly(
    proxy: Proxy, upstream: ScriptedUpstream
) -> None:
    """Text/Event-Stream was not seen as a stream: a cancel tore the connection."""
    pieces = [chunk(_event(f"w{i} ")) for i in range(200)]
    await upstream.scripts.put(Script(sse_head(b"Text/Event-Stream"), pieces, pause_s=0.02))
    shown: list[str] = []
    finishes: list[str] = []
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0) as client:
        stream = await client.chat.completions.create(model="m", messages=[], stream=True)
        request_id = stream.response.headers["x-request-id"]
        async with asyncio.timeout(BOUND_S):
            async for event in stream:  # must end without raising
                for choice in event.choices:
                    shown.append(choice.delta.content or "")
                    if choice.finish_reason:
                        finishes.append(choice.finish_reason)
                if len(shown) == 3:
                    async with aiohttp.ClientSession() as http:
                        url = f"{proxy.root}/requests/{request_id}/cancel"
                        async with http.post(url, headers={"Authorization": f"Bearer {KEY}"}) as cancel:
                            assert (await cancel.json())["cancelled"] is True
    assert finishes == ["cancelled"]
    record = await read_record(proxy.root, request_id, KEY)
    assert (record["status"], record["content"]) == ("stopped", "".join(shown))


async def test_an_event_that_never_ends_fails_the_stream(proxy: Proxy, upstream: ScriptedUpstream) -> None:
    """A 48 MiB line was buffered whole (58 MiB of RSS)."""
    endless = [chunk(_event("a "))] + [chunk(b"data: " + b"x" * 65536)] + [chunk(b"x" * 65536) for _ in range(64)]
    await upstream.scripts.put(Script(sse_head(), endless, end="hold"))
    content, _, request_id, raised = await _sdk_stream(proxy)
    assert content == "a " and isinstance(raised, openai.APIError)
    record = await read_record(proxy.root, request_id, KEY)
    assert (record["status"], record["error"]["code"]) == ("failed", "event_too_large")
    await asyncio.wait_for(upstream.served[-1].proxy_closed.wait(), BOUND_S)


async def test_a_compressed_stream_that_decodes_past_the_body_bound_fails_before_it_is_made(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    """Decoded at once: a few KB of deflate stood for as many gigabytes, all in memory."""
    config = {
        "upstreams": [{"name": "scripted", "base_url": upstream.base_url, "models": ["*"]}],
        "store": {"url": "memory://"},
        "limits": {"max_body_bytes": 1 << 20},
    }
    bounded = start_proxy(tmp_path, config)
    try:
        event = _event("a ")
        packed = gzip.compress(event * ((8 << 20) // len(event)))  # 8 MB of events in one read
        head = sse_head(extra=b"Content-Encoding: gzip\r\n")
        await upstream.scripts.put(Script(head, [chunk(packed), LAST_CHUNK]))
        content, _, request_id, raised = await _sdk_stream(bounded)
        assert content == "" and isinstance(raised, openai.APIError)
        record = await read_record(bounded.root, request_id, KEY)
        assert (record["status"], record["error"]["code"]) == ("failed", "event_too_large")
    finally:
        bounded.program.stop()


async def test_a_client_that_stops_reading_never_holds_more_than_the_record(
    proxy: Proxy, upstream: ScriptedUpstream
) -> None:
    """The chunk whose drain timed out was already in the kernel: the client read more than was recorded."""
    # Far more than the loopback socket buffers hold (they grow to a few MB).
    events = [_event(f"w{i:05d} " + "y" * 2000) for i in range(15000)]
    pieces = [chunk(b"".join(events[i : i + 50])) for i in range(0, len(events), 50)]
    await upstream.scripts.put(Script(sse_head(), [*pieces, chunk(_event(finish="stop") + DONE), LAST_CHUNK]))
    body = json.dumps({"model": "m", "stream": True, "messages": []}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nConnection: close\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    request_id = next(
        line.split(b": ", 1)[1].decode() for line in head.split(b"\r\n") if line.lower().startswith(b"x-request-id")
    )
    # Read nothing until the proxy has given up on this client (write_timeout_s = 1) ...
    record = await read_record(proxy.root, request_id, KEY)
    # ... then everything that had reached this socket.
    raw = await asyncio.wait_for(reader.read(-1), BOUND_S)
    writer.close()
    got = "".join(
        (json.loads(line[6:])["choices"][0]["delta"].get("content") or "")
        for line in _dechunked(raw).split(b"\n\n")[:-1]  # whole events only: the last may be cut
        if line.startswith(b'data: {"id"')
    )
    assert record["status"] == "stopped"
    assert len(got) < len(events) * 2007  # it was dropped, not served whole
    assert record["content"].startswith(got)  # the record never holds less than the client could read


def _dechunked(raw: bytes) -> bytes:
    """A chunked body, perhaps cut anywhere, without its framing (a cut last chunk kept as far as it came)."""
    out, pos = bytearray(), 0
    while (eol := raw.find(b"\r\n", pos)) >= 0:
        size = int(raw[pos:eol], 16)
        if size == 0:
            break
        out += raw[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2
    return bytes(out)


async def _stalling_client(
    port: int, path: str, question: dict[str, Any]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """A client on a raw socket with a small, fixed receive buffer (the kernel does
    not grow it): once it stops reading, the proxy's writes wait after a few MB at
    most. The answer's head is read; the connection and the request id are handed back."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    body = json.dumps(question).encode()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: p\r\nConnection: close\r\nContent-Type: application/json\r\n".encode()
        + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND_S)
    request_id = next(
        line.split(b": ", 1)[1].decode() for line in head.split(b"\r\n") if line.lower().startswith(b"x-request-id")
    )
    return reader, writer, request_id


async def _read_past(reader: asyncio.StreamReader, marker: bytes) -> bytes:
    got = bytearray()
    async with asyncio.timeout(BOUND_S):
        while marker not in got[-(65536 + len(marker)) :]:
            data = await reader.read(65536)
            assert data, "the stream ended before the marker"
            got += data
    return bytes(got)


async def _read_to_the_end(reader: asyncio.StreamReader) -> bytes:
    """The rest of what reached the client's socket, to the end of the connection."""
    got = bytearray()
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(BOUND_S):
            while data := await reader.read(65536):
                got += data
    return bytes(got)


async def test_a_client_that_stops_reading_before_its_cancelled_ending_is_dropped(
    proxy: Proxy, upstream: ScriptedUpstream
) -> None:
    """The ending's write waited for the client for ever: the request stayed in
    progress, and the cancel answered "cancelled": false after cancel_timeout_s."""
    # A Responses ending repeats the partial output: this one is far more than the
    # socket buffers between the proxy and the client hold.
    deltas = [f"{i:02d}" + "y" * (512 * 1024) for i in range(16)]
    marker = b"the-last-delta"
    deltas[-1] += marker.decode()
    item = {"id": "msg_s", "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    events = [
        _responses_event("response.created", sequence_number=0, response={"id": "resp_s", "status": "in_progress"}),
        _responses_event("response.output_item.added", sequence_number=1, output_index=0, item=item),
        _responses_event(
            "response.content_part.added",
            sequence_number=2,
            item_id="msg_s",
            output_index=0,
            content_index=0,
            part={"type": "output_text", "text": "", "annotations": []},
        ),
    ] + [
        _responses_event(
            "response.output_text.delta",
            sequence_number=3 + i,
            item_id="msg_s",
            output_index=0,
            content_index=0,
            delta=delta,
        )
        for i, delta in enumerate(deltas)
    ]
    await upstream.scripts.put(Script(sse_head(), [chunk(event) for event in events], end="hold"))
    reader, writer, request_id = await _stalling_client(
        proxy.port, "/v1/responses", {"model": "m", "stream": True, "input": "x"}
    )
    # The whole answer so far reaches the client; then it reads no more.
    await _read_past(reader, marker)
    ack = await post_ok(f"{proxy.root}/requests/{request_id}/cancel", {"Authorization": f"Bearer {KEY}"})
    assert (ack["cancelled"], ack["request_ids"]) == (True, [request_id])
    await asyncio.wait_for(upstream.served[-1].proxy_closed.wait(), BOUND_S)
    record = await read_record(proxy.root, request_id, KEY)
    assert (record["status"], record["stop_reason"]) == ("stopped", "cancel")
    assert record["content"] == "".join(deltas)  # all the client was sent before the ending
    # Dropped: the connection ends without the body's last chunk.
    assert not (await _read_to_the_end(reader)).endswith(b"0\r\n\r\n")
    writer.close()


async def test_a_client_that_stops_reading_before_the_held_back_tail_is_dropped(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    """The held-back bytes after the answer's finish_reason were written with no
    bound: a client that read nothing more held the request in progress for ever."""
    config = {
        "upstreams": [{"name": "scripted", "base_url": upstream.base_url, "models": ["*"]}],
        "store": {"url": "memory://"},
        "limits": {"idle_timeout_s": IDLE_S, "write_timeout_s": 1, "max_event_bytes": 16 << 20},
    }
    roomy = start_proxy(tmp_path, config)
    try:
        # An event that never ends, after the finish_reason: far more than the
        # socket buffers between the proxy and the client hold.
        unended = b"data: " + b"y" * (8 << 20)
        await upstream.scripts.put(
            Script(sse_head(), [chunk(_event("a ") + _event(finish="stop") + unended), LAST_CHUNK])
        )
        reader, writer, request_id = await _stalling_client(
            roomy.port, "/v1/chat/completions", {"model": "m", "stream": True, "messages": []}
        )
        record = await read_record(roomy.root, request_id, KEY)
        assert (record["status"], record["content"], record["finish_reason"]) == ("completed", "a ", "stop")
        assert not (await _read_to_the_end(reader)).endswith(b"0\r\n\r\n")
        writer.close()
    finally:
        roomy.program.stop()


async def test_a_cancel_drops_a_client_whose_write_waits_and_is_acknowledged_in_time(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    """The relay waited in a client write for all of write_timeout_s after the
    stop: the cancel answered "cancelled": false once cancel_timeout_s was over."""
    cancel_s = 10.0
    config = {
        "upstreams": [{"name": "scripted", "base_url": upstream.base_url, "models": ["*"]}],
        "store": {"url": "memory://"},
        "limits": {
            "idle_timeout_s": IDLE_S,
            "write_timeout_s": 30,
            "cancel_timeout_s": cancel_s,
            "max_event_bytes": 16 << 20,
        },
    }
    patient = start_proxy(tmp_path, config)
    try:
        # One event, so one write, far more than the socket buffers between the
        # proxy and the client hold (a few MB): once its first bytes are in,
        # the relay is waiting in that write until the client reads again.
        big = "big-start" + "y" * (12 << 20)
        script = [chunk(_event("a ")), chunk(_event(big))]
        await upstream.scripts.put(Script(sse_head(), script, end="hold"))
        reader, writer, request_id = await _stalling_client(
            patient.port, "/v1/chat/completions", {"model": "m", "stream": True, "messages": []}
        )
        await _read_past(reader, b"big-start")
        loop = asyncio.get_running_loop()
        asked = loop.time()
        ack = await post_ok(f"{patient.root}/requests/{request_id}/cancel", {"Authorization": f"Bearer {KEY}"})
        assert (ack["cancelled"], ack["request_ids"]) == (True, [request_id])
        assert loop.time() - asked < cancel_s
        await asyncio.wait_for(upstream.served[-1].proxy_closed.wait(), BOUND_S)
        record = await read_record(patient.root, request_id, KEY)
        assert (record["status"], record["stop_reason"]) == ("stopped", "cancel")
        assert record["content"] == "a " + big  # what was handed to the client, the write it waited in included
        # Dropped: the connection ends without the cancelled ending's last chunk.
        assert not (await _read_to_the_end(reader)).endswith(b"0\r\n\r\n")
        writer.close()
    finally:
        patient.program.stop()
