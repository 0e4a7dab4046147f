"""Resume from the page and the module: a reload mid-answer, a connection that
breaks (the page reconnects, and a Stop pressed meanwhile is not lost), and
``resume()`` (``GET /requests/{id}/stream?after=N``, with ``on_disconnect.grace_s``
keeping a generation alive while its reader comes back)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from .browser import browser_fixture, js_packages_fixture, run_node, run_scenario  # noqa: F401
from .conftest import MockProvider, Proxy, proxy_config, start_proxy
from .helpers import content_of, read_record


@pytest.fixture(scope="module")
def grace_proxy(mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    config = proxy_config(mock_provider, ui={"enabled": True}, on_disconnect={"grace_s": 30})
    proxy = start_proxy(tmp_path_factory.mktemp("grace"), config)
    yield proxy
    proxy.program.stop()


async def _generations(mock_provider: MockProvider, tag: str) -> list[str]:
    """How each request the provider saw with this tag ended."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{mock_provider.root}/_mock/requests") as response:
            return [r["state"] for r in (await response.json())["requests"] if r["tag"] == tag]


async def _stopped_by_its_cancel(proxy: Proxy, seen: dict[str, Any], tokens: int) -> dict[str, Any]:
    """Check that the page's Stop got through: shown stopped (never failed), the provider closed
    before the end, the record stopped by a cancel. The record."""
    stopped, provider = seen["stopped"], seen["provider"]
    assert stopped["status"] == "stopped" and stopped["error"] is None
    assert provider["state"] == "closed_by_client" and provider["tokens_sent"] < tokens
    record = await read_record(proxy.root, stopped["requestId"], None)
    assert (record["status"], record["stop_reason"]) == ("stopped", "cancel")
    assert "failed" not in seen["seen"][0]
    return record


async def test_a_reload_mid_answer_resumes_it_to_the_end(
    browser: str, grace_proxy: Proxy, mock_provider: MockProvider
) -> None:
    tokens = 60
    seen = await run_scenario(
        "reload_mid_answer", browser, grace_proxy.root, mock_provider.root, tag="ui-reload", tokens=tokens
    )
    before, after = seen["before"], seen["after"]
    assert before["status"] == "streaming" and before["requestId"]
    # The same answer, resumed and complete: nothing lost, nothing twice.
    assert (after["status"], after["requestId"]) == ("completed", before["requestId"])
    assert after["text"] == content_of(tokens) and after["error"] is None
    assert all(status in ("loading", "streaming", "completed") for status in (seen["seen"] or [[]])[0])
    record = await read_record(grace_proxy.root, before["requestId"], None)
    assert (record["status"], record["content"]) == ("completed", content_of(tokens))
    # The provider generated it once: the reload asked for no new answer.
    assert await _generations(mock_provider, "ui-reload") == ["completed"]


async def test_an_answer_whose_connection_breaks_is_followed_again_to_the_end(
    browser: str, grace_proxy: Proxy, mock_provider: MockProvider
) -> None:
    tokens = 60
    seen = await run_scenario(
        "network_drop_mid_answer", browser, grace_proxy.root, mock_provider.root, tag="ui-drop", tokens=tokens
    )
    before, during, after = seen["before"], seen["during"], seen["after"]
    assert before["status"] == "streaming" and before["requestId"]
    # While the network is away the page says it reconnects; it never calls the answer failed.
    assert during["status"] == "reconnecting" and during["text"].startswith(before["text"])
    assert (after["status"], after["requestId"]) == ("completed", before["requestId"])
    assert after["text"] == content_of(tokens) and after["error"] is None
    assert "failed" not in seen["seen"][0] and "interrupted" not in seen["seen"][0]
    record = await read_record(grace_proxy.root, before["requestId"], None)
    assert (record["status"], record["content"]) == ("completed", content_of(tokens))
    # The provider generated it once: the page followed the same answer again.
    assert await _generations(mock_provider, "ui-drop") == ["completed"]


async def test_an_answer_whose_network_does_not_come_back_ends_interrupted_after_the_last_attempt(
    browser: str, grace_proxy: Proxy, mock_provider: MockProvider
) -> None:
    # The attempts' pauses add up to 15.25 s; the scenario waits up to 30 s.
    seen = await run_scenario(
        "network_gone_mid_answer", browser, grace_proxy.root, mock_provider.root, tag="ui-gone", tokens=400
    )
    before, after = seen["before"], seen["after"]
    assert after["status"] == "interrupted" and after["requestId"] == before["requestId"]
    assert after["error"].startswith("the proxy cannot be reached")
    assert after["text"].startswith(before["text"])
    assert seen["seen"][0][-2:] == ["reconnecting", "interrupted"] and "failed" not in seen["seen"][0]


async def test_a_stop_pressed_while_the_page_reconnects_is_not_lost(
    browser: str, grace_proxy: Proxy, mock_provider: MockProvider
) -> None:
    # The network is away when Stop is pressed: its cancel cannot get through,
    # and the generation goes on (the grace). The page asks again until one
    # gets through, once the network is back.
    seen = await run_scenario(
        "stop_while_reconnecting", browser, grace_proxy.root, mock_provider.root, tag="ui-stop-reconnecting", tokens=200
    )
    record = await _stopped_by_its_cancel(grace_proxy, seen, tokens=200)
    assert seen["stopped"]["text"] == record["content"]


async def test_a_stop_that_cannot_reach_the_proxy_is_sent_again_once_it_can(
    browser: str, grace_proxy: Proxy, mock_provider: MockProvider
) -> None:
    # Stop finds the proxy unreachable: the page drops its stream, which with a
    # disconnect grace does not stop the generation. It asks again until a
    # cancel gets through.
    seen = await run_scenario(
        "stop_while_unreachable", browser, grace_proxy.root, mock_provider.root, tag="ui-stop-unreachable", tokens=200
    )
    await _stopped_by_its_cancel(grace_proxy, seen, tokens=200)


async def test_a_stop_sent_again_leaves_a_question_asked_meanwhile_alone(
    browser: str, grace_proxy: Proxy, mock_provider: MockProvider
) -> None:
    # Only the cancel routes are unreachable when Stop is pressed; the next
    # question is asked, and streams, before the page's Stop gets through. That
    # Stop was for the first answer only: the next one goes on until its own Stop.
    seen = await run_scenario(
        "ask_again_while_a_stop_is_retried",
        browser,
        grace_proxy.root,
        mock_provider.root,
        tag="ui-stop-retried",
        nextTag="ui-asked-meanwhile",
        tokens=200,
    )
    await _stopped_by_its_cancel(grace_proxy, seen, tokens=200)
    assert seen["next"] == "went on"
    assert seen["nextProvider"]["state"] == "closed_by_client"
    next_record = await read_record(grace_proxy.root, seen["nextStopped"]["requestId"], None)
    assert (next_record["status"], next_record["stop_reason"]) == ("stopped", "cancel")
    assert seen["nextStopped"]["text"] == next_record["content"]


async def test_the_module_resumes(js_packages: object, grace_proxy: Proxy, mock_provider: MockProvider) -> None:
    await run_node(
        ["--test", "--test-reporter=spec", "resume.test.mjs"],
        {"PROXY_URL": grace_proxy.root, "MOCK_URL": mock_provider.root},
    )
