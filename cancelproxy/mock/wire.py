"""The seam between the generation driver and a wire format.

A ``WireFormat`` says how one protocol reads a request and answers errors; the
``Reply`` it builds per request says which bytes carry the answer. The driver
(``generation.py``) owns time, knobs and sockets and never looks inside the bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from typing import Protocol as TypingProtocol

from aiohttp import web

from .plan import Json, Plan, Protocol

__all__ = [
    "COMMENT_KEEPALIVE",
    "CREATED",
    "FINGERPRINT",
    "OPENAI_STREAM_ERROR",
    "Reply",
    "WireFormat",
    "data_event",
    "named_event",
    "openai_format",
    "openai_error",
    "text_words",
]

CREATED = 1700000000
FINGERPRINT = "fp_mock"
# An SSE comment: every SSE reader skips it, so it keeps a silent stream alive
# without being an event (OpenAI-style providers; Anthropic sends ``ping`` events).
COMMENT_KEEPALIVE = b": keep-alive\n\n"


def _compact(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def data_event(payload: Any) -> bytes:
    """``data: <json>`` alone, as chat and legacy completions stream."""
    return b"data: " + _compact(payload) + b"\n\n"


def named_event(name: str, payload: Any) -> bytes:
    """``event: <name>`` + ``data: <json>``, as the Responses and Messages APIs stream."""
    return b"event: " + name.encode() + b"\ndata: " + _compact(payload) + b"\n\n"


def openai_error(status: int, message: str, type_: str, code: str | None) -> web.Response:
    error = {"message": message, "type": type_, "param": None, "code": code}
    return web.json_response({"error": error}, status=status)


def text_words(content: Any) -> int:
    """Words in a content that is a string or a list of text parts (``{"text": ...}``)."""
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):
        parts = (p.get("text") for p in content if isinstance(p, dict))
        return sum(len(t.split()) for t in parts if isinstance(t, str))
    return 0


def _openai_bad_request(message: str) -> web.Response:
    return openai_error(400, message, "invalid_request_error", None)


def _openai_status_error(status: int) -> web.Response:
    return openai_error(status, "mock error", "mock_error", f"mock_{status}")


def _openai_server_error() -> web.Response:
    return openai_error(500, "mock error mid-generation", "server_error", "mock_error")


# The in-stream error OpenAI-style streams send (openai-python raises APIError on it).
OPENAI_STREAM_ERROR = {"message": "mock error mid-stream", "type": "server_error", "param": None, "code": "mock_error"}


class Reply(TypingProtocol):
    """One answer's bytes. ``events`` may keep state: the driver consumes it once, in order."""

    keepalive: bytes  # written every keepalive_s while silent

    def preamble(self) -> list[bytes]:
        """Events sent as soon as the headers are, before the silence (e.g. ``message_start``)."""
        ...

    def events(self) -> Iterator[tuple[bytes, bool]]:
        """The answer as ``(event, counted)``; each counted event carries one piece."""
        ...

    def closing(self) -> list[bytes]:
        """What ends a complete answer (finish reason, usage, ``[DONE]``, terminal events)."""
        ...

    def error_event(self, sent: int) -> bytes:
        """The in-stream error that ends the answer after ``sent`` pieces (``error_after``)."""
        ...

    def body(self) -> Json:
        """The non-streaming answer, carrying what the stream's pieces would have."""
        ...


@dataclass(frozen=True)
class WireFormat:
    """How one protocol reads a request, names its answer and shapes its errors."""

    protocol: Protocol
    count_prompt: Callable[[Json], int]
    upstream_id: Callable[[str], str]  # the id the engine knows a generation by, from its tag
    reply: Callable[[Plan, str, Json], Reply]  # (plan, tag, request body) -> the answer's bytes
    bad_request: Callable[[str], web.Response]
    status_error: Callable[[int], web.Response]  # the ``status`` knob
    server_error: Callable[[], web.Response]  # a non-streaming ``error_after``
    unsupported: frozenset[str] = frozenset()  # knobs the protocol has no form for


def openai_format(
    protocol: Protocol,
    count_prompt: Callable[[Json], int],
    upstream_id: Callable[[str], str],
    reply: Callable[[Plan, str, Json], Reply],
    unsupported: frozenset[str] = frozenset(),
) -> WireFormat:
    """A format that answers errors in OpenAI's shape (chat, responses, completions)."""
    return WireFormat(
        protocol=protocol,
        count_prompt=count_prompt,
        upstream_id=upstream_id,
        reply=reply,
        bad_request=_openai_bad_request,
        status_error=_openai_status_error,
        server_error=_openai_server_error,
        unsupported=unsupported,
    )
