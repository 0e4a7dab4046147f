"""``messages``: Anthropic Messages (``POST /v1/messages``), as Anthropic-compatible endpoints serve it.

A stream is ``event: <type>`` + ``data: {...}`` pairs: ``message_start`` (the
message, with ``usage.input_tokens``: even a stream stopped at once knows its
prompt's cost), per content block ``content_block_start`` /
``content_block_delta`` (``text_delta``, ``thinking_delta``,
``signature_delta``, ``input_json_delta``) / ``content_block_stop``, then
``message_delta`` (``stop_reason``, the output tokens so far) and
``message_stop``; ``ping`` keeps it alive, ``error`` ends it in failure.

The key goes upstream as ``x-api-key``, and the proxy's own errors take
Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..errors import ProxyError
from ..records import Usage
from .base import Answer, Prepared, RequestFacts
from .fields import bounded, int_field, parse_object, str_field

__all__ = ["MESSAGES", "Messages", "MessagesTranscript", "anthropic_error_body"]

_ENDS = (b"message_stop", b'"error"')
# Anthropic's error types, by the status the proxy answers with.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    499: "request_cancelled",
    503: "overloaded_error",
    504: "timeout_error",
}


def anthropic_error_body(error: ProxyError) -> dict[str, Any]:
    """The proxy's error in Anthropic's shape; the proxy's own ``code`` rides along."""
    kind = _ERROR_TYPES.get(error.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.message, "code": error.code}}


class MessagesTranscript:
    def __init__(self, facts: RequestFacts) -> None:
        self._facts = facts
        self.tokens = 0
        self._message: dict[str, Any] | None = None  # message_start's message
        self._blocks: dict[int, dict[str, Any]] = {}  # index -> the block as it stands
        self._open: set[int] = set()  # blocks started and not yet stopped
        self._json: dict[int, list[str]] = {}  # tool_use input as it streams
        self._usage: dict[str, Any] = {}  # message_start's, updated by message_delta's
        self._stop_reason: str | None = None
        self._stopped = False  # saw message_stop
        self._error: dict[str, Any] | None = None

    # ---- reading -----------------------------------------------------

    def ends_stream(self, payload: bytes) -> bool:
        if not any(mark in payload for mark in _ENDS):
            return False
        obj = parse_object(payload)
        return obj is not None and obj.get("type") in ("message_stop", "error")

    def add_event(self, payload: bytes) -> None:
        obj = parse_object(payload)
        if obj is None:
            return
        kind = obj.get("type")
        if kind == "content_block_delta":
            self._delta(obj)
        elif kind == "content_block_start":
            block = obj.get("content_block")
            index = int_field(obj, "index")
            if isinstance(block, dict) and index is not None:
                self._blocks[index] = block
                self._open.add(index)
        elif kind == "content_block_stop":
            self._open.discard(int_field(obj, "index") or 0)
        elif kind == "message_start":
            message = obj.get("message")
            if isinstance(message, dict):
                self._message = message
                if isinstance(message.get("usage"), dict):
                    self._usage.update(message["usage"])
        elif kind == "message_delta":
            delta, usage = obj.get("delta"), obj.get("usage")
            if isinstance(delta, dict):
                self._stop_reason = str_field(delta, "stop_reason") or self._stop_reason
            if isinstance(usage, dict):
                self._usage.update({k: v for k, v in usage.items() if v is not None})
        elif kind == "message_stop":
            self._stopped = True
        elif kind == "error":
            error = obj.get("error")
            self._error = error if isinstance(error, dict) else {"message": "the stream failed"}

    def _delta(self, obj: dict[str, Any]) -> None:
        delta, index = obj.get("delta"), int_field(obj, "index")
        if not isinstance(delta, dict) or index is None:
            return
        block = self._blocks.setdefault(index, {})
        kind = delta.get("type")
        if kind == "text_delta":
            piece, key = str_field(delta, "text"), "text"
        elif kind == "thinking_delta":
            piece, key = str_field(delta, "thinking"), "thinking"
        elif kind == "input_json_delta":
            piece = str_field(delta, "partial_json")
            if piece:
                self._json.setdefault(index, []).append(piece)
                self.tokens += 1
            return
        elif kind == "signature_delta":
            block["signature"] = str_field(block, "signature") + str_field(delta, "signature")
            return
        else:
            return
        if piece:
            block[key] = str_field(block, key) + piece
            self.tokens += 1

    def add_body(self, body: bytes) -> bool:
        obj = parse_object(body)
        if obj is None:
            self._error = {"message": "the upstream's answer is not a JSON object", "code": "upstream_invalid_answer"}
            return False
        if obj.get("type") == "error":
            error = obj.get("error")
            self._error = error if isinstance(error, dict) else {"message": str(error)}
            return True
        self._message = obj
        content = obj.get("content")
        for index, block in enumerate(content if isinstance(content, list) else []):
            if isinstance(block, dict):
                self._blocks[index] = block
        if isinstance(obj.get("usage"), dict):
            self._usage.update(obj["usage"])
        self._stop_reason = str_field(obj, "stop_reason") or None
        self._stopped = True
        return True

    def complete(self) -> bool:
        return self._stopped or self._stop_reason is not None or self._error is not None

    # ---- the record --------------------------------------------------

    def answer(self) -> Answer:
        content: list[str] = []
        thinking: list[str] = []
        tool_calls: list[dict[str, Any]] = []
        for index in sorted(self._blocks):
            block = self._blocks[index]
            kind = block.get("type")
            if kind == "text":
                content.append(str_field(block, "text"))
            elif kind == "thinking":
                thinking.append(str_field(block, "thinking"))
            elif kind == "tool_use":
                streamed = self._json.get(index)
                arguments = "".join(streamed) if streamed is not None else _json(block.get("input"))
                tool_calls.append(
                    {
                        "id": str_field(block, "id") or None,
                        "type": "function",
                        "function": {"name": str_field(block, "name"), "arguments": arguments},
                    }
                )
        message = self._message or {}
        return Answer(
            content="".join(content),
            reasoning_content="".join(thinking),
            tool_calls=tool_calls,
            finish_reason=self._stop_reason,
            usage=self._exact_usage(),
            upstream_id=str_field(message, "id") or None,
            model=str_field(message, "model") or None,
            error=self._error,
        )

    def _prompt_tokens(self) -> int | None:
        """Input tokens as Anthropic counts them: those read from or written to
        its prompt cache are billed apart from ``input_tokens``."""
        counted = [int_field(self._usage, key) for key in _INPUT_KEYS]
        if counted[0] is None:
            return None
        return sum(n or 0 for n in counted)

    def _exact_usage(self) -> Usage | None:
        prompt, completion = self._prompt_tokens(), int_field(self._usage, "output_tokens")
        if prompt is None or completion is None or not self.complete():
            return None
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            cached_tokens=int_field(self._usage, "cache_read_input_tokens"),
        )

    def estimated_usage(self, prompt_tokens: int) -> Usage:
        # message_start said what the prompt cost: only the output is counted.
        known = self._prompt_tokens()
        return Usage.estimate(prompt_tokens if known is None else known, self.tokens)

    # ---- endings the proxy writes ------------------------------------

    def cancelled_ending(self, finish_reason: str) -> bytes:
        events: list[bytes] = []
        if self._message is None:
            # Nothing was sent yet: an SDK needs the message opened first.
            self._message = self._blank_message()
            events.append(_event("message_start", message=self._message))
        # Blocks left open are closed, as the API closes its own.
        events += [_event("content_block_stop", index=index) for index in sorted(self._open)]
        self._open.clear()
        events.append(
            _event(
                "message_delta",
                delta={"stop_reason": finish_reason, "stop_sequence": None},
                usage={"output_tokens": self.tokens},
            )
        )
        events.append(_event("message_stop"))
        return b"".join(events)

    def _blank_message(self) -> dict[str, Any]:
        return {
            "id": f"msg_{self._facts.request_id.removeprefix('req_')}",
            "type": "message",
            "role": "assistant",
            "model": self._facts.model or "",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }

    def error_event(self, error: ProxyError) -> bytes:
        return _event("error", error=anthropic_error_body(error)["error"])


_INPUT_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _json(value: Any) -> str:
    return json.dumps(bounded(value), separators=(",", ":")) if value is not None else ""


def _event(kind: str, **fields: Any) -> bytes:
    # The message repeated in an ending is the upstream's: bounded, so it can be written.
    data = json.dumps(bounded({"type": kind, **fields}), separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


class Messages:
    name = "messages"
    path = "messages"
    key_header = "x-api-key"

    def prepare(self, payload: dict[str, Any], body: bytes) -> Prepared:
        return Prepared()  # usage comes with message_start and message_delta

    def transcript(self, facts: RequestFacts) -> MessagesTranscript:
        return MessagesTranscript(facts)

    def estimate_prompt_tokens(self, payload: dict[str, Any]) -> int:
        """Characters of the system prompt and the messages' text, / 4 rounded up."""
        chars = _chars(payload.get("system"))
        messages = payload.get("messages")
        for message in messages if isinstance(messages, list) else ():
            if isinstance(message, dict):
                chars += _chars(message.get("content"))
        return math.ceil(chars / 4)

    def error_body(self, error: ProxyError) -> dict[str, Any]:
        return anthropic_error_body(error)


def _chars(value: Any) -> int:
    """Characters of a string, or of the text of a list of blocks (whose text
    may be blocks again), at any depth.

    Walked with a stack of its own, not by recursion: a request nested as deep
    as a JSON parser allows would exhaust Python's, and the request's final
    record, which needs this estimate, would never be written.
    """
    chars, pending = 0, [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, list):
            pending += (block.get("text") for block in item if isinstance(block, dict))
    return chars


MESSAGES = Messages()
