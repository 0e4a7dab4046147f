"""The deterministic answer every wire format carries: the same words, only dressed differently.

Text is ``w0 w1 ...``, reasoning ``r0 r1 ...`` and a tool call's arguments the
JSON ``{"city": "w0 w1 ..."}`` cut into as many pieces as there are tokens, so
a test can compare what any protocol assembled with one expected string.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .plan import Plan

__all__ = ["TOOL_CALL_ID", "TOOL_NAME", "Answer", "split"]

TOOL_CALL_ID = "call_mock_1"
TOOL_NAME = "get_weather"


def split(text: str, parts: int) -> list[str]:
    return [text[i * len(text) // parts : (i + 1) * len(text) // parts] for i in range(parts)]


def _tool_arguments(tokens: int) -> str:
    return json.dumps({"city": " ".join(f"w{i}" for i in range(tokens))})


@dataclass(frozen=True)
class Answer:
    """The counted pieces of one answer, in the order they are generated."""

    reasoning: tuple[str, ...]
    text: tuple[str, ...]  # the message's text (or refusal); empty for a tool call
    arguments: tuple[str, ...]  # the tool call's argument JSON in pieces; empty otherwise

    @classmethod
    def of(cls, plan: Plan) -> Answer:
        reasoning = tuple(f"r{i} " for i in range(plan.reasoning))
        if plan.tool_call:
            return cls(reasoning, (), tuple(split(_tool_arguments(plan.tokens), plan.tokens)))
        return cls(reasoning, tuple(f"w{i} " for i in range(plan.tokens)), ())

    @property
    def pieces(self) -> int:
        return len(self.reasoning) + len(self.text) + len(self.arguments)

    def first(self, pieces: int) -> Answer:
        """The answer as far as ``pieces`` counted pieces go (what was generated before a break)."""
        reasoning = self.reasoning[:pieces]
        rest = max(0, pieces - len(reasoning))
        return Answer(reasoning, self.text[:rest], self.arguments[:rest])
