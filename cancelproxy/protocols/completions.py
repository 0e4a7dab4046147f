"""``completions``: legacy text completions (``POST /v1/completions``), as vLLM and llama.cpp serve them.

The same stream as ``chat`` (``data: {text_completion}`` events, a chunk with
``finish_reason``, an optional usage chunk, ``data: [DONE]``), but a choice
carries ``text`` instead of a delta. Usage is asked for and hidden again as
for chat (vLLM and OpenAI honour ``stream_options.include_usage`` here too).
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ProxyError, error_body
from .base import Answer, Prepared, RequestFacts
from .chat import ask_for_usage, chat_usage
from .fields import joined, str_field
from .openai import Chunks

__all__ = ["COMPLETIONS", "Completions", "CompletionsTranscript"]


class CompletionsTranscript(Chunks):
    object_name = "text_completion"

    def __init__(self, facts: RequestFacts) -> None:
        super().__init__(facts)
        self._text: list[str] = []

    def _take_choice(self, choice: dict[str, Any], stream: bool) -> bool:
        text = str_field(choice, "text")
        if text:
            self._text.append(text)
        return bool(text)

    def answer(self) -> Answer:
        return Answer(
            content=joined(self._text),
            finish_reason=self.finish_reason,
            usage=chat_usage(self.usage),
            upstream_id=self.upstream_id,
            model=self.model,
            error=self.error,
        )

    def _ending_choice(self, index: int, opened: bool, finish_reason: str) -> dict[str, Any]:
        return {"index": index, "text": "", "logprobs": None, "finish_reason": finish_reason}

    def _id_prefix(self) -> str:
        return "cmpl-"


class Completions:
    name = "completions"
    path = "completions"
    key_header = "Authorization"

    def prepare(self, payload: dict[str, Any], body: bytes) -> Prepared:
        return ask_for_usage(payload, body)

    def transcript(self, facts: RequestFacts) -> CompletionsTranscript:
        return CompletionsTranscript(facts)

    def estimate_prompt_tokens(self, payload: dict[str, Any]) -> int:
        """Characters of the prompt (a string or a list of them), / 4 rounded up.
        A prompt of token ids counts one per id."""
        prompt = payload.get("prompt")
        prompts = prompt if isinstance(prompt, list) else [prompt]
        chars, ids = 0, 0
        for item in prompts:
            if isinstance(item, str):
                chars += len(item)
            elif isinstance(item, int):
                ids += 1
            elif isinstance(item, list):
                ids += len(item)
        return math.ceil(chars / 4) + ids

    def error_body(self, error: ProxyError) -> dict[str, Any]:
        return error_body(error)


COMPLETIONS = Completions()
