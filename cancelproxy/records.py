"""The record of one generation request: what was asked, what was sent, how it ended."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

__all__ = ["FINAL_STATUSES", "Record", "Status", "StopReason", "Usage"]

Status = Literal["in_progress", "completed", "stopped", "failed", "interrupted"]
StopReason = Literal["cancel", "disconnect"]

FINAL_STATUSES: frozenset[Status] = frozenset({"completed", "stopped", "failed", "interrupted"})


@dataclass(frozen=True)
class Usage:
    """What a request cost, under the same names for every protocol.

    Each protocol maps its provider's numbers here (Responses' input/output
    tokens, Anthropic's input/output tokens, ...). ``reasoning_tokens`` and
    ``cached_tokens`` are None where the provider did not say; ``estimated``
    where the proxy counted instead (a stream stopped before its usage came).
    """

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None
    estimated: bool = False

    @classmethod
    def estimate(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens, estimated=True)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.reasoning_tokens is not None:
            data["reasoning_tokens"] = self.reasoning_tokens
        if self.cached_tokens is not None:
            data["cached_tokens"] = self.cached_tokens
        if self.estimated:
            data["estimated"] = True
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Usage | None:
        """A stored usage; records of earlier versions held the provider's own
        chat usage dict, whose three counts have these names too."""
        if not isinstance(data, dict):
            return None

        def count(key: str) -> int | None:
            value = data.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        prompt, completion = count("prompt_tokens") or 0, count("completion_tokens") or 0
        total = count("total_tokens")
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion if total is None else total,
            reasoning_tokens=count("reasoning_tokens"),
            cached_tokens=count("cached_tokens"),
            estimated=data.get("estimated") is True,
        )


@dataclass
class Record:
    """One generation request as the store keeps it; ``protocol`` names its wire format.

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
    protocol: str = "chat"
    status: Status = "in_progress"
    stop_reason: StopReason | None = None
    finish_reason: str | None = None
    content: str = ""
    reasoning_content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage | None = None
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
        data = self.to_dict()
        del data["credential"], data["holder"]
        return data

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["usage"] = self.usage.to_dict() if self.usage is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        """A stored record. Fields this version does not know are left out:
        replicas sharing a store run different versions during a rolling
        upgrade, and a newer one's record must not break an older one's reads."""
        known = {name: value for name, value in data.items() if name in _FIELD_NAMES}
        return cls(**{**known, "usage": Usage.from_dict(data.get("usage"))})

    def to_json(self) -> bytes:
        """The record as the stores keep it: one compact UTF-8 JSON object, the
        fields in declaration order (the same JSON ``json.dumps(to_dict())``
        writes, so files and keys written either way read the same).

        It runs for every live stream at every flush: orjson serialises the
        dataclass itself in about a microsecond, where ``asdict`` (a deep copy)
        plus ``json.dumps`` takes tens.
        """
        try:
            return orjson.dumps(self, default=_fields, option=orjson.OPT_PASSTHROUGH_DATACLASS)
        except TypeError:  # orjson.JSONEncodeError, also from inside the hook
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
        """A copy to change apart from this one (its tool calls copied too).

        Every live stream's snapshot is one, at every flush: made from the
        fields as they are, in 0.8 µs, where ``dataclasses.replace`` (which
        runs ``__init__`` with every field) takes 3.8.
        """
        clone = object.__new__(Record)
        clone.__dict__.update(self.__dict__)
        clone.tool_calls = [dict(c) for c in self.tool_calls]
        return clone


_FIELD_NAMES = frozenset(field.name for field in dataclasses.fields(Record))


def _fields(obj: object) -> dict[str, Any]:
    """orjson's hook for the two dataclasses: a record's fields as they are, and
    its usage in the form ``Usage.to_dict`` gives (nothing None, ``estimated``
    only when true), as ``Record.to_dict`` writes it."""
    if isinstance(obj, Usage):
        return obj.to_dict()
    if isinstance(obj, Record):
        return obj.__dict__
    raise TypeError(f"{type(obj).__name__} is not a record")
