"""Upstream ``abort:`` hooks: an engine that keeps generating after its client left gets its own stop request.

The mock plays such an engine (``ignore_close``: it goes on counting tokens
after the connection closed) and records every abort it is sent.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from .conftest import MockProvider, Proxy, start_proxy
from .helpers import provider_request, read_record, until
from .scripted_upstream import Script, scripted_upstream, sse_head
from .scripted_upstream import chunk as http_chunk

KEY = "sk-aborts-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def aborting_proxy(mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    base = mock_provider.base_url
    config = {
        "default_upstream": "sglang",
        "upstreams": [
            {
                "name": "sglang",
                "base_url": base,
                "models": ["sglang-*"],
                "abort": {"method": "POST", "path": "/abort_request", "body": {"rid": "{upstream_id}"}, "timeout_s": 1},
            },
            {
                "name": "llamacpp",
                "base_url": base,
                "models": ["llama-*"],
                "abort": {"method": "DELETE", "path": "/v1/stream/{upstream_id}", "timeout_s": 1},
            },
        ],
        "store": {"url": "memory://"},
    }
    proxy = start_proxy(tmp_path_factory.mktemp("aborts"), config)
    yield proxy
    proxy.program.stop()


async def _aborts(mock: MockProvider, tag: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{mock.root}/_mock/aborts", params={"tag": tag, "count": "1", "timeout": "10"}) as r:
            assert r.status == 200, await r.text()
            return list((await r.json())["aborts"])


async def _metric(proxy: Proxy, outcome: str, upstream: str) -> float:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proxy.root}/metrics") as r:
            text = await r.text()
    line = f'cancelproxy_upstream_aborts_total{{outcome="{outcome}",upstream="{upstream}"}}'
    return next((float(row.split()[-1]) for row in text.splitlines() if row.startswith(line)), 0.0)


async def _stream(proxy: Proxy, model: str, mock: dict[str, Any]) -> tuple[openai.AsyncOpenAI, Any]:
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "x"}], stream=True, extra_body={"mock": mock}
    )
    return client, stream


@pytest.mark.parametrize(("model", "kind"), [("sglang-1", "sglang"), ("llama-1", "llamacpp")])
async def test_a_cancel_is_followed_by_the_engines_abort(
    aborting_proxy: Proxy, mock_provider: MockProvider, model: str, kind: str
) -> None:
    tag = f"abort-cancel-{uuid.uuid4().hex[:8]}"
    client, stream = await _stream(
        aborting_proxy, model, {"tokens": 5000, "rate": 50, "tag": tag, "ignore_close": True}
    )
    request_id = stream.response.headers["x-request-id"]
    async with client:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content == "w2 ":
                async with aiohttp.ClientSession() as session:
                    async with session.post(f"{aborting_proxy.root}/requests/{request_id}/cancel", headers=AUTH) as r:
                        assert (await r.json())["cancelled"] is True
    (abort,) = await _aborts(mock_provider, tag)
    assert (abort["kind"], abort["rid"], abort["outcome"]) == (kind, f"chatcmpl-mock-{tag}", "stopped")
    seen = await provider_request(mock_provider.root, tag, wait="ended")
    assert seen["state"] == "aborted" and seen["tokens_sent"] < 5000  # the zombie did not run to the end
    assert (await read_record(aborting_proxy.root, request_id, KEY))["status"] == "stopped"


async def test_a_disconnect_is_followed_by_the_engines_abort(
    aborting_proxy: Proxy, mock_provider: MockProvider
) -> None:
    tag = f"abort-leave-{uuid.uuid4().hex[:8]}"
    client, stream = await _stream(
        aborting_proxy, "sglang-1", {"tokens": 5000, "rate": 50, "tag": tag, "ignore_close": True}
    )
    async with client:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content == "w1 ":
                break
        await stream.close()
    (abort,) = await _aborts(mock_provider, tag)
    assert abort["outcome"] == "stopped"


@pytest.mark.parametrize("on_abort", ["hang", "fail"])
async def test_a_hook_that_hangs_or_fails_changes_nothing_else(
    aborting_proxy: Proxy, mock_provider: MockProvider, on_abort: str
) -> None:
    tag = f"abort-{on_abort}-{uuid.uuid4().hex[:8]}"
    outcome = "timed_out" if on_abort == "hang" else "failed"
    before = await _metric(aborting_proxy, outcome, "sglang")
    mock = {"tokens": 5000, "rate": 50, "tag": tag, "ignore_close": True, "on_abort": on_abort}
    client, stream = await _stream(aborting_proxy, "sglang-1", mock)
    request_id = stream.response.headers["x-request-id"]
    async with client:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content == "w1 ":
                started = time.monotonic()
                async with aiohttp.ClientSession() as session:
                    async with session.post(f"{aborting_proxy.root}/requests/{request_id}/cancel", headers=AUTH) as r:
                        ack = await r.json()
                ack_s = time.monotonic() - started
    assert ack["cancelled"] is True and ack_s < 1.0  # the ack never waits for the hook (timeout_s 1)
    (abort,) = await _aborts(mock_provider, tag)
    assert abort["outcome"] == ("hung" if on_abort == "hang" else "failed")
    record = await read_record(aborting_proxy.root, request_id, KEY)
    assert (record["status"], record["stop_reason"]) == ("stopped", "cancel")
    # The hook is bounded: its outcome is counted within timeout_s.
    await until(lambda: _metric(aborting_proxy, outcome, "sglang"), lambda n: n == before + 1, bound_s=5)


STREAM_PATH = {"method": "DELETE", "path": "/v1/stream/{upstream_id}"}
RID_BODY = {"method": "POST", "path": "/abort_request", "body": {"rid": "{upstream_id}"}}


@pytest.mark.parametrize(
    ("upstream_id", "hook", "sent"),
    [
        ("..", STREAM_PATH, None),
        (".", STREAM_PATH, None),
        # ".." to a server behind one more that decodes, and to one that drops ";" parameters.
        ("%2e%2e", STREAM_PATH, None),
        ("..;", STREAM_PATH, None),
        ("", STREAM_PATH, None),
        ("", RID_BODY, None),
        # Dots that are no segment of their own are the id's.
        ("..", {"method": "DELETE", "path": "/v1/stream/gen-{upstream_id}"}, b"DELETE /v1/stream/gen-.. "),
        ("..", RID_BODY, b'{"rid": ".."}'),
    ],
)
async def test_an_abort_goes_only_where_its_id_names_one_generation(
    tmp_path: Path, upstream_id: str, hook: dict[str, Any], sent: bytes | None
) -> None:
    # "/v1/stream/.." is "/v1/" to any server that normalises its path: the
    # configured key would go with a DELETE there. An empty id names nothing.
    chunk = {
        "id": upstream_id,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": "hi"}}],
    }
    async with scripted_upstream() as upstream:
        await upstream.scripts.put(
            Script(sse_head(), [http_chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")], "hold")
        )
        await upstream.scripts.put(Script(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))  # the abort's answer
        config = {
            "upstreams": [{"name": "engine", "base_url": upstream.base_url, "models": ["*"], "abort": hook}],
            "store": {"url": "memory://"},
        }
        proxy = start_proxy(tmp_path, config)
        try:
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
            async with aiohttp.ClientSession() as session:
                async with session.post(f"{proxy.base_url}/chat/completions", json=body, headers=AUTH) as answer:
                    assert b"hi" in await answer.content.readuntil(b"\n\n")
                    request_id = answer.headers["X-Request-Id"]
                    async with session.post(f"{proxy.root}/requests/{request_id}/cancel", headers=AUTH) as r:
                        assert (await r.json())["cancelled"] is True
            if sent is None:
                # Decided as the final state is queued, before the ack.
                assert await _metric(proxy, "skipped", "engine") == 1
                assert len(upstream.served) == 1  # the generation itself, no abort
            else:
                # The hook is bounded: its outcome is counted within timeout_s.
                await until(lambda: _metric(proxy, "sent", "engine"), lambda n: n == 1, bound_s=5)
                assert sent in upstream.served[1].request
        finally:
            proxy.program.stop()
