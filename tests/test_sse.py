from __future__ import annotations

import json
import random

import pytest

from cancelproxy.sse import EventTooLarge, SSEFramer


def _chunk(i: int, content: str) -> bytes:
    obj = {
        "id": "chatcmpl-abc",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return json.dumps(obj).encode()


PAYLOADS = [_chunk(i, w) for i, w in enumerate(["Hel", "lo", ", wor", "ld ☃", "!"])]
# A realistic stream mixing the forms an upstream may send, event by event.
EVENTS = [
    b": OPENROUTER PROCESSING\n\n",
    b"data: " + PAYLOADS[0] + b"\n\n",
    b"data: " + PAYLOADS[1] + b"\n\n",
    b"event: message\r\nid: 7\r\ndata: " + PAYLOADS[2] + b"\r\n\r\n",
    b"data:" + PAYLOADS[3] + b"\r\n\n",  # no space after colon, mixed CRLF/LF
    b"retry: 100\n\n",
    b"data: line one\ndata: line two\n\n",
    b"data: " + PAYLOADS[4] + b"\n\n",
    b"data: [DONE]\n\n",
]
STREAM = b"".join(EVENTS)
# Offsets where an event ends: a prefix of STREAM may be forwarded up to the
# last of these it contains, and no further.
ENDS = [sum(len(e) for e in EVENTS[: k + 1]) for k in range(len(EVENTS))]
EXPECTED = PAYLOADS[:4] + [b"line one\nline two", PAYLOADS[4], b"[DONE]"]


def _feed(framer: SSEFramer, data: bytes) -> tuple[bytes, list[bytes]]:
    """``framer.feed`` with its events' offsets checked: each ends an event of ``whole``."""
    whole, events = framer.feed(data)
    ends = [end for end, _ in events]
    assert ends == sorted(ends) and all(0 < end <= len(whole) for end in ends)
    for end in ends:
        assert whole[:end].endswith(b"\n\n") or whole[:end].endswith(b"\n\r\n")
    return whole, [payload for _, payload in events]


def _flush(framer: SSEFramer) -> tuple[bytes, list[bytes]]:
    return framer.flush(), []


def _run(pieces: list[bytes]) -> tuple[bytes, list[bytes]]:
    framer = SSEFramer()
    out: list[bytes] = []
    payloads: list[bytes] = []
    fed = sent = 0
    for piece in pieces:
        whole, got = _feed(framer, piece)
        _check_whole(whole)
        out.append(whole)
        payloads += got
        fed += len(piece)
        sent += len(whole)
        assert framer.pending == fed - sent
        assert sent == max([0, *(e for e in ENDS if e <= fed)])  # no undue delay
    tail, got = _flush(framer)
    assert framer.pending == 0
    return b"".join(out) + tail, payloads + got


def _check_whole(whole: bytes) -> None:
    # Every forwarded piece ends at an event boundary.
    assert whole == b"" or whole.endswith(b"\n\n") or whole.endswith(b"\n\r\n")


def test_unsplit_stream() -> None:
    framer = SSEFramer()
    whole, payloads = _feed(framer, STREAM)
    assert whole == STREAM
    assert payloads == EXPECTED
    assert framer.pending == 0
    assert _flush(framer) == (b"", [])


def test_every_single_split_point() -> None:
    for i in range(len(STREAM) + 1):
        framer = SSEFramer()
        w1, p1 = _feed(framer, STREAM[:i])
        _check_whole(w1)
        assert len(w1) == max([0, *(e for e in ENDS if e <= i)]), i
        assert framer.pending == i - len(w1)
        w2, p2 = _feed(framer, STREAM[i:])
        _check_whole(w2)
        tail, p3 = _flush(framer)
        assert w1 + w2 + tail == STREAM, i
        assert tail == b""
        assert p1 + p2 + p3 == EXPECTED, i


def test_every_two_split_points_and_byte_by_byte() -> None:
    n = len(STREAM)
    for i in range(0, n + 1, 7):
        for j in range(i, n + 1, 5):
            joined, payloads = _run([STREAM[:i], STREAM[i:j], STREAM[j:]])
            assert joined == STREAM
            assert payloads == EXPECTED
    joined, payloads = _run([STREAM[k : k + 1] for k in range(n)])
    assert joined == STREAM
    assert payloads == EXPECTED


def test_random_cut_points() -> None:
    # Seeded, so a failure reproduces; complements the exhaustive cuts above.
    rng = random.Random(1234)
    for _ in range(500):
        cuts = sorted(rng.randrange(len(STREAM) + 1) for _ in range(rng.randrange(1, 30)))
        points = [0, *cuts, len(STREAM)]
        pieces = [STREAM[a:b] for a, b in zip(points, points[1:], strict=False)]
        joined, payloads = _run(pieces)
        assert joined == STREAM, cuts
        assert payloads == EXPECTED, cuts


def test_fast_path_returns_same_object() -> None:
    framer = SSEFramer()
    chunk = b"data: " + PAYLOADS[0] + b"\n\ndata: " + PAYLOADS[1] + b"\n\n"
    whole, payloads = _feed(framer, chunk)
    assert whole is chunk
    assert payloads == PAYLOADS[:2]
    crlf = b"data: x\r\n\r\n"
    whole, payloads = _feed(framer, crlf)
    assert whole is crlf
    assert payloads == [b"x"]


def test_partial_event_is_held_then_released() -> None:
    framer = SSEFramer()
    assert _feed(framer, b'data: {"a"') == (b"", [])
    assert framer.pending == 10
    whole, payloads = _feed(framer, b': 1}\n\ndata: {"b')
    assert whole == b'data: {"a": 1}\n\n'
    assert payloads == [b'{"a": 1}']
    assert framer.pending == len(b'data: {"b')
    whole, payloads = _feed(framer, b'": 2}\n')
    assert (whole, payloads) == (b"", [])
    whole, payloads = _feed(framer, b"\n")
    assert whole == b'data: {"b": 2}\n\n'
    assert payloads == [b'{"b": 2}']
    assert framer.pending == 0


def test_crlf_events() -> None:
    framer = SSEFramer()
    data = b"data: a\r\n\r\ndata: b\r\ndata:  c\r\n\r\ndata: d\r"
    whole, payloads = _feed(framer, data)
    assert whole == b"data: a\r\n\r\ndata: b\r\ndata:  c\r\n\r\n"
    # only one space is stripped after the colon
    assert payloads == [b"a", b"b\n c"]
    assert framer.pending == len(b"data: d\r")
    whole, payloads = _feed(framer, b"\n\r\n")
    assert (whole, payloads) == (b"data: d\r\n\r\n", [b"d"])


def test_a_data_line_ended_by_crlf_before_an_lf_blank_line_keeps_no_cr() -> None:
    framer = SSEFramer()
    data = b"data: a\r\n\ndata: b\n\ndata: \r\n\n"
    whole, payloads = _feed(framer, data)
    assert whole is data
    assert payloads == [b"a", b"b", b""]


def test_comment_and_field_only_events_have_no_payload() -> None:
    framer = SSEFramer()
    data = b": keep-alive\n\nevent: ping\nid: 3\n\nretry: 5\r\n\r\n"
    whole, payloads = _feed(framer, data)
    assert whole is data
    assert payloads == []


def test_data_field_edge_cases() -> None:
    framer = SSEFramer()
    data = b"data\n\ndata:\n\ndata:x\ndata\n\ndatax: no\n\n: data: no\n\n"
    whole, payloads = _feed(framer, data)
    assert whole == data
    # a bare "data" and an empty "data:" are empty values; "datax" is another field
    assert payloads == [b"", b"", b"x\n"]


def test_done_and_stray_blank_lines() -> None:
    framer = SSEFramer()
    whole, payloads = _feed(framer, b"data: [DONE]\n\n")
    assert payloads == [b"[DONE]"]
    # an extra blank line between events is released at once, without payload
    assert _feed(framer, b"\n") == (b"\n", [])
    assert _feed(framer, b"\r\ndata: y") == (b"\r\n", [])
    assert framer.pending == len(b"data: y")


def test_an_unterminated_last_event_is_forwarded_but_not_an_event() -> None:
    # SSE clients (openai-python's decoder among them) drop an event that
    # lacks its blank line at the end of the stream: it was never shown.
    framer = SSEFramer()
    whole, payloads = _feed(framer, b"data: a\n\ndata: b1\ndata: b2\n")
    assert (whole, payloads) == (b"data: a\n\n", [b"a"])
    assert framer.flush() == b"data: b1\ndata: b2\n"
    assert framer.pending == 0
    assert framer.flush() == b""
    framer.feed(b'data: {"partial')
    assert framer.flush() == b'data: {"partial'


def test_event_offsets() -> None:
    framer = SSEFramer()
    data = b": hi\n\ndata: a\n\nevent: x\r\ndata: b\r\n\r\n: tail\n\n"
    whole, events = framer.feed(data)
    assert whole is data
    assert events == [(len(b": hi\n\ndata: a\n\n"), b"a"), (len(data) - len(b": tail\n\n"), b"b")]


def test_an_event_that_never_ends_is_bounded() -> None:
    framer = SSEFramer(max_pending=1000)
    framer.feed(b"data: ok\n\ndata: " + b"x" * 900)
    with pytest.raises(EventTooLarge):
        framer.feed(b"x" * 200)
    with pytest.raises(EventTooLarge):
        SSEFramer(max_pending=10).feed(b"data: " + b"y" * 20)


def test_large_event_in_many_chunks() -> None:
    framer = SSEFramer()
    body = b"x" * 100_000
    _feed(framer, b"data: ")
    for k in range(0, len(body), 1000):
        assert _feed(framer, body[k : k + 1000]) == (b"", [])
    assert framer.pending == 6 + len(body)
    whole, payloads = _feed(framer, b"\n\n")
    assert whole == b"data: " + body + b"\n\n"
    assert payloads == [body]
