"""The aiohttp floor: the least an aiohttp reverse proxy does, to measure cancelproxy against.

Body read, one shared ClientSession, the answer's bytes handed back as they come,
hop-by-hop headers dropped; no ids, record, tee, audit, metrics or cancel route.
It runs as cancelproxy does: asyncio, handler_cancellation (a client that leaves
closes the upstream at once), no access log, a listen backlog of 4096.
``GET /metrics``: only the garbage collector's figures, by cancelproxy's GcStats.

    python -m bench.floor --port PORT --upstream http://127.0.0.1:MOCK_PORT
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

# Hop-by-hop (RFC 9110 §7.6.1), and the framing and Host that aiohttp sets itself.
_DROP = frozenset(
    "connection keep-alive proxy-authenticate proxy-authorization proxy-connection te trailer transfer-encoding "
    "upgrade host content-length".split()
)
CLIENT: web.AppKey[aiohttp.ClientSession] = web.AppKey("client", aiohttp.ClientSession)


def _end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    named = {token.strip().lower() for token in headers.get("Connection", "").split(",")}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _DROP and k.lower() not in named)


def _gc_stats() -> Any:
    # Loaded by file, not as cancelproxy.gcstats: the package would load the whole
    # proxy into the floor, a bigger heap for every full collection to walk.
    spec = importlib.util.spec_from_file_location("gcstats", Path(__file__).parents[1] / "cancelproxy" / "gcstats.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GcStats()


def make_app(upstream: str) -> web.Application:
    registry, gc_stats = CollectorRegistry(), _gc_stats()
    registry.register(gc_stats)

    async def client_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None)
        jar = aiohttp.DummyCookieJar()
        app[CLIENT] = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False, cookie_jar=jar)
        gc_stats.install()
        yield
        gc_stats.remove()
        await app[CLIENT].close()

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def proxy(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        url, headers = upstream + request.raw_path, _end_to_end(request.headers)
        async with request.app[CLIENT].request(request.method, url, headers=headers, data=body) as answer:
            response = web.StreamResponse(status=answer.status, headers=_end_to_end(answer.headers))
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(client_ctx)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT of the provider")
    args = parser.parse_args()
    listening = f"aiohttp floor listening on http://127.0.0.1:{args.port}"
    web.run_app(
        make_app(args.upstream.rstrip("/")),
        host="127.0.0.1",
        port=args.port,
        backlog=4096,
        handler_cancellation=True,
        access_log=None,
        print=lambda _: print(listening, flush=True),
    )


if __name__ == "__main__":
    main()
