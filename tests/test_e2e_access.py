"""A record and its cancel belong to the credential that made it; keys are never written."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from .conftest import MockProvider, Proxy, proxy_config, start_proxy
from .helpers import content_of, provider_request

OWNER_KEY = "sk-owner-KEY-4f1d2c9a8b7e6d5c"
OTHER_KEY = "sk-other-KEY-0a1b2c3d4e5f6a7b"
UPSTREAM_KEY = "sk-upstream-secret-0123456789"  # conftest gives the "keyed" upstream this one
ADMIN = "admin-secret-token"


@pytest.fixture(scope="module")
def audited_proxy(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Proxy, Path]]:
    workdir = tmp_path_factory.mktemp("access")
    proxy = start_proxy(workdir, proxy_config(mock_provider))
    yield proxy, workdir
    proxy.program.stop()


async def _call(method: str, url: str, key: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, headers=headers) as response:
            return response.status, await response.json()


async def test_another_credential_can_neither_read_nor_cancel(
    audited_proxy: tuple[Proxy, Path], mock_provider: MockProvider
) -> None:
    proxy, _ = audited_proxy
    sid, tag = f"shared-name-{uuid.uuid4().hex[:8]}", f"access-{uuid.uuid4().hex[:8]}"
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=OWNER_KEY, max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="mock-1",
            messages=[{"role": "user", "content": "mine"}],
            stream=True,
            extra_body={"mock": {"tokens": 300, "rate": 50, "tag": tag}},
            extra_headers={"X-Session-Id": sid},
        )
        rid = stream.response.headers["x-request-id"]
        await provider_request(mock_provider.root, tag, wait="started")

        # Anyone else, or no credential at all, is told there is nothing there.
        for key in (OTHER_KEY, None):
            assert await _call("POST", f"{proxy.root}/sessions/{sid}/cancel", key) == (
                200,
                {"success": False, "cancelled": False, "session_id": sid, "request_ids": []},
            )
            assert (await _call("POST", f"{proxy.root}/api/chat/cancel/{sid}", key))[1]["cancelled"] is False
            status, body = await _call("POST", f"{proxy.root}/requests/{rid}/cancel", key)
            assert (status, body["error"]["code"]) == (404, "request_not_found")
            status, body = await _call("GET", f"{proxy.root}/requests/{rid}", key)
            assert (status, body["error"]["code"]) == (404, "request_not_found")
            status, body = await _call("GET", f"{proxy.root}/sessions/{sid}", key)
            assert (status, body["error"]["code"]) == (404, "session_not_found")

        # The owner's stream went on untouched; the admin may stop it.
        status, ack = await _call("POST", f"{proxy.root}/requests/{rid}/cancel", ADMIN)
        assert (status, ack["request_ids"]) == (200, [rid])
        content = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert content == content_of(len(content.split()))

    status, record = await _call("GET", f"{proxy.root}/requests/{rid}", OWNER_KEY)
    assert (status, record["status"], record["content"]) == (200, "stopped", content)
    status, admin_view = await _call("GET", f"{proxy.root}/sessions/{sid}", ADMIN)
    assert status == 200 and [r["request_id"] for r in admin_view["requests"]] == [rid]


@pytest.mark.parametrize("header", ["x-api-key", "api-key"])
async def test_every_credential_header_owns_its_records(
    audited_proxy: tuple[Proxy, Path], mock_provider: MockProvider, header: str
) -> None:
    """Only Authorization counted: key B read and cancelled key A's request as "none"."""
    proxy, _ = audited_proxy
    tag = f"cred-{header}-{uuid.uuid4().hex[:8]}"
    body = {"model": "mock-1", "stream": True, "messages": [], "mock": {"tokens": 300, "rate": 50, "tag": tag}}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{proxy.base_url}/chat/completions", json=body, headers={header: OWNER_KEY}) as r:
            rid, sid = r.headers["X-Request-Id"], r.headers["X-Session-Id"]
            await provider_request(mock_provider.root, tag, wait="started")
            for other in ({header: OTHER_KEY}, {}, {"Authorization": f"Bearer {OWNER_KEY}"}):
                for method, path in (("GET", f"/requests/{rid}"), ("POST", f"/requests/{rid}/cancel")):
                    async with session.request(method, proxy.root + path, headers=other) as answer:
                        assert answer.status == 404, (other, path)
                async with session.post(f"{proxy.root}/sessions/{sid}/cancel", headers=other) as answer:
                    assert (await answer.json())["cancelled"] is False
            async with session.post(f"{proxy.root}/requests/{rid}/cancel", headers={header: OWNER_KEY}) as answer:
                assert (await answer.json())["request_ids"] == [rid]
            await r.read()
        async with session.get(f"{proxy.root}/requests/{rid}?wait=1", headers={header: OWNER_KEY}) as answer:
            record = await answer.json()
    assert (record["status"], record["stop_reason"]) == ("stopped", "cancel")


async def test_keys_are_written_nowhere(audited_proxy: tuple[Proxy, Path], mock_provider: MockProvider) -> None:
    proxy, workdir = audited_proxy
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=OWNER_KEY, max_retries=0) as client:
        for model in ("mock-1", "keyed-1"):
            raw = await client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": "x"}], extra_body={"mock": {"tokens": 2, "rate": 0}}
            )
            status, record = await _call(
                "GET", f"{proxy.root}/requests/{raw.headers['x-request-id']}?wait=1", OWNER_KEY
            )
            assert status == 200
            assert OWNER_KEY not in str(record) and UPSTREAM_KEY not in str(record)
        # An upstream failure is logged with its details: still no key in them.
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(
                model="keyed-1", messages=[{"role": "user", "content": "x"}], extra_body={"mock": {"status": 500}}
            )
    # Everything the proxy printed or wrote, less the config file the test wrote.
    files = [p for p in workdir.rglob("*") if p.is_file() and p != proxy.config_path]
    written = [proxy.program.output] + [p.read_text(errors="replace") for p in files]
    for text in written:
        for secret in (OWNER_KEY, OTHER_KEY, UPSTREAM_KEY, ADMIN, "KEY-"):
            assert secret not in text
