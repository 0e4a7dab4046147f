"""The tee: what an upstream answer forwards to the client, and the transcript's view of it.

For an event stream the tee only releases whole SSE events. The bytes are the
upstream's, unchanged (unless the protocol undoes a change it made to the
request); at most one partial event is held back until its end arrives, and
nothing after the protocol's last event goes out. That is what lets the
record equal exactly what the client was sent, and lets a stopped stream end
with a clean final event instead of a torn one.

A pass-through answer is not teed at all: ``PassThroughTee`` hands every
chunk on as it came, and that is the whole of its work.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping

from .protocols.base import Rewrite, Transcript
from .sse import Event, SSEFramer

__all__ = ["ExpandsTooFar", "PassThroughTee", "Tee", "is_event_stream"]

# Encodings the tee can read back (an upstream that ignored the proxy's
# ``Accept-Encoding: identity``). wbits 47: a zlib or a gzip header, told apart.
_INFLATABLE = frozenset({"gzip", "x-gzip", "deflate"})


class ExpandsTooFar(ValueError):
    """One read of a compressed event stream decodes to more than the tee takes at once."""


def is_event_stream(headers: Mapping[str, str]) -> bool:
    # Media types are case-insensitive: Text/Event-Stream is one too.
    media_type = headers.get("Content-Type", "").split(";", 1)[0]
    return media_type.strip().lower() == "text/event-stream"


class PassThroughTee:
    """The identity: a pass-through answer reaches the client as it came."""

    over = False
    decoded = False
    event_stream = False  # not to the proxy: it never ends or changes a pass-through

    def split(self, chunk: bytes) -> tuple[bytes, list[Event]]:
        return chunk, []

    def commit(self, events: list[Event]) -> None:
        pass

    def end_of_body(self) -> bytes:
        return b""

    def complete(self) -> bool:
        return True


class Tee:
    def __init__(
        self,
        transcript: Transcript,
        *,
        event_stream: bool,
        max_body_copy: int,
        max_event_bytes: int,
        content_encoding: str = "",
        rewrite: Rewrite | None = None,
        on_commit: Callable[[], object] = lambda: None,
    ) -> None:
        self.transcript = transcript
        self._on_commit = on_commit
        self.event_stream = event_stream
        # Set once the protocol's last event went out: the relay reads no more.
        self.over = False
        self._rewrite = rewrite
        self._framer = SSEFramer(max_event_bytes) if event_stream else None
        encoding = content_encoding.strip().lower()
        self._inflate = zlib.decompressobj(wbits=47) if encoding in _INFLATABLE else None
        # A compressed event stream is forwarded decoded: the proxy can only
        # end it at a whole event (cancel, last event) if it can see events.
        self.decoded = event_stream and self._inflate is not None
        # A non-streaming answer is one JSON document: keep a copy to read it
        # once it is complete (bounded: it is only for the record).
        self._body = bytearray()
        self._max_body_copy = max_body_copy
        self._body_cut = False

    def split(self, chunk: bytes) -> tuple[bytes, list[Event]]:
        """The bytes to forward now, and the events they complete."""
        framer = self._framer
        if framer is None:
            self._copy(chunk)
            return chunk, []
        if self._inflate is not None:
            # Bounded: a few KB of deflate can stand for gigabytes, all made
            # at once, in memory, before any of it could be forwarded.
            chunk = self._inflate.decompress(chunk, self._max_body_copy)
            if self._inflate.unconsumed_tail:
                raise ExpandsTooFar(f"a compressed read that decodes to more than {self._max_body_copy} bytes")
        whole, events = framer.feed(chunk)
        if not events:
            return whole, events
        ends_stream = self.transcript.ends_stream
        for i, (end, payload) in enumerate(events):
            if ends_stream(payload):
                # What an upstream sends after its last event no client shows.
                self.over = True
                whole, events = whole[:end], events[: i + 1]
                break
        if self._rewrite is not None:
            return self._rewrite(whole, events)
        return whole, events

    def commit(self, events: list[Event]) -> None:
        """Record events once the bytes that carried them were handed to the client."""
        if not events:
            return
        add = self.transcript.add_event
        for _, payload in events:
            add(payload)
        self._on_commit()

    def end_of_body(self) -> bytes:
        """At the upstream's end of body: whatever was held back, forwarded as it is
        (an event without its blank line is no event to any client, nor to the record).
        A non-streaming answer is read into the transcript now that it is whole."""
        if self._framer is None:
            if self._inflate is not None and not self._body_cut:
                self._copy_decoded(self._inflate.flush())
            if self._body and not self._body_cut:
                self.transcript.add_body(bytes(self._body))
            return b""
        if self.over:
            return b""
        tail = self._framer.flush()
        if self._inflate is not None:
            tail += self._inflate.flush()
        return tail

    def complete(self) -> bool:
        """Whether the answer so far is whole, should the body end here."""
        return self.over or not self.event_stream or self.transcript.complete()

    def _copy(self, chunk: bytes) -> None:
        if self._body_cut:
            return
        if self._inflate is not None:
            chunk = self._inflate.decompress(chunk, self._max_body_copy + 1 - len(self._body))
        self._copy_decoded(chunk)

    def _copy_decoded(self, data: bytes) -> None:
        self._body += data
        if len(self._body) > self._max_body_copy:
            # Too big to keep: the record stays without it rather than with a
            # cut copy that would read as a broken answer.
            self._body_cut = True
            self._body = bytearray()
