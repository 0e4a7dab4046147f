"""The tee: whole events out, nothing after the last one, hidden usage, and the record's view of it."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from cancelproxy.protocols.base import RequestFacts
from cancelproxy.protocols.chat import ChatTranscript, hide_injected_usage
from cancelproxy.sse import EventTooLarge
from cancelproxy.tee import ExpandsTooFar, Tee, is_event_stream

FACTS = RequestFacts(request_id="req_1", model="m", stream=True)


def _event(chunk: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def _chunk(content: str | None, with_usage_null: bool, finish: str | None = None) -> dict[str, object]:
    chunk: dict[str, object] = {
        "id": "c1",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }
    if with_usage_null:
        chunk["usage"] = None
    return chunk


USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def _tee(event_stream: bool = True, **options: Any) -> Tee:
    return Tee(
        ChatTranscript(FACTS), event_stream=event_stream, max_body_copy=1 << 20, max_event_bytes=1 << 16, **options
    )


def _through(tee: Tee, pieces: list[bytes]) -> bytes:
    out = []
    for piece in pieces:
        whole, events = tee.split(piece)
        assert [end for end, _ in events] == sorted(end for end, _ in events)
        assert all(end <= len(whole) for end, _ in events)
        out.append(whole)
        tee.commit(events)
    return b"".join(out) + tee.end_of_body()


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
        tee = _tee(rewrite=hide_injected_usage)
        assert _through(tee, [asked[:cut], asked[cut:]]) == never_asked, cut
        # The record still saw the usage the client was not sent.
        answer = tee.transcript.answer()
        assert answer.usage is not None and answer.usage.total_tokens == 5 and answer.content == "ab"


def test_hidden_usage_in_every_spelling_a_provider_may_use() -> None:
    # Spaces, "usage" first, a choices-less chunk that carries no usage (kept),
    # and a spaced usage-only chunk (dropped), in one stream cut everywhere.
    content = '"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": null}]'
    asked_and_shown = [
        (
            b'data: {"id":"c1",' + content.encode() + b',"usage":null}\n\n',
            b'data: {"id":"c1",' + content.encode() + b"}\n\n",
        ),
        (
            b'data: {"id": "c1", ' + content.encode() + b', "usage" : null}\n\n',
            b'data: {"id": "c1", ' + content.encode() + b"}\n\n",
        ),
        (
            b'data: {"usage":null,"id":"c1",' + content.encode() + b"}\n\n",
            b'data: {"id":"c1",' + content.encode() + b"}\n\n",
        ),
        (b'data: {"id":"c1","choices":[],"usage":null}\n\n', b'data: {"id":"c1","choices":[]}\n\n'),
        (b'data: {"id": "c1", "choices": [ ], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n\n', b""),
        (b"data: [DONE]\n\n", b"data: [DONE]\n\n"),
    ]
    asked = b"".join(a for a, _ in asked_and_shown)
    shown = b"".join(s for _, s in asked_and_shown)
    for cut in range(1, len(asked)):
        tee = _tee(rewrite=hide_injected_usage)
        assert _through(tee, [asked[:cut], asked[cut:]]) == shown, cut
        assert tee.transcript.answer().usage is not None


def test_a_hidden_event_keeps_its_place_with_an_empty_span() -> None:
    usage_only = _event({"id": "c1", "choices": [], "usage": USAGE})
    first = _event(_chunk("a", True))
    whole, events = _tee(rewrite=hide_injected_usage).split(first + usage_only)
    shown = _event(_chunk("a", False))
    assert whole == shown
    assert [end for end, _ in events] == [len(shown), len(shown)]


def test_a_read_of_many_deltas_and_the_usage_only_chunk_keeps_every_events_end() -> None:
    # A fast stream's last read: compact nulls, rewritten together, then the
    # usage-only chunk and [DONE], one by one.
    asked = [_event(_chunk(f"w{i} ", True)) for i in range(5)]
    asked += [_event({"id": "c1", "choices": [], "usage": USAGE}), b"data: [DONE]\n\n"]
    shown = [_event(_chunk(f"w{i} ", False)) for i in range(5)] + [b"", b"data: [DONE]\n\n"]
    tee = _tee(rewrite=hide_injected_usage)
    whole, events = tee.split(b"".join(asked))
    assert whole == b"".join(shown)
    ends = [sum(len(piece) for piece in shown[: i + 1]) for i in range(len(shown))]
    assert [end for end, _ in events] == ends
    tee.commit(events)
    assert tee.transcript.answer().content == "w0 w1 w2 w3 w4 "


def test_usage_is_left_alone_when_the_client_asked() -> None:
    stream = _event(_chunk("a", True)) + _event({"id": "c1", "choices": [], "usage": USAGE})
    assert _tee().split(stream)[0] is stream


def test_a_usage_on_a_content_chunk_is_not_dropped() -> None:
    chunk = {"id": "c1", "choices": [{"index": 0, "delta": {"content": "z"}, "finish_reason": "stop"}], "usage": USAGE}
    assert _tee(rewrite=hide_injected_usage).split(_event(chunk))[0] == _event(chunk)


def test_nothing_after_the_last_event_goes_out_or_is_recorded() -> None:
    after = _event(_chunk("ghost", False))
    stream = _event(_chunk("a", False, "stop")) + b"data: [DONE]\n\n" + after
    tee = _tee()
    assert _through(tee, [stream]) == stream[: -len(after)]
    assert tee.over and tee.complete()
    assert tee.transcript.answer().content == "a"


def test_an_unterminated_last_event_is_forwarded_but_not_recorded() -> None:
    tee = _tee()
    assert _through(
        tee, [_event(_chunk("a", False)), b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"b"']
    ) == (_event(_chunk("a", False)) + b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"b"')
    assert tee.transcript.answer().content == "a"
    assert not tee.complete()  # no finish_reason, no [DONE]: a truncated answer


def test_a_gzipped_stream_is_read_and_forwarded_decoded() -> None:
    plain = _event(_chunk("a", False)) + _event(_chunk("b", False, "stop")) + b"data: [DONE]\n\n"
    packed = gzip.compress(plain)
    tee = _tee(content_encoding="gzip")
    assert tee.decoded
    assert _through(tee, [packed[i : i + 7] for i in range(0, len(packed), 7)]) == plain
    assert tee.transcript.answer().content == "ab"


def test_a_compressed_read_that_decodes_past_the_bound_is_refused_before_it_is_made() -> None:
    event = _event(_chunk("a", False))
    packed = gzip.compress(event * ((3 << 20) // len(event)))  # ~3 MB of events in a few KB
    assert len(packed) < 64 * 1024
    tee = Tee(
        ChatTranscript(FACTS),
        event_stream=True,
        max_body_copy=1 << 20,
        max_event_bytes=1 << 16,
        content_encoding="gzip",
    )
    with pytest.raises(ExpandsTooFar):
        tee.split(packed)
    # Within the bound, the same events are forwarded.
    whole, events = _tee(content_encoding="gzip").split(gzip.compress(event * 10))
    assert whole == event * 10 and len(events) == 10


def test_a_gzipped_answer_is_forwarded_as_it_came_and_read_for_the_record() -> None:
    body = json.dumps({"id": "x", "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}]})
    packed = gzip.compress(body.encode())
    tee = _tee(event_stream=False, content_encoding="GZIP")
    assert not tee.decoded
    assert _through(tee, [packed[:10], packed[10:]]) == packed
    assert tee.transcript.answer().content == "hi"


def test_non_streaming_answers_pass_whole_and_are_read_at_the_end() -> None:
    body = json.dumps(
        {"id": "x", "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}]}
    ).encode()
    tee = _tee(event_stream=False)
    assert tee.split(body[:5]) == (body[:5], []) and tee.split(body[5:]) == (body[5:], [])
    assert tee.end_of_body() == b""
    answer = tee.transcript.answer()
    assert answer.content == "hi" and answer.finish_reason == "stop"


def test_a_non_json_answer_is_an_error_of_the_record() -> None:
    tee = _tee(event_stream=False)
    _through(tee, [b'{"id": "x", "choi'])
    assert tee.transcript.answer().error is not None


def test_an_answer_too_big_to_copy_is_left_out_not_cut() -> None:
    tee = Tee(ChatTranscript(FACTS), event_stream=False, max_body_copy=10, max_event_bytes=1 << 16)
    _through(tee, [b'{"id": "x", "choices": []}'])
    assert tee.transcript.answer().error is None


def test_an_event_that_never_ends_is_refused() -> None:
    tee = _tee()
    with pytest.raises(EventTooLarge):
        tee.split(b"data: " + b"x" * 70_000)


def test_media_types_are_case_insensitive() -> None:
    assert is_event_stream({"Content-Type": "Text/Event-Stream; charset=utf-8"})
    assert is_event_stream({"Content-Type": "text/event-stream"})
    assert not is_event_stream({"Content-Type": "application/json"})
    assert not is_event_stream({})
