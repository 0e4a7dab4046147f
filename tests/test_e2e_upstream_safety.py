"""Nothing a client sends changes where the proxy connects, or which credential it sends there.

Hostile paths go over raw sockets: a client library would normalise them
before they left, and hostile clients do not use one.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import socket
from pathlib import Path

import aiohttp
import pytest

from .conftest import MockProvider, proxy_config, start_mock, start_proxy
from .helpers import provider_request, raw_request, read_record
from .recording_upstream import recording_upstream

UPSTREAM_KEY = "sk-upstream-secret-0123456789"  # conftest gives the "keyed" upstream this one
CLIENT_KEY = "sk-client-key-0123456789abcdef"

HOSTILE_TAILS = [
    "../secret",
    "%2e%2e/secret",
    "%2E%2E/secret",
    "%2E%2E%2Fsecret",
    ".%2e/%2e%2e/secret",
    "%252e%252e/secret",
    "..;/secret",
    "models/..%5c..%5csecret",
    "./models",
    "chat/%2e%2e/%2e%2e/%2e%2e/secret",
]


def _head(method: str, path: str, body: bytes = b"", extra: str = "") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode()


def _trap_config(base_url: str) -> dict[str, object]:
    """Every request to one keyed upstream, the recording one at ``base_url``."""
    return {
        "default_upstream": "trap",
        "upstreams": [{"name": "trap", "base_url": base_url, "api_key": UPSTREAM_KEY, "models": ["*"]}],
        "store": {"url": "memory://"},
    }


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_hostile_paths_never_leave_the_base_path(tmp_path: Path, method: str) -> None:
    async with recording_upstream() as upstream:
        proxy = start_proxy(tmp_path, _trap_config(f"{upstream.root}/base/v1"))
        try:
            for tail in HOSTILE_TAILS:
                for prefix in ("/v1/", "/trap/v1/"):
                    body = b'{"model": "x"}' if method == "POST" else b""
                    status, answer = await raw_request(proxy.port, _head(method, prefix + tail, body), body)
                    # Refused in OpenAI's shape, or (for a path aiohttp already resolved) not routed at all.
                    assert status in (400, 404), (prefix + tail, status, answer)
                    assert json.loads(answer)["error"]["code"] in ("invalid_path", "not_found")
            # A well-formed path still goes where it should, percent-encoding kept.
            status, _ = await raw_request(proxy.port, _head("GET", "/v1/files/a%2Fb?limit=5"))
            assert status == 200
        finally:
            proxy.program.stop()
    assert [s.raw_path for s in upstream.seen] == ["/base/v1/files/a%2Fb?limit=5"]


async def test_an_encoded_prefix_cannot_move_the_port(tmp_path: Path) -> None:
    """``/%761/...`` decodes to ``/v1/...``; cut by the decoded prefix's length it
    became ``61/...``, and base_url ``http://127.0.0.1:300`` + that is port 30061."""
    low, trap = _port_pair()
    mock = start_mock(port=low)
    try:
        async with recording_upstream(port=trap) as trapped:
            config = proxy_config(mock)
            config["upstreams"] = [
                {"name": "mock", "base_url": f"http://127.0.0.1:{low}", "api_key": UPSTREAM_KEY, "models": ["*"]}
            ]
            proxy = start_proxy(tmp_path, config)
            try:
                body = json.dumps({"model": "mock-1", "messages": [], "mock": {"tokens": 2, "rate": 0, "tag": "moved"}})
                status, _ = await raw_request(
                    proxy.port, _head("POST", "/%761/chat/completions", body.encode()), body.encode()
                )
            finally:
                proxy.program.stop()
        assert status == 200
        assert trapped.seen == []  # nothing, and no key, reached the other port
        seen = await provider_request(mock.root, "moved")
        assert seen["headers"]["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    finally:
        mock.program.stop()


def _port_pair() -> tuple[int, int]:
    """A free port P (300..654) whose digits followed by "61" make another free port."""
    for low in random.sample(range(300, 655), 355):
        ports = (low, low * 100 + 61)
        if all(_free(port) for port in ports):
            return ports
    raise RuntimeError("no free port pair")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_a_configured_key_replaces_every_client_credential(tmp_path: Path, mock_provider: MockProvider) -> None:
    proxy = start_proxy(tmp_path, proxy_config(mock_provider))
    try:
        headers = {"Authorization": f"Bearer {CLIENT_KEY}", "x-api-key": CLIENT_KEY, "api-key": CLIENT_KEY}
        body = {"model": "keyed-1", "messages": [], "mock": {"tokens": 2, "rate": 0, "tag": "keyed-creds"}}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{proxy.base_url}/chat/completions", json=body, headers=headers) as response:
                assert response.status == 200
    finally:
        proxy.program.stop()
    seen = {k.lower(): v for k, v in (await provider_request(mock_provider.root, "keyed-creds"))["headers"].items()}
    assert seen["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert "x-api-key" not in seen and "api-key" not in seen


async def test_a_configured_key_goes_where_the_routes_protocol_carries_it(tmp_path: Path) -> None:
    """Under ``/v1/messages`` an Anthropic-compatible provider reads ``x-api-key``:
    its other routes (count_tokens, batches) got the key as ``Authorization`` and
    were refused, and the proxy's own errors there came in OpenAI's shape."""
    async with recording_upstream() as upstream:
        proxy = start_proxy(tmp_path, _trap_config(f"{upstream.root}/v1"))
        try:
            async with aiohttp.ClientSession() as session:
                body = {"model": "claude-x", "messages": []}
                for path in ("/v1/messages/count_tokens", "/trap/v1/messages/batches"):
                    async with session.post(proxy.root + path, json=body, headers={"x-api-key": CLIENT_KEY}) as answer:
                        assert answer.status == 200, path
                async with session.get(f"{proxy.root}/v1/models", headers={"x-api-key": CLIENT_KEY}) as answer:
                    assert answer.status == 200
                refused = {"x-api-key": CLIENT_KEY, "X-Session-Id": "!"}
                async with session.post(f"{proxy.root}/v1/messages/count_tokens", json=body, headers=refused) as answer:
                    assert answer.status == 400
                    error = await answer.json()
        finally:
            proxy.program.stop()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error", error
    messages, models = upstream.seen[:2], upstream.seen[2]
    assert [seen.raw_path for seen in messages] == ["/v1/messages/count_tokens", "/v1/messages/batches"]
    for seen in messages:
        headers = {k.lower(): v for k, v in seen.headers.items()}
        assert headers["x-api-key"] == UPSTREAM_KEY and "authorization" not in headers
    headers = {k.lower(): v for k, v in models.headers.items()}
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}" and "x-api-key" not in headers
    assert len(upstream.seen) == 3


async def test_a_base_url_with_user_and_password_sends_basic_auth(tmp_path: Path, mock_provider: MockProvider) -> None:
    """It raised inside the relay beside a client's Authorization: text/plain 500, record "completed"."""
    config = proxy_config(mock_provider)
    config["upstreams"] = [
        {"name": "mock", "base_url": f"http://bob:s3cr%3At@127.0.0.1:{mock_provider.port}/v1", "models": ["*"]}
    ]
    proxy = start_proxy(tmp_path, config)
    try:
        body = {"model": "mock-1", "messages": [], "stream": True, "mock": {"tokens": 3, "rate": 0, "tag": "basic"}}
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{proxy.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {CLIENT_KEY}"}
            ) as response:
                assert response.status == 200, await response.text()
                request_id = response.headers["X-Request-Id"]
                await response.read()
        record = await read_record(proxy.root, request_id, CLIENT_KEY)
    finally:
        proxy.program.stop()
    assert record["status"] == "completed"
    seen = await provider_request(mock_provider.root, "basic")
    assert seen["headers"]["Authorization"] == "Basic " + base64.b64encode(b"bob:s3cr:t").decode()
    assert "s3cr" not in proxy.program.output


async def test_expect_100_continue_is_answered_not_forwarded(tmp_path: Path) -> None:
    """Forwarded, it made the proxy hold the body until a 100 that never came."""
    async with recording_upstream() as upstream:
        config = {
            "upstreams": [{"name": "plain", "base_url": f"{upstream.root}/v1", "models": ["*"]}],
            "store": {"url": "memory://"},
            "limits": {"first_byte_timeout_s": 60},
        }
        proxy = start_proxy(tmp_path, config)
        try:
            body = json.dumps({"model": "m", "input": "x" * 2_000_000}).encode()
            async with aiohttp.ClientSession() as session:
                async with asyncio.timeout(20):  # far below first_byte_timeout_s
                    async with session.post(
                        f"{proxy.base_url}/embeddings",
                        data=io.BytesIO(body),
                        headers={"Content-Type": "application/json"},
                        expect100=True,
                    ) as response:
                        assert response.status == 200
        finally:
            proxy.program.stop()
    (seen,) = upstream.seen
    assert seen.body == body
    assert "expect" not in {k.lower() for k in seen.headers}


# What a client may write that re-encoding would change: an integer past 64
# bits, a float's spelling, escapes, spaces, the order of the keys.
CLIENT_BODY = (
    b'\n {"model": "m", "seed": 123456789012345678901234567890, "temperature": 7E-1,\n'
    b'  "messages": [{"role": "user", "content": "caf\\u00e9 \\ud83d\\ude00 \xc3\xa9"}], "stream": true}'
)


async def test_a_stream_asked_for_usage_keeps_every_byte_the_client_wrote(tmp_path: Path) -> None:
    own_options = CLIENT_BODY.replace(b'"stream": true}', b'"stream": true, "stream_options": {"x": 1}}')
    async with recording_upstream() as upstream:
        config = {
            "upstreams": [{"name": "plain", "base_url": f"{upstream.root}/v1", "models": ["*"]}],
            "store": {"url": "memory://"},
        }
        proxy = start_proxy(tmp_path, config)
        try:
            async with aiohttp.ClientSession() as session:
                for body in (CLIENT_BODY, own_options):
                    async with session.post(
                        f"{proxy.base_url}/chat/completions", data=body, headers={"Content-Type": "application/json"}
                    ) as response:
                        await response.read()  # not an event stream: the recording upstream answers JSON
        finally:
            proxy.program.stop()
    plain, merged = (seen.body for seen in upstream.seen)
    # The one member the proxy adds, first in the object; every other byte the client's.
    assert plain == b'\n {"stream_options":{"include_usage":true},' + CLIENT_BODY[3:]
    # Options of the client's own are merged, and the body read and written exactly.
    assert json.loads(merged) == {**json.loads(own_options), "stream_options": {"x": 1, "include_usage": True}}
    assert b"123456789012345678901234567890" in merged
