"""300 concurrent streams on each store backend: a third cancelled, a third
dropped by their client, a third completed. Every record must be right."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import MockProvider, proxy_config, start_proxy
from .helpers import content_of, provider_request
from .redis_server import unique_key_prefix

STREAMS = 300
TOKENS = 40
AUTH = {"Authorization": "Bearer sk-load-0123456789"}


async def _one(http: aiohttp.ClientSession, root: str, index: int, run: str) -> dict[str, Any]:
    """One client: reads 3 deltas, then cancels (0), drops (1) or reads on (2)."""
    fate = ("cancel", "drop", "complete")[index % 3]
    tag = f"{run}-{index}"
    body = {
        "model": "mock-1",
        "stream": True,
        "messages": [{"role": "user", "content": "load"}],
        # Streams to stop run for 20 s, so a client lagging behind its 300
        # neighbours still stops them mid-way, never after their end.
        "mock": {"tokens": TOKENS if fate == "complete" else 400, "rate": 20, "tag": tag},
    }
    received: list[str] = []
    reasons: list[str] = []
    headers = {**AUTH, "X-Session-Id": f"{run}-s{index}"}
    async with http.post(f"{root}/v1/chat/completions", json=body, headers=headers) as response:
        request_id = response.headers["X-Request-Id"]
        async for line in response.content:
            if not line.startswith(b"data: {"):
                continue
            for choice in json.loads(line[6:])["choices"]:
                received.append(choice["delta"].get("content") or "")
                if choice.get("finish_reason"):
                    reasons.append(choice["finish_reason"])
            if len([r for r in received if r]) == 3 and fate in ("cancel", "drop"):
                if fate == "drop":
                    response.close()
                    break
                async with http.post(f"{root}/requests/{request_id}/cancel", headers=AUTH) as cancel:
                    answer = await cancel.json()
                assert answer["cancelled"] is True, answer
                fate = "cancelled"  # read on to the clean end
    return {"fate": fate, "tag": tag, "request_id": request_id, "content": "".join(received), "reasons": reasons}


async def _metric(root: str, name: str) -> float:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{root}/metrics") as response:
            text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"no metric {name}")


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
async def test_300_concurrent_streams(
    backend: str,
    mock_provider: MockProvider,
    redis_url: str,
    tmp_path: Path,
) -> None:
    url = {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path / 'load.db'}", "redis": redis_url}[backend]
    store = {"url": url, "key_prefix": unique_key_prefix(), "flush_interval_ms": 200}
    proxy = start_proxy(tmp_path, proxy_config(mock_provider, store=store))
    run = f"load-{backend}-{uuid.uuid4().hex[:6]}"
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            results = await asyncio.gather(*(_one(http, proxy.root, i, run) for i in range(STREAMS)))

            for result in results:
                # No provider connection is left open: every one of them ended.
                seen = await provider_request(mock_provider.root, result["tag"], wait="ended")
                async with http.get(f"{proxy.root}/requests/{result['request_id']}?wait=1", headers=AUTH) as r:
                    record = await r.json()
                if result["fate"] == "cancelled":
                    assert (record["status"], record["stop_reason"]) == ("stopped", "cancel"), proxy.program.output[
                        -3000:
                    ]
                    assert result["reasons"] == ["cancelled"]
                    assert record["content"] == result["content"]
                    assert seen["state"] == "closed_by_client"
                elif result["fate"] == "drop":
                    assert (record["status"], record["stop_reason"]) == ("stopped", "disconnect")
                    assert record["content"].startswith(result["content"])
                    assert record["content"] == content_of(len(record["content"].split()))
                    assert seen["state"] == "closed_by_client"
                else:
                    assert record["status"] == "completed"
                    assert record["content"] == result["content"] == content_of(TOKENS)
                    assert seen["state"] == "completed"
        assert await _metric(proxy.root, "cancelproxy_in_progress_requests") == 0
        if backend != "memory":
            # Batched: far fewer write transactions than deltas relayed.
            transactions = await _metric(proxy.root, "cancelproxy_store_write_transactions")
            deltas = sum(len(r["content"].split()) for r in results)
            print(f"{backend}: {transactions:.0f} write transactions for {STREAMS} records and {deltas} deltas relayed")
            assert 0 < transactions < deltas / 5, (transactions, deltas)
    finally:
        proxy.program.stop()
