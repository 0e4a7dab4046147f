"""``cancelproxy demo``: the whole story offline, over real sockets.

The proxy (with the built-in mock provider behind it) is started on a loopback
port, a stream is started, Stop is pressed part-way through, and the stored
partial answer is shown beside what the client received.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import aiohttp
from aiohttp import web

from .app import RUNNER_OPTIONS, create_app
from .config import parse_config
from .services import SERVICES

__all__ = ["PROTOCOL_NAMES", "run_demo"]


def run_demo(*, protocol: str = "chat", tokens: int, rate: float, stop_after: int) -> int:
    return asyncio.run(_demo(protocol=protocol, tokens=tokens, rate=rate, stop_after=stop_after))


async def _demo(*, protocol: str, tokens: int, rate: float, stop_after: int) -> int:
    config = parse_config(
        {
            "upstreams": [{"name": "mock", "base_url": "builtin:mock", "models": ["mock-*"]}],
            "store": {"url": "memory://"},
        },
        env={},
    )
    runner = web.AppRunner(create_app(config), **RUNNER_OPTIONS)  # type: ignore[arg-type]
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    root = f"http://127.0.0.1:{port}"
    provider = str(runner.app[SERVICES].base_urls["mock"].origin())
    session_id = f"demo-{secrets.token_hex(4)}"
    try:
        print(f"cancelproxy demo: proxy on {root}/v1, the built-in mock provider behind it\n")
        async with aiohttp.ClientSession() as http:
            return await _story(
                http, root, provider, session_id, protocol=protocol, tokens=tokens, rate=rate, stop_after=stop_after
            )
    finally:
        await runner.cleanup()


# Each protocol's request, and how its stream's text and ending look to a client.
_PROMPT = "Tell me a long story."
_REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("chat/completions", {"messages": [{"role": "user", "content": _PROMPT}]}),
    "responses": ("responses", {"input": _PROMPT}),
    "messages": ("messages", {"max_tokens": 4096, "messages": [{"role": "user", "content": _PROMPT}]}),
    "completions": ("completions", {"prompt": _PROMPT}),
}
PROTOCOL_NAMES = tuple(_REQUESTS)


def _piece(protocol: str, event: dict[str, Any]) -> tuple[str, str | None]:
    """(text, ending) that one stream event carries, as a client reads it."""
    if protocol in ("chat", "completions"):
        text, ending = "", None
        for choice in event.get("choices") or []:
            text += (choice.get("delta") or {}).get("content") or choice.get("text") or ""
            ending = choice.get("finish_reason") or ending
        return text, ending and f'finish_reason "{ending}", then data: [DONE]'
    kind = event.get("type")
    if protocol == "responses":
        if kind == "response.completed":
            return "", f'response.completed with status "{event["response"]["status"]}"'
        return (event.get("delta") or "") if kind == "response.output_text.delta" else "", None
    if kind == "message_delta":
        return "", f'message_delta with stop_reason "{event["delta"]["stop_reason"]}", then message_stop'
    return ((event.get("delta") or {}).get("text") or "") if kind == "content_block_delta" else "", None


async def _story(
    http: aiohttp.ClientSession,
    root: str,
    provider: str,
    session_id: str,
    *,
    protocol: str,
    tokens: int,
    rate: float,
    stop_after: int,
) -> int:
    path, fields = _REQUESTS[protocol]
    body = {"model": "mock-1", "stream": True, **fields, "mock": {"tokens": tokens, "rate": rate}}
    print(f"1. POST /v1/{path}  ({protocol}; X-Session-Id: {session_id}, {tokens} tokens at {rate:g}/s)")
    received: list[str] = []
    ending = None
    ack: dict[str, Any] | None = None
    async with http.post(f"{root}/v1/{path}", json=body, headers={"X-Session-Id": session_id}) as response:
        request_id = response.headers["X-Request-Id"]
        print(f"   X-Request-Id: {request_id}\n   received: ", end="", flush=True)
        async for line in response.content:
            if not line.startswith(b"data: {"):
                continue
            piece, ended = _piece(protocol, json.loads(line[6:]))
            ending = ended or ending
            if piece:
                received.append(piece)
                print(piece, end="", flush=True)
            if len(received) == stop_after and ack is None:
                started = time.monotonic()
                async with http.post(f"{root}/sessions/{session_id}/cancel") as cancel:
                    ack = await cancel.json()
                elapsed_ms = (time.monotonic() - started) * 1000
                print(f"\n\n2. Stop: POST /sessions/{session_id}/cancel  ({elapsed_ms:.1f} ms)\n   {json.dumps(ack)}")
    print(f"\n3. The stream ended cleanly: {ending}")
    async with http.get(f"{root}/requests/{request_id}") as read:
        record = await read.json()
    shown = {k: record[k] for k in ("protocol", "status", "stop_reason", "finish_reason", "content", "usage")}
    print(f"\n4. GET /requests/{request_id}\n   {json.dumps(shown, indent=2).replace(chr(10), chr(10) + '   ')}")
    same = record["content"] == "".join(received)
    print(f"\n   stored partial == what the client received: {'yes' if same else 'NO'}")
    # The provider's own account: how far it got, and how its request ended.
    async with http.get(f"{provider}/_mock/requests") as seen:
        (upstream,) = (await seen.json())["requests"]
    print(f"   the provider sent {upstream['tokens_sent']} of {tokens} tokens; its request ended: {upstream['state']}")
    return 0 if same and record["status"] == "stopped" else 1
