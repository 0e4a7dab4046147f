"""Reading a provider's JSON without trusting it: what every protocol's transcript shares.

A broken or hostile upstream must not break the bookkeeping: a payload that is
not a JSON object, a field of the wrong type, absurd nesting, all read as
"not there".
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["MAX_DEPTH", "bounded", "int_field", "joined", "parse_object", "str_field"]


def parse_object(raw: bytes) -> dict[str, Any] | None:
    """``raw`` as a JSON object, or None if it is not one."""
    try:
        # orjson: this parse runs for every event of every stream, ~4x faster
        # than json (its errors are ValueErrors too).
        obj = orjson.loads(raw)
    except ValueError:
        # What orjson refuses and clients read: a lone surrogate escape (an
        # emoji's halves in two deltas), NaN. The client was shown it, so the
        # record must hold it too.
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):  # bad JSON/UTF-8, absurd nesting
            return None
    except RecursionError:
        return None
    return obj if isinstance(obj, dict) else None


# How deep the upstream's free-form JSON the proxy keeps or writes again (an
# error object, a tool call's input, the Response object a cancelled ending
# repeats) may go. orjson reads 1,024 levels, but writes only 254, and
# Python's json writes fewer than 1,000: a record holding a value any deeper
# could never be stored, nor could the batch it is written in.
MAX_DEPTH = 32
TOO_DEEP = f"(nested deeper than {MAX_DEPTH} levels)"


def bounded(value: Any, depth: int = MAX_DEPTH) -> Any:
    """``value`` with every list or object nested deeper than ``depth`` levels
    replaced by a short note; as it is where it goes no deeper (a copy)."""
    if not isinstance(value, (dict, list)):
        return value
    if depth <= 0:
        return TOO_DEEP
    if isinstance(value, dict):
        return {key: bounded(item, depth - 1) for key, item in value.items()}
    return [bounded(item, depth - 1) for item in value]


def str_field(obj: dict[str, Any], key: str) -> str:
    """obj[key] if it is a string, else "" (null/missing/wrong type alike)."""
    v = obj.get(key)
    return v if isinstance(v, str) else ""


def int_field(obj: dict[str, Any], key: str) -> int | None:
    """obj[key] if it is an integer, 0 or more, else None. Every integer the
    proxy reads is a count, an index or a sequence number: one below zero is
    junk (and would make a metric counter refuse it)."""
    v = obj.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def joined(parts: list[str]) -> str:
    """Join and compact in place, so repeated reads don't re-join everything."""
    if len(parts) > 1:
        parts[:] = ["".join(parts)]
    return parts[0] if parts else ""
