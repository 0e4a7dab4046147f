"""The store under the real proxy as operators meet it: Redis restarted."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import aiohttp

from cancelproxy.records import Record
from cancelproxy.sessions import credential_fingerprint
from cancelproxy.store.redis import RedisStore

from .conftest import MockProvider, proxy_config, start_proxy
from .redis_server import RedisServer, unique_key_prefix

USER_KEY = "sk-user-a-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {USER_KEY}"}


def _completed(request_id: str, session_id: str) -> Record:
    return Record(
        request_id=request_id,
        session_id=session_id,
        credential=credential_fingerprint(AUTH["Authorization"]),
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
