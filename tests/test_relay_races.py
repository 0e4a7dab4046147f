"""A stop that lands at one exact await of the relay, and how the exchange ends then.

A subprocess hits these awaits only by chance; here the stop is made at the
await itself, in-process, as the cancel route makes it (``Registry.stop``:
synchronous, before the route awaits anything).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

import cancelproxy.relay
from cancelproxy import create_app
from cancelproxy.config import parse_config
from cancelproxy.sse import Event

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
Relay = cancelproxy.relay.Relay

_CONFIG = {"upstreams": [{"name": "mock", "base_url": "builtin:mock", "models": ["*"]}], "store": {"url": "memory://"}}


def _body(mock: dict[str, Any]) -> dict[str, Any]:
    return {"model": "mock-1", "stream": True, "messages": [], "mock": mock}


def _cancel(relay: Relay) -> list[str]:
    """What a cancel route does on arrival: the request ids it stopped."""
    registry = relay._services.registry
    live = registry.get(relay._ids["X-Request-Id"])
    assert live is not None
    return [stopped.request_id for stopped in registry.stop([live], "cancel")]


def _chunks(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]


async def _record(client: TestClient[Any, Any], request_id: str) -> dict[str, Any]:
    async with client.get(f"/requests/{request_id}?wait=1") as response:
        return dict(await response.json())


async def test_a_cancel_while_the_last_event_is_written_leaves_the_answer_whole(
    aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop was taken: the client got a cancelled ending after the upstream's own
    [DONE], and the record said stopped for an answer the upstream had finished."""
    write = Relay._write
    stopped: list[list[str]] = []

    async def cancelled_during_the_last_write(self: Relay, data: bytes, events: list[Event] | None = None) -> None:
        if self._tee.over and not stopped:
            stopped.append(_cancel(self))
        await write(self, data, events)

    monkeypatch.setattr(Relay, "_write", cancelled_during_the_last_write)
    client = await aiohttp_client(create_app(parse_config(_CONFIG, env={})))
    async with client.post("/v1/chat/completions", json=_body({"tokens": 20, "rate": 0})) as response:
        raw = await response.read()
        request_id = response.headers["X-Request-Id"]
    assert stopped == [[]]  # nothing left to stop: the route answers "cancelled": false
    assert raw.endswith(b"data: [DONE]\n\n") and raw.count(b"data: [DONE]") == 1
    finishes = [choice["finish_reason"] for chunk in _chunks(raw) for choice in chunk["choices"]]
    assert [f for f in finishes if f] == ["stop"]
    record = await _record(client, request_id)
    assert (record["status"], record["stop_reason"], record["finish_reason"]) == ("completed", None, "stop")


async def test_a_client_whose_write_timed_out_gets_no_ending(
    aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel came while a write waited on the client, then the write timed out: the
    cancelled ending was written to that client all the same, with no bound."""
    write = Relay._write

    async def cancelled_then_timed_out(self: Relay, data: bytes, events: list[Event] | None = None) -> None:
        _cancel(self)
        await write(self, data, events)
        raise TimeoutError  # as the stream's deadline ends a write past write_timeout_s

    monkeypatch.setattr(Relay, "_write", cancelled_then_timed_out)
    client = await aiohttp_client(create_app(parse_config(_CONFIG, env={})))
    raw = bytearray()
    # Paced: the first write is not the one of the last event, so there is a stream to stop.
    async with client.post("/v1/chat/completions", json=_body({"tokens": 1000, "rate": 100})) as response:
        request_id = response.headers["X-Request-Id"]
        with pytest.raises(aiohttp.ClientPayloadError):  # dropped: no end of body
            async for data in response.content.iter_any():
                raw += data
    assert b'"finish_reason":"cancelled"' not in raw
    record = await _record(client, request_id)
    assert (record["status"], record["stop_reason"]) == ("stopped", "cancel")
    shown = "".join(choice["delta"].get("content") or "" for chunk in _chunks(raw) for choice in chunk["choices"])
    assert record["content"].startswith(shown)
