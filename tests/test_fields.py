"""Reading and keeping an upstream's JSON: a deep value is cut where it can no longer be written."""

from __future__ import annotations

import json

import orjson

from cancelproxy.protocols.fields import MAX_DEPTH, TOO_DEEP, bounded


def _nest(depth: int, leaf: object = 1) -> object:
    value = leaf
    for level in range(depth):
        value = {"a": value} if level % 2 else [value]
    return value


def test_a_value_within_the_bound_is_kept_as_it_is() -> None:
    value = {"message": "bad", "detail": [{"loc": ["body", "x"], "n": 1.5, "ok": None}], "deep": _nest(MAX_DEPTH - 1)}
    assert bounded(value) == value


def test_what_goes_deeper_is_cut_and_the_rest_can_be_written() -> None:
    deep = orjson.loads(b'{"a":' * 1000 + b"1" + b"}" * 1000)  # orjson reads it; neither encoder writes it
    cut = bounded({"message": "bad", "input": deep})
    assert cut["message"] == "bad"
    text = json.dumps(cut)
    assert orjson.loads(orjson.dumps(cut)) == json.loads(text)
    assert text.count('{"a": ') == MAX_DEPTH - 1 and json.dumps(TOO_DEEP) in text
