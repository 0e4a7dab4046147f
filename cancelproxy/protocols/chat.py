"""``chat``: OpenAI Chat Completions (``POST /v1/chat/completions``), DeepSeek's reasoning included.

A stream is ``data: {chat.completion.chunk}`` events, then ``data: [DONE]``.
Choice 0's deltas are assembled (the proxy records one answer; the other
choices of an n>1 request are forwarded, not kept). Unknown fields are
ignored, never rejected.

A stream is asked for its exact usage (``stream_options.include_usage``)
even when the client did not ask; what that adds to the answer is then taken
out of the client's bytes again, so they stay what they would have been.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from ..errors import BadRequest, ProxyError, error_body
from ..records import Usage
from ..sse import Event
from .base import Answer, Prepared, RequestFacts
from .fields import int_field, joined, parse_object, str_field
from .openai import Chunks

__all__ = ["CHAT", "Chat", "ChatTranscript", "ask_for_usage", "chat_usage", "hide_injected_usage"]


# What asking for usage adds to every other chunk of a stream.
_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null|"usage"\s*:\s*null\s*,')
# The one chunk it adds: no choices, only usage. Found in the bytes first, so
# an event without it costs a substring search and no JSON parse.
_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')


_USAGE_NULL_COMPACT = b',"usage":null'
# A "usage" that is not part of a compact ``,"usage":null``. Written to
# start with the literal, which re finds at C speed (~30x faster on a block of
# many events than with the lookbehind first).
_OTHER_USAGE = re.compile(rb'"usage"(?:(?<!,"usage")|(?!:null))')


def hide_injected_usage(whole: bytes, events: list[Event]) -> tuple[bytes, list[Event]]:
    """Whole events as the client would have had them without ``include_usage``,
    and where each now ends (see ``base.Rewrite``).

    Where every ``"usage"`` is a compact ``,"usage":null`` (so no usage-only
    chunk either), the events are rewritten together: one replace and a shift
    of the offsets, found by two counts. From the first other ``"usage"`` on
    (in a stream that sends many deltas per read: the usage-only chunk in the
    last read) they are rewritten event by event."""
    last = events[-1][0]
    head = whole[:last] if last < len(whole) else whole
    nulls = head.count(_USAGE_NULL_COMPACT)
    if nulls == head.count(b'"usage"'):
        if nulls == 0:
            return whole, events
        # Every read of a chat-paced stream ends here, so it is its own
        # return: going on through the slices below cost a one-event read
        # 1.04 µs against 0.78.
        shown, moved = _hide_compact_nulls(head, events)
        return (shown + whole[last:] if head is not whole else shown), moved
    other = _OTHER_USAGE.search(head)
    assert other is not None  # the two counts differ: some "usage" is not a compact null
    # The events that end before it hold compact nulls only.
    compact = bisect.bisect_right(events, other.start(), key=itemgetter(0))
    if compact:
        start = events[compact - 1][0]
        shown, moved = _hide_compact_nulls(head[:start], events[:compact])
        pieces, size = [shown], len(shown)
    else:
        start, pieces, moved, size = 0, [], [], 0
    for end, payload in events[compact:]:
        piece = _hide_in_event(whole[start:end])
        pieces.append(piece)
        size += len(piece)
        moved.append((size, payload))
        start = end
    pieces.append(whole[start:])
    return b"".join(pieces), moved


def _hide_compact_nulls(block: bytes, events: list[Event]) -> tuple[bytes, list[Event]]:
    """``block`` (the bytes of ``events``, each ``"usage"`` in them a compact
    ``,"usage":null``) without them, and where each event now ends."""
    moved: list[Event] = []
    found, shift, width = block.find(_USAGE_NULL_COMPACT), 0, len(_USAGE_NULL_COMPACT)
    for end, payload in events:
        while 0 <= found < end:
            shift += width
            found = block.find(_USAGE_NULL_COMPACT, found + width)
        moved.append((end - shift, payload))
    return block.replace(_USAGE_NULL_COMPACT, b""), moved


def _hide_in_event(event: bytes) -> bytes:
    """One whole event as the client would have had it without ``include_usage``:
    the usage-only chunk (``"choices": []``) dropped, ``"usage": null`` removed."""
    if b'"usage"' not in event:
        return event
    if _NO_CHOICES.search(event) is not None and _is_usage_only(event):
        return b""
    # OpenAI's compact form is a plain replace (C speed); the regex only for
    # providers that put spaces in their JSON.
    event = event.replace(b',"usage":null', b"")
    if b'"usage"' in event:
        event = _USAGE_NULL.sub(b"", event)
    return event


def _is_usage_only(event: bytes) -> bool:
    for line in event.splitlines():
        if line.startswith(b"data:"):
            chunk = parse_object(line[5:])
            return chunk is not None and chunk.get("choices") == [] and bool(chunk.get("usage"))
    return False


@dataclass
class _ToolCall:
    id: str | None = None
    type: str | None = None
    name: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)


class ChatTranscript(Chunks):
    """The answer so far, from chat.completion.chunk deltas (or a chat.completion)."""

    object_name = "chat.completion.chunk"

    def __init__(self, facts: RequestFacts) -> None:
        super().__init__(facts)
        # Text is kept as pieces and joined on read: O(n) overall.
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._refusal: list[str] = []
        self._tools: dict[int, _ToolCall] = {}
        self._last_tool: int | None = None

    def _take_choice(self, choice: dict[str, Any], stream: bool) -> bool:
        part = choice.get("delta" if stream else "message")
        if not isinstance(part, dict):
            return False
        content = str_field(part, "content")
        if content:
            self._content.append(content)
            if len(part) == 1:
                # {"content": "..."}, nearly every delta of a stream: there is
                # nothing else to look for, and this runs for each of them.
                return True
        # "reasoning" is the vLLM/OpenRouter spelling of DeepSeek's field.
        reasoning = str_field(part, "reasoning_content") or str_field(part, "reasoning")
        if reasoning:
            self._reasoning.append(reasoning)
        refusal = str_field(part, "refusal")
        if refusal:
            self._refusal.append(refusal)
        text = bool(content or reasoning or refusal)
        calls = part.get("tool_calls")
        for pos, call in enumerate(calls if isinstance(calls, list) else ()):
            if isinstance(call, dict):
                text |= self._take_tool(call, None if stream else pos)
        return text

    def _take_tool(self, call: dict[str, Any], pos: int | None) -> bool:
        idx = call.get("index", pos)
        cid = str_field(call, "id")
        if not isinstance(idx, int):
            # No index (some OpenAI-compatible servers): a new id starts a new
            # call, otherwise it continues the last one.
            known = any(t.id == cid for t in self._tools.values())
            if self._last_tool is None or (cid and not known):
                idx = max(self._tools, default=-1) + 1
            else:
                idx = self._last_tool
        tool = self._tools.setdefault(idx, _ToolCall())
        self._last_tool = idx
        tool.id = tool.id or cid or None
        tool.type = tool.type or str_field(call, "type") or None
        fn = call.get("function")
        if not isinstance(fn, dict):
            return False
        name, args = str_field(fn, "name"), str_field(fn, "arguments")
        if name:
            tool.name.append(name)
        if args:
            tool.arguments.append(args)
        return bool(name or args)  # the name is generated text too

    def answer(self) -> Answer:
        return Answer(
            # A refusal is what the user was shown in place of an answer.
            content=joined(self._content) + joined(self._refusal),
            reasoning_content=joined(self._reasoning),
            tool_calls=[
                {
                    "id": t.id,
                    "type": t.type or "function",
                    "function": {"name": joined(t.name), "arguments": joined(t.arguments)},
                }
                for _, t in sorted(self._tools.items())
            ],
            finish_reason=self.finish_reason,
            usage=chat_usage(self.usage),
            upstream_id=self.upstream_id,
            model=self.model,
            error=self.error,
        )

    def _opens_choice(self, choice: dict[str, Any]) -> bool:
        delta = choice.get("delta")
        return isinstance(delta, dict) and bool(delta.get("role"))

    def _ending_choice(self, index: int, opened: bool, finish_reason: str) -> dict[str, Any]:
        # openai-node's stream helper throws on a choice that never got a role;
        # openai-python's joins strings, so a second role would read
        # "assistantassistant": the role is sent only where none was.
        delta = {} if opened else {"role": "assistant", "content": ""}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def chat_usage(raw: dict[str, Any] | None) -> Usage | None:
    """Chat usage (OpenAI's, DeepSeek's ``prompt_cache_hit_tokens``) under the record's names."""
    if raw is None:
        return None
    prompt, completion = int_field(raw, "prompt_tokens") or 0, int_field(raw, "completion_tokens") or 0
    total = int_field(raw, "total_tokens")
    details = raw.get("completion_tokens_details")
    prompt_details = raw.get("prompt_tokens_details")
    cached = int_field(prompt_details, "cached_tokens") if isinstance(prompt_details, dict) else None
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion if total is None else total,
        reasoning_tokens=int_field(details, "reasoning_tokens") if isinstance(details, dict) else None,
        cached_tokens=cached if cached is not None else int_field(raw, "prompt_cache_hit_tokens"),
    )


def ask_for_usage(payload: dict[str, Any], body: bytes) -> Prepared:
    """Make a stream report its exact usage, even if the client did not ask.

    Without ``stream_options.include_usage`` a stream never says what it
    cost. The proxy asks for it, and what that adds is hidden again.
    """
    options = payload.get("stream_options")
    if payload.get("stream") is not True or (options is not None and not isinstance(options, dict)):
        return Prepared()
    if options and options.get("include_usage"):
        return Prepared()  # the client asked: it gets it
    # A member put in twice would be read differently by different parsers:
    # present at all (null included), the client's options are merged instead.
    merge = "stream_options" in payload
    return Prepared(body=_with_usage_asked(body, merge=merge), rewrite=hide_injected_usage)


_ASK_FOR_USAGE = b'"stream_options":{"include_usage":true},'
_JSON_SPACE = b" \t\r\n"


def _with_usage_asked(body: bytes, *, merge: bool) -> bytes:
    """``body`` with ``stream_options.include_usage`` set, all else as the client wrote it.

    A body without ``stream_options`` (nearly every one) gets the member put
    first in its object, every other byte untouched. Nothing is encoded again:
    that cost ~190 µs for a 37 KB conversation with Python's json, and orjson
    would turn an integer past 64 bits into a float. To ``merge`` with the
    client's options, or for a body in UTF-16, it is read and written exactly
    by Python's json.
    """
    start = len(body) - len(body.lstrip(_JSON_SPACE))
    if not merge and body[start : start + 1] == b"{" and json.detect_encoding(body) == "utf-8":
        # The object has members (``stream`` at least), so a comma follows.
        return body[: start + 1] + _ASK_FOR_USAGE + body[start + 1 :]
    try:
        payload = json.loads(body)
        payload["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
        written = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    except RecursionError:  # orjson took nesting Python's json cannot
        raise BadRequest("the request body's JSON is nested too deeply", code="invalid_json") from None
    try:
        return written.encode()
    except UnicodeEncodeError:
        # A lone surrogate ("\ud83d", half an emoji) that the client escaped
        # has no UTF-8: escaped again, it is the same JSON it sent.
        return json.dumps(payload, separators=(",", ":")).encode()


class Chat:
    name = "chat"
    path = "chat/completions"
    key_header = "Authorization"

    def prepare(self, payload: dict[str, Any], body: bytes) -> Prepared:
        return ask_for_usage(payload, body)

    def transcript(self, facts: RequestFacts) -> ChatTranscript:
        return ChatTranscript(facts)

    def estimate_prompt_tokens(self, payload: dict[str, Any]) -> int:
        """Rough prompt size: characters of string contents, text parts and prior
        tool-call arguments, / 4 rounded up. Only used when the upstream never
        sent usage, so precision is not worth a tokenizer dependency."""
        chars = 0
        messages = payload.get("messages")
        if not isinstance(messages, list):
            return 0
        for msg in messages:
            if not isinstance(msg, dict):
                continue
            content = msg.get("content")
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        chars += len(part["text"])
            calls = msg.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    fn = call.get("function") if isinstance(call, dict) else None
                    if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                        chars += len(fn["arguments"])
        return math.ceil(chars / 4)

    def error_body(self, error: ProxyError) -> dict[str, Any]:
        return error_body(error)


CHAT = Chat()
