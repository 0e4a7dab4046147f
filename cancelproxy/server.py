"""The listening server: aiohttp's runner, with a site that admits each connection itself.

asyncio's accept loop (``loop.create_server``, and so aiohttp's TCPSite)
takes every pending connection before the server hears of any: a flood of
half-sent heads takes every descriptor, and then nothing is accepted, not
even ``/healthz``, while asyncio retries once a second. ``ProxySite``
accepts connections itself and admits each the moment its descriptor exists
(``connections.Connections``): when ``max_connections`` are open, the new
one takes the place of the one that has waited longest for its request
head; if every connection is busy with a request, the new one is answered
503 and closed. The budget is derived from the open-file limit.

::

    ProxySite ── accepts; asks for room ──▶ Connections ◀── waiting / busy / closed ── GuardedHandler
        │                                                                               ▲ one per connection
        └── serves for ── ProxyRunner ── builds ── GuardedServer ── builds ─────────────┘

``run`` serves until SIGTERM/SIGINT, then shuts down gracefully, as
``web.run_app`` did.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import resource
import signal
import socket
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from yarl import URL

from .config import Config
from .connections import Connections, GuardedServer
from .errors import ProxyError, TooManyConnections, raw_error_response

__all__ = ["ProxyRunner", "ProxySite", "ShutdownSignals", "connection_budget", "run"]

# What web.run_app used: a connection idle between requests is closed after
# this long (and, being idle, is the first to go when the proxy is full).
_KEEPALIVE_TIMEOUT_S = 75.0
# The kernel's queue of connections not yet accepted. The default 128 drops
# connection attempts in a burst (each then costs the client a 1 s SYN
# retransmit); the kernel caps it at net.core.somaxconn.
_BACKLOG = 4096
# Connections accepted per wake-up of the listening socket: enough for a
# burst, few enough that the connections they evict (closed on the next turn
# of the event loop) never need many descriptors more than the budget.
_ACCEPTS_PER_WAKEUP = 16
# Descriptors the connection budget leaves for everything else: stdio, the
# event loop's own, the listening sockets, the audit file, SQLite's database,
# WAL and shared-memory files, Redis connections, the resolver's sockets, and
# evicted connections not yet closed (at most _ACCEPTS_PER_WAKEUP).
_SPARE_DESCRIPTORS = 64
# How long accepting pauses if descriptors run out all the same.
_OUT_OF_DESCRIPTORS_PAUSE_S = 0.1


def connection_budget(config: Config, log: logging.Logger) -> int:
    """How many client connections may be open at once.

    ``limits.max_connections`` if set, else what the open-file limit allows.
    The soft limit is first raised to the hard one: its usual 1024 is kept
    for programs that use select(), and asyncio uses epoll.
    """
    open_files = _raise_open_file_limit(log)
    # A generation holds its upstream connection beside the client's; the
    # built-in mock provider's end of that connection is in this process too.
    per_connection = 3 if any(u.is_builtin_mock for u in config.upstreams) else 2
    allowed = max(1, (open_files - _SPARE_DESCRIPTORS) // per_connection)
    configured = config.limits.max_connections
    if configured is None:
        return allowed
    if configured > allowed:
        log.warning(
            "limits.max_connections is %d, but the open-file limit (%d) is enough for about %d",
            configured,
            open_files,
            allowed,
        )
    return configured


def _raise_open_file_limit(log: logging.Logger) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
        return soft
    return hard


def run(
    app: web.Application,
    config: Config,
    *,
    host: str,
    port: int,
    shutdown_timeout: float,
    options: Mapping[str, Any],
    on_listening: Callable[[int], None],
    hurry: Callable[[], None],
) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then shut down gracefully.

    Shutting down: no new connections, the app's ``on_shutdown`` (the drain),
    handlers get ``shutdown_timeout`` to finish, then the app's cleanup. A
    second signal calls ``hurry`` (the app stops what is in progress now,
    instead of at the end of its grace) and the shutdown goes on; a third
    exits without waiting any longer (a store call under way still ends
    first: SQLite's at most its busy timeout). ``on_listening`` gets the bound port.
    """
    log = logging.getLogger("cancelproxy")
    max_connections = connection_budget(config, log)
    log.info("at most %d client connections at once", max_connections)
    runner_options = {
        "keepalive_timeout": _KEEPALIVE_TIMEOUT_S,
        **options,
        "max_connections": max_connections,
        "head_timeout_s": config.limits.head_timeout_s,
        "log": log,
        "shutdown_timeout": shutdown_timeout,
    }
    try:
        asyncio.run(_serve(app, host, port, runner_options, on_listening, hurry, config.shutdown_grace_s))
    except asyncio.CancelledError:
        raise SystemExit(1) from None


class ShutdownSignals:
    """What each SIGTERM or SIGINT does: the first starts the graceful shutdown
    (``stopping``), the second calls ``hurry``, the third cancels ``serving``.

    Each step is said in the log, so that whoever sent the signal knows what it
    waits for and what another one does (a container runtime's stop, or
    someone at a terminal about to press Ctrl-C again).
    """

    def __init__(
        self, serving: asyncio.Task[None], hurry: Callable[[], None], log: logging.Logger, grace_s: float
    ) -> None:
        self.stopping = asyncio.Event()
        self._count = 0
        self._serving = serving
        self._hurry = hurry
        self._log = log
        self._grace_s = grace_s

    def received(self, signum: signal.Signals) -> None:
        self._count += 1
        if self._count == 1:
            self._log.info(
                "shutdown: %s: no new connections; requests in progress get %g s to finish (shutdown_grace_s); "
                "a second SIGTERM or SIGINT stops them now",
                signum.name,
                self._grace_s,
            )
            self.stopping.set()
        elif self._count == 2:
            self._log.warning(
                "shutdown: %s again: stopping the requests in progress now (their final states are stored); "
                "a third SIGTERM or SIGINT exits without waiting for them",
                signum.name,
            )
            self._hurry()
        else:
            self._log.warning(
                "shutdown: %s a third time: exiting without waiting any longer; requests whose final state is "
                "not stored yet are marked interrupted at the next start",
                signum.name,
            )
            self._serving.cancel()


async def _serve(
    app: web.Application,
    host: str,
    port: int,
    runner_options: dict[str, Any],
    on_listening: Callable[[int], None],
    hurry: Callable[[], None],
    grace_s: float,
) -> None:
    loop = asyncio.get_running_loop()
    serving = asyncio.current_task()
    assert serving is not None
    signals = ShutdownSignals(serving, hurry, runner_options["log"], grace_s)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signals.received, signum)
    runner = ProxyRunner(app, **runner_options)
    await runner.setup()
    _settle_heap()
    try:
        site = ProxySite(runner, host, port, backlog=_BACKLOG)
        await site.start()
        on_listening(site.port)
        await signals.stopping.wait()
    finally:
        await runner.cleanup()


# A young-generation collection only after this many more allocations than
# frees (CPython's default: 700). The proxy's requests leave no reference
# cycles behind (tests/test_gc.py), so a collection finds nothing to free: it
# is pure cost, and under load at the default pace it took several percent of
# the CPU. Older generations keep their pace relative to it.
_GC_THRESHOLDS = (20_000, 20, 50)


def _settle_heap() -> None:
    """Everything built at start (modules, config, the app and its services)
    lives as long as the process: frozen, no collection walks it again, and a
    full collection (which stops the event loop, every cancel with it) stays short."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


class ProxyRunner(web.AppRunner):
    """aiohttp's AppRunner, serving through a ``GuardedServer``.

    ``max_connections`` and ``head_timeout_s`` are the guards' settings; the
    other options are AppRunner's.
    """

    __slots__ = ("connections",)

    def __init__(
        self, app: web.Application, *, max_connections: int, head_timeout_s: float, log: logging.Logger, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self.connections = Connections(max_connections, head_timeout_s, log)

    async def _make_server(self) -> web.Server:
        # AppRunner's own starts the app and builds aiohttp's Server for it;
        # that is rebuilt as a GuardedServer with the options it was given.
        made = await super()._make_server()
        return GuardedServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            connections=self.connections,
            **made._kwargs,
        )


class ProxySite(web.BaseSite):
    """A TCP site that accepts its connections itself, to admit or refuse each the moment it exists.

    asyncio's own accept loop takes every pending connection before the
    server hears of any; under a flood it runs out of descriptors, and then
    stops accepting for a second at a time, /healthz included.
    """

    __slots__ = ("_host", "_port", "_bound_port", "_connections", "_handovers")

    def __init__(self, runner: ProxyRunner, host: str, port: int, *, backlog: int = _BACKLOG) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._bound_port: int | None = None
        self._connections = runner.connections
        self._handovers: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return str(URL.build(scheme="http", host=self._host, port=self.port))

    @property
    def port(self) -> int:
        return self._bound_port if self._bound_port is not None else self._port

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        sockets = await _listening_sockets(loop, self._host, self._port, self._backlog)
        self._bound_port = sockets[0].getsockname()[1]
        self._server = _Listener(loop, sockets, self._accept)

    def _accept(self, listening: socket.socket) -> None:
        assert isinstance(self._server, _Listener)
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                conn, _ = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._connections.log.error("accepting a connection failed: %s", exc)
                    return
                # More descriptors are in use than the budget allows for:
                # the connection that waited longest gives its own back.
                self._connections.log.warning("out of descriptors accepting a connection: %s", exc)
                self._connections.evict_oldest()
                self._server.pause(listening, _OUT_OF_DESCRIPTORS_PAUSE_S)
                return
            conn.setblocking(False)
            if not self._connections.reserve():
                _refuse(conn, TooManyConnections("the proxy is at its connection limit, every connection is busy"))
                continue
            handover = asyncio.get_running_loop().create_task(self._hand_over(conn))
            self._handovers.add(handover)
            handover.add_done_callback(self._handovers.discard)

    async def _hand_over(self, conn: socket.socket) -> None:
        server = self._runner.server
        try:
            if server is None:  # the runner is being cleaned up
                conn.close()
                return
            await asyncio.get_running_loop().connect_accepted_socket(server, conn)
        except OSError:  # the client went away already
            conn.close()
        finally:
            self._connections.release()


def _refuse(conn: socket.socket, error: ProxyError) -> None:
    """Answer on a socket aiohttp never saw, and close it. Best effort: the socket is non-blocking."""
    with contextlib.suppress(OSError):
        # Read what the client sent so far: closing with it unread would
        # reset the connection, and the client might lose the answer.
        for _ in range(4):
            if not conn.recv(65536):
                break
    with contextlib.suppress(OSError):
        conn.send(raw_error_response(error))
    conn.close()


async def _listening_sockets(
    loop: asyncio.AbstractEventLoop, host: str, port: int, backlog: int
) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address of ``host``, as loop.create_server binds them."""
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # Each family gets its own socket, as loop.create_server does.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"error while attempting to bind on address {address!r}: {exc.strerror}"
                ) from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class _Listener(asyncio.AbstractServer):
    """The listening sockets of a ``ProxySite``, in the shape aiohttp's sites keep theirs."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sockets: list[socket.socket],
        on_readable: Callable[[socket.socket], None],
    ) -> None:
        self._loop = loop
        self._sockets = sockets
        self._on_readable = on_readable
        for sock in sockets:
            loop.add_reader(sock.fileno(), on_readable, sock)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def pause(self, sock: socket.socket, delay_s: float) -> None:
        self._loop.remove_reader(sock.fileno())
        self._loop.call_later(delay_s, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        if sock in self._sockets:
            self._loop.add_reader(sock.fileno(), self._on_readable, sock)

    def close(self) -> None:
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets = []

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return bool(self._sockets)

    async def start_serving(self) -> None:
        pass  # it serves from the start

    async def serve_forever(self) -> None:
        raise NotImplementedError("a ProxySite serves from its start until its runner's cleanup()")

    async def wait_closed(self) -> None:
        pass  # closed at once
