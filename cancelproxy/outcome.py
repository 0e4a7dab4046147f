"""How a generation request ended, as the record and the audit trail tell it (pure).

The relay gathers the facts (was it stopped and why, did the upstream fail,
what was relayed); these functions turn them into the final record and its
audit line. No I/O here: the relay writes both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .errors import ProxyError, error_body
from .live import StopCause
from .protocols.base import Answer
from .protocols.fields import bounded
from .records import Record, Usage

__all__ = ["Ending", "audit_entry", "final_record"]


@dataclass(frozen=True)
class Ending:
    """The facts of how a request ended."""

    stop: StopCause | None  # a cancel route, the client leaving, or shutdown
    failure: ProxyError | None  # the proxy's own verdict on the upstream (unreachable, broke off, timed out)
    upstream_status: int | None  # None: the upstream never answered
    answer: Answer  # what was relayed, read back
    estimated_usage: Usage  # for an answer whose usage the upstream never sent
    cancel_finish_reason: str
    ended_at: float


def final_record(snapshot: Record, ending: Ending) -> Record:
    """The record's final state; ``snapshot`` is its state at the end (not changed)."""
    record = snapshot.copy()
    record.ended_at = ending.ended_at
    answer, status = ending.answer, ending.upstream_status
    if ending.stop == "shutdown":
        record.status = "interrupted"
        record.finish_reason = ending.cancel_finish_reason  # what the client was sent
    elif ending.stop is not None:
        record.status = "stopped"
        record.stop_reason = ending.stop
        if ending.stop == "cancel":
            record.finish_reason = ending.cancel_finish_reason
    elif ending.failure is not None:
        record.status = "failed"
        record.error = error_body(ending.failure)["error"]
    elif status is not None and status >= 400:
        record.status = "failed"
        provider_error = answer.error or {}
        record.error = bounded({"message": f"upstream answered {status}", **provider_error, "status": status})
    elif answer.error is not None:
        record.status = "failed"  # an error event mid-stream
        record.error = bounded(answer.error)
    else:
        record.status = "completed"
    record.finish_reason = record.finish_reason or answer.finish_reason
    if answer.usage is not None:
        # The provider's own numbers, whenever it sent them (a failed
        # Responses stream's response.failed carries them too): exact beats
        # an estimate, however the request ended.
        record.usage = answer.usage
    elif status is None or status >= 400:
        # It never answered, or refused (a 429, a 400): nothing was generated,
        # and a rejected prompt is not billed; an estimate would count it spent.
        record.usage = None
    else:
        record.usage = ending.estimated_usage
    return record


def audit_entry(
    record: Record,
    *,
    cancel_s: float | None,
    bytes_out: int,
    client: str | None,
    readers: int = 1,
    resumes: int = 0,
) -> tuple[dict[str, Any], float | None]:
    """The audit line of a final record, and its time to first token (seconds)."""
    ended = record.ended_at if record.ended_at is not None else record.created_at
    ttft_s = record.first_token_at - record.created_at if record.first_token_at is not None else None
    entry = {
        "ts": datetime.fromtimestamp(ended, UTC).isoformat(timespec="milliseconds"),
        "request_id": record.request_id,
        "session_id": record.session_id,
        "upstream": record.upstream,
        "protocol": record.protocol,
        "model": record.model,
        "stream": record.stream,
        "status": record.status,
        "stop_reason": record.stop_reason,
        "finish_reason": record.finish_reason,
        "ttft_ms": _ms(ttft_s),
        "duration_ms": _ms(ended - record.created_at),
        "cancel_ms": _ms(cancel_s),
        # "estimated" always, so a summary can count exact and estimated apart.
        "usage": {**record.usage.to_dict(), "estimated": record.usage.estimated} if record.usage is not None else None,
        "bytes_out": bytes_out,
        "readers": readers,  # the most that followed it at once, its own client included
        "resumes": resumes,  # readers that resumed it
        "client": client,
        "credential": record.credential,
        "error": record.error,
    }
    return entry, ttft_s


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 3) if seconds is not None else None
