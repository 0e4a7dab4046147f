"""A fault inside the proxy itself: an OpenAI-shaped error and a ``failed`` record, never "completed".

The faults are injected into the app in-process (a real one can only be
provoked by a bug); nothing here depends on cancellation, which is what the
subprocess tests are for.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

import cancelproxy.generation
import cancelproxy.relay
from cancelproxy import create_app
from cancelproxy.config import parse_config

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]

_CONFIG = {"upstreams": [{"name": "mock", "base_url": "builtin:mock", "models": ["*"]}], "store": {"url": "memory://"}}


def _body(stream: bool) -> dict[str, Any]:
    return {"model": "mock-1", "stream": stream, "messages": [], "mock": {"tokens": 20, "rate": 0}}


class Boom(RuntimeError):
    pass


def broken(*args: object) -> None:
    """What each test puts in place of one piece of the proxy: a bug."""
    raise Boom("bug")


async def _record(client: TestClient[Any, Any], request_id: str) -> dict[str, Any]:
    async with client.get(f"/requests/{request_id}?wait=1") as response:
        return dict(await response.json())


@pytest.mark.parametrize("stream", [True, False])
async def test_a_fault_before_the_answer_is_a_500_in_openai_shape(
    aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    monkeypatch.setattr(cancelproxy.relay, "response_headers", broken)
    client = await aiohttp_client(create_app(parse_config(_CONFIG, env={})))
    async with client.post("/v1/chat/completions", json=_body(stream)) as response:
        assert response.status == 500
        assert response.content_type == "application/json"
        error = (await response.json())["error"]
        request_id = response.headers["X-Request-Id"]
    assert error["code"] == "internal_error" and "Boom" in error["message"]
    record = await _record(client, request_id)
    assert record["status"] == "failed" and record["error"]["code"] == "internal_error"


async def test_a_fault_mid_stream_ends_with_an_error_event(
    aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = cancelproxy.relay.Tee.commit
    calls = 0

    def commit_then_break(self: cancelproxy.relay.Tee, payloads: list[bytes]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:  # after the first bytes were written to the client
            raise Boom("bug")
        original(self, payloads)

    monkeypatch.setattr(cancelproxy.relay.Tee, "commit", commit_then_break)
    client = await aiohttp_client(create_app(parse_config(_CONFIG, env={})))
    async with client.post("/v1/chat/completions", json=_body(True)) as response:
        assert response.status == 200
        raw = await response.read()
        request_id = response.headers["X-Request-Id"]
    events = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert json.loads(events[-1])["error"]["code"] == "internal_error"
    record = await _record(client, request_id)
    assert record["status"] == "failed" and record["error"]["code"] == "internal_error"


@pytest.mark.parametrize("stream", [True, False])
async def test_a_fault_building_the_final_record_still_ends_it_failed_with_the_answer(
    aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    monkeypatch.setattr(cancelproxy.generation, "final_record", broken)
    client = await aiohttp_client(create_app(parse_config(_CONFIG, env={})))
    async with client.post("/v1/chat/completions", json=_body(stream)) as response:
        assert response.status == 200  # the client had its whole answer already
        raw = await response.read()
        request_id = response.headers["X-Request-Id"]
    if stream:
        sent = "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in raw.split(b"\n")
            if line.startswith(b"data: {") and json.loads(line[6:])["choices"]
        )
    else:
        sent = json.loads(raw)["choices"][0]["message"]["content"]
    record = await _record(client, request_id)  # not left in progress
    assert record["status"] == "failed" and record["error"]["code"] == "internal_error"
    assert record["content"] == sent and sent


async def test_a_fault_reporting_the_end_still_stores_the_record(
    aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cancelproxy.generation.Generation, "_report", broken)
    client = await aiohttp_client(create_app(parse_config(_CONFIG, env={})))
    async with client.post("/v1/chat/completions", json=_body(False)) as response:
        assert response.status == 200
        sent = (await response.json())["choices"][0]["message"]["content"]
        request_id = response.headers["X-Request-Id"]
    record = await _record(client, request_id)
    assert (record["status"], record["content"]) == ("completed", sent)
