"""The audit trail, the audit report and /metrics, from a real proxy process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import openai
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ROOT, MockProvider, proxy_config, start_proxy
from .helpers import content_of, open_stream, provider_request

KEY = "sk-audit-SECRET-9f8e7d6c5b4a"
AUTH = {"Authorization": f"Bearer {KEY}"}
AUDIT_FIELDS = {
    "ts", "request_id", "session_id", "upstream", "protocol", "model", "stream", "status", "stop_reason",
    "finish_reason", "ttft_ms", "duration_ms", "cancel_ms", "usage", "bytes_out", "readers", "resumes", "client",
    "credential", "error",
}  # fmt: skip


async def _metrics(root: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{root}/metrics") as response:
            assert response.status == 200
            text = await response.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _requests_total(metrics: dict[Any, float], status: str, stop_reason: str = "") -> float:
    key = (
        "cancelproxy_requests_total",
        (("protocol", "chat"), ("status", status), ("stop_reason", stop_reason), ("upstream", "mock")),
    )
    return metrics.get(key, 0.0)


async def test_one_audit_line_per_request_and_metrics_that_move(mock_provider: MockProvider, tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.log"
    proxy = start_proxy(tmp_path, proxy_config(mock_provider, audit={"path": str(audit_path)}))
    try:
        before = await _metrics(proxy.root)
        ids: dict[str, str] = {}
        async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0) as client:
            # completed
            stream = await open_stream(client, prompt="audit me", mock={"tokens": 6, "rate": 0})
            ids["completed"] = stream.response.headers["x-request-id"]
            assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == content_of(6)

            # cancelled, and while it runs the in-progress gauge shows it
            tag = f"audit-{uuid.uuid4().hex[:8]}"
            stream = await open_stream(client, prompt="audit me", mock={"tokens": 500, "rate": 50, "tag": tag})
            ids["cancelled"] = stream.response.headers["x-request-id"]
            await provider_request(mock_provider.root, tag, wait="started")
            during = await _metrics(proxy.root)
            assert during[("cancelproxy_in_progress_requests", (("protocol", "chat"), ("upstream", "mock")))] == 1
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{proxy.root}/requests/{ids['cancelled']}/cancel", headers=AUTH) as r:
                    assert (await r.json())["cancelled"] is True
            async for _ in stream:
                pass

            # dropped by the client
            tag = f"audit-{uuid.uuid4().hex[:8]}"
            stream = await open_stream(client, prompt="audit me", mock={"tokens": 500, "rate": 50, "tag": tag})
            ids["dropped"] = stream.response.headers["x-request-id"]
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    break
            await stream.close()
            await provider_request(mock_provider.root, tag, wait="ended")

            # failed mid-stream
            stream = await open_stream(client, prompt="audit me", mock={"tokens": 50, "rate": 100, "fail_after": 3})
            ids["failed"] = stream.response.headers["x-request-id"]
            failed_deltas = 0
            try:
                async for chunk in stream:
                    failed_deltas += bool(chunk.choices and chunk.choices[0].delta.content)
            except openai.APIError:
                pass

        async with aiohttp.ClientSession() as http:
            for request_id in ids.values():  # each one's final state (and so its audit line) is written
                async with http.get(f"{proxy.root}/requests/{request_id}?wait=1", headers=AUTH) as r:
                    assert r.status == 200
        after = await _metrics(proxy.root)
    finally:
        proxy.program.stop()

    text = audit_path.read_text()
    assert KEY not in text and "SECRET" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert sorted(line["request_id"] for line in lines) == sorted(ids.values())  # exactly one each
    by_id = {line["request_id"]: line for line in lines}
    for line in lines:
        assert set(line) == AUDIT_FIELDS
        assert line["upstream"] == "mock" and line["model"] == "mock-1" and line["stream"] is True
        assert line["protocol"] == "chat"
        assert line["client"] == "127.0.0.1"
        assert line["credential"].startswith("sha256:")
        assert line["duration_ms"] > 0 and line["bytes_out"] > 0
        assert set(line["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens", "estimated"}

    completed, cancelled = by_id[ids["completed"]], by_id[ids["cancelled"]]
    dropped, failed = by_id[ids["dropped"]], by_id[ids["failed"]]
    assert (completed["status"], completed["stop_reason"], completed["finish_reason"]) == ("completed", None, "stop")
    assert completed["usage"] == {"prompt_tokens": 2, "completion_tokens": 6, "total_tokens": 8, "estimated": False}
    assert completed["cancel_ms"] is None and completed["error"] is None and completed["ttft_ms"] >= 0
    assert (cancelled["status"], cancelled["stop_reason"], cancelled["finish_reason"]) == (
        "stopped",
        "cancel",
        "cancelled",
    )
    assert cancelled["cancel_ms"] is not None and 0 <= cancelled["cancel_ms"] < 1000
    assert cancelled["usage"]["estimated"] is True
    assert (dropped["status"], dropped["stop_reason"]) == ("stopped", "disconnect")
    assert dropped["cancel_ms"] is not None
    assert (failed["status"], failed["error"]["code"]) == ("failed", "upstream_broken")
    # Deltas that arrive together with the provider's reset are not relayed
    # (see relay._read): the estimate counts exactly what the client got.
    assert failed_deltas >= 1
    assert failed["usage"] == {
        "prompt_tokens": 2, "completion_tokens": failed_deltas, "total_tokens": 2 + failed_deltas, "estimated": True
    }  # fmt: skip

    for status, stop_reason in (("completed", ""), ("stopped", "cancel"), ("stopped", "disconnect"), ("failed", "")):
        assert _requests_total(after, status, stop_reason) == _requests_total(before, status, stop_reason) + 1
    assert after[("cancelproxy_in_progress_requests", (("protocol", "chat"), ("upstream", "mock")))] == 0
    assert after[("cancelproxy_upstream_errors_total", (("code", "upstream_broken"), ("upstream", "mock")))] == 1
    assert after[("cancelproxy_cancel_latency_seconds_count", (("upstream", "mock"),))] >= 2

    # The report, on this real log.
    report = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cancelproxy", "audit", str(audit_path), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert report.returncode == 0, report.stderr
    summary = json.loads(report.stdout)
    assert summary["total"] == 4
    assert summary["by_status"] == {"completed": 1, "stopped": 2, "failed": 1}
    assert summary["by_stop_reason"]["cancel"] == 1 and summary["by_stop_reason"]["disconnect"] == 1
