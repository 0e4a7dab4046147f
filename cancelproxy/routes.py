"""The proxy's own routes: cancel, read, health.

A record and its cancel belong to the credential that made it. Anyone else
is answered exactly as if the id did not exist; the ``admin_token`` may read
and cancel anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiohttp import web

from .cluster import CancelOrder, CancelResult
from .errors import NotFound, StoreUnavailable, error_response
from .forward import passthrough_handler
from .live import LiveRequest
from .protocols.responses import ResponsesTranscript
from .records import Record
from .services import SERVICES, Services
from .sessions import Caller

__all__ = ["add_routes", "caller_of", "cancel_here", "cancel_response", "find_record", "stored_session"]

# An id the proxy is not streaming goes upstream like any other Responses route.
_forward_to_upstream = passthrough_handler()


def caller_of(request: web.Request, services: Services) -> Caller:
    return Caller.of(request.headers, services.config.admin_token)


async def find_record(services: Services, caller: Caller, request_id: str) -> Record:
    """A request's record as it stands: running here, else a final state the store
    may not have yet, else the store. Not the caller's: as if it did not exist."""
    live = services.registry.get(request_id)
    if live is not None:
        record: Record | None = live.snapshot()
    else:
        record = services.writer.unwritten(request_id) or await _stored(services, request_id)
    if record is None or not caller.owns(record.credential):
        raise NotFound(f"no request '{request_id}'", code="request_not_found")
    return record


def _live(live: LiveRequest) -> Record:
    return live.snapshot()


def _cancel_answer(session_id: str | None, result: CancelResult) -> web.Response:
    stopped = bool(result.stopped)
    body: dict[str, Any] = {
        "success": stopped,
        "cancelled": stopped,
        "session_id": session_id,
        "request_ids": result.stopped,
    }
    if result.not_durable:
        # Stopped for sure (the upstream is closed), but the store could not
        # take the final state in time: it is kept and retried.
        body["durable"] = False
        body["not_durable"] = result.not_durable
    if result.unanswered and not stopped:
        body["reason"] = f"no answer in time from replica(s) {', '.join(result.unanswered)}"
    return web.json_response(body)


async def cancel_here(services: Services, order: CancelOrder, within_s: float | None) -> CancelResult:
    """Stop what this replica runs of ``order`` (another replica's), answering
    within ``within_s`` at most: its share of the time that replica's route has."""
    timeout = services.config.limits.cancel_timeout_s
    if within_s is not None:
        timeout = min(timeout, within_s)
    return await _answer_here(services, order, _stop_here(services, order), timeout)


def _stop_here(services: Services, order: CancelOrder) -> tuple[list[LiveRequest], list[LiveRequest]]:
    """(the order's requests here that the caller owns, those of them now stopped).

    Synchronous: the upstream connections are closed before the route awaits
    anything, so a loop busy with streams cannot make a stop wait for its turn.
    """
    registry = services.registry
    if order.response_id is not None:
        candidates = [live for live in registry.all() if _response_id(live) == order.response_id]
    elif order.request_id is not None:
        candidates = [live for live in [registry.get(order.request_id)] if live is not None]
    else:
        candidates = registry.of_session(order.session_id or "")
    caller = Caller(order.credential, order.admin)
    owned = [live for live in candidates if caller.owns(live.credential)]
    return owned, registry.stop(owned, "cancel")


async def _answer_here(
    services: Services, order: CancelOrder, found: tuple[list[LiveRequest], list[LiveRequest]], timeout: float
) -> CancelResult:
    owned, stopping = found
    stopped = await services.registry.until_stopped(stopping, timeout)
    response = None
    if order.response_id is not None and owned and isinstance(owned[0].transcript, ResponsesTranscript):
        response = owned[0].transcript.response_object()
    return CancelResult(
        stopped=stopped.request_ids,
        not_durable=stopped.not_durable,
        known=[live.request_id for live in owned],
        session_id=owned[0].session_id if owned else order.session_id,
        response=response,
        ending_s=stopped.ending_s,
        storing_s=stopped.storing_s,
    )


def _response_id(live: LiveRequest) -> str | None:
    transcript = live.transcript
    return transcript.response_id if isinstance(transcript, ResponsesTranscript) else None


async def _cancel(services: Services, order: CancelOrder) -> CancelResult:
    """Stop it here and on every other replica at once; answer when all did."""
    timeout = services.config.limits.cancel_timeout_s
    started = time.monotonic()
    found = _stop_here(services, order)  # closed here and now; the rest is waiting
    stopped_at = time.monotonic()
    if services.cluster.alone:
        result, remote = await _answer_here(services, order, found, timeout), CancelResult()
    else:
        result, remote = await asyncio.gather(
            _answer_here(services, order, found, timeout), services.cluster.cancel_elsewhere(order, timeout)
        )
    stopped_here = list(result.stopped)
    result.add(remote)
    services.log.info(
        "cancel",
        extra={
            "fields": {
                "session_id": result.session_id,
                "request_id": order.request_id,
                "stopped": result.stopped,
                "stopped_elsewhere": [i for i in result.stopped if i not in stopped_here],
                "not_durable": result.not_durable,
                "unanswered": result.unanswered,
                "ack_ms": round((time.monotonic() - started) * 1000, 3),
                # Where an ack's time goes: stopping (the upstreams closed), the
                # final states becoming known, their write.
                "stop_ms": round((stopped_at - started) * 1000, 3),
                "ending_ms": round(result.ending_s * 1000, 3),
                "storing_ms": round(result.storing_s * 1000, 3),
            }
        },
    )
    return result


async def cancel_session(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    caller = caller_of(request, services)
    session_id = request.match_info["session_id"]
    order = CancelOrder(credential=caller.credential, admin=caller.admin, session_id=session_id)
    return _cancel_answer(session_id, await _cancel(services, order))


async def cancel_request(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    caller = caller_of(request, services)
    request_id = request.match_info["request_id"]
    order = CancelOrder(credential=caller.credential, admin=caller.admin, request_id=request_id)
    result = await _cancel(services, order)
    if result.stopped or result.known:
        # Stopped, or found ending on its own just now: the caller's, either way.
        return _cancel_answer(result.session_id, result)
    record = services.writer.unwritten(request_id) or await _stored(services, request_id)
    if record is not None and caller.owns(record.credential):
        return _cancel_answer(record.session_id, result)  # it already ended
    if result.unanswered:
        return _cancel_answer(None, result)  # it may run on a replica that did not answer
    return error_response(NotFound(f"no request '{request_id}'", code="request_not_found"))


async def cancel_response(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses/{id}/cancel`` (the SDKs' ``responses.cancel()``): a response
    this proxy is streaming is stopped like any request, and answered with its Response
    object (``status: "cancelled"``, the partial output). Any other id is the
    upstream's own (OpenAI's background responses): forwarded."""
    services = request.app[SERVICES]
    caller = caller_of(request, services)
    order = CancelOrder(credential=caller.credential, admin=caller.admin, response_id=request.match_info["response_id"])
    result = await _cancel(services, order)
    if result.response is not None:
        return web.json_response(result.response)
    return await _forward_to_upstream(request)


async def _stored(services: Services, request_id: str) -> Record | None:
    try:
        return await services.store.get(request_id)
    except Exception as exc:
        raise StoreUnavailable(f"the record store is unavailable: {exc}") from exc


async def stored_session(services: Services, session_id: str) -> list[Record]:
    try:
        return await services.store.session(session_id)
    except Exception as exc:
        raise StoreUnavailable(f"the record store is unavailable: {exc}") from exc


async def read_request(request: web.Request) -> web.Response:
    """One record. ``?wait=1`` first waits (at most cancel_timeout_s) for its final
    state: a frontend that aborted a fetch reads the partial answer it keeps."""
    services = request.app[SERVICES]
    caller = caller_of(request, services)
    request_id = request.match_info["request_id"]
    active = services.registry.get(request_id)
    if active is not None and caller.owns(active.credential) and request.query.get("wait") not in (None, "", "0"):
        with contextlib.suppress(TimeoutError):  # then answer with the state as it stands
            async with asyncio.timeout(services.config.limits.cancel_timeout_s):
                await active.finished.wait()
    try:
        record = await find_record(services, caller, request_id)
    except NotFound as error:
        return error_response(error)
    return web.json_response(record.public())


async def read_session(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    caller = caller_of(request, services)
    session_id = request.match_info["session_id"]
    stored = await stored_session(services, session_id)
    # Newest last: the store, then final states it may not have yet, then
    # requests still running here with their partial answer as it stands.
    unwritten = services.writer.unwritten_in_session(session_id)
    records = {r.request_id: r for r in [*stored, *unwritten] if caller.owns(r.credential)}
    for active in services.registry.of_session(session_id):
        if caller.owns(active.credential):
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
        ready = await services.store.ping() and services.writer.healthy
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
