"""``responses``: the OpenAI Responses API (``POST /v1/responses``).

A stream is ``event: <type>`` + ``data: {...}`` pairs; the JSON repeats the
type and counts ``sequence_number`` from 0. There is no ``[DONE]``: the stream
ends after ``response.completed``, ``response.incomplete`` or
``response.failed`` (or an ``error`` event), and only that terminal event's
``response`` carries the usage.

The transcript keeps the output items as the SDKs' stream helpers build them
(added, then grown by deltas, then replaced when done), because the proxy's
own cancelled ending must hand them back: openai-python's and openai-node's
``.stream()`` helpers finish only on ``response.completed``, the node helper
replaces its snapshot with that event's ``response``, and the python one
refuses a final response that lacks an item it saw added. So a cancelled
stream ends with ``response.completed`` whose ``response`` has
``status: "cancelled"`` and the partial output, at the next sequence number;
never an ``error`` event, ``response.incomplete`` or a bare end (Codex CLI
reconnects on those, and each reconnect is a new paid generation).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from ..errors import ProxyError, error_body
from ..records import Usage
from .base import Answer, Prepared, RequestFacts
from .fields import bounded, int_field, parse_object, str_field

__all__ = ["RESPONSES", "Responses", "ResponsesTranscript"]

_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
# What a terminal event's bytes must contain; only then is it parsed before forwarding.
_TERMINAL_MARKS = (b"response.completed", b"response.incomplete", b"response.failed", b'"error"')
_LIFECYCLE = frozenset({"response.created", "response.queued", "response.in_progress"})
# Deltas that carry generated text, and where in the item they go.
_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_text.delta",
    }
)


def _kind(obj: dict[str, Any]) -> str:
    """An event's ``type``; "" for one that is not a string (a dict would not even hash)."""
    kind = obj.get("type")
    return kind if isinstance(kind, str) else ""


def _index(obj: dict[str, Any], key: str) -> int:
    value = int_field(obj, key)
    return value if value is not None and value >= 0 else 0


# More parts than any item of an answer has. An index past it is junk: made a
# slot at a time, one event saying "content_index": 10**12 would hold the loop
# and eat the memory of every request the proxy serves.
_MAX_PARTS = 1024


def _slot(parts: list[Any], index: int, blank: dict[str, Any]) -> dict[str, Any]:
    """``parts[index]``, made (as ``blank``) if a delta came before its part was
    added; for an index past ``_MAX_PARTS``, a part kept nowhere."""
    if index >= _MAX_PARTS:
        return dict(blank)
    while len(parts) <= index:
        parts.append(dict(blank))
    part = parts[index]
    if not isinstance(part, dict):
        part = parts[index] = dict(blank)
    return part


def _append(obj: dict[str, Any], key: str, text: str) -> None:
    current = obj.get(key)
    obj[key] = (current if isinstance(current, str) else "") + text


class ResponsesTranscript:
    def __init__(self, facts: RequestFacts) -> None:
        self._facts = facts
        self.tokens = 0
        self._sequence = -1  # the last sequence_number the client was sent
        self._response: dict[str, Any] | None = None  # the latest lifecycle event's response
        self._items: dict[int, dict[str, Any]] = {}  # output_index -> the item as it stands
        self._final: dict[str, Any] | None = None  # a terminal event's (or a whole answer's) response
        self._error: dict[str, Any] | None = None

    @property
    def response_id(self) -> str | None:
        """The id the upstream gave the response (``resp_...``), once it said."""
        response = self._final or self._response
        return str_field(response, "id") or None if response is not None else None

    def response_object(self) -> dict[str, Any]:
        """The Response object as it stands: the terminal one if it came, else the cancelled one."""
        return self._final if self._final is not None else self.cancelled_response()

    # ---- reading -----------------------------------------------------

    def ends_stream(self, payload: bytes) -> bool:
        # Parsed only when the bytes name a terminal type: a text delta that
        # merely mentions one is told apart by its "type".
        if not any(mark in payload for mark in _TERMINAL_MARKS):
            return False
        obj = parse_object(payload)
        return obj is not None and _kind(obj) in _TERMINAL

    def add_event(self, payload: bytes) -> None:
        obj = parse_object(payload)
        if obj is None:
            return
        sequence = int_field(obj, "sequence_number")
        if sequence is not None:
            self._sequence = max(self._sequence, sequence)
        kind = _kind(obj)
        if kind in _DELTAS:
            self._delta(kind, obj)
        elif kind in _LIFECYCLE:
            if isinstance(obj.get("response"), dict):
                self._response = obj["response"]
        elif kind == "response.output_item.added" or kind == "response.output_item.done":
            if isinstance(obj.get("item"), dict):
                self._items[_index(obj, "output_index")] = obj["item"]
        elif kind == "response.content_part.added" or kind == "response.reasoning_summary_part.added":
            item = self._items.setdefault(_index(obj, "output_index"), {})
            content = kind == "response.content_part.added"
            key, at = ("content", "content_index") if content else ("summary", "summary_index")
            parts = item.setdefault(key, [])
            index = _index(obj, at)
            if isinstance(parts, list) and isinstance(obj.get("part"), dict) and index < _MAX_PARTS:
                _slot(parts, index, {})
                parts[index] = obj["part"]
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            if isinstance(obj.get("response"), dict):
                self._final = obj["response"]
                error = self._final.get("error")
                if kind == "response.failed":
                    self._error = error if isinstance(error, dict) else {"message": "the response failed"}
        elif kind == "error":
            error = obj.get("error")
            self._error = error if isinstance(error, dict) else {k: obj.get(k) for k in ("code", "message", "param")}

    def _delta(self, kind: str, obj: dict[str, Any]) -> None:
        delta = str_field(obj, "delta")
        if not delta:
            return
        self.tokens += 1
        item = self._items.setdefault(_index(obj, "output_index"), {})
        if kind == "response.function_call_arguments.delta":
            _append(item, "arguments", delta)
            return
        if kind == "response.reasoning_summary_text.delta":
            parts, at, blank, key = "summary", "summary_index", {"type": "summary_text", "text": ""}, "text"
        elif kind == "response.reasoning_text.delta":
            parts, at, blank, key = "content", "content_index", {"type": "reasoning_text", "text": ""}, "text"
        elif kind == "response.refusal.delta":
            parts, at, blank, key = "content", "content_index", {"type": "refusal", "refusal": ""}, "refusal"
        else:
            parts, at, blank, key = "content", "content_index", {"type": "output_text", "text": ""}, "text"
        found = item.setdefault(parts, [])
        if isinstance(found, list):
            _append(_slot(found, _index(obj, at), blank), key, delta)

    def add_body(self, body: bytes) -> bool:
        obj = parse_object(body)
        if obj is None:
            self._error = {"message": "the upstream's answer is not a JSON object", "code": "upstream_invalid_answer"}
            return False
        if isinstance(obj.get("error"), dict) and obj.get("object") != "response":
            self._error = obj["error"]
            return True
        self._final = obj
        if obj.get("status") == "failed":
            error = obj.get("error")
            self._error = error if isinstance(error, dict) else {"message": "the response failed"}
        return True

    def complete(self) -> bool:
        return self._final is not None or self._error is not None

    # ---- the record --------------------------------------------------

    def _output(self) -> list[dict[str, Any]]:
        final = self._final.get("output") if self._final is not None else None
        if isinstance(final, list) and final:
            return [item for item in final if isinstance(item, dict)]
        return [self._items[index] for index in sorted(self._items)]

    def answer(self) -> Answer:
        content: list[str] = []
        reasoning: list[str] = []
        tool_calls: list[dict[str, Any]] = []
        for item in self._output():
            kind = item.get("type")
            if kind == "message":
                for part in _parts(item, "content"):
                    content.append(str_field(part, "text") or str_field(part, "refusal"))
            elif kind == "reasoning":
                for part in _parts(item, "summary") + _parts(item, "content"):
                    reasoning.append(str_field(part, "text"))
            elif kind == "function_call":
                tool_calls.append(
                    {
                        "id": str_field(item, "call_id") or str_field(item, "id") or None,
                        "type": "function",
                        "function": {"name": str_field(item, "name"), "arguments": str_field(item, "arguments")},
                    }
                )
        response = self._final or self._response or {}
        finish_reason = None
        if self._final is not None:
            details = self._final.get("incomplete_details")
            reason = details.get("reason") if isinstance(details, dict) else None
            finish_reason = reason if isinstance(reason, str) else str_field(self._final, "status") or None
        return Answer(
            content="".join(content),
            reasoning_content="".join(reasoning),
            tool_calls=tool_calls,
            finish_reason=finish_reason,
            usage=_usage(self._final.get("usage") if self._final is not None else None),
            upstream_id=str_field(response, "id") or None,
            model=str_field(response, "model") or None,
            error=self._error,
        )

    def estimated_usage(self, prompt_tokens: int) -> Usage:
        return Usage.estimate(prompt_tokens, self.tokens)

    # ---- endings the proxy writes ------------------------------------

    def _event(self, kind: str, **fields: Any) -> bytes:
        self._sequence += 1
        # The Response object an ending repeats is the upstream's, which echoes
        # the client's tools and metadata: bounded, so it can be written.
        data = bounded({"type": kind, "sequence_number": self._sequence, **fields})
        return f"event: {kind}\ndata: ".encode() + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

    def cancelled_ending(self, finish_reason: str) -> bytes:
        opening = b""
        if self._response is None:
            # Nothing was sent yet: the helpers need a response.created first.
            self._response = self._blank_response()
            opening = self._event("response.created", response=self._response)
        return opening + self._event("response.completed", response=self.cancelled_response())

    def cancelled_response(self) -> dict[str, Any]:
        """The Response object of a cancelled response: its partial output, ``status: "cancelled"``."""
        response = dict(self._response or self._blank_response())
        output = []
        for index in sorted(self._items):
            item = dict(self._items[index])
            if item.get("status") == "in_progress":
                item["status"] = "incomplete"
            output.append(item)
        response.update(status="cancelled", output=output, usage=None, error=None, incomplete_details=None)
        return response

    def _blank_response(self) -> dict[str, Any]:
        return {
            "id": f"resp_{self._facts.request_id.removeprefix('req_')}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "in_progress",
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "model": self._facts.model or "",
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": None,
            "metadata": {},
        }

    def error_event(self, error: ProxyError) -> bytes:
        # The Responses API's own error event; "error" as well, because that
        # is what openai-python raises on (openai-node raises on either).
        body = error_body(error)["error"]
        return self._event("error", code=error.code, message=error.message, param=None, error=body)


def _parts(item: dict[str, Any], key: str) -> list[dict[str, Any]]:
    parts = item.get(key)
    return [part for part in parts if isinstance(part, dict)] if isinstance(parts, list) else []


def _usage(raw: Any) -> Usage | None:
    """Responses usage (input/output tokens) under the record's names."""
    if not isinstance(raw, dict):
        return None
    prompt, completion = int_field(raw, "input_tokens") or 0, int_field(raw, "output_tokens") or 0
    total = int_field(raw, "total_tokens")
    output_details, input_details = raw.get("output_tokens_details"), raw.get("input_tokens_details")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion if total is None else total,
        reasoning_tokens=int_field(output_details, "reasoning_tokens") if isinstance(output_details, dict) else None,
        cached_tokens=int_field(input_details, "cached_tokens") if isinstance(input_details, dict) else None,
    )


class Responses:
    name = "responses"
    path = "responses"
    key_header = "Authorization"

    def prepare(self, payload: dict[str, Any], body: bytes) -> Prepared:
        return Prepared()  # usage always comes on the terminal event

    def transcript(self, facts: RequestFacts) -> ResponsesTranscript:
        return ResponsesTranscript(facts)

    def estimate_prompt_tokens(self, payload: dict[str, Any]) -> int:
        """Characters of the instructions and the input's text, / 4 rounded up."""
        return math.ceil((_chars(payload.get("instructions")) + _chars(payload.get("input"))) / 4)

    def error_body(self, error: ProxyError) -> dict[str, Any]:
        return error_body(error)


def _chars(value: Any) -> int:
    """Characters of the strings in ``value`` and in the content, text and
    arguments of its parts, at any depth.

    Walked with a stack of its own, not by recursion: a request nested as deep
    as a JSON parser allows (about 1,000 levels) would exhaust Python's, and the
    request's final record, which needs this estimate, would never be written.
    """
    chars, pending = 0, [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, list):
            pending += item
        elif isinstance(item, dict):
            pending += (item.get("content"), item.get("text"), item.get("arguments"))
    return chars


RESPONSES = Responses()
