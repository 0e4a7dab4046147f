"""The tee: what an upstream answer forwards to the client, and the record's view of it.

For an event stream the tee only releases whole SSE events. The bytes are the
upstream's, unchanged; at most one partial event is held back until its end
arrives. That is what lets the record equal exactly what the client was sent,
and lets a stopped stream end with a clean final event instead of a torn one.
"""

from __future__ import annotations

from .accumulate import Accumulator
from .sse import SSEFramer

__all__ = ["Tee"]


class Tee:
    def __init__(self, *, event_stream: bool, max_body_copy: int) -> None:
        self.answer = Accumulator()
        self.event_stream = event_stream
        self._framer = SSEFramer() if event_stream else None
        # A non-streaming answer is one JSON document: keep a copy to read it
        # once it is complete (bounded, it is only for the record).
        self._body = bytearray()
        self._max_body_copy = max_body_copy

    def split(self, chunk: bytes) -> tuple[bytes, list[bytes]]:
        """The bytes to forward now, and the event payloads they complete."""
        if self._framer is not None:
            return self._framer.feed(chunk)
        if len(self._body) < self._max_body_copy:
            self._body += chunk
        return chunk, []

    def tail(self) -> tuple[bytes, list[bytes]]:
        """At the upstream's end of body: whatever was held back."""
        if self._framer is not None:
            return self._framer.flush()
        return b"", []

    def commit(self, payloads: list[bytes]) -> None:
        """Record events once the bytes that carried them were handed to the client."""
        for payload in payloads:
            self.answer.add_event(payload)

    def commit_body(self) -> None:
        """A non-streaming answer was forwarded whole: read it into the record."""
        if self._framer is None and self._body:
            self.answer.add_completion(bytes(self._body))
