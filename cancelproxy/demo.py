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

__all__ = ["run_demo"]


def run_demo(*, tokens: int, rate: float, stop_after: int) -> int:
    return asyncio.run(_demo(tokens=tokens, rate=rate, stop_after=stop_after))


async def _demo(*, tokens: int, rate: float, stop_after: int) -> int:
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
            return await _story(http, root, provider, session_id, tokens=tokens, rate=rate, stop_after=stop_after)
    finally:
        await runner.cleanup()


async def _story(
    http: aiohttp.ClientSession, root: str, provider: str, session_id: str, *, tokens: int, rate: float, stop_after: int
) -> int:
    body = {
        "model": "mock-1",
        "stream": True,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "mock": {"tokens": tokens, "rate": rate},
    }
    print(f"1. POST /v1/chat/completions  (X-Session-Id: {session_id}, {tokens} tokens at {rate:g}/s)")
    received: list[str] = []
    finish_reason = None
    ack: dict[str, Any] | None = None
    async with http.post(f"{root}/v1/chat/completions", json=body, headers={"X-Session-Id": session_id}) as response:
        request_id = response.headers["X-Request-Id"]
        print(f"   X-Request-Id: {request_id}\n   received: ", end="", flush=True)
        async for line in response.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    received.append(piece)
                    print(piece, end="", flush=True)
                finish_reason = choice.get("finish_reason") or finish_reason
            if len(received) == stop_after and ack is None:
                started = time.monotonic()
                async with http.post(f"{root}/sessions/{session_id}/cancel") as cancel:
                    ack = await cancel.json()
                elapsed_ms = (time.monotonic() - started) * 1000
                print(f"\n\n2. Stop: POST /sessions/{session_id}/cancel  ({elapsed_ms:.1f} ms)\n   {json.dumps(ack)}")
    print(f'\n3. The stream ended cleanly: finish_reason "{finish_reason}", then data: [DONE]')
    async with http.get(f"{root}/requests/{request_id}") as read:
        record = await read.json()
    shown = {k: record[k] for k in ("status", "stop_reason", "finish_reason", "content", "usage")}
    print(f"\n4. GET /requests/{request_id}\n   {json.dumps(shown, indent=2).replace(chr(10), chr(10) + '   ')}")
    same = record["content"] == "".join(received)
    print(f"\n   stored partial == what the client received: {'yes' if same else 'NO'}")
    # The provider's own account: how far it got, and how its request ended.
    async with http.get(f"{provider}/_mock/requests") as seen:
        (upstream,) = (await seen.json())["requests"]
    print(f"   the provider sent {upstream['tokens_sent']} of {tokens} tokens; its request ended: {upstream['state']}")
    return 0 if same and record["status"] == "stopped" else 1
