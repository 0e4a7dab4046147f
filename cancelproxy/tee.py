"""The tee: what an upstream answer forwards to the client, and the record's view of it.

For an event stream the tee only releases whole SSE events. The bytes are the
upstream's, unchanged; at most one partial event is held back until its end
arrives. That is what lets the record equal exactly what the client was sent,
and lets a stopped stream end with a clean final event instead of a torn one.
"""

from __future__ import annotations

import json
import re

from .accumulate import Accumulator
from .sse import SSEFramer

__all__ = ["Tee"]

# What asking for usage adds to every other chunk of an OpenAI stream.
_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null|"usage"\s*:\s*null\s*,')
# The one chunk it adds: no choices, only usage. Found in the bytes first, so
# the common block (no such chunk) costs one regex pass and no JSON parse.
_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_EVENT_END = re.compile(rb"(\r?\n\r?\n)")


def _without_injected_usage(block: bytes) -> bytes:
    """Whole events as the client would have had them without ``include_usage``:
    the usage-only chunk (``"choices": []``) dropped, ``"usage": null`` removed."""
    if b'"usage"' not in block:
        return block
    if _NO_CHOICES.search(block) is None:
        return _strip_usage_null(block)
    pieces = _EVENT_END.split(block)  # [event, end, event, end, ..., tail]
    kept: list[bytes] = []
    for event, end in zip(pieces[0::2], [*pieces[1::2], b""], strict=True):
        if _NO_CHOICES.search(event) is not None and _is_usage_only(event):
            continue
        kept += (_strip_usage_null(event), end)
    return b"".join(kept)


def _strip_usage_null(data: bytes) -> bytes:
    # OpenAI's compact form is a plain replace (C speed); the regex only for
    # providers that put spaces in their JSON.
    data = data.replace(b',"usage":null', b"")
    if b'"usage"' in data:
        data = _USAGE_NULL.sub(b"", data)
    return data


def _is_usage_only(event: bytes) -> bool:
    for line in event.splitlines():
        if line.startswith(b"data:"):
            try:
                chunk = json.loads(line[5:])
            except ValueError:
                return False
            return isinstance(chunk, dict) and chunk.get("choices") == [] and bool(chunk.get("usage"))
    return False


class Tee:
    def __init__(self, *, event_stream: bool, max_body_copy: int, hide_usage: bool = False) -> None:
        self.answer = Accumulator()
        self.event_stream = event_stream
        # The proxy asked the upstream for usage the client did not ask for:
        # the record gets it, the client's bytes stay what they would have been.
        self._hide_usage = hide_usage
        self._framer = SSEFramer() if event_stream else None
        # A non-streaming answer is one JSON document: keep a copy to read it
        # once it is complete (bounded, it is only for the record).
        self._body = bytearray()
        self._max_body_copy = max_body_copy

    def split(self, chunk: bytes) -> tuple[bytes, list[bytes]]:
        """The bytes to forward now, and the event payloads they complete."""
        if self._framer is not None:
            whole, events = self._framer.feed(chunk)
            payloads = [payload for _, payload in events]
            if self._hide_usage and whole:
                whole = _without_injected_usage(whole)
            return whole, payloads
        if len(self._body) < self._max_body_copy:
            self._body += chunk
        return chunk, []

    def tail(self) -> tuple[bytes, list[bytes]]:
        """At the upstream's end of body: whatever was held back."""
        if self._framer is not None:
            # An event without its blank line is no event to any SSE client
            # (the OpenAI SDKs drop it at the end), so not to the record either.
            tail = self._framer.flush()
            if self._hide_usage and tail:
                tail = _without_injected_usage(tail)
            return tail, []
        return b"", []

    def commit(self, payloads: list[bytes]) -> None:
        """Record events once the bytes that carried them were handed to the client."""
        for payload in payloads:
            self.answer.add_event(payload)

    def commit_body(self) -> None:
        """A non-streaming answer was forwarded whole: read it into the record."""
        if self._framer is None and self._body:
            self.answer.add_completion(bytes(self._body))
