"""The disconnect grace of a request whose readers may be on other replicas.

When the grace runs out, the replica asks Redis whether a reader elsewhere
follows; the fake here answers only when the test says so, to let local
readers come and go while the question is out.
"""

from __future__ import annotations

import asyncio

import pytest

from cancelproxy.live import LiveRequest
from cancelproxy.protocols.base import RequestFacts
from cancelproxy.protocols.chat import ChatTranscript
from cancelproxy.records import Record

GRACE_S = 0.05
BOUND_S = 10.0


class RemoteReaders:
    """Each question about remote readers waits for the test's answer."""

    def __init__(self) -> None:
        self.asked: asyncio.Queue[asyncio.Future[int]] = asyncio.Queue()

    async def __call__(self, request_id: str) -> int:
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.asked.put_nowait(answer)
        return await answer

    async def next_question(self) -> asyncio.Future[int]:
        async with asyncio.timeout(BOUND_S):
            return await self.asked.get()


def _live(remote: RemoteReaders, closed: asyncio.Event) -> LiveRequest:
    record = Record(
        request_id="r", session_id="s", credential="none", upstream="u", model="m", stream=True, created_at=0.0
    )
    live = LiveRequest(record, ChatTranscript(RequestFacts("r", "m", True)), grace_s=GRACE_S, remote_readers=remote)
    live.attach_upstream(closed.set)
    return live


async def test_a_reader_that_comes_and_goes_while_redis_is_asked_gets_a_whole_grace() -> None:
    remote, closed = RemoteReaders(), asyncio.Event()
    live = _live(remote, closed)
    assert live.reader_left()  # its client leaves: the grace runs
    first = await remote.next_question()  # the grace ran out
    live.reader_joined()
    assert live.reader_left()  # a reader resumed and left while Redis was asked: a new grace
    first.set_result(0)
    second = await remote.next_question()  # the new grace ran out in its turn
    assert live.stop_reason is None and not closed.is_set()
    second.set_result(0)
    async with asyncio.timeout(BOUND_S):
        await closed.wait()
    assert live.stop_reason == "disconnect"


async def test_no_grace_outlives_the_request() -> None:
    remote, closed = RemoteReaders(), asyncio.Event()
    live = _live(remote, closed)
    assert live.reader_left()
    first = await remote.next_question()
    live.reader_joined()
    assert live.reader_left()  # a new grace, while Redis is asked
    first.set_result(1)  # a reader follows on another replica
    await remote.next_question()  # the new grace ran out
    live.settled = True
    live.done()
    # The request is over: within many graces Redis is not asked again (a
    # grace timer left running would ask it once more, after one grace).
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(GRACE_S * 20):
            await remote.asked.get()
    assert live.stop_reason is None and not closed.is_set()
