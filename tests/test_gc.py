"""A finished request leaves nothing for the cyclic garbage collector.

Each request's objects (its relay, live request, transcript, tee, the
aiohttp objects of both its sides) must be freed by reference counting the
moment it ends: anything left in a reference cycle waits for a collection,
and a collection stops the event loop, every cancel with it. Measured with
the collector off: after many requests of each kind, one collection finds
nothing of the proxy's, nor of aiohttp's.

What it does find, one per connection that was closed (a cancel closes the
upstream's, a disconnect the client's too), is CPython 3.11's own: a closed
asyncio socket transport keeps a bound method of itself (``_read_ready_cb``),
seven objects in all. Keep-alive connections, the common case, leave none.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cancelproxy import create_app
from cancelproxy.app import RUNNER_OPTIONS
from cancelproxy.config import parse_config

REQUESTS = 100


@pytest.fixture
async def root() -> AsyncIterator[str]:
    config = parse_config(
        {
            "upstreams": [{"name": "mock", "base_url": "builtin:mock", "models": ["*"]}],
            "store": {"url": "memory://"},
            "audit": {"path": "/dev/null"},
        },
        env={},
    )
    runner = web.AppRunner(create_app(config), **RUNNER_OPTIONS)  # type: ignore[arg-type]
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def _completed(session: aiohttp.ClientSession, root: str, stream: bool) -> None:
    body = {
        "model": "mock-1",
        "stream": stream,
        "messages": [{"role": "user", "content": "x"}],
        "mock": {"tokens": 5, "rate": 0},
    }
    async with session.post(f"{root}/v1/chat/completions", json=body) as answer:
        await answer.read()


async def _cancelled(session: aiohttp.ClientSession, root: str) -> None:
    body = {"model": "mock-1", "stream": True, "messages": [], "mock": {"tokens": 1000, "rate": 100}}
    async with session.post(f"{root}/v1/chat/completions", json=body) as answer:
        await answer.content.readany()
        async with session.post(f"{root}/requests/{answer.headers['X-Request-Id']}/cancel") as ack:
            await ack.read()
        await answer.read()


async def _dropped(session: aiohttp.ClientSession, root: str) -> None:
    body = {"model": "mock-1", "stream": True, "messages": [], "mock": {"tokens": 1000, "rate": 100}}
    answer = await session.post(f"{root}/v1/chat/completions", json=body)
    await answer.content.readany()
    answer.close()


@pytest.mark.parametrize("kind", ["stream", "plain", "cancelled", "dropped"])
async def test_finished_requests_leave_no_cycles(root: str, kind: str) -> None:
    async def one(session: aiohttp.ClientSession) -> Any:
        if kind == "cancelled":
            return await _cancelled(session, root)
        if kind == "dropped":
            return await _dropped(session, root)
        return await _completed(session, root, stream=kind == "stream")

    async with aiohttp.ClientSession() as session:
        for _ in range(20):  # warm: caches, pooled connections, lazily built objects
            await one(session)
        await asyncio.sleep(0.2)  # the last final writes land
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)  # keep what a collection finds, to look at it
        try:
            for _ in range(REQUESTS):
                await one(session)
            await asyncio.sleep(0.2)
            gc.collect()
            found = list(gc.garbage)
        finally:
            gc.garbage.clear()
            gc.set_debug(0)
            gc.enable()
    ours = [o for o in found if type(o).__module__.split(".")[0] in ("cancelproxy", "aiohttp", "multidict", "yarl")]
    assert ours == [], f"{len(ours)} of the proxy's or aiohttp's objects in cycles, e.g. {ours[:5]!r}"
    if kind in ("stream", "plain"):  # kept-alive connections: nothing at all
        assert len(found) < 10, f"{len(found)} objects in cycles after {REQUESTS} requests"
