from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from cancelproxy.errors import BadRequest
from cancelproxy.protocols.base import RequestFacts
from cancelproxy.protocols.chat import CHAT, ChatTranscript
from cancelproxy.records import Usage

FACTS = RequestFacts(request_id="req_1", model="gpt-4o-mini", stream=True)


def _chunk(
    delta: dict[str, Any] | None = None,
    finish: str | None = None,
    *,
    id: str = "chatcmpl-9x",
    model: str = "gpt-4o-mini-2024-07-18",
    choices: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
) -> bytes:
    if choices is None:
        choices = [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}]
    obj = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": 1726000000,
        "model": model,
        "system_fingerprint": "fp_1",
        "choices": choices,
        "usage": usage,
    }
    return json.dumps(obj).encode()


USAGE = {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}


def test_a_surrogate_pair_split_over_two_deltas_is_kept() -> None:
    # Each half alone is a lone surrogate escape, which orjson refuses: the
    # client (Python's or JavaScript's JSON) showed both deltas, the record had neither.
    acc = ChatTranscript(FACTS)
    acc.add_event(_chunk({"content": "Hi \ud83d"}))
    acc.add_event(_chunk({"content": "\ude00 there"}))
    assert acc.tokens == 2
    text = acc.answer().content
    assert json.loads(json.dumps(text)) == "Hi \U0001f600 there"  # the pair, as the store writes and reads it


def test_openai_content_stream() -> None:
    acc = ChatTranscript(FACTS)
    acc.add_event(_chunk({"role": "assistant", "content": "", "refusal": None}))
    for piece in ["Hel", "lo", " wör", "ld"]:
        acc.add_event(_chunk({"content": piece}))
    acc.add_event(_chunk({}, "stop"))
    acc.add_event(_chunk(choices=[], usage=USAGE))  # include_usage chunk
    acc.add_event(b"[DONE]")
    assert acc.answer().content == "Hello wörld"
    assert acc.answer().reasoning_content == ""
    assert acc.answer().tool_calls == []
    assert acc.finish_reason == "stop"
    assert acc.usage == USAGE
    assert acc.upstream_id == "chatcmpl-9x"
    assert acc.model == "gpt-4o-mini-2024-07-18"
    assert acc.error is None
    assert acc.done is True
    assert acc.tokens == 4  # role chunk and finish chunk carry no text


def test_content_join_is_cached_and_extends() -> None:
    acc = ChatTranscript(FACTS)
    for i in range(10_000):
        acc.add_event(_chunk({"content": str(i % 10)}))
    expected = "0123456789" * 1000
    assert acc.answer().content == expected
    assert acc.answer().content == expected
    acc.add_event(_chunk({"content": "!"}))
    assert acc.answer().content == expected + "!"
    assert acc.tokens == 10_001


def test_deepseek_reasoning_stream() -> None:
    acc = ChatTranscript(FACTS)
    seq = [
        {"role": "assistant", "content": None, "reasoning_content": ""},
        {"content": None, "reasoning_content": "Let me"},
        {"content": None, "reasoning_content": " think."},
        {"content": "The answer", "reasoning_content": None},
        {"content": " is 4.", "reasoning_content": None},
    ]
    for d in seq:
        acc.add_event(_chunk(d, id="5f0e", model="deepseek-reasoner"))
    acc.add_event(
        _chunk({"content": "", "reasoning_content": None}, "stop", id="5f0e", model="deepseek-reasoner", usage=USAGE)
    )
    assert acc.answer().reasoning_content == "Let me think."
    assert acc.answer().content == "The answer is 4."
    assert acc.finish_reason == "stop"
    assert acc.usage == USAGE  # DeepSeek puts usage on the last choice chunk
    assert acc.model == "deepseek-reasoner"
    assert acc.tokens == 4
    assert acc.done is False


def test_reasoning_field_fallback() -> None:
    acc = ChatTranscript(FACTS)
    acc.add_event(_chunk({"reasoning": "hmm"}))
    acc.add_event(_chunk({"reasoning_content": "!", "reasoning": "ignored"}))
    assert acc.answer().reasoning_content == "hmm!"


def test_tool_calls_by_index() -> None:
    acc = ChatTranscript(FACTS)
    acc.add_event(_chunk({"role": "assistant", "content": None}))
    deltas = [
        [{"index": 0, "id": "call_A", "type": "function", "function": {"name": "get_weather", "arguments": ""}}],
        [{"index": 0, "function": {"arguments": '{"ci'}}],
        [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}],
        [{"index": 1, "id": "call_B", "type": "function", "function": {"name": "get_", "arguments": "{}"}}],
        [{"index": 1, "function": {"name": "time"}}],
    ]
    for d in deltas:
        acc.add_event(_chunk({"tool_calls": d}))
    acc.add_event(_chunk({}, "tool_calls"))
    assert acc.answer().tool_calls == [
        {"id": "call_A", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_B", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    assert acc.finish_reason == "tool_calls"
    assert acc.answer().content == ""
    assert acc.tokens == 5
    # views are copies: mutating one does not alter the accumulator
    acc.answer().tool_calls[0]["function"]["name"] = "x"
    assert acc.answer().tool_calls[0]["function"]["name"] == "get_weather"


def test_tool_calls_without_index() -> None:
    acc = ChatTranscript(FACTS)
    acc.add_event(_chunk({"tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{"}}]}))
    acc.add_event(_chunk({"tool_calls": [{"function": {"arguments": "}"}}]}))
    acc.add_event(_chunk({"tool_calls": [{"id": "c2", "function": {"name": "g", "arguments": "[]"}}]}))
    assert [(t["id"], t["function"]["name"], t["function"]["arguments"]) for t in acc.answer().tool_calls] == [
        ("c1", "f", "{}"),
        ("c2", "g", "[]"),
    ]


def test_only_choice_zero_and_last_finish_reason() -> None:
    acc = ChatTranscript(FACTS)
    acc.add_event(
        _chunk(
            choices=[
                {"index": 1, "delta": {"content": "other"}, "finish_reason": None},
                {"index": 0, "delta": {"content": "mine"}, "finish_reason": None},
            ]
        )
    )
    acc.add_event(_chunk(choices=[{"index": 1, "delta": {}, "finish_reason": "length"}]))
    acc.add_event(_chunk({}, "stop"))
    acc.add_event(_chunk({"content": ""}, None))
    assert acc.answer().content == "mine"
    assert acc.finish_reason == "stop"
    assert acc.tokens == 1


def test_refusal() -> None:
    acc = ChatTranscript(FACTS)
    acc.add_event(_chunk({"role": "assistant", "content": None, "refusal": ""}))
    acc.add_event(_chunk({"refusal": "I can't"}))
    acc.add_event(_chunk({"refusal": " help with that."}))
    # A refusal is what the user was shown in place of an answer: the record keeps it.
    assert acc.answer().content == "I can't help with that."
    assert acc.tokens == 2


def test_first_nonempty_id_and_model() -> None:
    acc = ChatTranscript(FACTS)
    # Azure's first chunk: prompt filter results, empty id/model, no choices
    acc.add_event(json.dumps({"id": "", "model": "", "choices": [], "prompt_filter_results": []}).encode())
    acc.add_event(_chunk({"content": "a"}, id="c-1", model="gpt-4o"))
    acc.add_event(_chunk({"content": "b"}, id="c-2", model="gpt-4o-x"))
    assert (acc.upstream_id, acc.model) == ("c-1", "gpt-4o")


def test_error_event() -> None:
    acc = ChatTranscript(FACTS)
    acc.add_event(_chunk({"content": "partial"}))
    err = {"message": "Rate limit reached", "type": "rate_limit_error", "code": "rate_limit"}
    acc.add_event(json.dumps({"error": err}).encode())
    assert acc.error == err
    assert acc.answer().content == "partial"
    acc2 = ChatTranscript(FACTS)
    acc2.add_event(b'{"error": "upstream timeout"}')
    assert acc2.error == {"message": "upstream timeout"}
    # OpenRouter: a mid-stream error rides on a normal chunk
    acc4 = ChatTranscript(FACTS)
    acc4.add_event(_chunk({"content": "so far"}))
    chunk = json.loads(_chunk({"content": ""}, "error"))
    chunk["error"] = {"code": 502, "message": "Provider disconnected"}
    acc4.add_event(json.dumps(chunk).encode())
    assert acc4.error == {"code": 502, "message": "Provider disconnected"}
    assert (acc4.finish_reason, acc4.answer().content, acc4.tokens) == ("error", "so far", 1)
    acc3 = ChatTranscript(FACTS)
    acc3.add_event(b'{"object": "error", "message": "bad", "code": 400}')
    assert acc3.error == {"object": "error", "message": "bad", "code": 400}


def test_junk_payloads_never_raise() -> None:
    acc = ChatTranscript(FACTS)
    junk = [
        b"",
        b"not json",
        b"[1, 2]",
        b'"str"',
        b"42",
        b"\xff\xfe{",
        b"[" * 100_000,
        b'{"choices": 3}',
        b'{"choices": [7, {"delta": "x"}]}',
        b'{"choices": [{"delta": {"content": 5, "tool_calls": [1, {"function": 3}]}}]}',
        b'{"usage": [1], "id": 9, "model": null}',
    ]
    for j in junk:
        acc.add_event(j)
    assert acc.answer().content == ""
    assert acc.usage is None and acc.upstream_id is None and acc.model is None
    assert acc.done is False
    acc.add_body(b"<html>502</html>")
    acc.add_event(b" [DONE] ")
    assert acc.done is True


def test_non_streaming_completion() -> None:
    body = {
        "id": "chatcmpl-xyz",
        "object": "chat.completion",
        "model": "deepseek-chat",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Calling a tool.",
                    "reasoning_content": "Need weather.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                        },
                        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": USAGE,
    }
    acc = ChatTranscript(FACTS)
    acc.add_body(json.dumps(body).encode())
    assert acc.answer().content == "Calling a tool."
    assert acc.answer().reasoning_content == "Need weather."
    assert acc.answer().tool_calls == body["choices"][0]["message"]["tool_calls"]  # type: ignore[index]
    assert acc.finish_reason == "tool_calls"
    assert acc.usage == USAGE
    assert acc.upstream_id == "chatcmpl-xyz"
    assert acc.model == "deepseek-chat"
    assert acc.tokens == 0
    err = ChatTranscript(FACTS)
    err.add_body(b'{"error": {"message": "Invalid API key", "code": 401}}')
    assert err.error == {"message": "Invalid API key", "code": 401}
    assert err.answer().content == ""


def test_estimated_usage() -> None:
    acc = ChatTranscript(FACTS)
    for piece in ["a", "b", "c"]:
        acc.add_event(_chunk({"content": piece}))
    assert acc.estimated_usage(10) == Usage(prompt_tokens=10, completion_tokens=3, total_tokens=13, estimated=True)
    assert ChatTranscript(FACTS).estimated_usage(0).total_tokens == 0


def test_estimate_prompt_tokens() -> None:
    body: dict[str, Any] = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "x" * 9},  # 9
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "y" * 4},  # 4
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}},  # 2
                ],
            },
            {"role": "tool", "tool_call_id": "c", "content": "z"},  # 1
        ],
    }
    assert CHAT.estimate_prompt_tokens(body) == 4  # ceil(16 / 4)
    body["messages"][3]["content"] = "zz"
    assert CHAT.estimate_prompt_tokens(body) == 5  # ceil(17 / 4)
    assert CHAT.estimate_prompt_tokens({"messages": [{"role": "user", "content": "h"}]}) == 1
    assert CHAT.estimate_prompt_tokens({"messages": [{"role": "user", "content": ""}]}) == 0
    assert CHAT.estimate_prompt_tokens({}) == 0
    assert CHAT.estimate_prompt_tokens({"messages": "junk"}) == 0


def test_usage_under_the_record_names() -> None:
    acc = ChatTranscript(FACTS)
    raw = {
        "prompt_tokens": 12,
        "completion_tokens": 40,
        "total_tokens": 52,
        "prompt_tokens_details": {"cached_tokens": 8},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }
    acc.add_event(_chunk(choices=[], usage=raw))
    assert acc.answer().usage == Usage(12, 40, 52, reasoning_tokens=30, cached_tokens=8)
    deepseek = ChatTranscript(FACTS)
    deepseek.add_event(_chunk(choices=[], usage={**USAGE, "prompt_cache_hit_tokens": 5}))
    assert deepseek.answer().usage == Usage(12, 4, 16, cached_tokens=5)


def test_the_last_event_and_whole_answers() -> None:
    acc = ChatTranscript(FACTS)
    assert acc.ends_stream(b"[DONE]") and acc.ends_stream(b" [DONE] ")
    assert not acc.ends_stream(_chunk({"content": "[DONE]"}))
    acc.add_event(_chunk({"content": "a"}))
    assert not acc.complete()  # cut before any finish_reason: truncated
    acc.add_event(_chunk({}, "stop"))
    assert acc.complete()  # some servers never send [DONE] after it


def test_endings_the_proxy_writes() -> None:
    acc = ChatTranscript(FACTS)
    acc.add_event(_chunk({"role": "assistant", "content": "a"}, id="chatcmpl-up"))
    ending = acc.cancelled_ending("cancelled")
    first, done = ending.split(b"\n\n")[:2]
    chunk = json.loads(first.removeprefix(b"data: "))
    assert (chunk["id"], chunk["object"], chunk["model"]) == (
        "chatcmpl-up",
        "chat.completion.chunk",
        "gpt-4o-mini-2024-07-18",
    )
    assert chunk["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "cancelled"}]
    assert done == b"data: [DONE]"
    fresh = json.loads(ChatTranscript(FACTS).cancelled_ending("x").split(b"\n\n")[0][6:])
    assert (fresh["id"], fresh["model"]) == ("chatcmpl-req_1", "gpt-4o-mini")


def _ending_choices(acc: ChatTranscript) -> list[dict[str, Any]]:
    choices: list[dict[str, Any]] = json.loads(acc.cancelled_ending("cancelled").split(b"\n\n")[0][6:])["choices"]
    return [{"index": c["index"], "delta": c["delta"], "finish_reason": c["finish_reason"]} for c in choices]


ROLE = {"role": "assistant", "content": ""}


def test_the_cancelled_ending_opens_only_the_choices_the_client_has_no_role_for() -> None:
    # openai-node's stream helper throws on a choice without a role or a
    # finish_reason; openai-python's joins a second role onto the first.
    nothing = ChatTranscript(FACTS)
    assert _ending_choices(nothing) == [{"index": 0, "delta": ROLE, "finish_reason": "cancelled"}]
    no_role = ChatTranscript(FACTS)
    no_role.add_event(_chunk({"content": "a"}))  # some servers never send one
    assert _ending_choices(no_role) == [{"index": 0, "delta": ROLE, "finish_reason": "cancelled"}]
    two = ChatTranscript(FACTS)
    two.add_event(_chunk(choices=[{"index": 0, "delta": ROLE, "finish_reason": None}]))
    two.add_event(_chunk(choices=[{"index": 1, "delta": {"content": "b"}, "finish_reason": None}]))
    two.add_event(_chunk(choices=[{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]))
    assert _ending_choices(two) == [
        {"index": 0, "delta": {}, "finish_reason": "cancelled"},
        {"index": 1, "delta": ROLE, "finish_reason": "cancelled"},
    ]


def test_the_cancelled_ending_leaves_a_finished_choice_its_own_finish_reason() -> None:
    acc = ChatTranscript(FACTS)
    acc.add_event(_chunk(choices=[{"index": i, "delta": ROLE, "finish_reason": None} for i in range(3)]))
    acc.add_event(_chunk(choices=[{"index": 1, "delta": {}, "finish_reason": "length"}]))
    assert [c["index"] for c in _ending_choices(acc)] == [0, 2]
    acc.add_event(_chunk(choices=[{"index": i, "delta": {}, "finish_reason": "stop"} for i in (0, 2)]))
    # All finished: the cancel still needs a choice to say it.
    assert _ending_choices(acc) == [{"index": 0, "delta": {}, "finish_reason": "cancelled"}]


def test_choice_indexes_no_client_takes_are_not_finished() -> None:
    acc = ChatTranscript(FACTS)
    odd: list[Any] = [[0], "1", True, -1, 128, 10**30, None]
    acc.add_event(_chunk(choices=[{"index": i, "delta": ROLE, "finish_reason": None} for i in odd]))
    acc.add_event(_chunk(choices=[{"index": 127, "delta": ROLE, "finish_reason": None}]))
    assert [c["index"] for c in _ending_choices(acc)] == [0, 127]


def _prepared_body(body: bytes) -> bytes | None:
    return CHAT.prepare(json.loads(body), body).body


def test_a_stream_is_asked_for_usage_without_its_body_written_again() -> None:
    body = b' {"stream": true, "seed": 123456789012345678901234567890, "t": 1E-7}'
    assert _prepared_body(body) == b' {"stream_options":{"include_usage":true},' + body[2:]
    # Asked already, or not a stream: the body goes as it is.
    assert _prepared_body(b'{"stream": true, "stream_options": {"include_usage": true}}') is None
    assert _prepared_body(b'{"stream": false}') is None
    assert _prepared_body(b'{"stream": true, "stream_options": null}') == (
        b'{"stream": true, "stream_options": {"include_usage": true}}'.replace(b": ", b":").replace(b", ", b",")
    )


def test_a_body_with_a_lone_surrogate_is_written_again_as_the_same_json() -> None:
    # Python's json reads the escape "\ud83d" (half an emoji) where orjson will
    # not; written again as UTF-8 it cannot be encoded at all, and the request
    # failed with the proxy's 500.
    own = b'{"stream": true, "stream_options": {"x": 1}, "messages": [{"content": "caf\xc3\xa9 \\ud83d"}]}'
    written = _prepared_body(own) or b""
    assert json.loads(written) == {**json.loads(own), "stream_options": {"x": 1, "include_usage": True}}


def test_a_body_that_cannot_take_the_member_is_read_and_written_exactly() -> None:
    own = b'{"stream": true, "n": 123456789012345678901234567890, "stream_options": {"x": 1}}'
    assert json.loads(_prepared_body(own) or b"") == {
        **json.loads(own),
        "stream_options": {"x": 1, "include_usage": True},
    }
    utf16 = '{"stream": true, "n": 123456789012345678901234567890}'.encode("utf-16-le")
    assert json.loads(_prepared_body(utf16) or b"") == {**json.loads(utf16), "stream_options": {"include_usage": True}}


def test_options_nested_deeper_than_pythons_json_reads_are_a_bad_request() -> None:
    deep = b'{"stream": true, "stream_options": {}, "d": ' + b"[" * 1010 + b"]" * 1010 + b"}"
    payload = orjson.loads(deep)  # orjson reads 1,024 levels
    with pytest.raises(BadRequest, match="nested too deeply"):
        CHAT.prepare(payload, deep)
