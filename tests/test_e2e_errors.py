"""Bad input and broken providers: a clear OpenAI-shaped error, and the proxy keeps serving."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest

from .conftest import MockProvider, Proxy, free_port, proxy_config, start_proxy
from .helpers import content_of, open_stream, read_record, sse_payloads

USER_KEY = "sk-user-a-0123456789abcdef"


@pytest.fixture(scope="module")
def strict_proxy(mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    config = proxy_config(
        mock_provider,
        limits={"max_body_bytes": 2000, "first_byte_timeout_s": 1, "idle_timeout_s": 1},
    )
    dead = {"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}/v1", "models": ["dead-*"]}
    config["upstreams"] = [*config["upstreams"], dead]  # type: ignore[misc]
    proxy = start_proxy(tmp_path_factory.mktemp("strict"), config)
    yield proxy
    proxy.program.stop()


async def _post(url: str, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=data, headers={"Content-Type": "application/json", **(headers or {})}) as r:
            return r.status, await r.json(content_type=None)


async def _assert_still_serving(proxy: Proxy) -> None:
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=USER_KEY, max_retries=0) as client:
        completion = await client.chat.completions.create(
            model="mock-1", messages=[{"role": "user", "content": "ok?"}], extra_body={"mock": {"tokens": 3, "rate": 0}}
        )
    assert completion.choices[0].message.content == content_of(3)


def _assert_openai_shape(body: dict[str, Any], code: str) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]


@pytest.mark.parametrize(
    ("data", "headers", "status", "code"),
    [
        (b'{"model": "mock-1", "messages": [', {}, 400, "invalid_json"),
        (b"[1, 2, 3]", {}, 400, "invalid_json"),
        (b"\xff\xfe not utf-8", {}, 400, "invalid_json"),
        (b'{"model": "mock-1"}', {"X-Session-Id": "has spaces"}, 400, "invalid_session_id"),
        (b'{"model": "mock-1"}', {"X-Session-Id": "-starts-with-dash"}, 400, "invalid_session_id"),
        (b'{"model": "mock-1"}', {"X-Session-Id": "a" * 129}, 400, "invalid_session_id"),
        (b'{"model": "mock-1", "pad": "' + b"x" * 3000 + b'"}', {}, 413, "request_too_large"),
    ],
    ids=["truncated", "not-an-object", "not-utf8", "session-spaces", "session-dash", "session-long", "too-large"],
)
async def test_bad_requests(strict_proxy: Proxy, data: bytes, headers: dict[str, str], status: int, code: str) -> None:
    got_status, body = await _post(f"{strict_proxy.base_url}/chat/completions", data, headers)
    assert got_status == status
    _assert_openai_shape(body, code)
    await _assert_still_serving(strict_proxy)


@pytest.mark.parametrize("whole", [True, False], ids=["body-with-the-head", "body-still-coming"])
async def test_a_chunked_body_over_the_limit_is_413(strict_proxy: Proxy, whole: bool) -> None:
    # No Content-Length to refuse it by: the limit holds whether the whole body
    # came with the head (read at once) or is still coming (read as it comes;
    # the answer comes before the body's end).
    body = b'{"model": "mock-1", "pad": "' + b"x" * 3000 + b'"}'
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (len(body), body)
    reader, writer = await asyncio.open_connection("127.0.0.1", strict_proxy.port)
    try:
        writer.write(head + chunk + (b"0\r\n\r\n" if whole else b""))
        async with asyncio.timeout(10):
            status_line, _, headers = (await reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
            length = next(
                int(v)
                for k, _, v in (h.partition(b": ") for h in headers.split(b"\r\n"))
                if k.lower() == b"content-length"
            )
            answer = json.loads(await reader.readexactly(length))
    finally:
        writer.close()
    assert int(status_line.split()[1]) == 413
    _assert_openai_shape(answer, "request_too_large")
    await _assert_still_serving(strict_proxy)


async def test_a_body_over_the_limit_closes_its_connection(strict_proxy: Proxy) -> None:
    # The rest of a refused body is never read: left open, aiohttp would go on
    # reading and dropping it for its lingering time (10 s), and the connection
    # would count against the proxy's limits all that while.
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: 5000\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", strict_proxy.port)
    try:
        writer.write(head + b'{"model": "mock-1", "pad": "xxxx')
        async with asyncio.timeout(5):
            answer = await reader.read(-1)  # to the connection's end
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert int(status_line.split()[1]) == 413
    assert b"connection: close" in rest.lower()
    _assert_openai_shape(json.loads(rest.partition(b"\r\n\r\n")[2]), "request_too_large")
    await _assert_still_serving(strict_proxy)


async def test_a_body_that_cannot_be_decoded_says_why(strict_proxy: Proxy) -> None:
    body = b"this is not gzip"
    status, answer = await _post(f"{strict_proxy.base_url}/chat/completions", body, {"Content-Encoding": "gzip"})
    assert status == 400
    _assert_openai_shape(answer, "invalid_body")
    assert answer["error"]["message"] == "the request body is malformed: Can not decode content-encoding: gzip"
    await _assert_still_serving(strict_proxy)


async def test_valid_session_ids_are_accepted(strict_proxy: Proxy) -> None:
    for session_id in ("a", "chat:42", "user.7_turn-3", "Z" * 128):
        status, _ = await _post(
            f"{strict_proxy.base_url}/chat/completions",
            b'{"model": "mock-1", "messages": [], "mock": {"tokens": 1, "rate": 0}}',
            {"X-Session-Id": session_id},
        )
        assert status == 200, session_id


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/nowhere", "not_found"),
        ("GET", "/requests/req_unknown", "request_not_found"),
        ("GET", "/sessions/unknown-session", "session_not_found"),
        ("POST", "/requests/req_unknown/cancel", "request_not_found"),
    ],
)
async def test_unknown_things_are_404(strict_proxy: Proxy, method: str, path: str, code: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, strict_proxy.root + path) as response:
            assert response.status == 404
            _assert_openai_shape(await response.json(), code)


async def test_cancel_of_an_unknown_session_is_a_harmless_no(strict_proxy: Proxy) -> None:
    status, body = await _post(f"{strict_proxy.root}/sessions/never-seen/cancel", b"")
    assert (status, body) == (
        200,
        {"success": False, "cancelled": False, "session_id": "never-seen", "request_ids": []},
    )


async def test_unreachable_upstream_is_502(strict_proxy: Proxy) -> None:
    async with openai.AsyncOpenAI(base_url=strict_proxy.base_url, api_key=USER_KEY, max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as raised:
            await client.chat.completions.create(model="dead-1", messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == 502
    assert raised.value.body["code"] == "upstream_unreachable"  # type: ignore[index]
    request_id = raised.value.response.headers["x-request-id"]
    record = await read_record(strict_proxy.root, request_id, USER_KEY)
    assert record["status"] == "failed" and record["error"]["code"] == "upstream_unreachable"
    await _assert_still_serving(strict_proxy)


async def test_provider_silent_before_its_headers_is_504(strict_proxy: Proxy) -> None:
    status, body = await _post(
        f"{strict_proxy.base_url}/chat/completions",
        b'{"model": "mock-1", "messages": [], "mock": {"silence_s": 30, "headers_after_silence": true}}',
    )
    assert status == 504
    _assert_openai_shape(body, "upstream_timeout")
    await _assert_still_serving(strict_proxy)


async def test_provider_silent_mid_stream_ends_with_an_error_event(strict_proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{strict_proxy.base_url}/chat/completions",
            json={"model": "mock-1", "messages": [], "stream": True, "mock": {"silence_s": 30}},
        ) as response:
            assert response.status == 200
            raw = await response.read()  # ends: never a hang
            request_id = response.headers["X-Request-Id"]
    (event,) = sse_payloads(raw)
    assert '"code":"upstream_timeout"' in event
    record = await read_record(strict_proxy.root, request_id, None)  # it was made without a key
    assert record["status"] == "failed" and record["error"]["code"] == "upstream_timeout"


@pytest.mark.parametrize("burst", [False, True], ids=["reset", "burst-then-reset"])
async def test_provider_breaking_mid_stream(strict_proxy: Proxy, burst: bool) -> None:
    received: list[str] = []
    async with openai.AsyncOpenAI(base_url=strict_proxy.base_url, api_key=USER_KEY, max_retries=0) as client:
        stream = await open_stream(
            client,
            {"tokens": 50, "rate": 100, "fail_after": 5, "burst_then_reset": burst},
            session_id=f"broken-{uuid.uuid4().hex[:8]}",
        )
        request_id = stream.response.headers["x-request-id"]
        with pytest.raises(openai.APIError) as raised:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
    assert "broke off" in raised.value.message
    # Deltas that arrive together with the reset are not relayed (relay._read);
    # whatever the client got, the record holds exactly that.
    assert 1 <= len(received) <= 50
    record = await read_record(strict_proxy.root, request_id, USER_KEY)
    assert record["status"] == "failed"
    assert record["error"]["code"] == "upstream_broken"
    assert record["content"] == "".join(received)  # the partial is kept, as the client saw it
    assert record["usage"]["estimated"] is True
    await _assert_still_serving(strict_proxy)
