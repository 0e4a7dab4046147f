"""Legacy text completions (as vLLM and llama.cpp serve them): ``text_completion`` chunks, ``[DONE]``."""

from __future__ import annotations

from collections.abc import Iterator

from .answer import Answer
from .chat import DONE
from .plan import Json, Plan
from .wire import COMMENT_KEEPALIVE, CREATED, FINGERPRINT, OPENAI_STREAM_ERROR, data_event, openai_format

__all__ = ["COMPLETIONS"]


def _prompt_tokens(body: Json) -> int:
    prompt = body.get("prompt")
    prompts = prompt if isinstance(prompt, list) else [prompt]
    # A prompt may also be token ids (a list of ints, or a list of such lists).
    if prompts and all(isinstance(p, int) for p in prompts):
        return len(prompts)
    return sum(len(p.split()) if isinstance(p, str) else len(p) if isinstance(p, list) else 0 for p in prompts)


def _upstream_id(tag: str) -> str:
    return f"cmpl-mock-{tag}"


class _CompletionReply:
    keepalive = COMMENT_KEEPALIVE

    def __init__(self, plan: Plan, tag: str, body: Json) -> None:
        self.plan = plan
        self.answer = Answer.of(plan)
        self.id = _upstream_id(tag)

    def usage(self) -> Json:
        prompt, completion = self.plan.prompt_tokens, self.answer.pieces
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _object(self, choices: list[Json]) -> Json:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": CREATED,
            "model": self.plan.model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }

    def chunk(self, choices: list[Json], usage: Json | None = None) -> bytes:
        chunk = self._object(choices)
        if self.plan.include_usage:
            chunk["usage"] = usage
        return data_event(chunk)

    def text(self, text: str, finish_reason: str | None = None) -> bytes:
        return self.chunk([{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}])

    def preamble(self) -> list[bytes]:
        return []

    def events(self) -> Iterator[tuple[bytes, bool]]:
        for word in self.answer.text:
            yield self.text(word), True

    def closing(self) -> list[bytes]:
        events = [self.text("", "stop")]
        if self.plan.include_usage:
            events.append(self.chunk([], self.usage()))
        return [*events, DONE]

    def error_event(self, sent: int) -> bytes:
        return data_event({"error": OPENAI_STREAM_ERROR})

    def body(self) -> Json:
        choice = {"index": 0, "text": "".join(self.answer.text), "logprobs": None, "finish_reason": "stop"}
        return {**self._object([choice]), "usage": self.usage()}


COMPLETIONS = openai_format(
    "completions", _prompt_tokens, _upstream_id, _CompletionReply, frozenset({"reasoning", "tool_call", "refusal"})
)
