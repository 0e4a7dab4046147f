"""App wiring: routes, middleware, and every shared resource's setup and teardown."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import aiojobs.aiohttp
from aiohttp import web

from .config import Config
from .errors import NotFound, ProxyError, error_response
from .forward import handle_generation, handle_passthrough
from .mock import start_mock
from .registry import Registry
from .routes import add_routes
from .services import SERVICES, Services
from .store import open_store

__all__ = ["RUNNER_OPTIONS", "create_app", "serve"]

# Options the server MUST run with (web.run_app / AppRunner):
# handler_cancellation: without it aiohttp notices a client that hung up only
#   at the next write, which a silent upstream may not make for minutes.
# access_log None: a line per request costs more than the proxying itself.
RUNNER_OPTIONS = {"handler_cancellation": True, "access_log": None}

# How long shutdown waits for in-flight streams before stopping them.
_SHUTDOWN_TIMEOUT_S = 5.0


def create_app(config: Config) -> web.Application:
    # client_max_size guards only read()/json(); bodies are read with their own
    # limit (forward._read_body), so this one must not be the smaller.
    app = web.Application(
        middlewares=[_openai_shaped_errors],
        client_max_size=config.limits.max_body_bytes + 1,
    )
    app.cleanup_ctx.append(_services_ctx(config))
    # Final record writes are shielded jobs; at shutdown they get time to finish.
    aiojobs.aiohttp.setup(app, close_timeout=config.limits.cancel_timeout_s)
    add_routes(app.router)
    for prefix in ("", "/{upstream}"):
        app.router.add_post(prefix + "/v1/chat/completions", handle_generation)
        app.router.add_route("*", prefix + "/v1/{tail:.*}", handle_passthrough)
    return app


def _services_ctx(config: Config) -> Callable[[web.Application], AsyncIterator[None]]:
    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        base_urls = {u.name: u.base_url for u in config.upstreams}
        mock_runner = None
        if any(u.is_builtin_mock for u in config.upstreams):
            mock_runner, mock_url = await start_mock()
            base_urls.update({u.name: mock_url for u in config.upstreams if u.is_builtin_mock})
        client = aiohttp.ClientSession(
            # limit=0: the default of 100 connections would make stream 101 wait.
            connector=aiohttp.TCPConnector(limit=0),
            # No total timeout: a healthy stream may last longer than any fixed
            # bound. First-byte and idle limits are enforced by the relay.
            timeout=aiohttp.ClientTimeout(
                total=None, connect=config.limits.connect_timeout_s, sock_connect=config.limits.connect_timeout_s
            ),
            # Bytes pass through untouched, compressed or not.
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        store = open_store(config.store.url)
        await store.open()
        app[SERVICES] = Services(
            config=config, client=client, store=store, registry=Registry(), base_urls=base_urls
        )
        try:
            yield
        finally:
            await client.close()
            await store.close()
            if mock_runner is not None:
                await mock_runner.cleanup()

    return services_ctx


@web.middleware
async def _openai_shaped_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own 404/405/413 come out in OpenAI's error shape, like ours."""
    try:
        return await handler(request)
    except ProxyError as error:
        return error_response(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = NotFound(f"{request.method} {request.path}: {exc.reason}", code="not_found")
        error.status = exc.status
        return error_response(error)


def serve(config: Config, *, host: str | None = None, port: int | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    host = host or config.listen.host
    port = config.listen.port if port is None else port
    web.run_app(
        create_app(config),
        host=host,
        port=port,
        shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        print=lambda _: print(f"cancelproxy listening on http://{host}:{port}/v1", flush=True),
        **RUNNER_OPTIONS,  # type: ignore[arg-type]
    )
