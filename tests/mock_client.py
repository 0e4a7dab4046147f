"""What the mock's own tests share: request bodies per protocol, an SSE reader, record reads."""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient

PATHS = {
    "chat": "/v1/chat/completions",
    "responses": "/v1/responses",
    "messages": "/v1/messages",
    "completions": "/v1/completions",
}
PROTOCOLS = tuple(PATHS)
# The first id each protocol's answer carries, for a given tag.
UPSTREAM_IDS = {
    "chat": "chatcmpl-mock-{tag}",
    "responses": "resp_mock_{tag}",
    "messages": "msg_mock_{tag}",
    "completions": "cmpl-mock-{tag}",
}


def words(n: int) -> str:
    return "".join(f"w{i} " for i in range(n))


def request_body(protocol: str, stream: bool = True, usage: bool = False, **mock: Any) -> dict[str, Any]:
    """A request of five prompt words ("be brief" + "hello there world") in the protocol's shape."""
    body: dict[str, Any] = {"model": "m-test", "stream": stream, "mock": mock}
    if protocol == "chat":
        body["messages"] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there world"}]
    elif protocol == "responses":
        body["instructions"] = "be brief"
        body["input"] = [{"role": "user", "content": [{"type": "input_text", "text": "hello there world"}]}]
    elif protocol == "messages":
        body["system"] = "be brief"
        body["max_tokens"] = 100
        body["messages"] = [{"role": "user", "content": [{"type": "text", "text": "hello there world"}]}]
    else:
        body["prompt"] = ["be brief", "hello there world"]
    if usage:
        body["stream_options"] = {"include_usage": True}
    return body


def sse(raw: bytes) -> list[tuple[str | None, Any]]:
    """The events in order as (``event:`` name or None, parsed data); comments skipped."""
    out: list[tuple[str | None, Any]] = []
    for block in raw.decode().split("\n\n"):
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = line[len("data: ") :]
        if data is not None:
            out.append((name, data if data == "[DONE]" else json.loads(data)))
    return out


def text_of(protocol: str, events: list[tuple[str | None, Any]]) -> str:
    """The answer's text as a client would assemble it from the stream."""
    datas = [d for _, d in events if isinstance(d, dict) and "error" not in d]
    if protocol == "chat":
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in datas if c["choices"])
    if protocol == "completions":
        return "".join(c["choices"][0]["text"] for c in datas if c["choices"])
    if protocol == "responses":
        return "".join(d["delta"] for d in datas if d["type"] == "response.output_text.delta")
    return "".join(d["delta"].get("text", "") for d in datas if d["type"] == "content_block_delta")


async def record(client: TestClient, tag: str, wait: str = "ended") -> dict[str, Any]:
    resp = await client.get(f"/_mock/requests/{tag}", params={"wait": wait, "timeout": "5"})
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())
