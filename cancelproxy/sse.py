"""Server-sent-events framing for the streaming tee.

The proxy forwards upstream bytes untouched, but only in whole events: a
client that is cancelled (or a record that is cut) then never holds half an
event. `SSEFramer` finds the event boundaries and pulls out the `data`
payloads so a protocol's transcript can parse them, without re-encoding
anything. Each payload comes with the offset where its event ends, so a
caller can cut the bytes after any event (a stream's last one, a resume).

An event is what an SSE client dispatches: a block that ends at a blank line
and has a data field. Blocks of comments (``: keep-alive``) or other fields
only are forwarded but yield nothing.

Line terminators handled: LF and CRLF (and mixtures such as ``\\r\\n\\n``).
A line therefore always ends at a ``\\n``; a trailing ``\\r`` is stripped
from its content. Bare-CR line endings (legal in the SSE spec, used by no
LLM provider) are not recognised: such a stream would stay pending until
`flush`, which still forwards it byte-for-byte.
"""

from __future__ import annotations

__all__ = ["SSE_HEADERS", "Event", "EventTooLarge", "SSEFramer"]

# The headers of an event stream the proxy answers itself (a resumed stream,
# a stop before the upstream answered): never cached, never held by a
# buffering proxy in front (nginx's X-Accel-Buffering).
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}

# (offset just past the event's blank line in the bytes handed back, data payload)
Event = tuple[int, bytes]

# A blank line is a "\n" that directly follows the "\n" ending the previous
# line, optionally with the blank line's own "\r" in between.
_LFLF = b"\n\n"
_LFCRLF = b"\n\r\n"
_CR = 0x0D
_LF = 0x0A
_SP = 0x20


def _last_boundary(buf: bytes | bytearray, start: int) -> int:
    """End offset (exclusive) of the last blank line in buf[start:], or -1.

    `start` lets a caller skip bytes already known to hold no boundary, so a
    large event arriving in many small chunks is scanned once, not once per
    chunk.
    """
    a = buf.rfind(_LFLF, start)
    b = buf.rfind(_LFCRLF, start)
    end = max(a + 2 if a >= 0 else -1, b + 3 if b >= 0 else -1)
    if end < 0:
        # `buf` always starts at an event start (after the last boundary), so
        # a blank line there has no "\n" before it in the buffer: an extra
        # separator such as a stray b"\n" between events. Release it at once.
        if buf.startswith(b"\n"):
            return 1
        if buf.startswith(b"\r\n"):
            return 2
    return end


class EventTooLarge(ValueError):
    """An event grew past the framer's bound without ending."""


def _extract(buf: bytes, end: int, out: list[Event]) -> None:
    """Append the events of buf[:end] to `out`.

    buf[:end] must consist of whole lines. Events are dispatched at blank
    lines.
    """
    data: list[bytes] | None = None  # data lines of the current event
    pos = 0
    while pos < end:
        nl = buf.find(b"\n", pos, end)
        if nl < 0:  # cannot happen for whole lines; be defensive
            break
        if (
            data is None
            and nl + 1 < end
            and buf[nl + 1] == _LF
            and buf.startswith(b"data: ", pos)
            and buf[nl - 1] != _CR
        ):
            # Nearly every event an LLM provider sends: one "data: " line
            # and its blank line, both ending in LF. Taken in one step.
            out.append((nl + 2, buf[pos + 6 : nl]))
            pos = nl + 2
            continue
        stop = nl - 1 if nl > pos and buf[nl - 1] == _CR else nl
        if stop == pos:  # blank line: dispatch the event, if it had data
            if data is not None:
                # join of a single item returns it as is (no copy) in CPython
                out.append((nl + 1, b"\n".join(data)))
                data = None
        elif buf.startswith(b"data:", pos, stop):
            vstart = pos + 5
            if vstart < stop and buf[vstart] == _SP:  # one optional space
                vstart += 1
            if data is None:
                data = []
            data.append(buf[vstart:stop])
        elif stop - pos == 4 and buf.startswith(b"data", pos, stop):
            # A bare "data" line is a data field with an empty value (spec).
            if data is None:
                data = []
            data.append(b"")
        # Anything else: comments (":..."), event:, id:, retry:, unknown
        # fields. The proxy forwards them; the accumulator does not need them.
        pos = nl + 1


class SSEFramer:
    """Cuts an upstream byte stream at SSE event boundaries."""

    __slots__ = ("_buf", "_max_pending")

    def __init__(self, max_pending: int | None = None) -> None:
        # Bytes after the last boundary seen. Invariant: holds no boundary
        # (no "\n\n" / "\n\r\n"), so new searches may start near its end.
        self._buf = bytearray()
        # A line that never ends must not grow the buffer without bound.
        self._max_pending = max_pending

    @property
    def pending(self) -> int:
        """Bytes held back, waiting for the end of their event."""
        return len(self._buf)

    def feed(self, data: bytes) -> tuple[bytes, list[Event]]:
        """Return (whole, events).

        `whole` is the longest prefix of (pending + data) that ends at an
        event boundary: the bytes the proxy may forward now, identical to the
        input; the rest stays pending. `events` are the whole events in it, in
        order: where each ends in `whole`, and its `data` field value
        (multi-line data joined with b"\\n"; the one optional space after
        "data:" removed). Blocks without a data field (comments such as
        b": keep-alive", lone event:/id: lines) yield no event.

        Raises EventTooLarge when more than `max_pending` bytes wait for the
        end of one event.
        """
        payloads: list[Event] = []
        buf = self._buf
        if not buf:
            # Hot path: nothing pending, so `data` can be searched and sliced
            # in place instead of being copied into the buffer first.
            if data.endswith(_LFLF) or data.endswith(_LFCRLF):
                _extract(data, len(data), payloads)
                return data, payloads  # the very same object, no copy
            end = _last_boundary(data, 0)
            if end < 0:
                buf += data
                self._check_pending()
                return b"", payloads
            whole = data[:end]
            buf += memoryview(data)[end:]  # one copy of the tail only
            _extract(whole, end, payloads)
            return whole, payloads

        # Something is pending: append and search only the new bytes plus the
        # two before them (a boundary may straddle the chunk edge).
        start = max(len(buf) - 2, 0)
        buf += data
        end = _last_boundary(buf, start)
        if end < 0:
            self._check_pending()
            return b"", payloads
        # One copy out of the buffer (bytes(buf[:end]) would make two). The
        # view must be released before the bytearray is resized below.
        with memoryview(buf) as view:
            whole = view[:end].tobytes()
        # Deleting a prefix of a bytearray is cheap in CPython (it moves the
        # start pointer), so the tail is not copied again.
        del buf[:end]
        self._check_pending()
        _extract(whole, end, payloads)
        return whole, payloads

    def _check_pending(self) -> None:
        if self._max_pending is not None and len(self._buf) > self._max_pending:
            raise EventTooLarge(f"an event grew past {self._max_pending} bytes without ending")

    def flush(self) -> bytes:
        """End of stream: return everything still pending (to forward as is) and reset.

        An event that lacked its blank line is not an event: SSE clients (the
        OpenAI SDKs among them) drop it at the end of the stream, so it
        yields nothing here either.
        """
        tail = bytes(self._buf)
        self._buf = bytearray()
        return tail
