"""Anthropic Messages: ``event: <type>`` + ``data`` pairs, ``ping`` keep-alives, errors in Anthropic's shape.

A stream is ``message_start`` (the usage's ``input_tokens`` known up front),
then per content block ``content_block_start`` / ``content_block_delta`` ... /
``content_block_stop`` (a ``thinking`` block closed by its ``signature_delta``,
then ``text`` or ``tool_use``), then ``message_delta`` (stop reason, output
tokens) and ``message_stop``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from itertools import chain
from typing import Any

from aiohttp import web

from .answer import TOOL_NAME, Answer
from .plan import Json, Plan
from .wire import WireFormat, named_event, text_words

__all__ = ["MESSAGES"]

TOOL_USE_ID = "toolu_mock_1"
# Anthropic's keep-alive is an event of its own, sent early and while the model is slow.
PING = b'event: ping\ndata: {"type": "ping"}\n\n'
SIGNATURE = base64.b64encode(b"cancelproxy mock thinking signature").decode()
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error(status: int, message: str) -> web.Response:
    error = {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}
    return web.json_response({"type": "error", "error": error}, status=status)


def _prompt_tokens(body: Json) -> int:
    messages = body.get("messages")
    words = text_words(body.get("system"))
    if not isinstance(messages, list):
        return words
    return words + sum(text_words(m.get("content")) for m in messages if isinstance(m, dict))


def _upstream_id(tag: str) -> str:
    return f"msg_mock_{tag}"


class _MessagesReply:
    keepalive = PING

    def __init__(self, plan: Plan, tag: str, body: Json) -> None:
        self.plan = plan
        self.answer = Answer.of(plan)
        self.id = _upstream_id(tag)
        self.stop_reason = "tool_use" if plan.tool_call else "refusal" if plan.refusal else "end_turn"

    def message(self, content: list[Json], stop_reason: str | None, output_tokens: int) -> Json:
        usage = {
            "input_tokens": self.plan.prompt_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        }
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.plan.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }

    @staticmethod
    def _event(type_: str, **fields: Any) -> bytes:
        return named_event(type_, {"type": type_, **fields})

    def preamble(self) -> list[bytes]:
        # The real API counts the first output token in message_start already.
        return [self._event("message_start", message=self.message([], None, 1))]

    def events(self) -> Iterator[tuple[bytes, bool]]:
        for index, (block, deltas) in enumerate(self._blocks()):
            yield self._event("content_block_start", index=index, content_block=block), False
            if index == 0:
                yield PING, False  # as the API does, once, after the first block opens
            for delta, counted in deltas:
                yield self._event("content_block_delta", index=index, delta=delta), counted
            yield self._event("content_block_stop", index=index), False

    def _blocks(self) -> Iterator[tuple[Json, Iterator[tuple[Json, bool]]]]:
        """Each content block as first opened, with its deltas (counted or not)."""
        answer = self.answer
        if answer.reasoning:
            thinking = ({"type": "thinking_delta", "thinking": t} for t in answer.reasoning)
            signature = {"type": "signature_delta", "signature": SIGNATURE}
            yield self._thinking("", ""), chain(((d, True) for d in thinking), [(signature, False)])
        if answer.arguments:
            block = {"type": "tool_use", "id": TOOL_USE_ID, "name": TOOL_NAME, "input": {}}
            pieces = ({"type": "input_json_delta", "partial_json": p} for p in answer.arguments)
            # The API opens a tool's input with an empty piece.
            opening = {"type": "input_json_delta", "partial_json": ""}
            yield block, chain([(opening, False)], ((d, True) for d in pieces))
        else:
            words = ({"type": "text_delta", "text": w} for w in answer.text)
            yield {"type": "text", "text": ""}, ((d, True) for d in words)

    @staticmethod
    def _thinking(thinking: str, signature: str) -> Json:
        return {"type": "thinking", "thinking": thinking, "signature": signature}

    def closing(self) -> list[bytes]:
        return [
            self._event(
                "message_delta",
                delta={"stop_reason": self.stop_reason, "stop_sequence": None},
                usage={"output_tokens": self.answer.pieces},
            ),
            self._event("message_stop"),
        ]

    def error_event(self, sent: int) -> bytes:
        return self._event("error", error={"type": "overloaded_error", "message": "mock error mid-stream"})

    def body(self) -> Json:
        answer = self.answer
        content: list[Json] = []
        if answer.reasoning:
            content.append(self._thinking("".join(answer.reasoning), SIGNATURE))
        if answer.arguments:
            arguments = json.loads("".join(answer.arguments))
            content.append({"type": "tool_use", "id": TOOL_USE_ID, "name": TOOL_NAME, "input": arguments})
        else:
            content.append({"type": "text", "text": "".join(answer.text)})
        return self.message(content, self.stop_reason, answer.pieces)


MESSAGES = WireFormat(
    protocol="messages",
    count_prompt=_prompt_tokens,
    upstream_id=_upstream_id,
    reply=_MessagesReply,
    bad_request=lambda message: anthropic_error(400, message),
    status_error=lambda status: anthropic_error(status, "mock error"),
    server_error=lambda: anthropic_error(529, "mock error mid-generation"),
)
