"""A bare HTTP upstream, in the test's own loop, that records exactly what reached it.

The mock provider answers only the routes it knows; a test about where the
proxy connects must see every request, whatever its path, with the path
bytes as they arrived. This one answers every request with a small JSON body
and never sends ``100 Continue`` (most providers do not).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web


@dataclass(frozen=True)
class Seen:
    method: str
    raw_path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RecordingUpstream:
    port: int
    seen: list[Seen] = field(default_factory=list)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def _no_continue(request: web.Request) -> None:
    """Leave ``Expect: 100-continue`` unanswered, as most providers do."""


@asynccontextmanager
async def recording_upstream(port: int = 0) -> AsyncIterator[RecordingUpstream]:
    upstream = RecordingUpstream(port=port)

    async def record(request: web.Request) -> web.Response:
        body = await request.read()
        upstream.seen.append(Seen(request.method, request.raw_path, dict(request.headers), body))
        return web.json_response({"object": "list", "data": []})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", record, expect_handler=_no_continue)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        upstream.port = runner.addresses[0][1]
        yield upstream
    finally:
        await runner.cleanup()
