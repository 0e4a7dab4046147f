"""The ``/v1/*`` handlers: from a client's request to a running ``Relay``.

Each generation protocol's route (``protocols/``) gets a record, is
registered so a cancel route can stop it, and its answer is teed. Every
other ``/v1/*`` request is a plain pass-through, still closed upstream when
the client leaves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from .errors import BadRequest, BodyTooLarge, NotFound, ProxyError, RequestTimeout, error_response, refusal_reason
from .exchange import PassThrough
from .generation import Generation
from .live import LiveRequest
from .protocols.base import RequestFacts, WireProtocol
from .records import Record
from .relay import Relay
from .routing import UnsafePath, choose_upstream, request_headers, upstream_url
from .services import SERVICES, Services
from .sessions import credential_fingerprint, is_valid_session_id, new_request_id, new_session_id
from .upstream import Target

__all__ = ["generation_handler", "passthrough_handler"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def generation_handler(protocol: WireProtocol) -> Handler:
    """The handler of ``protocol``'s route."""

    async def handle_generation(request: web.Request) -> web.StreamResponse:
        services = request.app[SERVICES]
        try:
            ids = _ids(request)
            grace_s = _grace(request, services)
            body = await _read_body(request, services.config.limits.max_body_bytes)
            payload = _parse_json(body)
            target = _target(services, request, body, payload.get("model"), protocol.key_header)
            prepared = protocol.prepare(payload, body)
        except ProxyError as error:
            return error_response(error, body=protocol.error_body(error))
        # The record must be able to read a non-streaming answer, so ask for it
        # uncompressed (event streams are never compressed anyway).
        target.headers["Accept-Encoding"] = "identity"
        model = payload.get("model") if isinstance(payload.get("model"), str) else None
        stream = payload.get("stream") is True
        record = Record(
            request_id=ids["X-Request-Id"],
            session_id=ids["X-Session-Id"],
            credential=credential_fingerprint(request.headers),
            upstream=target.upstream.name,
            model=model,
            stream=stream,
            created_at=time.time(),
            protocol=protocol.name,
            holder=services.cluster.replica_id,
        )
        if prepared.body is not None:
            target = dataclasses.replace(target, body=prepared.body)
        live = LiveRequest(
            record,
            protocol.transcript(RequestFacts(record.request_id, model, stream)),
            grace_s=grace_s,
            remote_readers=services.streams.remote_readers if services.streams is not None else None,
        )
        services.registry.add(live)
        # Written at once, group-committed with the other starts, while the
        # request goes upstream: the relay waits for it (bounded) before the
        # answer begins, so a crash never loses a request whose id a client has.
        durable = services.writer.save_start(live)
        services.metrics.request_started(target.upstream.name, protocol.name)
        generation = Generation(
            services,
            protocol,
            live,
            payload,
            rewrite=prepared.rewrite,
            client=request.remote,
            durable=durable,
            target=target,
        )
        return await Relay(services, request, target, ids, generation).run()

    return handle_generation


def passthrough_handler(family: WireProtocol | None = None) -> Handler:
    """The handler of the pass-through routes under ``family``'s route
    (``/v1/messages/count_tokens`` under ``/v1/messages``), or of every other
    ``/v1/*`` route when None.

    A configured key goes where the family's clients carry theirs (an
    Anthropic-compatible provider reads ``x-api-key``, not ``Authorization``),
    and the proxy's own errors come in the shape its SDKs parse.
    """
    key_header = family.key_header if family is not None else "Authorization"

    async def handle_passthrough(request: web.Request) -> web.StreamResponse:
        services = request.app[SERVICES]
        try:
            ids = _ids(request)
            body = await _read_body(request, services.config.limits.max_body_bytes)
            target = _target(services, request, body, _model_of(request, body), key_header)
        except ProxyError as error:
            return error_response(error, body=family.error_body(error) if family is not None else None)
        return await Relay(services, request, target, ids, PassThrough()).run()

    return handle_passthrough


def _grace(request: web.Request, services: Services) -> float:
    """How long the generation goes on once its client left, waiting for a reader to resume it."""
    policy = services.config.on_disconnect
    asked = request.headers.get("X-Disconnect-Grace")
    if asked is None:
        return policy.grace_s
    try:
        seconds = float(asked)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise BadRequest(
            "X-Disconnect-Grace must be a number of seconds, 0 or more",
            param="X-Disconnect-Grace",
            code="invalid_grace",
        )
    return min(seconds, policy.max_grace_s)


def _ids(request: web.Request) -> dict[str, str]:
    session_id = request.headers.get("X-Session-Id")
    if session_id is None:
        session_id = new_session_id()
    elif not is_valid_session_id(session_id):
        raise BadRequest(
            "X-Session-Id must be 1-128 characters of A-Za-z0-9._:- starting with a letter or digit",
            param="X-Session-Id",
            code="invalid_session_id",
        )
    return {"X-Session-Id": session_id, "X-Request-Id": new_request_id()}


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, at most ``limit`` bytes, within ``limits.body_timeout_s``.

    Read before anything is sent upstream: a body left unread keeps the
    socket paused, and then aiohttp never sees the client hang up. The time
    bound is for the whole body, not between its chunks: a client trickling
    a byte a second must not hold a connection for as long as it likes.
    """
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    content = request.content
    timeout_s = request.app[SERVICES].config.limits.body_timeout_s
    try:
        if content.is_eof():
            # The whole body came with the head, as a small request's does:
            # nothing to wait for, so no timer to set.
            body = content.read_nowait()
            if len(body) > limit:
                raise _too_large(limit)
            return body
        received = bytearray()
        async with asyncio.timeout(timeout_s):
            async for chunk in content.iter_any():
                received += chunk
                if len(received) > limit:
                    raise _too_large(limit)
        return bytes(received)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s") from None
    except web.RequestPayloadError as exc:  # a broken chunked encoding or compression
        # aiohttp wraps the parser's own error, whose message is the reason.
        reason = refusal_reason(exc.__cause__)
        raise BadRequest(f"the request body is malformed: {reason}", code="invalid_body") from None


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"the request body is larger than {limit} bytes", code="request_too_large")


def _read_json(body: bytes) -> Any:
    """The JSON value of a client's body.

    orjson first: every generation request is read, and a chat app sends the
    whole conversation with each question (37 KB: 18 µs, against 40 µs with
    Python's json). What orjson refuses is read by Python's json, so the same
    bodies are taken as ever: NaN and Infinity, a lone surrogate escape, UTF-16.
    orjson reads an integer past 64 bits as a float; nothing the proxy reads
    from a body is such a number, and the body goes upstream as the client
    wrote it (see ``WireProtocol.prepare``).
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        payload = _read_json(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:  # json.loads recurses per nesting level: "[" * 100_000 exhausts it
        raise BadRequest("the request body's JSON is nested too deeply", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise BadRequest("the request body must be a JSON object", code="invalid_json")
    return payload


def _model_of(request: web.Request, body: bytes) -> object:
    """The ``model`` of a JSON body, for routing; anything else routes by default."""
    if not body or request.content_type != "application/json":
        return None
    try:
        payload = _read_json(body)
    except (UnicodeDecodeError, ValueError):
        return None  # the upstream will answer it; a pass-through does not judge
    except RecursionError:
        # Unlike invalid JSON, a limit of the proxy's own parser: said here,
        # since the body cannot be routed by a model it cannot see.
        raise BadRequest("the request body's JSON is nested too deeply", code="invalid_json") from None
    return payload.get("model") if isinstance(payload, dict) else None


def _target(services: Services, request: web.Request, body: bytes, model: object, key_header: str) -> Target:
    explicit = request.match_info.get("upstream")
    upstream = choose_upstream(services.config, explicit, model)
    if upstream is None:
        raise NotFound(f"no upstream named '{explicit}'", code="unknown_upstream")
    # The raw path and query keep the client's percent-encoding exactly.
    raw_path, _, raw_query = request.raw_path.partition("?")
    prefix = (explicit, "v1") if explicit is not None else ("v1",)
    try:
        url = upstream_url(services.base_urls[upstream.name], raw_path, prefix, raw_query)
    except UnsafePath as exc:
        raise BadRequest(f"{request.path}: {exc}", code="invalid_path") from None
    return Target(
        upstream=upstream,
        method=request.method,
        url=url,
        headers=request_headers(request.headers, upstream, key_header),
        body=body,
    )
