"""A cancelled chat stream, read by the SDKs' stream helpers through ``python proxy.py``.

openai-node's ``chat.completions.stream()`` (ChatCompletionStream) throws at
the end unless every choice of its snapshot has a role and a finish_reason;
openai-python's joins every string of a delta into its snapshot, so a role
sent twice reads "assistantassistant". Stopped before the first token (a
model thinking, a queued request) and with two choices mid-stream, both
helpers must finish, every choice ``cancelled``, its role exactly "assistant".
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from .browser import js_packages_fixture, run_node  # noqa: F401
from .conftest import MockProvider, Proxy, start_proxy
from .helpers import post_ok, provider_request, read_record, unique
from .scripted_upstream import Script, ScriptedUpstream, chunk, scripted_upstream, sse_head

KEY = "sk-chat-helpers-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
BOUND_S = 30.0
HI = [{"role": "user", "content": "hi"}]

# No token before the cancel: the provider keeps its headers back (a queued
# request), or sends them and only keep-alives (a reasoning model thinking).
SILENT = {
    "queued": {"silence_s": 60, "headers_after_silence": True},
    "thinking": {"silence_s": 60, "keepalive_s": 0.2},
}


def _event(index: int, delta: dict[str, Any]) -> bytes:
    obj = {
        "id": "chatcmpl-two",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "scripted-1",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}],
    }
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


# Two choices, each opened with its role as OpenAI sends them, one word each;
# then the provider goes on generating (the socket is held) until the cancel.
TWO_CHOICES = [
    _event(0, {"role": "assistant", "content": ""}),
    _event(1, {"role": "assistant", "content": ""}),
    _event(0, {"content": "a0 "}),
    _event(1, {"content": "b0 "}),
]


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with scripted_upstream() as scripted:
        yield scripted


@pytest.fixture
def proxy(mock_provider: MockProvider, upstream: ScriptedUpstream, tmp_path: Path) -> Iterator[Proxy]:
    config = {
        "upstreams": [
            {"name": "mock", "base_url": mock_provider.base_url, "models": ["mock-*"]},
            {"name": "scripted", "base_url": upstream.base_url, "models": ["scripted-*"]},
        ],
        "store": {"url": "memory://"},
    }
    started = start_proxy(tmp_path, config)
    yield started
    started.program.stop()


async def _python_helper(proxy: Proxy, sid: str, cancel_after: int, **request: Any) -> list[dict[str, Any]]:
    """openai-python's helper to its final completion: each choice's index, role, content, finish_reason.

    With ``cancel_after`` > 0 the session is cancelled once that many chunks arrived."""
    extra_body = {"mock": request.pop("mock")} if "mock" in request else None
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0) as client:
        async with client.chat.completions.stream(
            messages=HI, extra_headers={"X-Session-Id": sid}, extra_body=extra_body, **request
        ) as stream:
            chunks = 0
            async for event in stream:
                if event.type == "chunk":
                    chunks += 1
                    if chunks == cancel_after:
                        assert (await post_ok(f"{proxy.root}/sessions/{sid}/cancel", AUTH))["cancelled"] is True
            final = await stream.get_final_completion()
    return [
        {"index": c.index, "role": c.message.role, "content": c.message.content, "finish_reason": c.finish_reason}
        for c in final.choices
    ]


async def _node_helper(proxy: Proxy, sid: str, cancel_after: int, **request: Any) -> list[dict[str, Any]]:
    """The same through openai-node's helper (tests/js/chat_stream_helper.mjs), which throws where it cannot finish."""
    out = await run_node(
        ["chat_stream_helper.mjs", proxy.base_url, sid, json.dumps({"messages": HI, **request}), str(cancel_after)],
        {"API_KEY": KEY},
    )
    result = json.loads(out)
    if cancel_after:
        assert result["cancelled"] is True
    choices: list[dict[str, Any]] = result["choices"]
    return choices


HELPERS = {"python": _python_helper, "node": _node_helper}


@pytest.mark.parametrize("silence", sorted(SILENT))
@pytest.mark.parametrize("sdk", sorted(HELPERS))
async def test_a_cancel_before_the_first_token_ends_the_helper_with_an_assistant_choice(
    js_packages: object, proxy: Proxy, mock_provider: MockProvider, sdk: str, silence: str
) -> None:
    """Nothing was relayed, so no role either: the ending gives choice 0 its role (openai-node
    threw "missing role for choice 0"; openai-python's snapshot had no role)."""
    sid, tag = unique(f"helper-{sdk}"), unique(f"helper-{silence}")
    mock = {**SILENT[silence], "tag": tag}
    async with asyncio.timeout(BOUND_S):
        reading = asyncio.create_task(HELPERS[sdk](proxy, sid, 0, model="mock-1", mock=mock))
        try:
            await provider_request(mock_provider.root, tag, wait="started")
            ack = await post_ok(f"{proxy.root}/sessions/{sid}/cancel", AUTH)
        except BaseException:
            reading.cancel()  # a reader left waiting would hide what failed
            raise
        choices = await reading
    assert ack["cancelled"] is True
    assert choices == [{"index": 0, "role": "assistant", "content": "", "finish_reason": "cancelled"}]
    (request_id,) = ack["request_ids"]
    record = await read_record(proxy.root, request_id, KEY)
    assert (record["status"], record["content"]) == ("stopped", "")


@pytest.mark.parametrize("sdk", sorted(HELPERS))
async def test_two_choices_cancelled_mid_stream_both_end_cancelled_with_one_role(
    js_packages: object, proxy: Proxy, upstream: ScriptedUpstream, sdk: str
) -> None:
    """Each choice had its role: the ending finishes both and sends no role again (openai-node
    threw "missing finish_reason for choice 1"; openai-python left choice 1 unfinished)."""
    await upstream.scripts.put(Script(sse_head(), [chunk(event) for event in TWO_CHOICES], end="hold"))
    sid = unique(f"helper-n2-{sdk}")
    async with asyncio.timeout(BOUND_S):
        choices = await HELPERS[sdk](proxy, sid, len(TWO_CHOICES), model="scripted-1", n=2)
    assert choices == [
        {"index": 0, "role": "assistant", "content": "a0 ", "finish_reason": "cancelled"},
        {"index": 1, "role": "assistant", "content": "b0 ", "finish_reason": "cancelled"},
    ]
