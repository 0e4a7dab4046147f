"""A deterministic OpenAI-compatible mock provider that records what it saw.

Its answers are a pure function of the request (bytes compare across runs); a
body's ``mock`` object makes it slow, silent, chatty, broken or reset on demand.
``/_mock/requests`` tells tests what it observed, above all whether and when a
client that went away was noticed. Hence ``handler_cancellation=True``: a closed
connection then cancels the handler at whatever it awaits, a silent sleep included.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from yarl import URL

Json = dict[str, Any]

CREATED = 1700000000
FINGERPRINT = "fp_mock"
MODEL_ID = "mock-1"
TOOL_CALL_ID = "call_mock_1"
TOOL_NAME = "get_weather"
KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
# A mock holds no work worth waiting for: on shutdown, cancel in-flight streams
# and long-polls soon instead of aiohttp's default 60 s.
SHUTDOWN_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class MockDefaults:
    tokens: int = 40  # content deltas per answer
    rate: float = 20.0  # deltas per second; 0 = as fast as possible (no sleeps)
    silence_s: float = 0.0  # wait before the first delta


@dataclass(frozen=True)
class _Plan:
    """One chat request's behaviour: the defaults with its ``mock`` overrides."""

    model: str
    stream: bool
    include_usage: bool
    prompt_tokens: int
    tokens: int
    rate: float
    silence_s: float
    keepalive_s: float | None = None
    headers_after_silence: bool = False
    reasoning: int = 0
    tool_call: bool = False
    fail_after: int | None = None
    burst_then_reset: bool = False
    status: int | None = None
    tag: str | None = None

    def delay(self, deltas: int) -> float:
        return deltas / self.rate if self.rate > 0 else 0.0


# The ``mock`` options a request may set, with their JSON types.
_OPTIONS: dict[str, type] = {
    "tokens": int,
    "rate": float,
    "silence_s": float,
    "keepalive_s": float,
    "reasoning": int,
    "tool_call": bool,
    "fail_after": int,
    "burst_then_reset": bool,
    "status": int,
    "tag": str,
    "headers_after_silence": bool,
}


class _BadRequest(Exception):
    """The body cannot be served; answered with a 400 in OpenAI's error shape."""


class _Recorder:
    """What the provider saw. Records are plain dicts: they are served as JSON as-is."""

    def __init__(self) -> None:
        self.records: list[Json] = []  # in arrival order
        self._seq = 0
        self._changed = asyncio.Event()

    def add(self, request: web.Request, plan: _Plan, body: Json) -> Json:
        # seq never restarts, even after a clear: default tags stay unique.
        self._seq += 1
        peer = request.transport.get_extra_info("peername") if request.transport else None
        # peer_port lets a test find this connection in the kernel's socket tables.
        record: Json = {
            "tag": plan.tag or f"req-{self._seq}",
            "seq": self._seq,
            "stream": plan.stream,
            "model": plan.model,
            "state": "running",
            "tokens_sent": 0,
            "started_at": time.monotonic(),
            "ended_at": None,
            "last_token_at": None,
            "peer_port": peer[1] if peer else None,
            "headers": dict(request.headers),
            "body": body,
        }
        self.records.append(record)
        self._notify()
        return record

    def finish(self, record: Json, state: str) -> None:
        # The first ending wins: the cancellation that follows our own abort()
        # must not turn "failed" into "closed_by_client".
        if record["state"] == "running":
            record["state"] = state
            record["ended_at"] = time.monotonic()
            self._notify()

    def latest(self, tag: str, until: str = "started") -> Json | None:
        record = next((r for r in reversed(self.records) if r["tag"] == tag), None)
        if record is None or (until == "ended" and record["state"] == "running"):
            return None
        return record

    async def wait(self, tag: str, until: str, timeout: float) -> Json | None:
        try:
            async with asyncio.timeout(timeout):
                while (record := self.latest(tag, until)) is None:
                    await self._changed.wait()
                return record
        except TimeoutError:
            return None

    def _notify(self) -> None:
        # Wake every waiter and give later ones a fresh Event: a Condition without
        # a lock, so finish() stays synchronous inside ``except CancelledError``.
        self._changed.set()
        self._changed = asyncio.Event()


_DEFAULTS = web.AppKey("mock_defaults", MockDefaults)
_RECORDER = web.AppKey("mock_recorder", _Recorder)


def _option(key: str, value: Any) -> Any:
    kind = _OPTIONS.get(key)
    if kind is None:
        raise _BadRequest(f"unknown mock option {key!r}")  # a typo must not pass silently
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    # bool is an int subclass, but ``"tokens": true`` is a mistake, not a 1.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _BadRequest(f"mock.{key} must be {kind.__name__}")
    if isinstance(value, (int, float)) and value < 0:
        raise _BadRequest(f"mock.{key} must not be negative")
    return value


def _prompt_tokens(messages: Any) -> int:
    if not isinstance(messages, list):
        return 0
    contents = (m.get("content") for m in messages if isinstance(m, dict))
    return sum(len(c.split()) for c in contents if isinstance(c, str))


def _parse_plan(body: Any, defaults: MockDefaults) -> _Plan:
    if not isinstance(body, dict):
        raise _BadRequest("the body must be a JSON object")
    mock, stream_options = body.get("mock") or {}, body.get("stream_options") or {}
    if not isinstance(mock, dict) or not isinstance(stream_options, dict):
        raise _BadRequest("mock and stream_options must be objects")
    options = {key: _option(key, value) for key, value in mock.items() if value is not None}
    if options.get("keepalive_s") == 0:
        del options["keepalive_s"]  # a 0 period would spin: read it as "no keep-alives"
    if not 400 <= options.get("status", 400) <= 599:
        raise _BadRequest("mock.status must be an HTTP error status (400-599)")
    if options.get("headers_after_silence") and "keepalive_s" in options:
        raise _BadRequest("keep-alive comments need the headers sent: drop headers_after_silence")
    model = body.get("model", MODEL_ID)
    if not isinstance(model, str):
        raise _BadRequest("model must be a string")
    return _Plan(
        **{
            "model": model,
            "stream": body.get("stream") is True,
            "include_usage": stream_options.get("include_usage") is True,
            "prompt_tokens": _prompt_tokens(body.get("messages")),
            "tokens": defaults.tokens,
            "rate": defaults.rate,
            "silence_s": defaults.silence_s,
            **options,
        }
    )


def _split(text: str, parts: int) -> list[str]:
    return [text[i * len(text) // parts : (i + 1) * len(text) // parts] for i in range(parts)]


def _tool_arguments(tokens: int) -> str:
    return json.dumps({"city": " ".join(f"w{i}" for i in range(tokens))})


def _deltas(plan: _Plan) -> tuple[list[Json], list[Json]]:
    """The answer as (opening deltas, counted deltas); only counted ones are tokens."""
    opening: list[Json] = [{"role": "assistant", "content": ""}]
    counted: list[Json] = [{"reasoning_content": f"r{i} "} for i in range(plan.reasoning)]
    if plan.tool_call:
        header = {"id": TOOL_CALL_ID, "type": "function", "function": {"name": TOOL_NAME, "arguments": ""}}
        opening.append({"tool_calls": [{"index": 0, **header}]})
        pieces = _split(_tool_arguments(plan.tokens), plan.tokens)
        counted += [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in pieces]
    else:
        counted += [{"content": f"w{i} "} for i in range(plan.tokens)]
    return opening, counted


class _Reply:
    """Builds the chunks and the completion object of one answer."""

    def __init__(self, plan: _Plan, tag: str) -> None:
        self.plan = plan
        self.id = f"chatcmpl-mock-{tag}"
        self.finish_reason = "tool_calls" if plan.tool_call else "stop"

    def usage(self, completion_tokens: int) -> Json:
        prompt = self.plan.prompt_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        }

    def event(self, choices: list[Json], usage: Json | None = None) -> bytes:
        chunk: Json = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": self.plan.model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }
        if self.plan.include_usage:
            chunk["usage"] = usage
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    def delta(self, delta: Json, finish_reason: str | None = None) -> bytes:
        return self.event([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])

    def completion(self, deltas: list[Json]) -> Json:
        """The non-streaming answer carrying what the stream's deltas would have."""

        def joined(key: str) -> str:
            return "".join(d[key] for d in deltas if key in d)

        message: Json = {"role": "assistant", "content": None if self.plan.tool_call else joined("content")}
        if self.plan.reasoning:
            message["reasoning_content"] = joined("reasoning_content")
        if self.plan.tool_call:
            arguments = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas if "tool_calls" in d)
            message["tool_calls"] = [
                {"id": TOOL_CALL_ID, "type": "function", "function": {"name": TOOL_NAME, "arguments": arguments}}
            ]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": CREATED,
            "model": self.plan.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [choice],
            "usage": self.usage(len(deltas)),
        }


def _error(status: int, message: str, type_: str, code: str | None) -> web.Response:
    error = {"message": message, "type": type_, "param": None, "code": code}
    return web.json_response({"error": error}, status=status)


def _reset(request: web.Request) -> None:
    """Drop the connection like a crashed upstream: no clean end of body."""
    if (transport := request.transport) is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0 makes close() send a TCP RST rather than a FIN, so the client
        # sees a real reset, not just an early EOF.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _silence(resp: web.StreamResponse, plan: _Plan) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + plan.silence_s
    while plan.keepalive_s is not None and deadline - loop.time() > plan.keepalive_s:
        await asyncio.sleep(plan.keepalive_s)
        await resp.write(KEEPALIVE)
    if (left := deadline - loop.time()) > 0:
        await asyncio.sleep(left)


async def _stream_body(request: web.Request, resp: web.StreamResponse, plan: _Plan, record: Json) -> None:
    reply = _Reply(plan, record["tag"])
    opening, deltas = _deltas(plan)
    cut = len(deltas) if plan.fail_after is None else min(plan.fail_after, len(deltas))
    if plan.headers_after_silence:
        # A provider that has not even answered yet: the client waits for headers.
        await asyncio.sleep(plan.silence_s)
    await resp.prepare(request)
    if not plan.headers_after_silence:
        await _silence(resp, plan)
    for delta in opening:
        await resp.write(reply.delta(delta))
    for i, delta in enumerate(deltas[:cut]):
        if i and plan.rate > 0:
            await asyncio.sleep(1 / plan.rate)
        await resp.write(reply.delta(delta))
        record["tokens_sent"] += 1
        record["last_token_at"] = time.monotonic()
    if plan.fail_after is not None:
        if plan.burst_then_reset and cut < len(deltas):
            # One write, right before the reset: the bytes are in flight when it lands.
            await resp.write(b"".join(reply.delta(d) for d in deltas[cut:]))
            record["tokens_sent"] = len(deltas)
        request.app[_RECORDER].finish(record, "failed")
        _reset(request)
        return
    await resp.write(reply.delta({}, reply.finish_reason))
    if plan.include_usage:
        await resp.write(reply.event([], reply.usage(len(deltas))))
    await resp.write(DONE)
    request.app[_RECORDER].finish(record, "completed")


async def _guard_reset(
    request: web.Request, resp: web.StreamResponse, record: Json, writing: Awaitable[None]
) -> web.StreamResponse:
    try:
        await writing
    except ConnectionResetError:
        # Gone between two awaits, before the cancellation could arrive.
        request.app[_RECORDER].finish(record, "closed_by_client")
    return resp


async def _stream(request: web.Request, plan: _Plan, record: Json) -> web.StreamResponse:
    resp = web.StreamResponse(headers=SSE_HEADERS)
    return await _guard_reset(request, resp, record, _stream_body(request, resp, plan, record))


async def _half_body(request: web.Request, resp: web.StreamResponse, body: bytes, record: Json) -> None:
    await resp.prepare(request)
    await resp.write(body[: len(body) // 2])
    request.app[_RECORDER].finish(record, "failed")
    _reset(request)


async def _complete(request: web.Request, plan: _Plan, record: Json) -> web.StreamResponse:
    _, deltas = _deltas(plan)
    generated = len(deltas) if plan.fail_after is None else min(plan.fail_after, len(deltas))
    # Take as long as the stream would, so a non-streaming request can be cancelled too.
    await asyncio.sleep(plan.silence_s + plan.delay(generated))
    body = json.dumps(_Reply(plan, record["tag"]).completion(deltas)).encode()
    if plan.fail_after is None:
        record["tokens_sent"] = len(deltas)
        request.app[_RECORDER].finish(record, "completed")
        return web.Response(body=body, content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = len(body)  # promised in full, so the cut is visible
    return await _guard_reset(request, resp, record, _half_body(request, resp, body, record))


async def _chat(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json()
        plan = _parse_plan(body, request.app[_DEFAULTS])
    except (ValueError, _BadRequest) as exc:
        return _error(400, str(exc), "invalid_request_error", None)
    recorder = request.app[_RECORDER]
    record = recorder.add(request, plan, body)
    try:
        if plan.status is not None:
            recorder.finish(record, "failed")
            return _error(plan.status, "mock error", "mock_error", f"mock_{plan.status}")
        if plan.stream:
            return await _stream(request, plan, record)
        return await _complete(request, plan, record)
    except asyncio.CancelledError:
        # handler_cancellation: the client closed the connection, even mid-sleep.
        recorder.finish(record, "closed_by_client")
        raise


async def _models(request: web.Request) -> web.Response:
    model = {"id": MODEL_ID, "object": "model", "created": CREATED, "owned_by": "cancelproxy-mock"}
    return web.json_response({"object": "list", "data": [model]})


async def _requests(request: web.Request) -> web.Response:
    records = request.app[_RECORDER].records
    if request.method == "DELETE":
        records.clear()
    return web.json_response({"requests": records})


async def _get_request(request: web.Request) -> web.Response:
    recorder, tag = request.app[_RECORDER], request.match_info["tag"]
    until = request.query.get("wait")
    try:
        timeout = float(request.query.get("timeout", "10"))
        if until not in (None, "started", "ended"):
            raise ValueError(until)
    except ValueError:
        return _error(400, "wait must be started|ended, timeout a number", "invalid_request_error", None)
    if until is None:
        record = recorder.latest(tag)
    elif (record := await recorder.wait(tag, until, timeout)) is None:
        return _error(408, f"no request {tag!r} {until} in time", "timeout", None)
    if record is None:
        return _error(404, f"no request tagged {tag!r}", "not_found", None)
    return web.json_response(record)


def create_mock_app(defaults: MockDefaults = MockDefaults()) -> web.Application:
    app = web.Application()
    app[_DEFAULTS] = defaults
    app[_RECORDER] = _Recorder()
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/chat/completions", _chat)
        app.router.add_get(f"{prefix}/models", _models)
    app.router.add_get("/_mock/requests", _requests)
    app.router.add_delete("/_mock/requests", _requests)
    app.router.add_get("/_mock/requests/{tag}", _get_request)
    return app


async def start_mock(
    host: str = "127.0.0.1", port: int = 0, defaults: MockDefaults = MockDefaults()
) -> tuple[web.AppRunner, str]:
    """Serve the mock in the running loop; the caller ends it with ``runner.cleanup()``."""
    runner = web.AppRunner(
        create_mock_app(defaults),
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    return runner, str(URL.build(scheme="http", host=host, port=bound_port, path="/v1"))


def run_mock(host: str, port: int, defaults: MockDefaults) -> None:
    """Serve the mock until interrupted (``cancelproxy mock-upstream``)."""

    def announce(banner: str) -> None:
        # aiohttp's banner names the bound address (the real port even for 0).
        found = re.search(r"https?://\S+", banner)
        url = found.group(0) if found else f"http://{host}:{port}"
        print(f"mock provider listening on {url}/v1", flush=True)

    web.run_app(
        create_mock_app(defaults),
        host=host,
        port=port,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        print=announce,
    )
