"""The mock app's state, one key per resource (no module globals)."""

from __future__ import annotations

from aiohttp import web

from .engine import Engine
from .plan import MockDefaults
from .recorder import AbortLog, Recorder

__all__ = ["ABORTS", "DEFAULTS", "ENGINE", "RECORDER"]

DEFAULTS = web.AppKey("mock_defaults", MockDefaults)
RECORDER = web.AppKey("mock_recorder", Recorder)
ENGINE = web.AppKey("mock_engine", Engine)
ABORTS = web.AppKey("mock_aborts", AbortLog)
