"""A deterministic mock provider that records what it saw.

It speaks OpenAI Chat Completions, the OpenAI Responses API, Anthropic
Messages and legacy text completions, and the abort endpoints of SGLang and
llama.cpp. Its answers are a pure function of the request (bytes compare
across runs); a body's ``mock`` object makes it slow, silent, chatty, broken,
reset or deaf to a closed connection on demand (``plan.py`` lists the knobs).
"""

from __future__ import annotations

from .app import create_mock_app, run_mock, start_mock
from .plan import MockDefaults

__all__ = ["MockDefaults", "create_mock_app", "run_mock", "start_mock"]
