"""The mock's legacy text completions wire format, byte by byte."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cancelproxy.mock import MockDefaults, create_mock_app

from .mock_client import record, request_body, sse, words

PATH = "/v1/completions"


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(create_mock_app(MockDefaults(tokens=3, rate=0)))


async def test_stream_chunks_finish_and_done(client: TestClient) -> None:
    raw = await (await client.post(PATH, json=request_body("completions", tag="c"))).read()
    assert raw.split(b"\n\n")[0] == (
        b'data: {"id":"cmpl-mock-c","object":"text_completion","created":1700000000,"model":"m-test",'
        b'"system_fingerprint":"fp_mock","choices":[{"index":0,"text":"w0 ","logprobs":null,"finish_reason":null}]}'
    )
    events = [data for _, data in sse(raw)]
    assert events[-1] == "[DONE]"
    assert "".join(c["choices"][0]["text"] for c in events[:-1]) == words(3)
    assert events[-2]["choices"] == [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]
    assert all("usage" not in c for c in events[:-1])
    rec = await record(client, "c")
    assert rec["protocol"] == "completions" and rec["id"] == "cmpl-mock-c" and rec["tokens_sent"] == 3


async def test_usage_chunk_with_include_usage(client: TestClient) -> None:
    events = [d for _, d in sse(await (await client.post(PATH, json=request_body("completions", usage=True))).read())]
    assert all(c["usage"] is None for c in events[:-2])
    # The prompt list's words: "be brief" + "hello there world".
    assert events[-2]["choices"] == [] and events[-2]["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "total_tokens": 8,
    }


async def test_non_streaming_text_completion(client: TestClient) -> None:
    data = await (await client.post("/completions", json=request_body("completions", stream=False, tag="n"))).json()
    assert data["id"] == "cmpl-mock-n" and data["object"] == "text_completion"
    assert data["choices"] == [{"index": 0, "text": words(3), "logprobs": None, "finish_reason": "stop"}]
    assert data["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


@pytest.mark.parametrize("knob", ["reasoning", "tool_call", "refusal"])
async def test_knobs_without_a_form_here_are_refused(client: TestClient, knob: str) -> None:
    resp = await client.post(PATH, json=request_body("completions", **{knob: 1 if knob == "reasoning" else True}))
    assert resp.status == 400
    assert (await resp.json())["error"]["message"] == f"mock.{knob} has no form in the completions protocol"


async def test_token_id_prompts_count_as_tokens(client: TestClient) -> None:
    body = {"prompt": [1, 2, 3, 4], "stream": True, "stream_options": {"include_usage": True}}
    events = [d for _, d in sse(await (await client.post(PATH, json=body)).read())]
    assert events[-2]["usage"]["prompt_tokens"] == 4
