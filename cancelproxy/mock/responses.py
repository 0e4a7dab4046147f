"""The OpenAI Responses API: ``event: <type>`` + ``data`` pairs with sequence numbers, no ``[DONE]``.

A stream is ``response.created``, ``response.in_progress``, then per output item
``output_item.added`` … ``output_item.done`` (a reasoning item with summary
deltas, a message with text or refusal deltas, or a function call with argument
deltas), then ``response.completed`` carrying the whole output and the usage.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from .answer import TOOL_CALL_ID, TOOL_NAME, Answer
from .plan import Json, Plan
from .wire import (
    COMMENT_KEEPALIVE,
    CREATED,
    named_event,
    openai_format,
    text_words,
)

__all__ = ["RESPONSES"]

Item = Literal["reasoning", "message", "function_call"]
Status = Literal["in_progress", "completed", "incomplete"]


def _prompt_tokens(body: Json) -> int:
    words = text_words(body.get("instructions"))
    items = body.get("input")
    if not isinstance(items, list):
        return words + text_words(items)
    return words + sum(text_words(item.get("content")) for item in items if isinstance(item, dict))


def _upstream_id(tag: str) -> str:
    return f"resp_mock_{tag}"


def _echo(body: Json, key: str, kinds: type | tuple[type, ...], default: Any) -> Any:
    """A request field the Response object repeats, when it has a type the API allows."""
    value = body.get(key)
    if kinds is bool:
        return value if isinstance(value, bool) else default
    return value if isinstance(value, kinds) and not isinstance(value, bool) else default


class _ResponsesReply:
    keepalive = COMMENT_KEEPALIVE

    def __init__(self, plan: Plan, tag: str, body: Json) -> None:
        self.plan = plan
        self.request = body
        self.answer = Answer.of(plan)
        self.id = _upstream_id(tag)
        self.item_ids: dict[Item, str] = {
            "reasoning": f"rs_mock_{tag}",
            "message": f"msg_mock_{tag}",
            "function_call": f"fc_mock_{tag}",
        }
        self._items: list[Item] = []
        if self.answer.reasoning:
            self._items.append("reasoning")
        self._items.append("function_call" if plan.tool_call else "message")
        # How far the stream got, for a response.failed that shows the partial output.
        self._seq = 0
        self._added: list[Item] = []
        self._done: set[Item] = set()
        self._pieces_yielded = 0

    # -- the objects -------------------------------------------------------

    def _event(self, type_: str, **fields: Any) -> bytes:
        event = named_event(type_, {"type": type_, "sequence_number": self._seq, **fields})
        self._seq += 1
        return event

    def _part(self, text: str) -> Json:
        if self.plan.refusal:
            return {"type": "refusal", "refusal": text}
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def _item(self, kind: Item, answer: Answer | None, status: Status) -> Json:
        """An output item; ``answer`` None is the item as first added (nothing generated yet)."""
        item_id = self.item_ids[kind]
        if kind == "reasoning":
            summary = [] if answer is None else [{"type": "summary_text", "text": "".join(answer.reasoning)}]
            return {"id": item_id, "type": "reasoning", "summary": summary}
        if kind == "function_call":
            arguments = "" if answer is None else "".join(answer.arguments)
            return {
                "id": item_id,
                "type": "function_call",
                "status": status,
                "arguments": arguments,
                "call_id": TOOL_CALL_ID,
                "name": TOOL_NAME,
            }
        content = [] if answer is None else [self._part("".join(answer.text))]
        return {"id": item_id, "type": "message", "status": status, "content": content, "role": "assistant"}

    def usage(self) -> Json:
        prompt, output = self.plan.prompt_tokens, self.answer.pieces
        return {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": len(self.answer.reasoning)},
            "total_tokens": prompt + output,
        }

    def response(self, status: str, output: list[Json], usage: Json | None = None, error: Json | None = None) -> Json:
        body = self.request
        response: Json = {
            "id": self.id,
            "object": "response",
            "created_at": CREATED,
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": None,
            "instructions": _echo(body, "instructions", (str, list), None),
            "max_output_tokens": _echo(body, "max_output_tokens", int, None),
            "model": self.plan.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": _echo(body, "previous_response_id", str, None),
            "reasoning": _echo(body, "reasoning", dict, {"effort": None, "summary": None}),
            "store": _echo(body, "store", bool, True),
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": _echo(body, "tool_choice", (str, dict), "auto"),
            "tools": _echo(body, "tools", list, []),
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": None,
            "metadata": _echo(body, "metadata", dict, {}),
        }
        if status == "completed":
            response["completed_at"] = CREATED
        return response

    def _output(self) -> list[Json]:
        return [self._item(kind, self.answer, "completed") for kind in self._items]

    # -- the stream --------------------------------------------------------

    def preamble(self) -> list[bytes]:
        return [
            self._event("response.created", response=self.response("in_progress", [])),
            self._event("response.in_progress", response=self.response("in_progress", [])),
        ]

    def events(self) -> Iterator[tuple[bytes, bool]]:
        for index, kind in enumerate(self._items):
            self._added.append(kind)
            yield (
                self._event(
                    "response.output_item.added", output_index=index, item=self._item(kind, None, "in_progress")
                ),
                False,
            )
            if kind == "reasoning":
                yield from self._reasoning(index)
            elif kind == "function_call":
                yield from self._function_call(index)
            else:
                yield from self._message(index)
            self._done.add(kind)
            yield (
                self._event(
                    "response.output_item.done", output_index=index, item=self._item(kind, self.answer, "completed")
                ),
                False,
            )

    def _counted(self, event: bytes) -> tuple[bytes, bool]:
        self._pieces_yielded += 1
        return event, True

    def _reasoning(self, index: int) -> Iterator[tuple[bytes, bool]]:
        where = {"item_id": self.item_ids["reasoning"], "output_index": index, "summary_index": 0}
        part = {"type": "summary_text", "text": ""}
        yield self._event("response.reasoning_summary_part.added", **where, part=part), False
        for thought in self.answer.reasoning:
            yield self._counted(self._event("response.reasoning_summary_text.delta", **where, delta=thought))
        text = "".join(self.answer.reasoning)
        yield self._event("response.reasoning_summary_text.done", **where, text=text), False
        yield self._event("response.reasoning_summary_part.done", **where, part={**part, "text": text}), False

    def _function_call(self, index: int) -> Iterator[tuple[bytes, bool]]:
        where = {"item_id": self.item_ids["function_call"], "output_index": index}
        for piece in self.answer.arguments:
            yield self._counted(self._event("response.function_call_arguments.delta", **where, delta=piece))
        arguments = "".join(self.answer.arguments)
        yield self._event("response.function_call_arguments.done", **where, arguments=arguments), False

    def _message(self, index: int) -> Iterator[tuple[bytes, bool]]:
        where = {"item_id": self.item_ids["message"], "output_index": index, "content_index": 0}
        yield self._event("response.content_part.added", **where, part=self._part("")), False
        text = "".join(self.answer.text)
        if self.plan.refusal:
            for word in self.answer.text:
                yield self._counted(self._event("response.refusal.delta", **where, delta=word))
            yield self._event("response.refusal.done", **where, refusal=text), False
        else:
            for word in self.answer.text:
                yield self._counted(self._event("response.output_text.delta", **where, delta=word, logprobs=[]))
            yield self._event("response.output_text.done", **where, text=text, logprobs=[]), False
        yield self._event("response.content_part.done", **where, part=self._part(text)), False

    def closing(self) -> list[bytes]:
        return [self._event("response.completed", response=self.response("completed", self._output(), self.usage()))]

    def error_event(self, sent: int) -> bytes:
        if self._pieces_yielded > sent:
            self._seq -= 1  # the piece drawn but never written: its number goes to this event
        partial = self.answer.first(sent)
        output = [
            self._item(kind, partial, "completed" if kind in self._done else "incomplete") for kind in self._added
        ]
        error = {"code": "server_error", "message": "mock error mid-stream"}
        return self._event("response.failed", response=self.response("failed", output, error=error))

    def body(self) -> Json:
        return self.response("completed", self._output(), self.usage())


RESPONSES = openai_format("responses", _prompt_tokens, _upstream_id, _ResponsesReply)
