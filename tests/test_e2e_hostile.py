"""Hostile clients over raw sockets: broken HTTP, slow heads and bodies, a flood of half-sent heads.

Each gets an OpenAI-shaped answer where one can still be sent, its connection
is closed, and the proxy keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from .conftest import MockProvider, Proxy, proxy_config, start_mock, start_proxy
from .helpers import content_of, open_stream, provider_request, raw_request

USER_KEY = "sk-user-a-0123456789abcdef"
# What the guarded proxy below is configured with.
HEAD_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
# Generous: a timed-out connection must be closed well before this, today's
# code holds one for 75 s and more.
CLOSED_WITHIN_S = 10.0


@pytest.fixture(scope="module")
def guarded(mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    config = proxy_config(mock_provider, limits={"head_timeout_s": HEAD_TIMEOUT_S, "body_timeout_s": BODY_TIMEOUT_S})
    proxy = start_proxy(tmp_path_factory.mktemp("guarded"), config)
    yield proxy
    proxy.program.stop()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the proxy closed the connection after the answer

    def json(self) -> Any:
        return json.loads(self.body)


def _parse(raw: bytes, closed: bool) -> Answer:
    head, separator, body = raw.partition(b"\r\n\r\n")
    assert separator, f"no complete answer: {raw[:300]!r}"
    status_line, *fields = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (field.partition(":") for field in fields)}
    return Answer(int(status_line.split()[1]), headers, body[: int(headers["content-length"])], closed)


async def _connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def _read_to_close(sock: socket.socket, bound_s: float = CLOSED_WITHIN_S) -> tuple[bytes, bool]:
    """What arrives until the proxy closes the connection; ``closed`` is False if it did not within ``bound_s``.

    Read with recv, not asyncio streams: those drop bytes already received
    when a reset follows them.
    """
    loop = asyncio.get_running_loop()
    received = b""
    try:
        async with asyncio.timeout(bound_s):
            while chunk := await loop.sock_recv(sock, 65536):
                received += chunk
    except TimeoutError:
        return received, False
    except ConnectionResetError:
        pass
    return received, True


async def _exchange(port: int, data: bytes) -> Answer:
    with await _connect(port) as sock:
        await asyncio.get_running_loop().sock_sendall(sock, data)
        raw, closed = await _read_to_close(sock)
    return _parse(raw, closed)


async def _trickle(sock: socket.socket, data: bytes, every_s: float = 0.3) -> None:
    """Send ``data`` a byte at a time, as a slowloris client does, until it ends or the proxy closes."""
    loop = asyncio.get_running_loop()
    for byte in data:
        await asyncio.sleep(every_s)
        try:
            await loop.sock_sendall(sock, bytes([byte]))
        except OSError:
            return


def _assert_openai_error(answer: Answer, status: int, code: str) -> None:
    assert answer.status == status, answer
    assert answer.headers["content-type"].split(";")[0] == "application/json", answer.headers
    body = answer.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code and body["error"]["message"]
    if status < 500:
        assert body["error"]["type"] == "invalid_request_error"


async def _assert_still_serving(proxy: Proxy) -> None:
    """A normal SDK stream, start to end."""
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=USER_KEY, max_retries=0) as client:
        stream = await open_stream(client, {"tokens": 5, "rate": 0})
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert text == content_of(5)


HEAD = b"GET /healthz HTTP/1.1\r\nHost: proxy\r\n"
PROTOCOL_ERRORS = {
    "path-too-long": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: proxy\r\n\r\n", 414, "request_line_too_long"),
    "header-too-large": (HEAD + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "header_fields_too_large"),
    "header-name-too-large": (HEAD + b"X-" + b"a" * 9000 + b": 1\r\n\r\n", 431, "header_fields_too_large"),
    "too-many-headers": (
        HEAD + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
        431,
        "header_fields_too_large",
    ),
    "obs-fold": (HEAD + b"X-Folded: 1\r\n  continued\r\n\r\n", 400, "invalid_http"),
    "bare-lf": (b"GET /healthz HTTP/1.1\nHost: proxy\n\n", 400, "invalid_http"),
    "bare-cr": (b"GET /healthz HTTP/1.1\rHost: proxy\r\n\r\n", 400, "invalid_http"),
    "nul-in-header": (HEAD + b"X-Nul: a\x00b\r\n\r\n", 400, "invalid_http"),
    "content-length-and-transfer-encoding": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "invalid_http",
    ),
    "two-content-lengths": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        400,
        "invalid_http",
    ),
    "bad-chunk-size": (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        400,
        "invalid_http",
    ),
    "garbage-request-line": (b"GARBAGE\r\n\r\n", 400, "invalid_http"),
    "bad-method": (b"G(T /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n", 400, "invalid_http"),
    "bad-version": (b"GET /healthz HTTP/9.9\r\nHost: proxy\r\n\r\n", 400, "invalid_http"),
    "tls-on-plain-port": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, 400, "invalid_http"),
}


@pytest.mark.parametrize(("data", "status", "code"), PROTOCOL_ERRORS.values(), ids=PROTOCOL_ERRORS.keys())
async def test_broken_http_gets_an_openai_error_and_a_close(
    guarded: Proxy, data: bytes, status: int, code: str
) -> None:
    answer = await _exchange(guarded.port, data)
    _assert_openai_error(answer, status, code)
    assert answer.closed, "the connection must be closed after a protocol error"
    # aiohttp quotes the offending bytes in its reasons; the proxy does not echo them.
    assert b"aaaa" not in answer.body and b"continued" not in answer.body
    await _assert_still_serving(guarded)


@pytest.fixture(scope="module")
def pure_python_parser(mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """The proxy on aiohttp's pure-Python HTTP parser, which it uses where its C parser is not built."""
    tmp_path = tmp_path_factory.mktemp("pure-python")
    proxy = start_proxy(tmp_path, proxy_config(mock_provider), env={"AIOHTTP_NO_EXTENSIONS": "1"})
    yield proxy
    proxy.program.stop()


# That parser accepts any version that looks like HTTP's, and reads TLS bytes
# as a request line not yet ended (the head timeout ends those).
PURE_PYTHON_ERRORS = {k: v for k, v in PROTOCOL_ERRORS.items() if k not in ("bad-version", "tls-on-plain-port")}


@pytest.mark.parametrize(("data", "status", "code"), PURE_PYTHON_ERRORS.values(), ids=PURE_PYTHON_ERRORS.keys())
async def test_broken_http_is_answered_alike_by_the_pure_python_parser(
    pure_python_parser: Proxy, data: bytes, status: int, code: str
) -> None:
    answer = await _exchange(pure_python_parser.port, data)
    _assert_openai_error(answer, status, code)
    assert answer.closed
    assert b"aaaa" not in answer.body and b"continued" not in answer.body


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"], ids=["generation", "pass-through"])
async def test_deeply_nested_json_is_a_400(guarded: Proxy, path: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            guarded.root + path, data=b"[" * 100_000, headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 400
            assert response.content_type == "application/json"
            body = await response.json()
    assert body["error"]["code"] == "invalid_json" and body["error"]["type"] == "invalid_request_error"
    await _assert_still_serving(guarded)


def _nested(depth: int, leaf: str) -> bytes:
    """JSON text of ``leaf`` wrapped ``depth`` times in a list of one part: built as
    text, as no JSON encoder here goes that deep."""
    text = json.dumps(leaf)
    for _ in range(depth):
        text = f'[{{"type":"text","text":{text}}}]'
    return text.encode()


# 960 levels (a list and an object each time): nearly as deep as the proxy's
# JSON parser lets a body go, deeper than Python's recursion limit lets a
# recursive walk of the prompt go.
NESTED_BODIES = {
    "responses": ("/v1/responses", b'{"model":"mock-1","input":%s,' % _nested(480, "deep")),
    "messages": (
        "/v1/messages",
        b'{"model":"mock-1","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"system":%s,'
        % _nested(480, "deep"),
    ),
}


@pytest.fixture(scope="module")
def own_mock() -> Iterator[MockProvider]:
    """A provider of these tests' own: the one every module shares lists the bodies
    it was sent, and a reader of that list would meet these."""
    mock = start_mock()
    yield mock
    mock.program.stop()


@pytest.mark.parametrize(("path", "head"), NESTED_BODIES.values(), ids=NESTED_BODIES.keys())
async def test_a_deeply_nested_prompt_still_gets_its_final_record(
    own_mock: MockProvider, tmp_path: Path, path: str, head: bytes
) -> None:
    proxy = start_proxy(tmp_path, proxy_config(own_mock))
    try:
        body = head + b'"mock":{"tokens":3,"rate":0}}'
        headers = {"Authorization": f"Bearer {USER_KEY}", "x-api-key": USER_KEY}
        async with aiohttp.ClientSession() as session:
            async with session.post(
                proxy.root + path, data=body, headers={**headers, "Content-Type": "application/json"}
            ) as response:
                assert response.status == 200, await response.text()
                request_id = response.headers["X-Request-Id"]
            async with session.get(f"{proxy.root}/requests/{request_id}?wait=1", headers=headers) as response:
                assert response.status == 200, await response.text()
                record = await response.json()
        # Not left in progress: the prompt estimate the final record needs walked it all.
        assert record["status"] == "completed"
        await _assert_still_serving(proxy)
    finally:
        proxy.program.stop()


async def test_a_slow_head_is_cut_off_with_a_408(guarded: Proxy) -> None:
    with await _connect(guarded.port) as sock:
        started = time.monotonic()
        await asyncio.get_running_loop().sock_sendall(sock, b"GET /healthz HTTP/1.1\r\n")
        trickling = asyncio.create_task(_trickle(sock, b"Host: proxy\r\nX-Slow: " + b"a" * 200))
        raw, closed = await _read_to_close(sock)
        elapsed = time.monotonic() - started
        trickling.cancel()
    answer = _parse(raw, closed)
    _assert_openai_error(answer, 408, "request_timeout")
    assert answer.closed
    assert HEAD_TIMEOUT_S * 0.9 <= elapsed < CLOSED_WITHIN_S
    await _assert_still_serving(guarded)


async def test_a_connection_that_never_asks_is_closed_without_an_answer(guarded: Proxy) -> None:
    with await _connect(guarded.port) as sock:
        started = time.monotonic()
        raw, closed = await _read_to_close(sock)
    assert (raw, closed) == (b"", True)
    assert HEAD_TIMEOUT_S * 0.9 <= time.monotonic() - started < CLOSED_WITHIN_S


@pytest.mark.parametrize(
    ("path", "trickle"),
    [("/v1/chat/completions", False), ("/v1/chat/completions", True), ("/v1/embeddings", False)],
    ids=["generation-stalled", "generation-trickling", "pass-through-stalled"],
)
async def test_a_half_sent_body_is_cut_off_with_a_408(guarded: Proxy, path: str, trickle: bool) -> None:
    head = f"POST {path} HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    with await _connect(guarded.port) as sock:
        started = time.monotonic()
        await asyncio.get_running_loop().sock_sendall(sock, head.encode() + b'{"model": "mock-1", "pad": "')
        # Trickling: the bound is on the whole body, not between its bytes.
        trickling = asyncio.create_task(_trickle(sock, b"a" * 200 if trickle else b""))
        raw, closed = await _read_to_close(sock)
        elapsed = time.monotonic() - started
        trickling.cancel()
    answer = _parse(raw, closed)
    _assert_openai_error(answer, 408, "request_timeout")
    assert answer.closed
    assert BODY_TIMEOUT_S * 0.9 <= elapsed < CLOSED_WITHIN_S
    await _assert_still_serving(guarded)


async def test_a_slow_answer_and_an_idle_keep_alive_are_not_slow_heads(guarded: Proxy) -> None:
    # A stream lasting three head timeouts, then, on the same connection after
    # more than a head timeout of silence, another request.
    body = json.dumps({"model": "mock-1", "messages": [], "stream": True, "mock": {"tokens": 15, "rate": 5}}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    loop = asyncio.get_running_loop()
    with await _connect(guarded.port) as sock:
        await loop.sock_sendall(sock, request)
        received = b""
        async with asyncio.timeout(15):
            while not received.endswith(b"\r\n0\r\n\r\n"):  # the end of a chunked body
                chunk = await loop.sock_recv(sock, 65536)
                assert chunk, f"closed mid-answer: {received[-300:]!r}"
                received += chunk
        assert received.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in received
        await asyncio.sleep(HEAD_TIMEOUT_S * 1.5)  # the idle time is what is tested
        await loop.sock_sendall(sock, b"GET /healthz HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n")
        raw, closed = await _read_to_close(sock)
    assert _parse(raw, closed).status == 200


async def test_when_every_connection_is_busy_a_new_one_gets_a_503(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> None:
    proxy = start_proxy(tmp_path_factory.mktemp("busy"), proxy_config(mock_provider, limits={"max_connections": 2}))
    tags = [f"busy-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=USER_KEY, max_retries=0) as client:
            streams = [await open_stream(client, {"tokens": 1000, "rate": 10, "tag": tag}) for tag in tags]
            answer = await _exchange(proxy.port, b"GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n")
            _assert_openai_error(answer, 503, "too_many_connections")
            assert answer.closed
            for stream in streams:
                await stream.close()
        for tag in tags:  # the provider saw them close: so did the proxy, first
            assert (await provider_request(mock_provider.root, tag, wait="ended"))["state"] == "closed_by_client"
        assert (
            await _exchange(proxy.port, b"GET /healthz HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        ).status == 200
        await _assert_still_serving(proxy)
    finally:
        proxy.program.stop()


async def test_a_flood_of_half_sent_heads_leaves_health_metrics_and_cancel_answering(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # 300 connections against 256 descriptors; the head timeout is long, so
    # only the connection limit can keep the proxy answering.
    config = proxy_config(mock_provider, limits={"head_timeout_s": 120})
    proxy = start_proxy(tmp_path_factory.mktemp("flood"), config, open_files=256)
    loop = asyncio.get_running_loop()
    flood: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = await _connect(proxy.port)
            flood.append(sock)
            await loop.sock_sendall(sock, HEAD)  # and never the blank line that ends it
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for method, path in [("GET", "/healthz"), ("GET", "/metrics"), ("POST", "/sessions/flood/cancel")]:
                async with session.request(method, proxy.root + path) as response:
                    assert response.status == 200, (path, await response.text())
        await _assert_still_serving(proxy)
        # The connections that made room were told why.
        evicted = []
        for sock in flood:
            with_answer = await _read_to_close(sock, bound_s=0.01)
            if with_answer[1]:
                evicted.append(_parse(*with_answer))
        assert len(evicted) >= 300 - 256
        _assert_openai_error(evicted[0], 503, "too_many_connections")
        assert "out of system resource" not in proxy.program.output
        assert "out of descriptors" not in proxy.program.output
    finally:
        for sock in flood:
            sock.close()
        proxy.program.stop()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/sessions/s-bytes", "/sessions/s-bytes/cancel"])
async def test_a_credential_that_is_not_utf8_is_not_a_500(guarded: Proxy, path: str) -> None:
    # aiohttp hands such bytes over as surrogates: fingerprinting them (and
    # comparing them with the admin token) raised, and every such request was
    # a 500 with a traceback in the error log.
    body = b'{"model": "mock-1", "messages": [], "mock": {"tokens": 2, "rate": 0}}'
    method = "GET" if path == "/sessions/s-bytes" else "POST"
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
    ).encode() + b"Authorization: Bearer sk-\xffnot-utf8\r\n\r\n"
    status, answer = await raw_request(guarded.port, head, body)
    assert status in (200, 404), answer  # answered, or the session is nobody's
    assert b"Traceback" not in guarded.program.output.encode()
    await _assert_still_serving(guarded)
