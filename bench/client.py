"""What every client job shares: request bodies, sessions, SSE counting, the mock's records."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Literal

import aiohttp

JSON = {"Content-Type": "application/json"}
# Every content delta of the mock carries this; the role delta ("content":"") does not.
CONTENT_MARK = b'"content":"w'
# Every text delta of a Responses stream carries this, once (its event: line has no quotes).
RESPONSES_MARK = b'"type":"response.output_text.delta"'

# The two OpenAI stream formats the harness sends: chat completions, and the Responses API.
Protocol = Literal["chat", "responses"]
PROTOCOLS: tuple[Protocol, ...] = ("chat", "responses")
PATHS: dict[Protocol, str] = {"chat": "/v1/chat/completions", "responses": "/v1/responses"}
MARKS: dict[Protocol, bytes] = {"chat": CONTENT_MARK, "responses": RESPONSES_MARK}


# Requests waiting for their answer's headers at once, per client process: with
# 2 processes this stays within the mock's 128-connection listen backlog
# (aiohttp's default; cancelproxy asks for 4096), leaving room for cancels and probes. A
# burst beyond the backlog makes the kernel drop SYNs, and clients retry after
# 1, 3, 7, 15 s: that would measure TCP's retransmission timer, not the proxy.
OPENING = 48


def chat_body(*, stream: bool, **mock: Any) -> bytes:
    body = {"model": "mock-1", "messages": [{"role": "user", "content": "bench"}], "stream": stream, "mock": mock}
    return json.dumps(body, separators=(",", ":")).encode()


# A chat app sends the whole conversation with every question: 60 turns of
# ~560 characters, ~35 KB of JSON.
CONVERSATION_TURNS = 60
_TURN = "Explain how TCP and UDP differ, when each is the better choice, and why. " * 8


def conversation_body(**mock: Any) -> bytes:
    """A streamed chat request whose body is a long conversation."""
    messages = [
        {"role": "user" if turn % 2 == 0 else "assistant", "content": f"{turn}: {_TURN}"}
        for turn in range(CONVERSATION_TURNS)
    ]
    body = {"model": "mock-1", "messages": messages, "stream": True, "temperature": 0.7, "mock": mock}
    return json.dumps(body, separators=(",", ":")).encode()


def stream_body(protocol: Protocol, **mock: Any) -> bytes:
    """A streamed request of ``protocol`` with these mock knobs (the mock serves both alike)."""
    if protocol == "chat":
        return chat_body(stream=True, **mock)
    body = {"model": "mock-1", "input": "bench", "stream": True, "mock": mock}
    return json.dumps(body, separators=(",", ":")).encode()


class Opener:
    """Bounds the requests of one process still waiting for their answer's headers."""

    def __init__(self, limit: int = OPENING) -> None:
        self._slots = asyncio.Semaphore(limit)

    async def post(
        self, http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        async with self._slots:
            return await http.post(url, data=body, headers=headers or JSON)


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (all sockets)."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[0::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split()[1:], values.split()[1:], strict=True)).get("ListenOverflows", 0))
    return 0


def session(limit: int = 0, total_s: float | None = None, force_close: bool = False) -> aiohttp.ClientSession:
    """``force_close``: a new connection for every request, closed after it."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, force_close=force_close),
        timeout=aiohttp.ClientTimeout(total=total_s, connect=30, sock_read=60),
    )


class ContentCounter:
    """Counts content deltas in a byte stream, whatever the read boundaries: chat's
    by default, a Responses stream's with ``mark=RESPONSES_MARK``."""

    def __init__(self, mark: bytes = CONTENT_MARK) -> None:
        self.count = 0
        self._mark = mark
        self._carry = b""

    def feed(self, data: bytes) -> int:
        """How many deltas this read completed."""
        buffer = self._carry + data
        found = buffer.count(self._mark)
        self.count += found
        self._carry = buffer[-(len(self._mark) - 1) :]
        return found


async def read_deltas(response: aiohttp.ClientResponse, counter: ContentCounter, until: int) -> None:
    """Read until ``until`` content deltas arrived in total (or the stream ended)."""
    while counter.count < until:
        data = await response.content.readany()
        if not data:
            raise RuntimeError(f"the stream ended after {counter.count} deltas, {until} wanted")
        counter.feed(data)


async def read_to_end(response: aiohttp.ClientResponse, counter: ContentCounter | None = None) -> None:
    while data := await response.content.readany():
        if counter is not None:
            counter.feed(data)


async def sleep_until(instant: float) -> None:
    await asyncio.sleep(max(0.0, instant - time.monotonic()))


def check(response: aiohttp.ClientResponse, what: str) -> None:
    if response.status != 200:
        raise RuntimeError(f"{what}: HTTP {response.status} from {response.url}")


async def mock_record(http: aiohttp.ClientSession, mock_root: str, tag: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The mock's record of ``tag`` once its connection ended (long poll)."""
    url = f"{mock_root}/_mock/requests/{tag}"
    async with http.get(url, params={"wait": "ended", "timeout": str(timeout_s)}) as response:
        check(response, f"mock record {tag}")
        return dict(await response.json())


async def mock_records(
    http: aiohttp.ClientSession, mock_root: str, tags: set[str], timeout_s: float = 20.0
) -> dict[str, dict[str, Any]]:
    """The mock's records of many tags once all ended: one listing per poll, not a
    long poll each (every change would wake them all)."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with http.get(f"{mock_root}/_mock/requests") as response:
            check(response, "mock records")
            listing = (await response.json())["requests"]
        found = {r["tag"]: r for r in listing if r["tag"] in tags and r["state"] != "running"}
        if len(found) == len(tags) or time.monotonic() > deadline:
            missing = tags - found.keys()
            if missing:
                raise RuntimeError(f"{len(missing)} provider connections still open after {timeout_s} s")
            return found
        await asyncio.sleep(0.1)
