"""How a request ended → its final record and audit line (pure)."""

from __future__ import annotations

import json

import pytest

from cancelproxy.errors import UpstreamBroken
from cancelproxy.outcome import Ending, audit_entry, final_record
from cancelproxy.protocols.base import Answer, RequestFacts
from cancelproxy.protocols.chat import ChatTranscript
from cancelproxy.records import Record, Usage


def _snapshot() -> Record:
    return Record(
        request_id="req_1",
        session_id="s",
        credential="sha256:ab",
        upstream="u",
        model="m",
        stream=True,
        created_at=100.0,
        first_token_at=100.25,
        content="w0 w1 ",
    )


def _answer(*chunks: dict[str, object]) -> Answer:
    transcript = ChatTranscript(RequestFacts("req_1", "m", True))
    for chunk in chunks:
        transcript.add_event(json.dumps(chunk).encode())
    return transcript.answer()


DELTAS = [
    {"id": "c", "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]} for t in ("w0 ", "w1 ")
]
USAGE = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


def _ending(**facts: object) -> Ending:
    base: dict[str, object] = {
        "stop": None,
        "failure": None,
        "upstream_status": 200,
        "answer": _answer(*DELTAS),
        "estimated_usage": Usage.estimate(4, 2),
        "cancel_finish_reason": "cancelled",
        "ended_at": 101.0,
    }
    return Ending(**{**base, **facts})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("facts", "status", "stop_reason", "finish_reason"),
    [
        ({"stop": "cancel"}, "stopped", "cancel", "cancelled"),
        ({"stop": "disconnect"}, "stopped", "disconnect", None),
        ({"stop": "shutdown"}, "interrupted", None, "cancelled"),
        ({"failure": UpstreamBroken("broke")}, "failed", None, None),
        ({"upstream_status": 429}, "failed", None, None),
        ({}, "completed", None, None),
    ],
)
def test_status_and_reasons(
    facts: dict[str, object], status: str, stop_reason: str | None, finish_reason: str | None
) -> None:
    record = final_record(_snapshot(), _ending(**facts))
    assert (record.status, record.stop_reason, record.finish_reason) == (status, stop_reason, finish_reason)
    assert record.ended_at == 101.0
    if status == "failed" and facts.get("upstream_status") == 429:
        assert record.usage is None  # refused: nothing was generated or billed
    else:
        assert record.usage == Usage(prompt_tokens=4, completion_tokens=2, total_tokens=6, estimated=True)


@pytest.mark.parametrize("status", [400, 429, 503])
def test_a_refused_request_spent_nothing(status: int) -> None:
    # Counted as its prompt estimate, a burst of 429s showed up as tokens spent
    # in the records, the audit trail and the metrics.
    record = final_record(_snapshot(), _ending(upstream_status=status, answer=_answer()))
    assert (record.status, record.usage) == ("failed", None)


@pytest.mark.parametrize("facts", [{"stop": "cancel"}, {"failure": UpstreamBroken("broke")}], ids=["stopped", "failed"])
def test_the_providers_own_usage_is_kept_however_it_ended(facts: dict[str, object]) -> None:
    answer = _answer(*DELTAS, {"id": "c", "choices": [], "usage": USAGE})
    record = final_record(_snapshot(), _ending(answer=answer, **facts))
    assert record.usage == Usage(prompt_tokens=4, completion_tokens=2, total_tokens=6)


def test_a_stop_wins_over_the_error_the_closed_upstream_caused() -> None:
    record = final_record(_snapshot(), _ending(stop="cancel", failure=UpstreamBroken("closed by us")))
    assert (record.status, record.error) == ("stopped", None)


def test_completed_with_the_upstreams_usage_and_a_provider_error_kept() -> None:
    done = {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    record = final_record(_snapshot(), _ending(answer=_answer(*DELTAS, done, {"choices": [], "usage": USAGE})))
    assert (record.status, record.finish_reason, record.usage) == ("completed", "stop", Usage(4, 2, 6))
    failed = final_record(_snapshot(), _ending(upstream_status=429, answer=_answer({"error": {"code": "rate"}})))
    assert failed.error == {"message": "upstream answered 429", "code": "rate", "status": 429}


def test_the_snapshot_is_not_changed() -> None:
    snapshot = _snapshot()
    final_record(snapshot, _ending(stop="cancel"))
    assert snapshot.status == "in_progress"


def test_audit_entry() -> None:
    record = final_record(_snapshot(), _ending(stop="cancel"))
    entry, ttft_s = audit_entry(record, cancel_s=0.0012, bytes_out=321, client="127.0.0.1")
    assert ttft_s == 0.25
    assert entry["ts"] == "1970-01-01T00:01:41.000+00:00"
    assert (entry["ttft_ms"], entry["duration_ms"], entry["cancel_ms"]) == (250.0, 1000.0, 1.2)
    assert entry["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6, "estimated": True}
    assert (entry["bytes_out"], entry["client"], entry["credential"]) == (321, "127.0.0.1", "sha256:ab")


def test_no_usage_when_the_upstream_never_answered() -> None:
    record = final_record(_snapshot(), _ending(upstream_status=None, failure=UpstreamBroken("unreachable")))
    assert (record.status, record.usage) == ("failed", None)
