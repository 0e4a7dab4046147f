"""The tee: whole events out, and usage the client did not ask for hidden."""

from __future__ import annotations

import json

from cancelproxy.tee import Tee


def _event(chunk: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def _chunk(content: str | None, with_usage_null: bool) -> dict[str, object]:
    chunk: dict[str, object] = {
        "id": "c1",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    if with_usage_null:
        chunk["usage"] = None
    return chunk


USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_hidden_usage_gives_the_bytes_of_a_stream_that_never_asked() -> None:
    asked = b"".join(
        [
            _event(_chunk("a", True)),
            _event(_chunk("b", True)),
            _event({"id": "c1", "choices": [], "usage": USAGE}),
            b"data: [DONE]\n\n",
        ]
    )
    never_asked = b"".join([_event(_chunk("a", False)), _event(_chunk("b", False)), b"data: [DONE]\n\n"])
    for cut in range(1, len(asked)):
        tee = Tee(event_stream=True, max_body_copy=1 << 20, hide_usage=True)
        out = []
        for piece in (asked[:cut], asked[cut:]):
            whole, payloads = tee.split(piece)
            out.append(whole)
            tee.commit(payloads)
        tail, payloads = tee.tail()
        tee.commit(payloads)
        assert b"".join(out) + tail == never_asked, cut
        # The record still saw the usage the client was not sent.
        assert tee.answer.usage == USAGE and tee.answer.content == "ab"


def test_usage_is_left_alone_when_the_client_asked() -> None:
    stream = _event(_chunk("a", True)) + _event({"id": "c1", "choices": [], "usage": USAGE})
    tee = Tee(event_stream=True, max_body_copy=1 << 20)
    assert tee.split(stream)[0] == stream


def test_a_usage_on_a_content_chunk_is_not_dropped() -> None:
    chunk = {"id": "c1", "choices": [{"index": 0, "delta": {"content": "z"}, "finish_reason": "stop"}], "usage": USAGE}
    tee = Tee(event_stream=True, max_body_copy=1 << 20, hide_usage=True)
    assert tee.split(_event(chunk))[0] == _event(chunk)


def test_non_streaming_answers_pass_whole_and_are_read_at_the_end() -> None:
    body = json.dumps(
        {"id": "x", "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}]}
    ).encode()
    tee = Tee(event_stream=False, max_body_copy=1 << 20)
    assert tee.split(body[:5]) == (body[:5], []) and tee.split(body[5:]) == (body[5:], [])
    tee.commit_body()
    assert tee.answer.content == "hi" and tee.answer.finish_reason == "stop"


def test_an_unterminated_last_event_is_forwarded_but_not_recorded() -> None:
    tee = Tee(event_stream=True, max_body_copy=1 << 20)
    first = _event(_chunk("a", False))
    cut = b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"b"}}]}\n'
    whole, payloads = tee.split(first + cut)
    tee.commit(payloads)
    assert whole == first and tee.tail() == (cut, [])
    assert tee.answer.content == "a"
