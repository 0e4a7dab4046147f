"""A record's copy is equal to it and changes apart from it."""

from __future__ import annotations

from cancelproxy.records import Record, Usage


def test_a_copy_is_equal_and_its_changes_stay_its_own() -> None:
    record = Record(
        request_id="req_1",
        session_id="s",
        credential="c",
        upstream="u",
        model="m",
        stream=True,
        created_at=1.0,
        content="partial",
        tool_calls=[{"id": "t", "function": {"name": "f", "arguments": "{"}}],
        usage=Usage(1, 2, 3),
    )
    clone = record.copy()
    assert clone == record and type(clone) is Record and clone is not record
    clone.status = "stopped"
    clone.content += " more"
    clone.tool_calls[0]["id"] = "other"
    clone.tool_calls.append({"id": "u"})
    assert (record.status, record.content) == ("in_progress", "partial")
    assert record.tool_calls == [{"id": "t", "function": {"name": "f", "arguments": "{"}}]
