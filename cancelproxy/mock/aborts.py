"""The engines' own abort endpoints, recorded so a test can read what the proxy sent.

- SGLang: ``POST /abort_request`` with ``{"rid": "<id>"}``; it answers an empty
  200 whether or not it knew the id.
- llama.cpp: ``DELETE /v1/stream/<id>``, idempotent; the id is the request's
  ``X-Conversation-Id`` (llama.cpp keys its streams on it).

Either accepts the upstream id of the answer (``chatcmpl-mock-<tag>``,
``resp_mock_<tag>``, ``msg_mock_<tag>``, ``cmpl-mock-<tag>``) or the request's
``X-Conversation-Id``. The generation's ``on_abort`` knob can make the endpoint
hang or fail instead, for tests that the proxy's abort hook is bounded.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from .keys import ABORTS, ENGINE, RECORDER
from .plan import Json
from .wire import openai_error

__all__ = ["add_abort_routes"]


def _sglang_error(status: int, message: str) -> web.Response:
    # FastAPI-served SGLang answers errors in its OpenAI-like ErrorResponse shape.
    body = {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": status}
    return web.json_response(body, status=status)


def _llamacpp_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"code": status, "message": message, "type": "server_error"}}, status=status)


async def _abort(request: web.Request, kind: str, rid: Any, body: Any) -> web.Response | None:
    """Act on one abort; None means the engine's plain success answer."""
    engine, recorder, log = request.app[ENGINE], request.app[RECORDER], request.app[ABORTS]
    running = engine.find(rid) if isinstance(rid, str) else None
    record: Json | None = running.record if running else None
    if record is None and isinstance(rid, str):
        record = next((r for r in reversed(recorder.records) if rid in (r["id"], _conversation(r))), None)
    entry = log.add(request, kind, rid, body, record)
    if running is None:
        log.resolve(entry, "not_running" if record else "not_found")
        return None
    if running.plan.on_abort == "hang":
        log.resolve(entry, "hung")
        await asyncio.Event().wait()  # a wedged engine: never answers, never stops
    if running.plan.on_abort == "fail":
        log.resolve(entry, "failed")
        fail = _sglang_error if kind == "sglang" else _llamacpp_error
        return fail(500, "mock abort failure")
    engine.stop(running)
    log.resolve(entry, "stopped")
    return None


def _conversation(record: Json) -> str | None:
    headers: dict[str, str] = record["headers"]
    return next((v for k, v in headers.items() if k.lower() == "x-conversation-id"), None)


async def _sglang_abort(request: web.Request) -> web.Response:
    raw = await request.text()
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw
    rid = body.get("rid") if isinstance(body, dict) else None
    failed = await _abort(request, "sglang", rid, body)
    if failed is not None:
        return failed
    if not isinstance(rid, str):
        return _sglang_error(400, "the body must be a JSON object with a string rid")
    return web.Response(status=200)


async def _llamacpp_delete(request: web.Request) -> web.Response:
    failed = await _abort(request, "llamacpp", request.match_info["id"], None)
    return failed if failed is not None else web.json_response({"success": True})


async def _list_aborts(request: web.Request) -> web.Response:
    """``GET /_mock/aborts[?tag=T][&count=N&timeout=S]``: long-polls until N aborts match."""
    log = request.app[ABORTS]
    if request.method == "DELETE":
        log.clear()
        return web.json_response({"aborts": []})
    tag = request.query.get("tag")
    try:
        count = int(request.query.get("count", "0"))
        timeout = float(request.query.get("timeout", "10"))
    except ValueError:
        return openai_error(400, "count must be an integer, timeout a number", "invalid_request_error", None)
    found = await log.wait(tag, count, timeout)
    if found is None:
        return openai_error(408, f"fewer than {count} aborts{f' for {tag!r}' if tag else ''} in time", "timeout", None)
    return web.json_response({"aborts": found})


def add_abort_routes(app: web.Application) -> None:
    for prefix in ("", "/v1"):
        app.router.add_post(f"{prefix}/abort_request", _sglang_abort)
        app.router.add_delete(f"{prefix}/stream/{{id}}", _llamacpp_delete)
    app.router.add_get("/_mock/aborts", _list_aborts)
    app.router.add_delete("/_mock/aborts", _list_aborts)
