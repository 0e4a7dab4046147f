"""``GET /requests/{id}/stream?after=N`` and ``GET /sessions/{id}/stream?after=N``: a reader resumes a stream.

The reader gets the request's stream in its protocol's own bytes from the end
of its N-th event (what was sent is replayed, then it follows live), and it
ends as the original stream ended: with the protocol's last events, or, for a
request that was stopped, its cancelled ending. A reader keeps a generation
whose client left alive (``live.LiveRequest.reader_joined``); like a client,
one that stops reading is dropped after ``write_timeout_s``, and it never slows
the generation or another reader (each follows the log from its own offset).

The same access rule as reads: a record's stream belongs to the credential
that made it. Streams of another replica (Redis) are followed through the
store's event streams (``store/streams.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator

from aiohttp import web

from .errors import BadRequest, NotFound, ProxyError, error_response
from .protocols import PROTOCOLS_BY_NAME
from .protocols.base import RequestFacts
from .records import Record
from .routes import caller_of, find_record, stored_session
from .services import SERVICES, Services
from .sse import SSE_HEADERS, SSEFramer
from .store.streams import RedisStreams

__all__ = ["add_resume_routes"]


class StreamGone(ProxyError):
    status = 410
    type = "invalid_request_error"
    code = "stream_not_kept"


# How long a stream that ended on another replica lately may take to be
# mirrored: generous, as the mirror of a loaded replica lags by a batch; a
# reader waits it only when the stream is not there yet.
_MIRROR_LAG_S = 2.0
# More events than any stream has: a count longer than this is no count.
_AFTER_DIGITS = 18


def _after(request: web.Request) -> int:
    raw = request.query.get("after", "0")
    # ASCII digits only ("²" is a digit to str.isdigit, not to int), and few
    # enough of them for int() to read.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= _AFTER_DIGITS):
        raise BadRequest("after must be the number of events the reader has (0 or more)", param="after")
    return int(raw)


async def stream_request(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    try:
        after = _after(request)
        record = await find_record(services, caller_of(request, services), request.match_info["request_id"])
        return await _resume(request, services, record, after)
    except ProxyError as error:
        return error_response(error)


async def stream_session(request: web.Request) -> web.StreamResponse:
    """The session's newest request, resumed."""
    services = request.app[SERVICES]
    session_id = request.match_info["session_id"]
    try:
        after = _after(request)
        caller = caller_of(request, services)
        newest: Record | None = None
        for live in services.registry.of_session(session_id):
            if caller.owns(live.credential) and (newest is None or live.record.created_at > newest.created_at):
                newest = live.record
        if newest is None:
            stored = [r for r in await stored_session(services, session_id) if caller.owns(r.credential)]
            newest = max(stored, key=lambda r: r.created_at, default=None)
        if newest is None:
            raise NotFound(f"no session '{session_id}'", code="session_not_found")
        return await _resume(request, services, newest, after)
    except ProxyError as error:
        return error_response(error)


async def _resume(request: web.Request, services: Services, record: Record, after: int) -> web.StreamResponse:
    if not record.stream:
        raise BadRequest(f"request '{record.request_id}' is not a stream", code="not_a_stream")
    log = services.replays.get(record.request_id)
    streams = services.streams
    if log is None and streams is not None and await _runs_or_ran_elsewhere(services, streams, record):
        if await streams.given_up(record.request_id):
            raise _gone(record)
        return await _resume_remote(request, services, streams, record, after)
    if log is None or log.given_up:
        raise _gone(record)
    live = services.registry.get(record.request_id)
    response = web.StreamResponse(
        status=200, headers={**SSE_HEADERS, "X-Session-Id": record.session_id, "X-Request-Id": record.request_id}
    )
    await response.prepare(request)
    if live is not None:
        live.reader_joined()
    services.metrics.reader_joined()
    try:
        async with contextlib.aclosing(log.follow(after)) as source:
            followed = await _relay(response, source, services.config.limits.write_timeout_s)
    finally:
        services.metrics.reader_left()
        if live is not None:
            live.reader_left()
    if not followed or log.given_up:
        # Given up while followed: the rest is not kept, and a clean end
        # would pass the part the reader has off as the whole answer.
        _drop(request)
        return response
    await response.write_eof()
    return response


def _gone(record: Record) -> StreamGone:
    return StreamGone(
        f"the stream of '{record.request_id}' is no longer kept"
        " (it ended more than resume.keep_s ago, outgrew limits.max_body_bytes or resume.max_total_bytes,"
        " or its replica could not mirror it to Redis)"
    )


async def _runs_or_ran_elsewhere(services: Services, streams: RedisStreams, record: Record) -> bool:
    """Whether another replica's mirror of this stream is, or will be, in Redis.

    A replica mirrors a stream a batch behind its client (and a provider still
    silent has sent nothing to mirror), so the mirror may not be there yet:
    a request in progress elsewhere is followed at once (``follow`` waits for
    the first entry, and ends the stream as interrupted if that replica dies);
    one that ended there lately gets ``_MIRROR_LAG_S`` for its mirror to appear.
    """
    elsewhere = record.holder is not None and record.holder != services.cluster.replica_id
    if elsewhere and record.status == "in_progress":
        return True
    lately = record.ended_at is not None and time.time() - record.ended_at < services.config.resume.keep_s
    if elsewhere and lately:
        return await streams.appears(record.request_id, _MIRROR_LAG_S)
    return await streams.exists(record.request_id)


async def _resume_remote(
    request: web.Request, services: Services, streams: RedisStreams, record: Record, after: int
) -> web.StreamResponse:
    """A stream that runs (or ran) on another replica, followed through Redis.

    Every event since the start is read back into a transcript of its
    protocol: if the replica died before the stream ended, the reader gets
    the ending a stopped stream gets (the record says interrupted).
    """
    protocol = PROTOCOLS_BY_NAME[record.protocol]
    transcript = protocol.transcript(RequestFacts(record.request_id, record.model, record.stream))
    framer = SSEFramer()
    holder = record.holder
    cut = False  # its log was given up there: the rest is not kept

    async def alive() -> bool:
        return holder is not None and await services.cluster.alive(holder)

    async def source() -> AsyncGenerator[bytes, None]:
        nonlocal cut
        seen = 0
        ended_there = False
        async with contextlib.aclosing(streams.follow(record.request_id, alive)) as entries:
            async for entry in entries:
                ended_there, cut = entry.last, entry.cut
                for _, payload in framer.feed(entry.data)[1]:
                    transcript.add_event(payload)
                start = 0 if seen >= after else None
                if start is None and seen + len(entry.event_ends) >= after:
                    start = entry.event_ends[after - seen - 1]
                seen += len(entry.event_ends)
                if start is not None and entry.data[start:]:
                    yield entry.data[start:]
        if not ended_there:
            # Its replica died mid-stream: end as a stopped stream ends.
            yield transcript.cancelled_ending(services.config.cancel_finish_reason)

    response = web.StreamResponse(
        status=200, headers={**SSE_HEADERS, "X-Session-Id": record.session_id, "X-Request-Id": record.request_id}
    )
    await response.prepare(request)
    services.metrics.reader_joined()
    try:
        async with streams.reading(record.request_id), contextlib.aclosing(source()) as stream:
            followed = await _relay(response, stream, services.config.limits.write_timeout_s)
    finally:
        services.metrics.reader_left()
    if not followed or cut:
        _drop(request)
        return response
    await response.write_eof()
    return response


async def _relay(response: web.StreamResponse, source: AsyncIterator[bytes], write_timeout_s: float) -> bool:
    """Write what ``source`` yields; False if the reader stopped reading or went away."""
    try:
        async for data in source:
            async with asyncio.timeout(write_timeout_s):
                await response.write(data)
    except (TimeoutError, ConnectionError):
        return False
    return True


def _drop(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


def add_resume_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/requests/{request_id}/stream", stream_request)
    router.add_get("/sessions/{session_id}/stream", stream_session)
