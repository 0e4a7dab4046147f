"""One answer over time, whatever its wire format: silences, pacing, breaks, the client leaving.

The mock runs with ``handler_cancellation=True``: a closed connection cancels
the handler at whatever it awaits, a silent sleep included, so the record can
say when the client was noticed going away.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import Awaitable

from aiohttp import web

from .engine import Engine, Running
from .plan import Json, Plan
from .recorder import Recorder
from .wire import WireFormat

__all__ = ["SSE_HEADERS", "Generation"]

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


def _reset(request: web.Request) -> None:
    """Drop the connection like a crashed upstream: no clean end of body."""
    if (transport := request.transport) is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0 makes close() send a TCP RST rather than a FIN, so the client
        # sees a real reset, not just an early EOF.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class Generation:
    def __init__(
        self,
        request: web.Request,
        plan: Plan,
        record: Json,
        wire: WireFormat,
        recorder: Recorder,
        engine: Engine,
        running: Running,
    ) -> None:
        self.request = request
        self.plan = plan
        self.record = record
        self.wire = wire
        self.reply = wire.reply(plan, record["tag"], record["body"])
        self.recorder = recorder
        self.engine = engine
        self.running = running
        self._loop = asyncio.get_running_loop()
        # When the first piece is due: a generation that outlives its client
        # goes on from the same clock.
        self._silence_ends_at = self._loop.time() + plan.silence_s

    async def respond(self) -> web.StreamResponse:
        try:
            if self.plan.stream:
                return await self._stream()
            return await self._complete()
        except asyncio.CancelledError:
            self._client_left()
            raise
        finally:
            if self.running.zombie is None:
                self.engine.end(self.running)

    def _client_left(self) -> None:
        self.recorder.client_closed(self.record)
        if self.plan.ignore_close and self.record["state"] == "running":
            generated = self.record["tokens_sent"] if self.plan.stream else self._generated_by_now()
            self.engine.keep_generating(self.running, self._keep_generating(generated))
        else:
            self.recorder.finish(self.record, "closed_by_client")

    def _piece_sent(self, pieces: int) -> None:
        self.record["tokens_sent"] = pieces
        self.record["last_token_at"] = time.monotonic()

    def _ended(self) -> None:
        self.recorder.finish(self.record, "completed" if self.plan.breaks_after is None else "failed")

    # -- streaming ---------------------------------------------------------

    async def _stream(self) -> web.StreamResponse:
        resp = web.StreamResponse(headers=SSE_HEADERS)
        return await self._guard_reset(resp, self._stream_body(resp))

    async def _guard_reset(self, resp: web.StreamResponse, writing: Awaitable[None]) -> web.StreamResponse:
        try:
            await writing
        except ConnectionResetError:
            # Gone between two awaits, before the cancellation could arrive.
            self._client_left()
        return resp

    async def _silence(self, resp: web.StreamResponse) -> None:
        plan, keepalive = self.plan, self.reply.keepalive
        deadline = self._loop.time() + plan.silence_s
        while plan.keepalive_s is not None and deadline - self._loop.time() > plan.keepalive_s:
            await asyncio.sleep(plan.keepalive_s)
            await resp.write(keepalive)
        if (left := deadline - self._loop.time()) > 0:
            await asyncio.sleep(left)

    async def _stream_body(self, resp: web.StreamResponse) -> None:
        plan, reply = self.plan, self.reply
        if plan.headers_after_silence:
            # A provider that has not even answered yet: the client waits for headers.
            await asyncio.sleep(plan.silence_s)
        await resp.prepare(self.request)
        for event in reply.preamble():
            await resp.write(event)
        if not plan.headers_after_silence:
            await self._silence(resp)
        events, limit = reply.events(), plan.breaks_after
        sent, pending = 0, None
        for event, counted in events:
            if counted:
                if sent == limit:
                    pending = event
                    break
                if sent and plan.rate > 0:
                    await asyncio.sleep(1 / plan.rate)
            await resp.write(event)
            if counted:
                sent += 1
                self._piece_sent(sent)
        if plan.fail_after is not None:
            if plan.burst_then_reset and pending is not None:
                # One write, right before the reset: the bytes are in flight when it lands.
                await resp.write(b"".join([pending, *(event for event, _ in events)]))
                self._piece_sent(plan.pieces)
            self.recorder.finish(self.record, "failed")
            _reset(self.request)
            return
        if plan.error_after is not None:
            # A provider that reports its failure in the stream, then ends it cleanly.
            await resp.write(reply.error_event(sent))
            self.recorder.finish(self.record, "failed")
            return
        for event in reply.closing():
            await resp.write(event)
        self.recorder.finish(self.record, "completed")

    # -- non-streaming -----------------------------------------------------

    async def _complete(self) -> web.StreamResponse:
        plan = self.plan
        # Take as long as the stream would, so a non-streaming request can be cancelled too.
        await asyncio.sleep(plan.silence_s + plan.delay(plan.cut))
        if plan.error_after is not None:
            self.recorder.finish(self.record, "failed")
            return self.wire.server_error()
        body = json.dumps(self.reply.body()).encode()
        if plan.fail_after is None:
            self.record["tokens_sent"] = plan.pieces
            self.recorder.finish(self.record, "completed")
            return web.Response(body=body, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(body)  # promised in full, so the cut is visible
        return await self._guard_reset(resp, self._half_body(resp, body))

    async def _half_body(self, resp: web.StreamResponse, body: bytes) -> None:
        await resp.prepare(self.request)
        await resp.write(body[: len(body) // 2])
        self.recorder.finish(self.record, "failed")
        _reset(self.request)

    # -- after the client left (ignore_close) ------------------------------

    def _generated_by_now(self) -> int:
        """Pieces a non-streaming generation has made so far: it sends none until the end."""
        elapsed = self._loop.time() - self._silence_ends_at
        if elapsed < 0:
            return 0
        if self.plan.rate <= 0:
            return self.plan.cut
        return min(self.plan.cut, int(elapsed * self.plan.rate) + 1)

    async def _keep_generating(self, generated: int) -> None:
        """Count the pieces nobody receives, at the same pace, until the end or an abort."""
        plan = self.plan
        if generated:
            self._piece_sent(generated)
        if (left := self._silence_ends_at - self._loop.time()) > 0:
            await asyncio.sleep(left)
        for piece in range(generated, plan.cut):
            if piece and plan.rate > 0:
                await asyncio.sleep(1 / plan.rate)
            self._piece_sent(piece + 1)
        self._ended()
