"""The Responses transcript: events read back into a record, and the endings the proxy writes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cancelproxy.errors import UpstreamBroken
from cancelproxy.protocols.base import RequestFacts
from cancelproxy.protocols.responses import RESPONSES, ResponsesTranscript
from cancelproxy.records import Usage

FACTS = RequestFacts(request_id="req_abc", model="gpt-4.1", stream=True)
RESPONSE = {"id": "resp_1", "object": "response", "status": "in_progress", "model": "gpt-4.1", "output": []}
USAGE = {
    "input_tokens": 7,
    "input_tokens_details": {"cached_tokens": 2},
    "output_tokens": 5,
    "output_tokens_details": {"reasoning_tokens": 1},
    "total_tokens": 12,
}


def _events(*events: dict[str, Any]) -> list[bytes]:
    return [json.dumps({**e, "sequence_number": i}).encode() for i, e in enumerate(events)]


def _stream() -> list[dict[str, Any]]:
    message = {"id": "msg_1", "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    call = {
        "id": "fc_1",
        "type": "function_call",
        "status": "in_progress",
        "call_id": "call_1",
        "name": "f",
        "arguments": "",
    }
    return [
        {"type": "response.created", "response": RESPONSE},
        {"type": "response.in_progress", "response": RESPONSE},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {"id": "rs_1", "type": "reasoning", "summary": []},
        },
        {
            "type": "response.reasoning_summary_part.added",
            "output_index": 0,
            "summary_index": 0,
            "part": {"type": "summary_text", "text": ""},
        },
        {"type": "response.reasoning_summary_text.delta", "output_index": 0, "summary_index": 0, "delta": "think "},
        {"type": "response.output_item.added", "output_index": 1, "item": message},
        {
            "type": "response.content_part.added",
            "output_index": 1,
            "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []},
        },
        {"type": "response.output_text.delta", "output_index": 1, "content_index": 0, "delta": "Hel"},
        {"type": "response.output_text.delta", "output_index": 1, "content_index": 0, "delta": "lo"},
        {"type": "response.output_item.added", "output_index": 2, "item": call},
        {"type": "response.function_call_arguments.delta", "output_index": 2, "delta": '{"a":'},
        {"type": "response.function_call_arguments.delta", "output_index": 2, "delta": "1}"},
    ]


def _read(events: list[dict[str, Any]]) -> ResponsesTranscript:
    transcript = ResponsesTranscript(FACTS)
    for payload in _events(*events):
        transcript.add_event(payload)
    return transcript


def test_a_partial_stream_is_assembled_as_the_sdk_shows_it() -> None:
    transcript = _read(_stream())
    answer = transcript.answer()
    assert (answer.content, answer.reasoning_content) == ("Hello", "think ")
    assert answer.tool_calls == [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    ]
    assert (answer.upstream_id, answer.model, answer.usage, answer.finish_reason) == ("resp_1", "gpt-4.1", None, None)
    assert transcript.tokens == 5 and not transcript.complete()
    assert transcript.estimated_usage(3) == Usage.estimate(3, 5)


def test_the_terminal_event_completes_it_with_the_providers_usage() -> None:
    done = {
        **RESPONSE,
        "status": "completed",
        "usage": USAGE,
        "output": [
            {
                "id": "msg_1",
                "type": "message",
                "status": "completed",
                "content": [{"type": "output_text", "text": "Hello!"}],
            }
        ],
    }
    events = [*_stream(), {"type": "response.completed", "response": done}]
    transcript = _read(events)
    terminal = _events(*events)[-1]
    assert transcript.ends_stream(terminal)
    assert transcript.complete()
    answer = transcript.answer()
    assert answer.content == "Hello!"  # the terminal response's own output wins
    assert answer.usage == Usage(7, 5, 12, reasoning_tokens=1, cached_tokens=2)
    assert answer.finish_reason == "completed"


def test_only_a_terminal_type_ends_the_stream() -> None:
    transcript = ResponsesTranscript(FACTS)
    mention = json.dumps({"type": "response.output_text.delta", "delta": "response.completed", "sequence_number": 3})
    assert not transcript.ends_stream(mention.encode())
    for kind in ("response.completed", "response.incomplete", "response.failed", "error"):
        assert transcript.ends_stream(json.dumps({"type": kind, "sequence_number": 9}).encode())


def test_a_failed_response_and_an_error_event_are_errors() -> None:
    failed = {**RESPONSE, "status": "failed", "error": {"code": "server_error", "message": "boom"}}
    assert _read([*_stream(), {"type": "response.failed", "response": failed}]).answer().error == failed["error"]
    error = _read([*_stream(), {"type": "error", "code": "x", "message": "m", "param": None}]).answer().error
    assert error == {"code": "x", "message": "m", "param": None}


def _sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if block:
            kind, data = block.split("\n")
            events.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


def test_the_cancelled_ending_carries_the_partial_output_at_the_next_sequence_number() -> None:
    transcript = _read(_stream())
    ((kind, event),) = _sse(transcript.cancelled_ending("cancelled"))
    assert kind == event["type"] == "response.completed"
    assert event["sequence_number"] == len(_stream())
    response = event["response"]
    assert (response["id"], response["status"]) == ("resp_1", "cancelled")
    assert [item["type"] for item in response["output"]] == ["reasoning", "message", "function_call"]
    assert response["output"][1]["content"][0]["text"] == "Hello"
    assert response["output"][1]["status"] == "incomplete"
    assert response["output"][2]["arguments"] == '{"a":1}'


def test_a_cancel_before_anything_was_sent_opens_the_response_first() -> None:
    events = _sse(ResponsesTranscript(FACTS).cancelled_ending("cancelled"))
    assert [kind for kind, _ in events] == ["response.created", "response.completed"]
    assert [e["sequence_number"] for _, e in events] == [0, 1]
    assert events[0][1]["response"]["id"] == events[1][1]["response"]["id"] == "resp_abc"
    assert events[1][1]["response"]["status"] == "cancelled"


def test_the_error_event_is_raised_on_by_both_sdks() -> None:
    transcript = _read(_stream())
    ((kind, event),) = _sse(transcript.error_event(UpstreamBroken("broke")))
    # openai-node raises on "event: error", openai-python on a truthy "error" key.
    assert kind == event["type"] == "error" and event["error"]["code"] == "upstream_broken"
    assert event["sequence_number"] == len(_stream())


def test_a_whole_response_and_the_prompt_estimate() -> None:
    body = {
        **RESPONSE,
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
        "usage": USAGE,
        "output": [{"type": "message", "content": [{"type": "refusal", "refusal": "no"}]}],
    }
    transcript = ResponsesTranscript(FACTS)
    assert transcript.add_body(json.dumps(body).encode())
    answer = transcript.answer()
    assert (answer.content, answer.finish_reason, answer.usage) == ("no", "max_output_tokens", Usage(7, 5, 12, 1, 2))
    assert not ResponsesTranscript(FACTS).add_body(b"{cut")
    payload = {"instructions": "abcd", "input": [{"role": "user", "content": [{"type": "input_text", "text": "efgh"}]}]}
    assert RESPONSES.estimate_prompt_tokens(payload) == 2
    assert RESPONSES.estimate_prompt_tokens({"input": "x" * 9}) == 3


def test_the_prompt_estimate_walks_any_depth() -> None:
    deep: object = "abcd"
    for _ in range(5000):  # far past Python's recursion limit
        deep = [{"type": "input_text", "text": deep}]
    assert RESPONSES.estimate_prompt_tokens({"instructions": "efgh", "input": deep}) == 2


def test_an_index_no_answer_reaches_is_junk_not_a_list_grown_to_it() -> None:
    far = 10**12  # grown a slot at a time, this held the loop and ate the memory
    junk = [
        {"type": "response.output_text.delta", "output_index": 1, "content_index": far, "delta": "x"},
        {"type": "response.reasoning_summary_text.delta", "output_index": 0, "summary_index": far, "delta": "y"},
        {"type": "response.content_part.added", "output_index": 1, "content_index": far, "part": {"type": "x"}},
    ]
    assert _read([*_stream(), *junk]).answer() == _read(_stream()).answer()


@pytest.mark.parametrize("kind", [{}, ["response.completed"], {"response.failed": 1}])
def test_an_event_whose_type_is_not_a_string_is_junk(kind: object) -> None:
    # A dict or list was looked up in a frozenset: TypeError, and the stream
    # failed for the proxy's own bookkeeping.
    payload = json.dumps({"type": kind, "error": None}).encode()
    transcript = _read(_stream())
    assert transcript.ends_stream(payload) is False
    transcript.add_event(payload)
    assert transcript.answer() == _read(_stream()).answer()
