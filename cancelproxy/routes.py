"""The proxy's own routes: cancel, read, health.

A record and its cancel belong to the credential that made it. Anyone else
is answered exactly as if the id did not exist; the ``admin_token`` may read
and cancel anything.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from .errors import NotFound, error_response
from .records import Record
from .registry import ActiveRequest
from .services import SERVICES, Services
from .sessions import credential_fingerprint, token_matches

__all__ = ["add_routes"]


class _Caller:
    """Who is asking: a credential fingerprint, or the admin."""

    def __init__(self, request: web.Request, services: Services) -> None:
        authorization = request.headers.get("Authorization")
        self.is_admin = token_matches(authorization, services.config.admin_token)
        self.credential = credential_fingerprint(authorization)

    def owns(self, record: Record) -> bool:
        return self.is_admin or record.credential == self.credential


def _live(active: ActiveRequest) -> Record:
    return active.snapshot() if active.snapshot is not None else active.record.copy()


def _cancel_answer(session_id: str | None, request_ids: list[str]) -> web.Response:
    stopped = bool(request_ids)
    return web.json_response(
        {"success": stopped, "cancelled": stopped, "session_id": session_id, "request_ids": request_ids}
    )


async def cancel_session(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    caller = _Caller(request, services)
    session_id = request.match_info["session_id"]
    actives = [a for a in services.registry.of_session(session_id) if caller.owns(a.record)]
    stopped = await services.registry.cancel(actives, "cancel", services.config.limits.cancel_timeout_s)
    return _cancel_answer(session_id, stopped)


async def cancel_request(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    caller = _Caller(request, services)
    request_id = request.match_info["request_id"]
    active = services.registry.get(request_id)
    if active is not None and caller.owns(active.record):
        stopped = await services.registry.cancel([active], "cancel", services.config.limits.cancel_timeout_s)
        return _cancel_answer(active.record.session_id, stopped)
    record = await services.store.get(request_id)
    if record is None or not caller.owns(record):
        return error_response(NotFound(f"no request '{request_id}'", code="request_not_found"))
    return _cancel_answer(record.session_id, [])  # it already ended


async def read_request(request: web.Request) -> web.Response:
    """One record. ``?wait=1`` first waits (at most cancel_timeout_s) for its final
    state: a frontend that aborted a fetch reads the partial answer it keeps."""
    services = request.app[SERVICES]
    caller = _Caller(request, services)
    request_id = request.match_info["request_id"]
    active = services.registry.get(request_id)
    if active is not None and caller.owns(active.record) and request.query.get("wait") not in (None, "", "0"):
        try:
            await asyncio.wait_for(active.finished.wait(), services.config.limits.cancel_timeout_s)
        except TimeoutError:
            pass  # answer with the state as it stands
        active = services.registry.get(request_id)
    record = _live(active) if active is not None else await services.store.get(request_id)
    if record is None or not caller.owns(record):
        return error_response(NotFound(f"no request '{request_id}'", code="request_not_found"))
    return web.json_response(record.public())


async def read_session(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    caller = _Caller(request, services)
    session_id = request.match_info["session_id"]
    records = {r.request_id: r for r in await services.store.session(session_id) if caller.owns(r)}
    # Requests still running here: show their partial answer as it stands.
    for active in services.registry.of_session(session_id):
        if caller.owns(active.record):
            records[active.request_id] = _live(active)
    if not records:
        return error_response(NotFound(f"no session '{session_id}'", code="session_not_found"))
    ordered: list[dict[str, Any]] = [r.public() for r in sorted(records.values(), key=lambda r: r.created_at)]
    return web.json_response({"session_id": session_id, "requests": ordered})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    try:
        ready = await services.store.ping()
    except Exception:
        ready = False
    return web.json_response({"status": "ready" if ready else "store unreachable"}, status=200 if ready else 503)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/sessions/{session_id}/cancel", cancel_session)
    router.add_post("/api/chat/cancel/{session_id}", cancel_session)
    router.add_post("/requests/{request_id}/cancel", cancel_request)
    router.add_get("/requests/{request_id}", read_request)
    router.add_get("/sessions/{session_id}", read_session)
    router.add_get("/healthz", healthz)
    router.add_get("/readyz", readyz)
