"""The record of one generation request: what was asked, what was sent, how it ended."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

__all__ = ["FINAL_STATUSES", "Record", "Status", "StopReason"]

Status = Literal["in_progress", "completed", "stopped", "failed", "interrupted"]
StopReason = Literal["cancel", "disconnect"]

FINAL_STATUSES: frozenset[Status] = frozenset({"completed", "stopped", "failed", "interrupted"})


@dataclass
class Record:
    """One ``POST .../chat/completions`` as the store keeps it.

    ``content``, ``reasoning_content`` and ``tool_calls`` are assembled from the
    deltas that were forwarded to the client, so after a stop they are exactly
    the partial answer the user saw. ``credential`` is a fingerprint, never a key;
    it decides who may read or cancel the record and is not shown in reads.
    """

    request_id: str
    session_id: str
    credential: str
    upstream: str
    model: str | None
    stream: bool
    created_at: float
    status: Status = "in_progress"
    stop_reason: StopReason | None = None
    finish_reason: str | None = None
    content: str = ""
    reasoning_content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    upstream_id: str | None = None
    error: dict[str, Any] | None = None
    first_token_at: float | None = None
    ended_at: float | None = None
    # The replica running it while in progress: a sweep marks the requests of
    # a replica that stopped heart-beating as interrupted. Not shown in reads.
    holder: str | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def public(self) -> dict[str, Any]:
        """The JSON a read route answers (everything but the credential)."""
        data = dataclasses.asdict(self)
        del data["credential"], data["holder"]
        return data

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        return cls(**data)

    def to_json(self) -> bytes:
        """The record as the stores keep it: one compact UTF-8 JSON object, the
        fields in declaration order (the same JSON ``json.dumps(to_dict())``
        writes, so files and keys written either way read the same).

        It runs for every live stream at every flush: orjson serialises the
        dataclass itself in about a microsecond, where ``asdict`` (a deep copy)
        plus ``json.dumps`` takes tens.
        """
        try:
            return orjson.dumps(self)
        except orjson.JSONEncodeError:
            # What orjson refuses and the json module writes: an integer past
            # 64 bits or a lone surrogate from an upstream's JSON. ASCII
            # escapes keep the text valid UTF-8 whatever the strings hold.
            return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Record:
        """The record ``to_json`` wrote (or the json module, in older files)."""
        try:
            fields = orjson.loads(data)
        except orjson.JSONDecodeError:
            fields = json.loads(data)  # NaN, big integers, lone surrogates: what orjson would not have written
        return cls.from_dict(fields)

    def copy(self) -> Record:
        return dataclasses.replace(self, tool_calls=[dict(c) for c in self.tool_calls])
