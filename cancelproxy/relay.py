"""Client ↔ upstream streaming: the one place bytes meet sockets.

A ``Relay`` sends one request upstream and streams the answer back as it
arrives. It knows no protocol and no record: what the request is to the
proxy (a pass-through, or a generation it records) is its ``Exchange``, whose
hooks it calls at fixed points (``exchange.py``). Every way it can end goes
through :meth:`Relay.run`'s ``finally``, or, for a generation that went on
after its client left, :meth:`Relay._carry_on`'s: the upstream connection is
closed, the client (if it is still there) is given its end, and the exchange
finishes (for a generation, the record's final state is queued for the
store's writer, so a client that went away cannot interrupt it; a cancel
route answers only after that write). The client's end:

==================  =========================================================
how it ended        what the client gets
==================  =========================================================
completed           the upstream's bytes, untouched, up to the protocol's last
                    event, then the end of body (once that event is in hand,
                    a stop changes nothing)
stopped: cancel     the protocol's cancelled ending (chat: a last chunk with
                    ``finish_reason`` = cancel_finish_reason and ``[DONE]``);
                    499 for a non-streaming request
stopped: disconnect nothing: it is gone
failed              the proxy's error (500/502/504) if nothing was sent yet;
                    mid-stream the protocol's error event, then the end of
                    the stream (also for a stream cut before its last event)
==================  =========================================================

A client that stops reading is dropped once a write to it (of the answer or
of its ending) has waited ``limits.write_timeout_s``, or, once the request is
stopped, a quarter of ``limits.cancel_timeout_s`` if that is shorter; one
dropped so is written no ending, and the request finishes all the same.

Why it is built this way:

- The server runs with ``handler_cancellation=True``: without it aiohttp
  notices a client that hung up only at the next write, which a silent
  upstream (a reasoning model thinking) may not make for minutes. With it, a
  client that disconnects cancels ``run()`` at whatever it awaits.
- A cancel route calls ``LiveRequest.request_stop()``, which closes the
  upstream connection from outside (``upstream.py``: the socket shut down,
  or the relay's own await of the upstream's headers cancelled); the reader
  here then wakes with an error or EOF, sees the stop and gives the client
  the cancelled ending.
- The record holds the events whose bytes were handed to the client, so
  after a stop it is exactly the partial answer the user saw.
- A client that disconnects while readers that resumed its stream follow
  it (or its disconnect grace runs) does not stop the generation: the rest
  of it runs as a job the app owns (``_carry_on``), into the record and the
  log those readers follow.
"""

from __future__ import annotations

import asyncio
import time
import zlib

import aiohttp
from aiohttp import web
from aiojobs.aiohttp import spawn

from .deadline import Deadline
from .errors import (
    DownstreamGone,
    InternalError,
    ProxyError,
    RequestCancelled,
    UpstreamBroken,
    UpstreamError,
    UpstreamTimeout,
    map_upstream_error,
)
from .exchange import Exchange
from .routing import response_headers
from .services import Services
from .sse import SSE_HEADERS, Event, EventTooLarge
from .tee import ExpandsTooFar, PassThroughTee, Tee, is_event_stream
from .upstream import Abandon, Target, closer

__all__ = ["Relay"]

# aiohttp's client would otherwise add its own Accept, Accept-Encoding and
# User-Agent: the provider must see the client's headers, not ours.
_SKIP_AUTO_HEADERS = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})


class Relay:
    def __init__(
        self, services: Services, request: web.Request, target: Target, ids: dict[str, str], exchange: Exchange
    ) -> None:
        self._services = services
        self._limits = services.config.limits
        self._request = request
        self._target = target
        self._ids = ids  # X-Session-Id / X-Request-Id, on every answer
        self._exchange = exchange
        self._upstream: aiohttp.ClientResponse | None = None
        self._response: web.StreamResponse | None = None
        self._tee: Tee | PassThroughTee = PassThroughTee()
        self._failure: ProxyError | None = None
        limits = self._limits
        # One deadline for the whole exchange, moved step by step (deadline.py).
        span = min(limits.idle_timeout_s, limits.write_timeout_s, limits.first_byte_timeout_s)
        self._deadline = Deadline(0.0, span=span)
        # A cancel route waits cancel_timeout_s for the final state, and a
        # stopped request may still wait on its client twice: the write it was
        # in when the stop came, then its cancelled ending. A quarter each
        # leaves the ack half its wait for the record's write; a client that
        # reads drains in far less, and only one that stopped is dropped.
        self._stop_write_s = min(limits.write_timeout_s, limits.cancel_timeout_s / 4)
        self._phase = "upstream"  # what the deadline is guarding: "upstream" or "client"
        self._client_left = False
        self._answering = False  # the upstream's body has begun
        self._started = time.monotonic()
        self.bytes_out = 0

    async def run(self) -> web.StreamResponse:
        carried_on = False  # the generation outlives its client (readers follow, or a grace runs)
        try:
            try:
                await self._pump()
            except asyncio.CancelledError:
                carried_on = self._client_gone()  # aiohttp cancelled us: the client went away
                raise
            except DownstreamGone:
                carried_on = self._client_gone()
            except Exception as exc:
                self._failed(exc)
            finally:
                if not carried_on:
                    self._close_upstream()
            if carried_on:
                return self._gone()
            # The client's end first: it must not wait for the store. A cancel
            # route waits for the exchange's finish, which comes after.
            return await self._answer()
        finally:
            # The final state is queued, not awaited: a client that leaves
            # cannot cut it short, and the handler returns at once (aiohttp
            # reads a keep-alive connection's next request only after the
            # handler returned: it must not wait for a disk sync). The writer
            # owns it from here; shutdown waits for the writer.
            if carried_on:
                # The rest of the generation runs as a job the app owns.
                await spawn(self._request, self._carry_on())
            else:
                self._finish()

    async def _carry_on(self) -> None:
        """The rest of a generation whose client left while others follow it (or
        its grace runs): the upstream is read to its end, into the record and
        the log that resumed readers follow, until it ends or is stopped."""
        try:
            try:
                await self._stream()
            except asyncio.CancelledError:
                self._exchange.stop_for_shutdown()
                raise
            except Exception as exc:
                self._failed(exc)
            finally:
                self._close_upstream()
        finally:
            self._finish()

    def _finish(self) -> None:
        self._deadline.close()
        status = self._upstream.status if self._upstream is not None else None
        self._exchange.finish(self._failure, status, self.bytes_out)

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, UpstreamError):
            self._fail(exc)
            return
        # A bug must still end as an error the client can read and a
        # record that says "failed", never as a torn answer "completed".
        self._services.log.exception("relay of %s failed unexpectedly", self._ids["X-Request-Id"], exc_info=exc)
        self._fail(InternalError(f"the proxy failed while relaying: {type(exc).__name__}"))

    # -- the stream -------------------------------------------------------

    @property
    def _stopping(self) -> bool:
        return self._exchange.stop_reason is not None

    async def _pump(self) -> None:
        upstream = await self._open()
        if upstream is None:
            return  # stopped before the upstream answered
        self._upstream = upstream
        close, deadline, bound = closer(upstream), self._deadline, self._stop_write_s

        def stop() -> None:
            close()
            # A client write blocked when the stop came would otherwise hold the
            # request (and the cancel waiting on it) for all of write_timeout_s.
            # Called at the relay's own end too, between steps, where it does
            # nothing: the next step sets its own deadline.
            deadline.sooner(bound)

        # The upstream and the deadline, not the relay: a finished request is
        # still freed by reference counting alone (live.py).
        self._exchange.attach_upstream(stop)
        if self._stopping:
            return
        self._tee = self._exchange.tee(upstream.status, upstream.headers)
        if is_event_stream(upstream.headers):
            # Send the status and headers now, as the upstream did; a
            # non-streaming answer waits for its first body byte so a cancel
            # before it can still answer 499.
            await self._prepare()
        await self._stream()

    async def _stream(self) -> None:
        """The answer's body, from where it stands to its end (or a stop)."""
        upstream = self._upstream
        assert upstream is not None
        tee = self._tee
        loop = asyncio.get_running_loop()
        limits = self._limits
        deadline = self._deadline
        if self._answering:
            deadline.when = loop.time() + limits.idle_timeout_s  # carried on mid-answer
        else:
            deadline.when = loop.time() + max(0.0, self._started + limits.first_byte_timeout_s - time.monotonic())
        try:
            # Moved as the stream goes: the rest of the first-byte budget, then
            # idle_timeout_s per upstream read, write_timeout_s per client
            # write. Which side it fired on decides whose fault it was.
            async with deadline:
                while True:
                    self._phase = "upstream"
                    chunk = await self._read(upstream)
                    if not chunk or self._stopping:
                        break
                    self._answering = True
                    self._phase = "client"
                    deadline.when = loop.time() + limits.write_timeout_s
                    await self._forward(chunk)
                    if tee.over:
                        break  # the protocol's last event: whatever follows, no client shows
                    deadline.when = loop.time() + limits.idle_timeout_s
                if self._stopping:
                    return
                # What was held back is a write like any other.
                self._phase = "client"
                deadline.when = loop.time() + limits.write_timeout_s
                await self._end_of_body(upstream)
        except TimeoutError:
            if self._phase == "client":
                raise DownstreamGone("the client stopped reading") from None
            raise UpstreamTimeout(f"upstream '{self._target.upstream.name}' sent nothing for too long") from None

    async def _open(self) -> aiohttp.ClientResponse | None:
        """Send the request; the answer's status and headers, or None if stopped first.

        Awaited inline; a cancel route that comes while the provider is still
        connecting or queueing abandons it by cancelling this very await
        (aiohttp closes the socket it was opening), and the relay goes on to
        answer its client.
        """
        abandon = Abandon(asyncio.current_task())
        self._exchange.attach_upstream(abandon)
        try:
            async with self._deadline.within(self._limits.first_byte_timeout_s):
                return await self._send()
        except TimeoutError:
            raise UpstreamTimeout(f"upstream '{self._target.upstream.name}' did not answer in time") from None
        except asyncio.CancelledError:
            if abandon.used and abandon.swallow():
                return None  # a cancel route abandoned it, nothing else cancelled us
            raise
        finally:
            # Nothing of this await may be called once it is over (nor keep
            # this relay alive through the request in progress).
            self._exchange.detach_upstream()
            abandon.task = None

    async def _send(self) -> aiohttp.ClientResponse:
        target = self._target
        try:
            return await self._services.client.request(
                target.method,
                target.url,
                headers=target.headers,
                data=target.body or None,
                allow_redirects=False,
                skip_auto_headers=_SKIP_AUTO_HEADERS,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise map_upstream_error(exc, target.upstream.name, answered=False) from exc

    async def _read(self, upstream: aiohttp.ClientResponse) -> bytes:
        # When the provider resets the connection, aiohttp raises the stored
        # error before handing over bytes it had already buffered. Those bytes
        # are deliberately not salvaged: every public read re-raises first, and
        # reaching into StreamReader's private buffer would break on upgrade.
        # Nothing is lost from what the client saw: the client and the record
        # both end at the last event relayed, and the record says "failed".
        try:
            return await upstream.content.readany()
        except (aiohttp.ClientError, OSError) as exc:
            raise map_upstream_error(exc, self._target.upstream.name, answered=True) from exc

    async def _forward(self, chunk: bytes) -> None:
        try:
            whole, events = self._tee.split(chunk)
        except EventTooLarge as exc:
            raise UpstreamBroken(
                f"upstream '{self._target.upstream.name}' sent {exc} (limits.max_event_bytes)", code="event_too_large"
            ) from None
        except zlib.error as exc:
            name = self._target.upstream.name
            raise UpstreamBroken(f"upstream '{name}' sent a broken compressed body: {exc}") from None
        except ExpandsTooFar as exc:
            name = self._target.upstream.name
            raise UpstreamBroken(
                f"upstream '{name}' sent {exc} (limits.max_body_bytes)", code="event_too_large"
            ) from None
        if self._tee.over:
            # The upstream's own last event is in hand: the answer is whole, and
            # a cancel (or the client leaving) during its write stops nothing.
            self._exchange.settle()
        if whole:
            await self._write(whole, events)
        else:
            self._exchange.sent(whole, events)  # events the client never gets (a hidden usage chunk) still count

    async def _end_of_body(self, upstream: aiohttp.ClientResponse) -> None:
        """The upstream's body ended: tell a cut stream from a whole one, and forward what was held back."""
        tail = self._tee.end_of_body()
        if upstream.status < 400 and not self._tee.complete():
            # A clean end of body (EOF, a chunked terminator) before the
            # protocol's last event is a truncated answer: no client may take
            # it for a whole one. The tail is not sent: it is the start of an
            # event that never ended, and the error event written after it
            # would be read as its continuation (a torn JSON, not an error).
            raise UpstreamBroken(
                f"upstream '{self._target.upstream.name}' ended the stream before its last event",
                code="upstream_truncated",
            )
        # The answer is whole before its last bytes go out: a client that
        # leaves during their write leaves a completed answer, not a stopped one.
        self._exchange.settle()
        if tail:
            await self._write(tail)

    async def _prepare(self) -> web.StreamResponse:
        if self._response is not None:
            return self._response
        await self._exchange.before_answer()
        upstream = self._upstream
        assert upstream is not None
        headers = response_headers(upstream.headers)
        headers.update(self._ids)
        # What the tee does to the body decides its framing headers.
        if self._tee.event_stream:
            # The one body it may end (a stop, its last event) or change (a
            # hidden usage chunk): aiohttp sends it chunked. Any other is the
            # provider's byte for byte and goes with its Content-Length: no
            # terminator to send after it, and a client knows a cut one by it.
            headers.popall("Content-Length", None)
        if self._tee.decoded:
            headers.popall("Content-Encoding", None)  # forwarded decoded (see Tee)
        if is_event_stream(headers):
            # Tell a buffering proxy in front of us (nginx) not to hold events.
            headers.setdefault("X-Accel-Buffering", "no")
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        self._response = response
        try:
            await response.prepare(self._request)
        except ConnectionError as exc:
            raise DownstreamGone(str(exc)) from exc
        return response

    async def _write(self, data: bytes, events: list[Event] | None = None) -> None:
        """Hand ``data`` to the client; ``events`` are what it carries, for the record.

        Once the bytes are in the transport they may reach the client even if
        the drain that follows fails or times out (a client that stopped
        reading): from then on the record holds them too, so it never holds
        less than the client could read. With the client gone (the generation
        goes on for readers that resume it), only the record and the log get them.
        """
        if self._client_left:
            self._exchange.sent(data, events or [])
            return
        # Per chunk: only the first write prepares the response. (``is None``,
        # not ``or``: a StreamResponse's truth is a Python call of its own.)
        response = self._response
        if response is None:
            response = await self._prepare()
        transport = self._request.transport
        try:
            if transport is None or transport.is_closing():
                raise DownstreamGone("the client connection is closed")
            try:
                await response.write(data)
            finally:
                self.bytes_out += len(data)
        except ConnectionError as exc:
            raise DownstreamGone(str(exc)) from exc
        finally:
            # Also when the client has just gone: the chunk was read from the
            # upstream and the tee is past it, so it is the answer's next part
            # for a reader that resumes it (the generation may go on), and a
            # record holding it holds no less than the client could read.
            self._exchange.sent(data, events or [])

    # -- how it ended -----------------------------------------------------

    def _client_gone(self) -> bool:
        """The client left; True if the generation goes on without it."""
        self._client_left = True
        return self._exchange.client_gone() and self._upstream is not None

    def _fail(self, error: ProxyError) -> None:
        # A stop closes the upstream, which the reader sees as an error: that
        # is the stop working, not the upstream failing.
        if not self._stopping:
            self._failure = error
            if isinstance(error, UpstreamError):
                self._services.metrics.upstream_error(self._target.upstream.name, error.code)
            self._exchange.settle()

    def _close_upstream(self) -> None:
        self._exchange.close_upstream()
        if self._upstream is not None:
            # At the end of its body this only forgets the connection, which
            # aiohttp has already pooled again; before it (a stop, the last
            # event with more to come), it closes the socket.
            self._upstream.close()

    async def _answer(self) -> web.StreamResponse:
        """The client's end of the exchange (it already has whatever was relayed)."""
        if self._client_left:
            # Gone, or its last write timed out: whatever stopped the request,
            # an ending written now would only wait on a client that is not reading.
            return self._gone()
        try:
            if self._response is None:
                await self._exchange.before_answer()
            # The request stays live until the client has its end (a cancel
            # route waits for that): a client that stops reading now is
            # dropped like one that stopped mid-answer, and after a stop as
            # soon as a cancel route can still be told it stopped.
            stopped = self._exchange.stop_reason in ("cancel", "shutdown")
            bound = self._stop_write_s if stopped else self._limits.write_timeout_s
            async with self._deadline.within(bound):
                if stopped:
                    return await self._answer_cancelled()
                if self._failure is not None:
                    return await self._answer_failure(self._failure)
                response = await self._prepare()
                await response.write_eof()
                return response
        except (DownstreamGone, ConnectionError, TimeoutError):
            return self._gone()

    async def _answer_cancelled(self) -> web.StreamResponse:
        response = self._response
        streaming = self._tee.event_stream or (response is None and self._exchange.wants_stream)
        if not streaming:
            if response is None:
                return self._exchange.error_response(RequestCancelled("the request was cancelled"), self._ids)
            return self._gone()  # a JSON body already begun cannot be ended cleanly
        if response is None:
            response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **self._ids})
            self._response = response
            await response.prepare(self._request)
        ending = self._exchange.cancelled_ending()
        await response.write(ending)
        self._exchange.ended_with(ending)
        await response.write_eof()
        return response

    async def _answer_failure(self, failure: ProxyError) -> web.StreamResponse:
        response = self._response
        if response is None:
            return self._exchange.error_response(failure, self._ids)
        if is_event_stream(response.headers):
            # An explicit error event: no client may take a torn stream for a whole one.
            event = self._exchange.error_event(failure)
            await response.write(event)
            self._exchange.ended_with(event)
            await response.write_eof()
            return response
        return self._gone()

    def _gone(self) -> web.StreamResponse:
        """No clean end is possible or wanted: drop the client connection."""
        transport = self._request.transport
        if transport is not None:
            transport.abort()
        return self._response or web.Response(status=499)
