"""What the end-to-end tests ask of the mock provider and of the kernel."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import openai

# /proc/net/tcp states (include/net/tcp_states.h)
TCP_ESTABLISHED = "01"


def content_of(n: int) -> str:
    """The mock provider's deterministic answer of ``n`` deltas."""
    return "".join(f"w{i} " for i in range(n))


async def provider_request(root: str, tag: str, wait: str | None = None, timeout: float = 15.0) -> dict[str, Any]:
    """The mock provider's record of the request tagged ``tag``.

    ``wait="started"`` or ``"ended"`` long-polls until that happened.
    """
    params = {"wait": wait, "timeout": str(timeout)} if wait else {}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{root}/_mock/requests/{tag}", params=params) as response:
            assert response.status == 200, f"provider has no request '{tag}' ({wait}): {await response.text()}"
            return dict(await response.json())


async def open_stream(
    client: openai.AsyncOpenAI, mock: dict[str, Any], *, session_id: str | None = None, prompt: str = "x"
) -> openai.AsyncStream[Any]:
    """A stream of model mock-1 through ``client``, steered by the mock options."""
    return await client.chat.completions.create(
        model="mock-1",
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        extra_body={"mock": mock},
        extra_headers={"X-Session-Id": session_id} if session_id else {},
    )


async def read_record(root: str, request_id: str, key: str | None) -> dict[str, Any]:
    """A request's record once it is final (``?wait=1``), read with ``key``'s credential."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{root}/requests/{request_id}?wait=1", headers=headers) as response:
            assert response.status == 200, await response.text()
            return dict(await response.json())


def tcp_state(port_a: int, port_b: int) -> str | None:
    """The kernel's state of the loopback socket bound to ``port_a`` talking to ``port_b``.

    None once the socket is gone. This is the provider's side of a connection
    as the kernel sees it: anything but ESTABLISHED means the FIN has arrived.
    """
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if int(local.rsplit(":", 1)[1], 16) == port_a and int(remote.rsplit(":", 1)[1], 16) == port_b:
                return state
    return None


def sse_payloads(raw: bytes) -> list[str]:
    """The data payloads of an SSE byte stream, in order."""
    payloads = []
    for event in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
        if data:
            payloads.append(b"\n".join(data).decode())
    return payloads


def sse_content(raw: bytes) -> str:
    """The assembled ``delta.content`` of an SSE byte stream."""
    parts = []
    for payload in sse_payloads(raw):
        if payload == "[DONE]":
            continue
        chunk = json.loads(payload)
        for choice in chunk.get("choices") or []:
            parts.append((choice.get("delta") or {}).get("content") or "")
    return "".join(parts)


async def raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 10.0) -> tuple[int, bytes]:
    """Send exactly these bytes (no client library normalises the path) and read
    the answer's status and body (``Connection: close`` framing)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        async with asyncio.timeout(timeout):
            raw = await reader.read(-1)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    _, _, body_out = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), body_out


def unique(prefix: str) -> str:
    """A tag or session id no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def sdk_extra(mock: dict[str, Any], session_id: str | None = None) -> dict[str, Any]:
    """An official SDK call's extras: the mock's knobs in the body, the session as a header."""
    return {"extra_body": {"mock": mock}, "extra_headers": {"X-Session-Id": session_id} if session_id else {}}


async def post_ok(url: str, headers: dict[str, str]) -> dict[str, Any]:
    """POST with no body (a cancel route), answered 200: its JSON."""
    async with aiohttp.ClientSession() as session:
        async with session.post(url, headers=headers) as answer:
            assert answer.status == 200, await answer.text()
            return dict(await answer.json())


async def until(read: Any, done: Any, bound_s: float = 15.0) -> Any:
    """Re-read until ``done(value)``: for state another process changes on its
    own timer (flushes, heartbeats), where there is no event to await."""
    deadline = time.monotonic() + bound_s
    while True:
        value = await read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {bound_s}s: {value}")
        await asyncio.sleep(0.05)
