"""The mock's routes and how it is served.

Each generation route exists under ``/v1`` and without it, as providers and
engines are reached both ways. ``/_mock/requests`` tells tests what it saw,
above all whether and when a client that went away was noticed.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiohttp import web
from yarl import URL

from .aborts import add_abort_routes
from .chat import CHAT
from .completions import COMPLETIONS
from .engine import Engine
from .generation import Generation
from .keys import ABORTS, DEFAULTS, ENGINE, RECORDER
from .messages import MESSAGES
from .plan import MODEL_ID, BadRequest, MockDefaults, parse_plan
from .recorder import AbortLog, Recorder
from .responses import RESPONSES
from .wire import CREATED, WireFormat, openai_error

__all__ = ["create_mock_app", "run_mock", "start_mock"]

# A mock holds no work worth waiting for: on shutdown, cancel in-flight streams
# and long-polls soon instead of aiohttp's default 60 s.
SHUTDOWN_TIMEOUT_S = 2.0

STANDARD = MockDefaults()  # frozen: safe as a shared default argument

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ROUTES: dict[str, WireFormat] = {
    "/chat/completions": CHAT,
    "/responses": RESPONSES,
    "/messages": MESSAGES,
    "/completions": COMPLETIONS,
}


def _generate(wire: WireFormat) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            plan = parse_plan(body, request.app[DEFAULTS], wire.protocol, wire.count_prompt, wire.unsupported)
        except (ValueError, BadRequest) as exc:
            return wire.bad_request(str(exc))
        recorder = request.app[RECORDER]
        record = recorder.add(request, plan, body, wire.upstream_id)
        if plan.status is not None:
            recorder.finish(record, "failed")
            return wire.status_error(plan.status)
        engine = request.app[ENGINE]
        ids = [record["id"]]
        if conversation := request.headers.get("X-Conversation-Id"):
            ids.append(conversation)
        running = engine.start(record, plan, request.transport, *ids)
        return await Generation(request, plan, record, wire, recorder, engine, running).respond()

    return handle


async def _models(request: web.Request) -> web.Response:
    model = {"id": MODEL_ID, "object": "model", "created": CREATED, "owned_by": "cancelproxy-mock"}
    return web.json_response({"object": "list", "data": [model]})


async def _requests(request: web.Request) -> web.Response:
    recorder = request.app[RECORDER]
    if request.method == "DELETE":
        recorder.clear()
    return web.json_response({"requests": recorder.records})


async def _get_request(request: web.Request) -> web.Response:
    recorder, tag = request.app[RECORDER], request.match_info["tag"]
    until = request.query.get("wait")
    try:
        timeout = float(request.query.get("timeout", "10"))
        if until not in (None, "started", "ended", "closed"):
            raise ValueError(until)
    except ValueError:
        return openai_error(400, "wait must be started|ended|closed, timeout a number", "invalid_request_error", None)
    if until is None:
        record = recorder.latest(tag)
    elif (record := await recorder.wait(tag, until, timeout)) is None:
        return openai_error(408, f"no request {tag!r} {until} in time", "timeout", None)
    if record is None:
        return openai_error(404, f"no request tagged {tag!r}", "not_found", None)
    return web.json_response(record)


async def _stop_generating(app: web.Application) -> None:
    await app[ENGINE].close()


def create_mock_app(defaults: MockDefaults = STANDARD) -> web.Application:
    app = web.Application()
    app[DEFAULTS] = defaults
    app[RECORDER] = recorder = Recorder()
    app[ENGINE] = Engine(recorder)
    app[ABORTS] = AbortLog()
    app.on_cleanup.append(_stop_generating)
    for prefix in ("/v1", ""):
        for path, wire in ROUTES.items():
            app.router.add_post(f"{prefix}{path}", _generate(wire))
        app.router.add_get(f"{prefix}/models", _models)
    add_abort_routes(app)
    app.router.add_get("/_mock/requests", _requests)
    app.router.add_delete("/_mock/requests", _requests)
    app.router.add_get("/_mock/requests/{tag}", _get_request)
    return app


async def start_mock(
    host: str = "127.0.0.1", port: int = 0, defaults: MockDefaults = STANDARD
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
