"""What OpenAI's two choice streams share: ``chat`` and ``completions``.

Both send ``data: {chunk}`` events whose ``choices[]`` carry the text, a last
choice chunk with ``finish_reason``, an optional usage chunk, then
``data: [DONE]``; a non-streaming answer is one JSON object with the same
``choices``. Only what their choices hold differs, so each protocol module
subclasses ``Chunks`` with its own ``_take_choice`` and ``answer``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..errors import ProxyError, error_body
from ..records import Usage
from .base import Answer, RequestFacts
from .fields import parse_object, str_field

__all__ = ["Chunks"]

_DONE = b"[DONE]"
# The most choices a cancelled ending finishes: OpenAI's largest ``n``, and
# the most openai-node's stream helper takes before it throws.
MAX_CHOICES = 128


class Chunks:
    """A transcript of a choice stream; subclasses read what a choice holds."""

    object_name = ""  # the "object" of a chunk this protocol sends

    def __init__(self, facts: RequestFacts) -> None:
        self._facts = facts
        self.tokens = 0
        self.finish_reason: str | None = None  # the last non-null one
        self.usage: dict[str, Any] | None = None  # the provider's own, last non-null
        self.upstream_id: str | None = None
        self.model: str | None = None
        self.error: dict[str, Any] | None = None
        self.done = False  # saw [DONE]
        # Each choice index the client was sent, and whether it was sent all
        # a stream helper needs to open that choice (a chat choice's role).
        self._choices: dict[int, bool] = {}
        self._finished: set[int] = set()  # the choices the client saw a finish_reason for

    # ---- reading -----------------------------------------------------

    def ends_stream(self, payload: bytes) -> bool:
        # JSON chunks start with "{": only test for [DONE] otherwise, so the
        # hot path pays no strip() copy.
        return payload[:1] != b"{" and payload.strip() == _DONE

    def add_event(self, payload: bytes) -> None:
        if payload[:1] != b"{" and payload.strip() == _DONE:
            self.done = True
            return
        obj = parse_object(payload)
        choice = self._take_object(obj) if obj is not None else None
        if choice is not None and self._take_choice(choice, stream=True):
            self.tokens += 1

    def add_body(self, body: bytes) -> bool:
        """A whole non-streaming answer; ``tokens`` is left alone (it carries its own usage)."""
        obj = parse_object(body)
        if obj is None:
            self.error = {"message": "the upstream's answer is not a JSON object", "code": "upstream_invalid_answer"}
            return False
        choice = self._take_object(obj)
        if choice is not None:
            self._take_choice(choice, stream=False)
        return True

    def complete(self) -> bool:
        # Some servers end a stream after its finish_reason without [DONE];
        # the SDKs take that as a whole answer, and so does the record.
        return self.done or self.finish_reason is not None

    def _take_object(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Note error/id/model/usage/finish_reason; choice 0, if there is one."""
        err = obj.get("error")
        if err is None and obj.get("object") == "error":
            err = obj  # vLLM-style top-level error object
        if err is not None:
            # Some providers send {"error": "text"}: keep the dict shape. Go on
            # reading: OpenRouter puts a mid-stream error on a normal chunk.
            self.error = err if isinstance(err, dict) else {"message": str(err)}
        # First non-empty wins: Azure's first chunk (prompt filter results)
        # carries id "" and model "".
        self.upstream_id = self.upstream_id or str_field(obj, "id") or None
        self.model = self.model or str_field(obj, "model") or None
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        choices = obj.get("choices")
        if not isinstance(choices, list):  # [] on the include_usage chunk
            return None
        first = None
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            finish = choice.get("finish_reason")  # read once: every chunk has it, nearly always null
            if type(index) is int and 0 <= index < MAX_CHOICES:
                # A choice's opening comes once, so the look-up is all most events pay.
                if not self._choices.get(index):
                    self._choices[index] = self._opens_choice(choice)
                if finish:
                    self._finished.add(index)
            if index == 0 and first is None:
                if finish and isinstance(finish, str):
                    self.finish_reason = finish
                first = choice
        return first

    def _opens_choice(self, choice: dict[str, Any]) -> bool:
        """Whether ``choice`` gives the client all it needs to open it in a snapshot."""
        return True

    def _take_choice(self, choice: dict[str, Any], stream: bool) -> bool:
        """Add a choice's text; True if it carried any."""
        raise NotImplementedError

    def answer(self) -> Answer:
        raise NotImplementedError

    def estimated_usage(self, prompt_tokens: int) -> Usage:
        # One token per text-carrying delta: about right on OpenAI and DeepSeek.
        return Usage.estimate(prompt_tokens, self.tokens)

    # ---- endings the proxy writes --------------------------------------

    def _ending_choice(self, index: int, opened: bool, finish_reason: str) -> dict[str, Any]:
        raise NotImplementedError

    def cancelled_ending(self, finish_reason: str) -> bytes:
        # Every choice the client was sent is finished, choice 0 even if none
        # was: the SDKs' stream helpers refuse a snapshot with an unfinished
        # one. A choice that had finished keeps its own finish_reason, unless
        # all had: the ending still needs a choice to carry the cancel.
        seen = self._choices.keys()
        indexes = sorted(({0} - seen) | (seen - self._finished)) or [0]
        chunk = {
            "id": self.upstream_id or f"{self._id_prefix()}{self._facts.request_id}",
            "object": self.object_name,
            "created": int(time.time()),
            "model": self.model or self._facts.model or "",
            "choices": [self._ending_choice(i, self._choices.get(i, False), finish_reason) for i in indexes],
        }
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\ndata: [DONE]\n\n"

    def _id_prefix(self) -> str:
        return "chatcmpl-"

    def error_event(self, error: ProxyError) -> bytes:
        """The event openai-python turns into an ``APIError`` mid-stream."""
        return b"data: " + json.dumps(error_body(error), separators=(",", ":")).encode() + b"\n\n"
