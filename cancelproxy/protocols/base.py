"""What a wire format means: the seam between the generic relay and one protocol's bytes.

The relay moves bytes and knows nothing of any protocol. What the bytes mean
is a protocol's business, behind two small interfaces (as httpx keeps its
``Auth`` flows pluggable beside one generic send path):

- a ``WireProtocol`` (one stateless object per wire format): its route, the
  header that carries an API key, what to change in a request before it goes
  upstream, and its error shape;
- a ``Transcript`` (one per request, pure): the answer as the client was
  sent it, read back from the protocol's events, and the protocol's own
  bytes for the endings the proxy writes itself (cancelled, failed).

A protocol module provides both and is registered in ``protocols/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import ProxyError
from ..records import Usage
from ..sse import Event

__all__ = ["Answer", "Prepared", "RequestFacts", "Rewrite", "Transcript", "WireProtocol"]

# (whole events, where each ends in them) -> the same, as the client gets them.
# An event rewritten to nothing keeps its place, with an empty span: the
# transcript still reads it, the client never gets it.
Rewrite = Callable[[bytes, list[Event]], tuple[bytes, list[Event]]]


@dataclass(frozen=True)
class RequestFacts:
    """What a transcript may need of its request to write endings of its own."""

    request_id: str
    model: str | None
    stream: bool


@dataclass(frozen=True)
class Prepared:
    """A request as it goes upstream."""

    # The body to send instead of the client's (None: the client's bytes as sent).
    body: bytes | None = None
    # Applied to whole events before they reach the client: undoes, byte for
    # byte, what a changed body added to the answer, and says where each event
    # now ends. None: bytes untouched (the fast path every protocol but a
    # changed one takes).
    rewrite: Rewrite | None = None


@dataclass(frozen=True)
class Answer:
    """The answer a client was sent, as a record keeps it."""

    content: str = ""
    reasoning_content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None  # the provider's own numbers, when it sent them
    upstream_id: str | None = None
    model: str | None = None
    error: dict[str, Any] | None = None  # an error the provider reported in the answer


class Transcript(Protocol):
    """One answer, read back from the events or body the client was sent (pure).

    Junk never raises: a broken upstream must not break the bookkeeping.
    """

    # Events that carried generated text (tokens, roughly): estimates and
    # time to first token are counted from it.
    tokens: int

    def ends_stream(self, payload: bytes) -> bool:
        """Whether this event is the protocol's last: nothing after it is read
        or forwarded. Called before the event is forwarded, so it must be cheap."""
        ...

    def add_event(self, payload: bytes) -> None:
        """One event's data, once its bytes were handed to the client."""
        ...

    def add_body(self, body: bytes) -> bool:
        """A whole non-streaming answer; False if it is not one (cut, not JSON)."""
        ...

    def complete(self) -> bool:
        """Whether the stream so far is a whole answer, should the body end now."""
        ...

    def answer(self) -> Answer: ...

    def estimated_usage(self, prompt_tokens: int) -> Usage:
        """Usage for an answer that ended before the provider said (stopped,
        failed); ``prompt_tokens`` is the proxy's estimate of the prompt."""
        ...

    def cancelled_ending(self, finish_reason: str) -> bytes:
        """The events that end a cancelled stream cleanly, in this protocol's
        shape: an SDK finishes on them without raising or retrying."""
        ...

    def error_event(self, error: ProxyError) -> bytes:
        """The event that tells an SDK mid-stream that the answer failed."""
        ...


class WireProtocol(Protocol):
    """One wire format, as the routes and the relay see it."""

    name: str  # stored on the record as ``protocol``
    path: str  # the route under /v1/
    key_header: str  # where a configured API key goes upstream

    def prepare(self, payload: dict[str, Any], body: bytes) -> Prepared:
        """What the request needs changed before it goes upstream; ``body`` is
        what ``payload`` was read from. Raises ``ProxyError`` for a body it
        cannot change."""
        ...

    def transcript(self, facts: RequestFacts) -> Transcript: ...

    def estimate_prompt_tokens(self, payload: dict[str, Any]) -> int: ...

    def error_body(self, error: ProxyError) -> dict[str, Any]:
        """The proxy's own error, in the shape this protocol's clients parse."""
        ...
