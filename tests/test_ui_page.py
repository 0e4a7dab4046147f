"""The chat page at /ui/ in a real browser, against ``python proxy.py`` and the mock provider.

Each test plays a scenario of tests/js/ui_scenarios.mjs (Playwright driving
Debian's headless Chromium) and checks what the page showed against the
proxy's record and what the provider saw.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .browser import browser_fixture, js_packages_fixture, run_scenario  # noqa: F401
from .conftest import ROOT, MockProvider, Program, Proxy, free_port, proxy_config, start_proxy
from .helpers import content_of, provider_request, read_record

DOCS = ROOT / "docs"
# A stopped provider connection is seen within milliseconds; this only bounds a hang.
CLOSED_WITHIN_MS = 5000


@pytest.fixture(scope="module")
def ui_proxy(mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    proxy = start_proxy(tmp_path_factory.mktemp("ui"), proxy_config(mock_provider, ui={"enabled": True}))
    yield proxy
    proxy.program.stop()


def _screenshots(tmp_path: Path) -> str:
    """docs/ when its screenshots are missing or CANCELPROXY_SCREENSHOTS=1, so a plain test run leaves
    the committed ones alone; otherwise a temporary folder (they are taken either way)."""
    wanted = [DOCS / "ui-streaming.png", DOCS / "ui-stopped.png"]
    if os.environ.get("CANCELPROXY_SCREENSHOTS") == "1" or not all(p.exists() for p in wanted):
        DOCS.mkdir(exist_ok=True)
        return str(DOCS)
    return str(tmp_path)


def _assert_never_failed(seen: list[list[str]] | None, turn: int = 0) -> None:
    statuses = (seen or [])[turn] if seen and len(seen) > turn else []
    assert "failed" not in statuses, statuses


@pytest.mark.parametrize("keep_stopped", [False, True], ids=["history-without-stopped", "history-with-stopped"])
async def test_stop_keeps_the_partial_and_the_next_answer_is_clean(
    browser: str, ui_proxy: Proxy, mock_provider: MockProvider, keep_stopped: bool, tmp_path: Path
) -> None:
    tag, next_tag = f"ui-stop-{keep_stopped}", f"ui-next-{keep_stopped}"
    seen = await run_scenario(
        "stop_then_ask_again",
        browser,
        ui_proxy.root,
        mock_provider.root,
        tag=tag,
        nextTag=next_tag,
        keepStopped=keep_stopped,
        screenshots=None if keep_stopped else _screenshots(tmp_path),
    )
    stopped, nxt = seen["stopped"], seen["next"]

    # The provider's connection was closed, by the cancel route, long before the answer's end.
    provider = seen["provider"]
    assert provider["state"] == "closed_by_client" and provider["tokens_sent"] < 400
    # The answer shows "stopped", never "failed", with exactly the partial the proxy kept.
    assert stopped["status"] == "stopped" and stopped["error"] is None
    _assert_never_failed(seen["seen"])
    record = await read_record(ui_proxy.root, stopped["requestId"], None)
    assert (record["status"], record["stop_reason"]) == ("stopped", "cancel")
    assert stopped["text"] == record["content"] and len(stopped["text"].split()) >= 6
    # No token came after the Stop, and none of it leaked into the next answer.
    assert seen["stoppedAfter"]["text"] == stopped["text"]
    assert (nxt["status"], nxt["text"]) == ("completed", content_of(12))

    # What the next question sent as history: the stopped answer only with the switch on.
    sent = (await provider_request(mock_provider.root, next_tag))["body"]["messages"]
    first = {"role": "user", "content": "Tell me a long story"}
    second = {"role": "user", "content": "And a short one"}
    if keep_stopped:
        assert sent == [first, {"role": "assistant", "content": stopped["text"]}, second]
    else:
        assert sent == [first, second]


async def test_the_conversation_survives_a_reload(browser: str, ui_proxy: Proxy, mock_provider: MockProvider) -> None:
    seen = await run_scenario("reload_keeps_the_conversation", browser, ui_proxy.root, mock_provider.root)
    completed, stopped = seen["before"]
    assert (completed["status"], completed["text"]) == ("completed", content_of(5))
    assert stopped["status"] == "stopped"
    # Read back from the proxy's records: the same answers, statuses and ids.
    assert seen["afterReload"] == [completed, stopped]
    assert seen["questions"] == ["A short one", "A long one"]
    assert seen["sessionIdAfter"] == seen["sessionId"] and seen["keepStoppedAfter"] is True
    record = await read_record(ui_proxy.root, stopped["requestId"], None)
    assert record["session_id"] == seen["sessionId"] and record["content"] == stopped["text"]


async def test_a_broken_connection_without_a_grace_shows_the_answer_as_the_proxy_stopped_it(
    browser: str, ui_proxy: Proxy, mock_provider: MockProvider
) -> None:
    # No disconnect grace: the break stops the generation, like a closed tab.
    seen = await run_scenario(
        "network_drop_mid_answer", browser, ui_proxy.root, mock_provider.root, tag="ui-drop-stop", tokens=400
    )
    before, during, after = seen["before"], seen["during"], seen["after"]
    assert during["status"] == "reconnecting"
    provider = await provider_request(mock_provider.root, "ui-drop-stop", wait="ended", timeout=10)
    assert provider["state"] == "closed_by_client" and provider["tokens_sent"] < 400
    record = await read_record(ui_proxy.root, before["requestId"], None)
    assert (record["status"], record["stop_reason"]) == ("stopped", "disconnect")
    # Followed again, the page has all the proxy sent before it stopped, as its record keeps it
    # (stopped: a dropped connection is a Stop; a reload would show the same).
    assert after["status"] == "stopped" and after["requestId"] == before["requestId"] and after["error"] is None
    assert after["text"] == record["content"] and after["text"].startswith(before["text"])
    _assert_never_failed(seen["seen"])


async def test_a_broken_connection_whose_stream_is_no_longer_kept_says_it_cannot_be_resumed(
    browser: str, mock_provider: MockProvider, tmp_path: Path
) -> None:
    # No grace, and the stream kept for 10 ms only: gone before the page's first reconnect.
    config = proxy_config(mock_provider, ui={"enabled": True}, resume={"keep_s": 0.01})
    proxy = start_proxy(tmp_path, config)
    try:
        seen = await run_scenario(
            "network_drop_mid_answer", browser, proxy.root, mock_provider.root, tag="ui-drop-gone", tokens=400
        )
        record = await read_record(proxy.root, seen["before"]["requestId"], None)
    finally:
        proxy.program.stop()
    before, during, after = seen["before"], seen["during"], seen["after"]
    assert during["status"] == "reconnecting"
    assert after["status"] == "interrupted" and after["requestId"] == before["requestId"]
    assert (
        after["error"].startswith("the stream broke off and cannot be resumed: ") and "no longer kept" in after["error"]
    )
    # What the page had is kept on screen; the record holds it (and what was in flight when it broke).
    assert after["text"] == during["text"] and after["text"].startswith(before["text"])
    assert (record["status"], record["stop_reason"]) == ("stopped", "disconnect")
    assert record["content"].startswith(after["text"])
    _assert_never_failed(seen["seen"])


async def test_closing_the_tab_stops_the_provider(browser: str, ui_proxy: Proxy, mock_provider: MockProvider) -> None:
    seen = await run_scenario("close_tab", browser, ui_proxy.root, mock_provider.root, tag="ui-close-tab")
    provider = await provider_request(mock_provider.root, "ui-close-tab", wait="ended", timeout=CLOSED_WITHIN_MS / 1000)
    assert provider["state"] == "closed_by_client" and provider["tokens_sent"] < 400
    record = await read_record(ui_proxy.root, seen["before"]["requestId"], None)
    assert (record["status"], record["stop_reason"]) == ("stopped", "disconnect")
    assert record["content"].startswith(seen["before"]["text"])


async def test_stop_aborts_the_fetch_when_the_proxy_cannot_be_reached(
    browser: str, mock_provider: MockProvider, tmp_path: Path
) -> None:
    # A proxy that keeps its records on disk, and lets streams run on for
    # long after SIGTERM: only the page's abort can stop this one in time.
    config = proxy_config(
        mock_provider,
        ui={"enabled": True},
        store={"url": f"sqlite:///{tmp_path / 'records.db'}"},
        shutdown_grace_s=120,
    )
    proxy = start_proxy(tmp_path, config)
    try:
        assert proxy.program.process is not None
        seen = await run_scenario(
            "stop_with_proxy_unreachable",
            browser,
            proxy.root,
            mock_provider.root,
            tag="ui-unreachable",
            proxyPid=proxy.program.process.pid,
            proxyPort=proxy.port,
        )
        assert proxy.program.process.wait(30) == 0  # it drained: the stream had ended
    finally:
        proxy.program.stop()
    stopped = seen["stopped"]
    assert stopped["status"] == "stopped" and stopped["error"] is None and stopped["text"]
    _assert_never_failed(seen["seen"])
    assert seen["provider"]["state"] == "closed_by_client" and seen["provider"]["tokens_sent"] < 400

    again = start_proxy(tmp_path, config)  # the same records file
    try:
        record = await read_record(again.root, stopped["requestId"], None)
    finally:
        again.program.stop()
    # Stopped by the dropped connection (the cancel never arrived); the page kept what it had read.
    assert (record["status"], record["stop_reason"]) == ("stopped", "disconnect")
    assert record["content"].startswith(stopped["text"])


async def test_a_provider_failure_shows_failed_with_the_partial_and_the_error(
    browser: str, ui_proxy: Proxy, mock_provider: MockProvider
) -> None:
    seen = await run_scenario("provider_fails", browser, ui_proxy.root, mock_provider.root, tag="ui-fails", failAfter=6)
    failed = seen["failed"]
    assert failed["status"] == "failed"
    assert "broke off the answer" in failed["error"] and "(upstream_broken)" in failed["error"]
    record = await read_record(ui_proxy.root, failed["requestId"], None)
    assert record["status"] == "failed"
    assert failed["text"] == record["content"] and failed["text"].startswith("w0 w1 ")


@pytest.fixture
def other_origin(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain static server on another port, serving a copy of the page."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "cancelproxy" / "ui", site)
    port = free_port()
    program = Program(
        [sys.executable, "-u", "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)],
        ready_marker="Serving HTTP",
    )
    program.start()
    yield f"http://127.0.0.1:{port}", site
    program.stop()


async def test_the_page_works_from_another_origin(
    browser: str, mock_provider: MockProvider, other_origin: tuple[str, Path], tmp_path: Path
) -> None:
    origin, site = other_origin
    proxy = start_proxy(tmp_path, proxy_config(mock_provider, cors={"allow_origins": [origin]}))
    try:
        index = site / "index.html"
        named = f'<meta name="cancelproxy-proxy" content="{proxy.root}">'
        index.write_text(index.read_text().replace('<meta name="cancelproxy-proxy" content="">', named))
        seen = await run_scenario(
            "from_another_origin", browser, proxy.root, mock_provider.root, pageUrl=f"{origin}/", tag="ui-origin"
        )
        stopped = seen["stopped"]
        assert seen["origin"] == origin
        # The request id came through (an exposed header), and the Stop reached the proxy.
        assert stopped["status"] == "stopped" and stopped["requestId"].startswith("req_")
        record = await read_record(proxy.root, stopped["requestId"], None)
        assert (record["status"], record["stop_reason"]) == ("stopped", "cancel")
        assert record["content"] == stopped["text"]
    finally:
        proxy.program.stop()
