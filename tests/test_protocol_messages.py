"""The Anthropic Messages transcript, and the completions one (the rest of the protocols' pure cores)."""

from __future__ import annotations

import json
from typing import Any

from cancelproxy.errors import RequestCancelled, UpstreamBroken
from cancelproxy.protocols.base import RequestFacts
from cancelproxy.protocols.completions import COMPLETIONS, CompletionsTranscript
from cancelproxy.protocols.messages import MESSAGES, MessagesTranscript
from cancelproxy.records import Usage

FACTS = RequestFacts(request_id="req_abc", model="claude-x", stream=True)
START = {
    "type": "message_start",
    "message": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [],
        "usage": {
            "input_tokens": 9,
            "cache_read_input_tokens": 3,
            "cache_creation_input_tokens": 0,
            "output_tokens": 1,
        },
    },
}


def _block(index: int, block: dict[str, Any], *deltas: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"type": "content_block_start", "index": index, "content_block": block},
        *({"type": "content_block_delta", "index": index, "delta": d} for d in deltas),
    ]


def _stream() -> list[dict[str, Any]]:
    return [
        START,
        {"type": "ping"},
        *_block(
            0,
            {"type": "thinking", "thinking": "", "signature": ""},
            {"type": "thinking_delta", "thinking": "hmm "},
            {"type": "signature_delta", "signature": "c2ln"},
        ),
        {"type": "content_block_stop", "index": 0},
        *_block(
            1,
            {"type": "text", "text": ""},
            {"type": "text_delta", "text": "Hi "},
            {"type": "text_delta", "text": "there"},
        ),
        {"type": "content_block_stop", "index": 1},
        *_block(
            2,
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
            {"type": "input_json_delta", "partial_json": ""},
            {"type": "input_json_delta", "partial_json": '{"a": 1}'},
        ),
    ]


def _read(events: list[dict[str, Any]]) -> MessagesTranscript:
    transcript = MessagesTranscript(FACTS)
    for event in events:
        transcript.add_event(json.dumps(event).encode())
    return transcript


def test_a_partial_stream_is_assembled_and_knows_its_prompt_cost() -> None:
    transcript = _read(_stream())
    answer = transcript.answer()
    assert (answer.content, answer.reasoning_content) == ("Hi there", "hmm ")
    assert answer.tool_calls == [
        {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    ]
    assert (answer.upstream_id, answer.model, answer.usage) == ("msg_1", "claude-x", None)
    assert not transcript.complete()
    # message_start said what the prompt cost (cache reads included): only the output is estimated.
    assert transcript.estimated_usage(999) == Usage.estimate(12, 4)


def test_message_stop_completes_it_with_the_providers_usage() -> None:
    stop = {"type": "message_stop"}
    events = [
        *_stream(),
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 17}},
        stop,
    ]
    transcript = _read(events)
    assert transcript.ends_stream(json.dumps(stop).encode())
    assert not transcript.ends_stream(
        json.dumps({"type": "content_block_delta", "delta": {"text": "message_stop"}}).encode()
    )
    assert transcript.complete()
    answer = transcript.answer()
    assert (answer.finish_reason, answer.usage) == ("tool_use", Usage(12, 17, 29, cached_tokens=3))


def _sse(raw: bytes) -> list[dict[str, Any]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if block:
            kind, data = block.split("\n")
            event = json.loads(data.removeprefix("data: "))
            assert kind == f"event: {event['type']}"
            events.append(event)
    return events


def test_the_cancelled_ending_closes_open_blocks_then_the_message() -> None:
    events = _sse(_read(_stream()).cancelled_ending("cancelled"))
    assert [e["type"] for e in events] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[0]["index"] == 2
    assert events[1]["delta"]["stop_reason"] == "cancelled" and events[1]["usage"] == {"output_tokens": 4}


def test_a_cancel_before_anything_was_sent_starts_the_message_first() -> None:
    events = _sse(MessagesTranscript(FACTS).cancelled_ending("cancelled"))
    assert [e["type"] for e in events] == ["message_start", "message_delta", "message_stop"]
    assert events[0]["message"]["id"] == "msg_abc"


def test_errors_take_anthropics_shape() -> None:
    (event,) = _sse(_read(_stream()).error_event(UpstreamBroken("broke")))
    assert event == {"type": "error", "error": {"type": "api_error", "message": "broke", "code": "upstream_broken"}}
    cancelled = MESSAGES.error_body(RequestCancelled("stopped"))
    assert cancelled["type"] == "error" and cancelled["error"]["code"] == "request_cancelled"
    failed = _read([START, {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}])
    assert failed.answer().error == {"type": "overloaded_error", "message": "busy"} and failed.complete()


def test_a_whole_message_and_the_prompt_estimate() -> None:
    body = {
        **START["message"],
        "content": [{"type": "text", "text": "Hello"}, {"type": "tool_use", "id": "t", "name": "g", "input": {"b": 2}}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 4, "output_tokens": 2},
    }
    transcript = MessagesTranscript(FACTS)
    assert transcript.add_body(json.dumps(body).encode())
    answer = transcript.answer()
    assert (answer.content, answer.finish_reason, answer.usage) == ("Hello", "end_turn", Usage(4, 2, 6))
    assert answer.tool_calls[0]["function"] == {"name": "g", "arguments": '{"b":2}'}
    payload = {"system": "abcd", "messages": [{"role": "user", "content": [{"type": "text", "text": "efgh"}]}]}
    assert MESSAGES.estimate_prompt_tokens(payload) == 2 and MESSAGES.key_header == "x-api-key"


def test_the_prompt_estimate_walks_any_depth() -> None:
    deep: object = "abcd"
    for _ in range(5000):  # far past Python's recursion limit
        deep = [{"type": "text", "text": deep}]
    assert MESSAGES.estimate_prompt_tokens({"system": deep, "messages": [{"role": "user", "content": "efgh"}]}) == 2


def _completion_chunk(text: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return json.dumps({"id": "cmpl-1", "object": "text_completion", "model": "m", "choices": [choice]}).encode()


def test_completions_read_text_and_end_with_a_text_completion_chunk() -> None:
    transcript = CompletionsTranscript(FACTS)
    for piece in ("Once ", "upon"):
        transcript.add_event(_completion_chunk(piece))
    assert not transcript.complete()
    assert transcript.answer().content == "Once upon" and transcript.tokens == 2
    ending = transcript.cancelled_ending("cancelled").split(b"\n\n")
    chunk = json.loads(ending[0].removeprefix(b"data: "))
    assert (chunk["id"], chunk["object"]) == ("cmpl-1", "text_completion")
    assert chunk["choices"] == [{"index": 0, "text": "", "logprobs": None, "finish_reason": "cancelled"}]
    assert ending[1] == b"data: [DONE]"
    transcript.add_event(_completion_chunk("", "length"))
    assert transcript.complete() and transcript.answer().finish_reason == "length"
    many = CompletionsTranscript(FACTS)
    for index in (0, 1, 2):
        many.add_event(json.dumps({"object": "text_completion", "choices": [{"index": index, "text": "t"}]}).encode())
    many.add_event(json.dumps({"choices": [{"index": 1, "text": "", "finish_reason": "stop"}]}).encode())
    ending = json.loads(many.cancelled_ending("cancelled").split(b"\n\n")[0].removeprefix(b"data: "))
    # n > 1: every choice still open is finished, the finished one keeps its own finish_reason.
    assert [(c["index"], c["text"], c["finish_reason"]) for c in ending["choices"]] == [
        (0, "", "cancelled"),
        (2, "", "cancelled"),
    ]
    assert COMPLETIONS.estimate_prompt_tokens({"prompt": ["abcd", "efgh"]}) == 2
    assert COMPLETIONS.estimate_prompt_tokens({"prompt": [[1, 2, 3]]}) == 3
    prepared = COMPLETIONS.prepare({"stream": True, "prompt": "x"}, b'{"stream": true, "prompt": "x"}')
    assert prepared.body is not None and b'"include_usage":true' in prepared.body and prepared.rewrite is not None
