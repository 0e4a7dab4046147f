"""The listening server: what it relies on in aiohttp, pinned, and its connection budget.

connections.py and server.py extend aiohttp where it has no public hook:
``Server`` keeps its handler options in ``_kwargs``, ``AppRunner._make_server``
builds the Server, ``RequestHandler`` calls ``handle_error`` and
``finish_response`` on itself, and its request factory is called once per
parsed head. An aiohttp upgrade that moves any of them fails here (or in
tests/test_e2e_hostile.py), not in production.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpClient

from cancelproxy.app import RUNNER_OPTIONS, _openai_shaped_errors
from cancelproxy.config import parse_config
from cancelproxy.connections import GuardedHandler, GuardedServer
from cancelproxy.server import ProxyRunner, ProxySite, ShutdownSignals, connection_budget

LOG = logging.getLogger("cancelproxy")


async def _broken(request: web.Request) -> web.Response:
    raise RuntimeError("a bug")


@pytest.fixture
async def served() -> AsyncIterator[tuple[ProxyRunner, str]]:
    """An app with no error middleware, served by the proxy's own runner and site."""
    app = web.Application()
    app.router.add_get("/broken", _broken)
    runner = ProxyRunner(app, max_connections=8, head_timeout_s=5, log=LOG, keepalive_timeout=75.0, **RUNNER_OPTIONS)
    await runner.setup()
    site = ProxySite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner, f"http://127.0.0.1:{site.port}"
    await runner.cleanup()


async def test_the_runner_builds_guarded_handlers_with_its_options(served: tuple[ProxyRunner, str]) -> None:
    runner, _ = served
    server = runner.server
    assert isinstance(server, GuardedServer)
    assert server.handler_cancellation is True
    handler = server()
    assert isinstance(handler, GuardedHandler)
    assert handler.keepalive_timeout == 75.0
    assert handler.access_log is None
    assert (handler.max_line_size, handler.max_field_size, handler.max_headers) == (8190, 8190, 128)


async def test_an_exception_no_middleware_caught_is_an_openai_shaped_500(served: tuple[ProxyRunner, str]) -> None:
    _, root = served
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{root}/broken", headers={"Accept": "text/html"}) as response:
            assert response.status == 500
            assert response.content_type == "application/json"
            body = await response.json()
    assert body == {
        "error": {
            "message": "the proxy failed to handle the request",
            "type": "proxy_error",
            "param": None,
            "code": "internal_error",
        }
    }


async def test_the_apps_middleware_answers_an_unexpected_exception_in_shape(
    aiohttp_client: AiohttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    app = web.Application(middlewares=[_openai_shaped_errors])
    app.router.add_get("/broken", _broken)
    client = await aiohttp_client(app)
    with caplog.at_level(logging.ERROR, logger="cancelproxy"):
        response = await client.get("/broken")
        assert response.status == 500
        body = await response.json()
    assert body["error"]["code"] == "internal_error" and set(body["error"]) == {"message", "type", "param", "code"}
    assert "a bug" in caplog.text  # logged, with its traceback


def _config(**limits: Any) -> Any:
    upstreams = [{"name": "a", "base_url": "http://127.0.0.1:1/v1"}]
    return parse_config({"upstreams": upstreams, "limits": limits}, env={})


@pytest.fixture
def open_files(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """RLIMIT_NOFILE starts at 1024 soft, 4096 hard; records what is set."""
    limits = [(1024, 4096)]
    monkeypatch.setattr(resource, "getrlimit", lambda _: limits[-1])
    monkeypatch.setattr(resource, "setrlimit", lambda _, value: limits.append(value))
    return limits


def test_the_budget_raises_the_soft_limit_and_counts_an_upstream_socket_per_connection(
    open_files: list[tuple[int, int]],
) -> None:
    assert connection_budget(_config(), LOG) == (4096 - 64) // 2
    assert open_files[-1] == (4096, 4096)


def test_the_builtin_mock_counts_a_third_descriptor(open_files: list[tuple[int, int]]) -> None:
    config = parse_config({"upstreams": [{"name": "m", "base_url": "builtin:mock"}]}, env={})
    assert connection_budget(config, LOG) == (4096 - 64) // 3


def test_a_configured_limit_wins_and_is_warned_about_when_too_high(
    open_files: list[tuple[int, int]], caplog: pytest.LogCaptureFixture
) -> None:
    assert connection_budget(_config(max_connections=100), LOG) == 100
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="cancelproxy"):
        assert connection_budget(_config(max_connections=5000), LOG) == 5000
    assert "limits.max_connections is 5000" in caplog.text


async def test_each_shutdown_signal_takes_the_next_step(caplog: pytest.LogCaptureFixture) -> None:
    serving = asyncio.create_task(asyncio.Event().wait())
    hurried: list[bool] = []
    signals = ShutdownSignals(serving, lambda: hurried.append(True), LOG, grace_s=30)
    caplog.set_level(logging.INFO, logger="cancelproxy")

    signals.received(signal.SIGTERM)  # the graceful shutdown begins
    assert signals.stopping.is_set() and not hurried and not serving.cancelling()
    assert "SIGTERM: no new connections; requests in progress get 30 s to finish" in caplog.text

    signals.received(signal.SIGINT)  # what is in progress is stopped now
    assert hurried == [True] and not serving.cancelling()
    assert "SIGINT again: stopping the requests in progress now" in caplog.text

    signals.received(signal.SIGTERM)  # out without waiting
    assert hurried == [True]
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert "SIGTERM a third time: exiting without waiting any longer" in caplog.text
