"""App wiring: routes, middleware, and every shared resource's setup and teardown."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import aiojobs.aiohttp
from aiohttp import web
from yarl import URL

from .aborts import Aborter
from .audit import AuditSink, install_sighup
from .cluster import Cluster, LocalCluster, RedisCluster
from .config import Config, without_password
from .cors import setup_cors
from .errors import DownstreamGone, NotFound, ProxyError, error_response
from .forward import generation_handler, passthrough_handler
from .gcstats import GcStats
from .logs import setup_logging
from .metrics import Metrics
from .mock import start_mock
from .protocols import PROTOCOLS
from .registry import Registry
from .replay import Replays
from .resume import add_resume_routes
from .routes import add_routes, cancel_here, cancel_response
from .server import run
from .services import SERVICES, Services
from .store import Store, open_store
from .store.redis import RedisStore
from .store.streams import RedisStreams
from .store.writer import StoreWriter
from .ui import add_ui_routes
from .upkeep import Upkeep

__all__ = ["RUNNER_OPTIONS", "StoreOpenError", "create_app", "serve"]

# Options the server MUST run with (web.AppRunner, server.ProxyRunner):
# handler_cancellation: without it aiohttp notices a client that hung up only
#   at the next write, which a silent upstream may not make for minutes.
# access_log None: a line per request costs more than the proxying itself.
RUNNER_OPTIONS = {"handler_cancellation": True, "access_log": None}

# After _drain stopped what was left, how long handlers get to write their
# clients' clean ends before aiohttp cancels them.
_HANDLERS_FINISH_S = 5.0


class StoreOpenError(RuntimeError):
    """The configured store cannot be opened; the start stops with this line."""


def create_app(config: Config) -> web.Application:
    # client_max_size guards only read()/json(); bodies are read with their own
    # limit (forward._read_body), so this one must not be the smaller.
    app = web.Application(
        middlewares=[_openai_shaped_errors],
        client_max_size=config.limits.max_body_bytes + 1,
    )
    app.cleanup_ctx.append(_services_ctx(config))
    app.on_shutdown.append(_drain)
    # A generation that outlives its client (readers resumed it, or its
    # disconnect grace runs) goes on as a job of the app; shutdown stops and
    # waits for them all. limit=None: a job never waits for another's end.
    aiojobs.aiohttp.setup(app, limit=None, close_timeout=config.limits.cancel_timeout_s)
    setup_cors(app, config.cors)
    add_routes(app.router)
    add_resume_routes(app.router)
    app.router.add_get("/metrics", _metrics)
    if config.ui.enabled:
        add_ui_routes(app)
    for prefix in ("", "/{upstream}"):
        app.router.add_post(prefix + "/v1/responses/{response_id}/cancel", cancel_response)
        for protocol in PROTOCOLS:
            app.router.add_post(f"{prefix}/v1/{protocol.path}", generation_handler(protocol))
            # Its other routes (count_tokens, a stored response, ...) are its own family's.
            app.router.add_route("*", f"{prefix}/v1/{protocol.path}/{{tail:.*}}", passthrough_handler(protocol))
        app.router.add_route("*", prefix + "/v1/{tail:.*}", passthrough_handler())
    return app


def _services_ctx(config: Config) -> Callable[[web.Application], AsyncIterator[None]]:
    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        log = logging.getLogger("cancelproxy")
        async with contextlib.AsyncExitStack() as teardown:
            base_urls = {u.name: URL(u.base_url) for u in config.upstreams if not u.is_builtin_mock}
            if any(u.is_builtin_mock for u in config.upstreams):
                mock_runner, mock_url = await start_mock()
                teardown.push_async_callback(mock_runner.cleanup)
                base_urls.update({u.name: URL(mock_url) for u in config.upstreams if u.is_builtin_mock})

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
            teardown.push_async_callback(client.close)

            audit = AuditSink(config.audit.path)
            audit.open()
            teardown.callback(audit.close)
            loop = asyncio.get_running_loop()
            if install_sighup(loop, audit):
                teardown.callback(loop.remove_signal_handler, signal.SIGHUP)

            store = open_store(config.store.url, key_prefix=config.store.key_prefix)
            await _open_store(store, config, log)
            teardown.push_async_callback(store.close)
            cluster: Cluster = LocalCluster()
            streams: RedisStreams | None = None
            if isinstance(store, RedisStore):
                cluster = RedisCluster(store.client, config.store.key_prefix, config.store.heartbeat_s, log)
                streams = RedisStreams(
                    store.client,
                    config.store.key_prefix,
                    keep_s=config.resume.keep_s,
                    heartbeat_s=config.store.heartbeat_s,
                    log=log,
                )
                await streams.start()
                teardown.push_async_callback(streams.close)

            writer = StoreWriter(store, flush_interval_s=config.store.flush_interval_ms / 1000, log=log)
            await writer.start()
            teardown.push_async_callback(writer.close)  # its last flush runs after the relays ended

            metrics = Metrics()
            aborter = Aborter(client, metrics, log)
            teardown.push_async_callback(aborter.close)
            # Always on: a collection stops the loop, so its time is a figure
            # worth watching in production; the callback costs a few µs per
            # collection, not per request. gc.callbacks is process-wide: the
            # callback lives exactly as long as this app.
            gc_stats = GcStats()
            metrics.registry.register(gc_stats)
            gc_stats.install()
            teardown.callback(gc_stats.remove)

            services = Services(
                config=config,
                client=client,
                store=store,
                writer=writer,
                registry=Registry(),
                cluster=cluster,
                audit=audit,
                metrics=metrics,
                aborter=aborter,
                replays=Replays(
                    max_total_bytes=config.resume.max_total_bytes, keep_s=config.resume.keep_s, mirror=streams
                ),
                streams=streams,
                base_urls=base_urls,
                log=log,
            )
            app[SERVICES] = services
            await cluster.start(functools.partial(cancel_here, services))
            teardown.push_async_callback(cluster.close)
            upkeep = Upkeep(store, writer, cluster, config.store, log, sweep=not isinstance(cluster, LocalCluster))
            await upkeep.start()
            teardown.push_async_callback(upkeep.close)
            yield

    return services_ctx


async def _open_store(store: Store, config: Config, log: logging.Logger) -> None:
    try:
        await store.open()
    except Exception as exc:
        shown = without_password(config.store.url)  # a Redis URL may carry its password
        if config.store.url.startswith("redis://"):
            # Streams must flow while Redis is away; writes are retried.
            log.error("store: %s is unreachable at start, writes will be retried: %s", shown, exc)
            return
        raise StoreOpenError(f"store.url: cannot open {shown}: {exc}") from exc


async def _drain(app: web.Application) -> None:
    """On SIGTERM/SIGINT, once no new connection is accepted: let streams finish
    for ``shutdown_grace_s``, then stop the rest (upstream closed, client
    ended cleanly, record interrupted). The writer flushes after this."""
    services = app[SERVICES]
    if await services.registry.wait_empty(services.config.shutdown_grace_s):
        return
    leftovers = services.registry.all()
    services.log.warning("shutdown: stopping %d requests still in progress", len(leftovers))
    await services.registry.cancel(leftovers, "shutdown", services.config.limits.cancel_timeout_s)


def _stop_in_progress(app: web.Application) -> None:
    """A second signal while shutting down: stop every request in progress now,
    as the drain does once the grace is over (upstream closed, client ended
    cleanly, record interrupted). The drain then finds the registry empty as
    soon as their final states are stored, and the shutdown goes on."""
    services = app.get(SERVICES)
    if services is not None:  # None: the signals came before the app had started
        services.registry.stop(services.registry.all(), "shutdown")


async def _metrics(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    services.metrics.set_store_transactions(services.writer.transactions)
    body, content_type = services.metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


@web.middleware
async def _openai_shaped_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own 404/405/413, and any unexpected failure, come out in OpenAI's error shape, like ours."""
    try:
        return await handler(request)
    except ProxyError as error:
        return error_response(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        shaped = NotFound(f"{request.method} {request.path}: {exc.reason}", code="not_found")
        shaped.status = exc.status
        return error_response(shaped)
    except (ConnectionError, DownstreamGone):
        raise  # the client is gone: there is no one to answer
    except Exception:
        logging.getLogger("cancelproxy").exception("unexpected error answering %s %s", request.method, request.path)
        if request.writer.output_size > 0:
            raise  # an answer has begun: aiohttp can only close the connection
        return error_response(ProxyError("the proxy failed to handle the request"))


def serve(config: Config, *, host: str | None = None, port: int | None = None) -> None:
    setup_logging(config.log_level)
    listen_host = host or config.listen.host
    app = create_app(config)
    run(
        app,
        config,
        host=listen_host,
        port=config.listen.port if port is None else port,
        shutdown_timeout=_HANDLERS_FINISH_S,
        options=RUNNER_OPTIONS,
        on_listening=lambda bound: print(f"cancelproxy listening on http://{listen_host}:{bound}/v1", flush=True),
        hurry=functools.partial(_stop_in_progress, app),
    )
