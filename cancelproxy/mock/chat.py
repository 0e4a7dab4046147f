"""OpenAI Chat Completions: ``data: {chunk}`` events, a finish chunk, usage on request, ``[DONE]``."""

from __future__ import annotations

from collections.abc import Iterator

from .answer import TOOL_CALL_ID, TOOL_NAME, Answer
from .plan import Json, Plan
from .wire import COMMENT_KEEPALIVE, CREATED, FINGERPRINT, OPENAI_STREAM_ERROR, data_event, openai_format

__all__ = ["CHAT"]

DONE = b"data: [DONE]\n\n"


def _prompt_tokens(body: Json) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    contents = (m.get("content") for m in messages if isinstance(m, dict))
    return sum(len(c.split()) for c in contents if isinstance(c, str))


def _upstream_id(tag: str) -> str:
    return f"chatcmpl-mock-{tag}"


class _ChatReply:
    keepalive = COMMENT_KEEPALIVE

    def __init__(self, plan: Plan, tag: str, body: Json) -> None:
        self.plan = plan
        self.answer = Answer.of(plan)
        self.id = _upstream_id(tag)
        self.finish_reason = "tool_calls" if plan.tool_call else "stop"

    def usage(self, completion_tokens: int) -> Json:
        prompt = self.plan.prompt_tokens
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        }

    def chunk(self, choices: list[Json], usage: Json | None = None) -> bytes:
        chunk: Json = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": self.plan.model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }
        if self.plan.include_usage:
            chunk["usage"] = usage
        return data_event(chunk)

    def delta(self, delta: Json, finish_reason: str | None = None) -> bytes:
        return self.chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])

    def preamble(self) -> list[bytes]:
        return []

    def events(self) -> Iterator[tuple[bytes, bool]]:
        answer = self.answer
        if self.plan.refusal:
            yield self.delta({"role": "assistant", "content": None, "refusal": ""}), False
        else:
            yield self.delta({"role": "assistant", "content": ""}), False
        if answer.arguments:
            header = {"id": TOOL_CALL_ID, "type": "function", "function": {"name": TOOL_NAME, "arguments": ""}}
            yield self.delta({"tool_calls": [{"index": 0, **header}]}), False
        for thought in answer.reasoning:
            yield self.delta({"reasoning_content": thought}), True
        for piece in answer.arguments:
            yield self.delta({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}), True
        key = "refusal" if self.plan.refusal else "content"
        for word in answer.text:
            yield self.delta({key: word}), True

    def closing(self) -> list[bytes]:
        events = [self.delta({}, self.finish_reason)]
        if self.plan.include_usage:
            events.append(self.chunk([], self.usage(self.answer.pieces)))
        return [*events, DONE]

    def error_event(self, sent: int) -> bytes:
        return data_event({"error": OPENAI_STREAM_ERROR})

    def body(self) -> Json:
        answer, plan = self.answer, self.plan
        text = "".join(answer.text)
        message: Json = {"role": "assistant", "content": None if plan.tool_call or plan.refusal else text}
        if plan.refusal:
            message["refusal"] = text
        if plan.reasoning:
            message["reasoning_content"] = "".join(answer.reasoning)
        if plan.tool_call:
            function = {"name": TOOL_NAME, "arguments": "".join(answer.arguments)}
            message["tool_calls"] = [{"id": TOOL_CALL_ID, "type": "function", "function": function}]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": CREATED,
            "model": plan.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [choice],
            "usage": self.usage(answer.pieces),
        }


CHAT = openai_format("chat", _prompt_tokens, _upstream_id, _ChatReply)
