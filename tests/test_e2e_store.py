"""The store under the real proxy as operators meet it: Redis restarted, logs at debug."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import aiohttp
import openai

from cancelproxy.records import Record
from cancelproxy.sessions import credential_fingerprint
from cancelproxy.store.redis import RedisStore

from .conftest import MockProvider, proxy_config, start_proxy
from .helpers import content_of, open_stream, read_record
from .redis_server import RedisServer, unique_key_prefix

USER_KEY = "sk-user-a-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {USER_KEY}"}


def _completed(request_id: str, session_id: str) -> Record:
    return Record(
        request_id=request_id,
        session_id=session_id,
        credential=credential_fingerprint(AUTH),
        upstream="mock",
        model="mock-1",
        stream=True,
        created_at=1000.0,
        status="completed",
        content="stored after the restart",
        ended_at=1001.0,
    )


async def test_after_a_redis_restart_every_read_is_answered(
    mock_provider: MockProvider, redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix = unique_key_prefix()
    # A slow heartbeat: nothing but the reads below touches the pooled connections.
    store = {"url": redis_server.url, "key_prefix": prefix, "heartbeat_s": 30}
    proxy = start_proxy(tmp_path, proxy_config(mock_provider, store=store))
    try:
        async with aiohttp.ClientSession() as session:

            async def status(path: str) -> int:
                async with session.get(proxy.root + path, headers=AUTH) as response:
                    await response.read()
                    return response.status

            # Reads at once: the proxy's pool now holds that many connections.
            assert set(await asyncio.gather(*(status(f"/requests/req_none{i}") for i in range(50)))) == {404}
            redis_server.stop()
            redis_server.start()  # same port, empty: every pooled connection was closed by the old server
            ours = RedisStore(redis_server.url, prefix)  # the test's own client: records that exist now
            await ours.open()
            try:
                await ours.save_many([_completed(f"req_new{i}", f"sess_new{i}") for i in range(50)])
            finally:
                await ours.close()
            statuses = await asyncio.gather(
                *(status(f"/requests/req_new{i}") for i in range(50)),
                *(status(f"/sessions/sess_new{i}") for i in range(50)),
                *(status(f"/requests/req_none{i}") for i in range(50)),
            )
    finally:
        proxy.program.stop()
    assert collections.Counter(statuses) == {200: 100, 404: 50}


async def test_at_debug_level_no_part_of_a_record_reaches_the_logs(mock_provider: MockProvider, tmp_path: Path) -> None:
    db = tmp_path / "records.db"
    # Flushes every 20 ms: the partial answer is written many times while it streams.
    config = proxy_config(mock_provider, store={"url": f"sqlite:///{db}", "flush_interval_ms": 20}, log_level="debug")
    proxy = start_proxy(tmp_path, config)
    try:
        async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=USER_KEY, max_retries=0) as client:
            stream = await open_stream(client, {"tokens": 30, "rate": 200, "reasoning": 10})
            request_id = stream.response.headers["x-request-id"]
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        record = await read_record(proxy.root, request_id, USER_KEY)
    finally:
        proxy.program.stop()
    assert text == record["content"] == content_of(30)
    assert record["reasoning_content"].startswith("r0 r1 r2 ")
    output = proxy.program.output
    assert '"level": "debug"' in output  # debug logging was on
    # Not the answer, not the thinking, not a partial of either, not the record's JSON.
    for fragment in ("w0 w1 w2", "r0 r1 r2", '"reasoning_content"', '"content"'):
        assert fragment not in output, fragment
