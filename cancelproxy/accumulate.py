"""Rebuild the answer a client was sent from OpenAI chat-completion output.

Read-only with respect to the stream: the proxy forwards the raw bytes and
feeds the same payloads here, so unknown fields are ignored and junk never
raises (a broken upstream must not break the proxy's bookkeeping).

Only choice index 0 is assembled (the proxy records one answer; n>1
requests are rare and their other choices are not kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["Accumulator", "estimate_prompt_tokens"]

_DONE = b"[DONE]"


def _joined(parts: list[str]) -> str:
    """Join and compact in place, so repeated reads don't re-join everything."""
    if len(parts) > 1:
        parts[:] = ["".join(parts)]
    return parts[0] if parts else ""


def _str(obj: dict[str, Any], key: str) -> str:
    """obj[key] if it is a string, else "" (null/missing/wrong type alike)."""
    v = obj.get(key)
    return v if isinstance(v, str) else ""


@dataclass
class _ToolCall:
    id: str | None = None
    type: str | None = None
    name: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)


@dataclass
class Accumulator:
    """The answer so far; text parts are read through properties."""

    # Scalar results are plain attributes (read them, don't assign them).
    finish_reason: str | None = field(default=None, init=False)  # last non-null
    usage: dict[str, Any] | None = field(default=None, init=False)  # last non-null
    upstream_id: str | None = field(default=None, init=False)
    model: str | None = field(default=None, init=False)
    error: dict[str, Any] | None = field(default=None, init=False)
    done: bool = field(default=False, init=False)  # saw [DONE]
    delta_count: int = field(default=0, init=False)  # chunks carrying text
    unparsed: int = field(default=0, init=False)  # payloads that weren't dicts
    # Text is kept as pieces and joined on read (see _joined): O(n) overall.
    _content: list[str] = field(default_factory=list, init=False, repr=False)
    _reasoning: list[str] = field(default_factory=list, init=False, repr=False)
    _refusal: list[str] | None = field(default=None, init=False, repr=False)
    _tools: dict[int, _ToolCall] = field(default_factory=dict, init=False, repr=False)
    _last_tool: int | None = field(default=None, init=False, repr=False)

    # ---- input -------------------------------------------------------

    def add_event(self, payload: bytes) -> None:
        """One SSE data payload: a chat.completion.chunk, b"[DONE]" or an
        error object. Junk (not JSON, not a dict) is counted in `unparsed`."""
        # JSON chunks start with "{": only test for [DONE] otherwise, so the
        # hot path pays no strip() copy.
        if payload[:1] != b"{" and payload.strip() == _DONE:
            self.done = True
            return
        delta = self._take(payload, "delta")
        if delta is not None and self._take_message(delta, stream=True):
            self.delta_count += 1

    def add_completion(self, body: bytes) -> None:
        """A whole non-streaming chat.completion body. `delta_count` is left
        alone: a completion carries its own usage."""
        message = self._take(body, "message")
        if message is not None:
            self._take_message(message, stream=False)

    def _take(self, raw: bytes, key: str) -> dict[str, Any] | None:
        """Parse; record error/id/model/usage/finish_reason; return choice 0's
        `key` object (delta or message) if there is one."""
        try:
            # orjson: this parse runs for every chunk of every stream, and it
            # is ~4x faster than json (its errors are ValueErrors too).
            obj = orjson.loads(raw)
        except (ValueError, RecursionError):  # bad JSON/UTF-8, absurd nesting
            obj = None
        if not isinstance(obj, dict):
            self.unparsed += 1
            return None
        err = obj.get("error")
        if err is None and obj.get("object") == "error":
            err = obj  # vLLM-style top-level error object
        if err is not None:
            # Some providers send {"error": "text"}: keep the dict shape. Go on
            # reading: OpenRouter puts a mid-stream error on a normal chunk.
            self.error = err if isinstance(err, dict) else {"message": str(err)}
        # First non-empty wins: Azure's first chunk (prompt filter results)
        # carries id "" and model "".
        self.upstream_id = self.upstream_id or _str(obj, "id") or None
        self.model = self.model or _str(obj, "model") or None
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        choices = obj.get("choices")
        if not isinstance(choices, list):  # [] on the include_usage chunk
            return None
        for choice in choices:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self.finish_reason = _str(choice, "finish_reason") or self.finish_reason
                part = choice.get(key)
                return part if isinstance(part, dict) else None
        return None

    def _take_message(self, msg: dict[str, Any], stream: bool) -> bool:
        """Add a delta (or a whole message); True if it carried any text."""
        content = _str(msg, "content")
        if content:
            self._content.append(content)
        # "reasoning" is the vLLM/OpenRouter spelling of DeepSeek's field.
        reasoning = _str(msg, "reasoning_content") or _str(msg, "reasoning")
        if reasoning:
            self._reasoning.append(reasoning)
        refusal = _str(msg, "refusal")
        if refusal:
            if self._refusal is None:
                self._refusal = []
            self._refusal.append(refusal)
        text = bool(content or reasoning or refusal)
        calls = msg.get("tool_calls")
        for pos, call in enumerate(calls if isinstance(calls, list) else ()):
            if isinstance(call, dict):
                text |= self._take_tool(call, None if stream else pos)
        return text

    def _take_tool(self, call: dict[str, Any], pos: int | None) -> bool:
        idx = call.get("index", pos)
        cid = _str(call, "id")
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
        tool.type = tool.type or _str(call, "type") or None
        fn = call.get("function")
        if not isinstance(fn, dict):
            return False
        name, args = _str(fn, "name"), _str(fn, "arguments")
        if name:
            tool.name.append(name)
        if args:
            tool.arguments.append(args)
        return bool(name or args)  # the name is generated text too

    # ---- views -------------------------------------------------------

    @property
    def content(self) -> str:
        return _joined(self._content)

    @property
    def reasoning_content(self) -> str:
        return _joined(self._reasoning)

    @property
    def refusal(self) -> str | None:
        return None if self._refusal is None else _joined(self._refusal)

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """Fresh dicts, ordered by tool-call index."""
        return [
            {
                "id": t.id,
                "type": t.type or "function",
                "function": {"name": _joined(t.name), "arguments": _joined(t.arguments)},
            }
            for _, t in sorted(self._tools.items())
        ]

    def estimated_usage(self, prompt_tokens: int) -> dict[str, Any]:
        """Usage for a stream stopped before the usage chunk: one token per
        text-carrying delta (about right on OpenAI/DeepSeek)."""
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": self.delta_count,
            "total_tokens": prompt_tokens + self.delta_count,
            "estimated": True,
        }


def estimate_prompt_tokens(request_body: dict[str, Any]) -> int:
    """Rough prompt size: characters of string contents, text parts and prior
    tool-call arguments, / 4 rounded up. Only used when the upstream never
    sent usage, so precision is not worth a tokenizer dependency."""
    chars = 0
    messages = request_body.get("messages")
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
