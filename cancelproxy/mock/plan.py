"""What one request asks of the mock: the defaults with its body's ``mock`` overrides.

The knobs are the same for every wire format, so a test can run one scenario
against chat, responses, messages and completions alike; a format that cannot
express a knob (legacy completions have no tool calls) refuses it by name.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal, get_args

__all__ = [
    "MODEL_ID",
    "BadRequest",
    "Json",
    "MockDefaults",
    "OnAbort",
    "Plan",
    "Protocol",
    "parse_plan",
]

Json = dict[str, Any]
Protocol = Literal["chat", "responses", "messages", "completions"]
# What the abort endpoints do for this generation: stop it (as engines do), or
# misbehave so a test can show the proxy's abort hook is bounded.
OnAbort = Literal["stop", "hang", "fail"]

MODEL_ID = "mock-1"


@dataclass(frozen=True)
class MockDefaults:
    tokens: int = 40  # content deltas per answer
    rate: float = 20.0  # deltas per second; 0 = as fast as possible (no sleeps)
    silence_s: float = 0.0  # wait before the first delta


@dataclass(frozen=True)
class Plan:
    """One request's behaviour. A *piece* is one counted delta: reasoning first, then text."""

    protocol: Protocol
    model: str
    stream: bool
    include_usage: bool
    prompt_tokens: int
    tokens: int
    rate: float
    silence_s: float
    keepalive_s: float | None = None
    headers_after_silence: bool = False
    reasoning: int = 0
    tool_call: bool = False
    refusal: bool = False
    fail_after: int | None = None
    burst_then_reset: bool = False
    error_after: int | None = None
    status: int | None = None
    tag: str | None = None
    ignore_close: bool = False
    on_abort: OnAbort = "stop"

    def delay(self, pieces: int) -> float:
        return pieces / self.rate if self.rate > 0 else 0.0

    @property
    def pieces(self) -> int:
        return self.reasoning + self.tokens

    @property
    def breaks_after(self) -> int | None:
        """The pieces sent before the answer breaks (reset or error event), if it does."""
        limit = self.fail_after if self.fail_after is not None else self.error_after
        return None if limit is None else min(limit, self.pieces)

    @property
    def cut(self) -> int:
        """The pieces actually generated."""
        limit = self.breaks_after
        return self.pieces if limit is None else limit


class BadRequest(Exception):
    """The body cannot be served; answered with a 400 in the protocol's error shape."""


# The ``mock`` options a request may set, with their JSON types.
_OPTIONS: dict[str, type] = {
    "tokens": int,
    "rate": float,
    "silence_s": float,
    "keepalive_s": float,
    "reasoning": int,
    "tool_call": bool,
    "refusal": bool,
    "fail_after": int,
    "burst_then_reset": bool,
    "error_after": int,
    "status": int,
    "tag": str,
    "headers_after_silence": bool,
    "ignore_close": bool,
    "on_abort": str,
}


def _option(key: str, value: Any) -> Any:
    kind = _OPTIONS.get(key)
    if kind is None:
        raise BadRequest(f"unknown mock option {key!r}")  # a typo must not pass silently
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    # bool is an int subclass, but ``"tokens": true`` is a mistake, not a 1.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise BadRequest(f"mock.{key} must be {kind.__name__}")
    if isinstance(value, (int, float)) and value < 0:
        raise BadRequest(f"mock.{key} must not be negative")
    return value


def parse_plan(
    body: Any,
    defaults: MockDefaults,
    protocol: Protocol,
    count_prompt: Callable[[Json], int],
    unsupported: Collection[str] = (),
) -> Plan:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    mock, stream_options = body.get("mock") or {}, body.get("stream_options") or {}
    if not isinstance(mock, dict) or not isinstance(stream_options, dict):
        raise BadRequest("mock and stream_options must be objects")
    options = {key: _option(key, value) for key, value in mock.items() if value is not None}
    if options.get("keepalive_s") == 0:
        del options["keepalive_s"]  # a 0 period would spin: read it as "no keep-alives"
    if not 400 <= options.get("status", 400) <= 599:
        raise BadRequest("mock.status must be an HTTP error status (400-599)")
    if options.get("headers_after_silence") and "keepalive_s" in options:
        raise BadRequest("keep-alive comments need the headers sent: drop headers_after_silence")
    if options.get("on_abort", "stop") not in get_args(OnAbort):
        raise BadRequest(f"mock.on_abort must be one of {', '.join(get_args(OnAbort))}")
    if "fail_after" in options and "error_after" in options:
        raise BadRequest("mock.fail_after and mock.error_after both end the answer: choose one")
    if options.get("refusal") and options.get("tool_call"):
        raise BadRequest("mock.refusal and mock.tool_call exclude each other")
    for key in unsupported:
        if options.get(key):
            raise BadRequest(f"mock.{key} has no form in the {protocol} protocol")
    model = body.get("model", MODEL_ID)
    if not isinstance(model, str):
        raise BadRequest("model must be a string")
    return Plan(
        **{
            "protocol": protocol,
            "model": model,
            "stream": body.get("stream") is True,
            "include_usage": stream_options.get("include_usage") is True,
            "prompt_tokens": count_prompt(body),
            "tokens": defaults.tokens,
            "rate": defaults.rate,
            "silence_s": defaults.silence_s,
            **options,
        }
    )
