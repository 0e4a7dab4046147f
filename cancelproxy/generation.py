"""A generation request: registered, teed into its record, stoppable (the relay's hooks for it).

Its ``LiveRequest`` is what the rest of the proxy sees while it runs; this
object is the relay's side of it: which tee reads the answer, the protocol's
own endings and errors, and the final record, audit line and metrics once it
is over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from .errors import InternalError, ProxyError, error_body, error_response
from .live import LiveRequest, StopCause
from .outcome import Ending, audit_entry, final_record
from .protocols.base import Rewrite, WireProtocol
from .records import Record
from .replay import EventLog
from .services import Services
from .sessions import CREDENTIAL_HEADERS
from .sse import Event, SSEFramer
from .tee import Tee, is_event_stream
from .upstream import Target

__all__ = ["Generation"]

# How long an answer may wait for its record's first write. An fsync takes
# milliseconds; past this the store is failing, and a client is never held
# for the bookkeeping's sake (the write goes on and is retried).
_DURABLE_START_BOUND_S = 2.0
_CREDENTIALS = frozenset(name.lower() for name in CREDENTIAL_HEADERS)


class Generation:
    def __init__(
        self,
        services: Services,
        protocol: WireProtocol,
        live: LiveRequest,
        payload: dict[str, Any],
        *,
        rewrite: Rewrite | None,
        client: str | None,
        durable: asyncio.Future[bool],
        target: Target,
    ) -> None:
        self._services = services
        self._protocol = protocol
        self.live = live
        self._payload = payload  # for the prompt estimate, only needed at the end
        self._rewrite = rewrite
        self._client = client
        self._durable = durable  # the record's first write (StoreWriter.save_start)
        self._target = target  # where an abort hook goes, and with which credential
        self._tee: Tee | None = None
        self.log: EventLog | None = None  # what the client was sent, for readers that resume
        self._ending_logged = False

    # -- the relay's hooks --------------------------------------------------

    @property
    def stop_reason(self) -> StopCause | None:
        return self.live.stop_reason

    @property
    def wants_stream(self) -> bool:
        return self.live.record.stream

    def attach_upstream(self, close: Callable[[], object]) -> None:
        self.live.attach_upstream(close)

    def detach_upstream(self) -> None:
        self.live.detach_upstream()

    def close_upstream(self) -> None:
        self.live.close_upstream()

    def client_gone(self) -> bool:
        # Stopped at once (keeping "cancel" if a cancel came first), unless
        # readers that resumed it follow, or its disconnect grace runs: only a
        # stream can be resumed.
        if self.log is None:
            self.live.request_stop("disconnect")
            return False
        return self.live.reader_left()

    def stop_for_shutdown(self) -> None:
        self.live.request_stop("shutdown")

    def sent(self, data: bytes, events: list[Event]) -> None:
        if self._tee is not None:
            self._tee.commit(events)
        if self.log is not None:
            self.log.append(data, [end for end, _ in events])

    def ended_with(self, data: bytes) -> None:
        self._ending_logged = True
        if self.log is not None:
            self.log.append(data, _event_ends(data))

    def settle(self) -> None:
        self.live.settled = True

    async def before_answer(self) -> None:
        """The record is in the store before the answer (and its X-Request-Id)
        begins; a store that is slow or down holds a client only this long."""
        if self._durable.done():
            return
        try:
            # The future is this request's own: cancelling it at the bound only
            # stops the wait, the write goes on (StoreWriter.save_start).
            async with asyncio.timeout(_DURABLE_START_BOUND_S):
                await self._durable
        except TimeoutError:
            self._services.log.warning("store: %s began before its record was durable", self.live.request_id)

    def tee(self, status: int, headers: Mapping[str, str]) -> Tee:
        limits = self._services.config.limits
        event_stream = is_event_stream(headers)
        if event_stream and self.live.record.stream:
            self.log = self._services.replays.open(
                self.live.request_id, self._protocol.name, limit=limits.max_body_bytes
            )
        self._tee = Tee(
            self.live.transcript,
            event_stream=event_stream,
            max_body_copy=limits.max_body_bytes,
            max_event_bytes=limits.max_event_bytes,
            content_encoding=headers.get("Content-Encoding", ""),
            rewrite=self._rewrite,
            on_commit=self.live.tokens_sent,
        )
        return self._tee

    def cancelled_ending(self) -> bytes:
        return self.live.transcript.cancelled_ending(self._services.config.cancel_finish_reason)

    def error_event(self, error: ProxyError) -> bytes:
        return self.live.transcript.error_event(error)

    def error_response(self, error: ProxyError, headers: Mapping[str, str]) -> web.Response:
        return error_response(error, headers, body=self._protocol.error_body(error))

    def finish(self, failure: ProxyError | None, upstream_status: int | None, bytes_out: int) -> None:
        """The record's final state, queued for the store; the request stays in
        progress (for reads and a cancel's ack) until the write returned."""
        live, services = self.live, self._services
        live.done()
        try:
            record = self._final_record_or_failed(failure, upstream_status)
            live.record = record
            self._close_log(record, failure)
            live.ended.set()
            # A cancel's ack and shutdown wait for this write: it goes at once.
            # Other final states ride the next batch; until it lands the request
            # stays in the registry, so reads show its final state meanwhile.
            urgent = live.stop_reason in ("cancel", "shutdown")
            written = services.writer.queue_final(record, at_once=urgent)
        except Exception:
            # The client is never failed for the bookkeeping's sake; the loss is logged.
            services.log.exception("could not finish the record of %s", live.request_id)
            self._stored(None)
            return
        written.add_done_callback(self._stored)
        # The outcome is known: no need to wait for the disk. Queued first, the
        # record is stored whatever these do; each goes on without the other.
        self._guarded("report", lambda: self._report(record, bytes_out))
        self._guarded("abort the upstream of", lambda: self._abort_upstream(record))

    def _guarded(self, what: str, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception:
            self._services.log.exception("could not %s %s", what, self.live.request_id)

    def _stored(self, written: asyncio.Future[bool] | None) -> None:
        live = self.live
        live.durable = written is not None and not written.cancelled() and written.result()
        live.ended.set()
        live.finished.set()
        self._services.registry.remove(live)

    # -- the end ------------------------------------------------------------

    def _close_log(self, record: Record, failure: ProxyError | None) -> None:
        """The log ends as a resumed reader must see it end: with what the client
        got, or, if it was gone, the ending it would have got."""
        if self.log is None:
            return
        if not self._ending_logged:
            if record.status in ("stopped", "interrupted"):
                self.ended_with(self.cancelled_ending())
            elif failure is not None:
                self.ended_with(self.error_event(failure))
        self.log.close()

    def _final_record(self, failure: ProxyError | None, upstream_status: int | None) -> Record:
        transcript = self.live.transcript
        answer = transcript.answer()
        ending = Ending(
            stop=self.live.stop_reason,
            failure=failure,
            upstream_status=upstream_status,
            answer=answer,
            estimated_usage=transcript.estimated_usage(self._protocol.estimate_prompt_tokens(self._payload)),
            cancel_finish_reason=self._services.config.cancel_finish_reason,
            ended_at=time.time(),
        )
        return final_record(self.live.snapshot(answer), ending)

    def _final_record_or_failed(self, failure: ProxyError | None, upstream_status: int | None) -> Record:
        try:
            return self._final_record(failure, upstream_status)
        except Exception:
            # A bug in reading the outcome back must not leave the request in
            # progress in the store: what the client was sent is kept, as failed.
            request_id = self.live.request_id
            self._services.log.exception("could not build the final record of %s; stored as failed", request_id)
        return self._failed_record()

    def _failed_record(self) -> Record:
        """The final state when it could not be built: the answer as the client
        was sent it, ended as failed. (If even the answer cannot be read back,
        ``finish`` logs it and the store keeps the last partial it was given.)"""
        record = self.live.snapshot()
        record.status = "failed"
        record.error = error_body(InternalError("the proxy failed while finishing the record"))["error"]
        record.ended_at = time.time()
        return record

    def _abort_upstream(self, record: Record) -> None:
        """An engine that keeps generating once its client left gets its own stop request."""
        upstream = self._target.upstream
        if upstream.abort is None or self.live.stop_reason is None:
            return
        credentials = {k: v for k, v in self._target.headers.items() if k.lower() in _CREDENTIALS}
        self._services.aborter.abort(
            upstream.name,
            upstream.abort,
            self._services.base_urls[upstream.name],
            upstream_id=record.upstream_id,
            request_id=record.request_id,
            headers=credentials,
        )

    def _report(self, record: Record, bytes_out: int) -> None:
        """The audit line and the metrics of a finished request."""
        live = self.live
        cancel_s = None
        if live.stop_requested_at is not None and live.upstream_closed_at is not None:
            cancel_s = max(0.0, live.upstream_closed_at - live.stop_requested_at)
        entry, ttft_s = audit_entry(
            record,
            cancel_s=cancel_s,
            bytes_out=bytes_out,
            client=self._client,
            readers=live.most_readers,
            resumes=live.resumes,
        )
        self._services.audit.write(entry)
        self._services.metrics.request_finished(record, ttft_s, cancel_s)


def _event_ends(data: bytes) -> list[int]:
    """Where the events of bytes the proxy wrote itself end."""
    _, events = SSEFramer().feed(data)
    return [end for end, _ in events]
