"""The commands, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("protocol", ["chat", "responses", "messages", "completions"])
def test_demo_stops_a_stream_and_shows_the_stored_partial(protocol: str) -> None:
    result = _run(
        "-m", "cancelproxy", "demo", "--protocol", protocol, "--tokens", "100", "--rate", "100", "--stop-after", "5"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"cancelled": true' in result.stdout
    assert f'"protocol": "{protocol}"' in result.stdout
    assert "stored partial == what the client received: yes" in result.stdout
    assert "its request ended: closed_by_client" in result.stdout


def test_a_bad_config_stops_the_start_with_one_line_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("upstreams:\n  - name: a\n    base_url: ftp://nowhere\n")
    result = _run("proxy.py", "--config", str(config))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("cancelproxy: bad config: upstreams[0].base_url:")


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    result = _run("proxy.py", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "nope.yaml: cannot read" in result.stderr


def test_shipped_config_streams_the_builtin_mock(tmp_path: Path) -> None:
    from .conftest import Program, free_port

    port = free_port()
    args = [sys.executable, str(ROOT / "proxy.py"), "--config", str(ROOT / "config.yaml"), "--port", str(port)]
    program = Program(args, ready_marker="listening on", cwd=tmp_path)  # its SQLite file lands there
    program.start()
    try:
        body = json.dumps(
            {
                "model": "mock-1",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
                "mock": {"tokens": 5, "rate": 0},
            }
        )
        result = subprocess.run(
            [
                "curl",
                "-sN",
                f"http://127.0.0.1:{port}/v1/chat/completions",
                "-H",
                "Content-Type: application/json",
                "-d",
                body,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        assert program.stop() == 0
    assert result.returncode == 0
    assert result.stdout.endswith("data: [DONE]\n\n")
    assert [f'"content":"w{i} "' in result.stdout for i in range(5)] == [True] * 5


def test_what_cannot_be_opened_stops_the_start_with_one_line(tmp_path: Path) -> None:
    from .conftest import free_port

    port = free_port()
    for extra, expected in (
        (
            "store: {url: 'sqlite:///nonexistent-dir/x.db'}",
            "cannot start: store.url: cannot open sqlite:///nonexistent-dir/x.db",
        ),
        ("audit: {path: /nonexistent-dir/audit.log}", "cannot start: "),
    ):
        config = tmp_path / "config.yaml"
        config.write_text(f"upstreams: [{{name: m, base_url: 'builtin:mock'}}]\n{extra}\n")
        result = _run("proxy.py", "--config", str(config), "--port", str(port))
        assert result.returncode == 2, result.stderr
        (line,) = [line for line in result.stderr.splitlines() if line.startswith("cancelproxy:")]
        assert line.startswith(f"cancelproxy: {expected}")


def test_a_store_password_is_never_printed(tmp_path: Path) -> None:
    from .conftest import free_port, start_proxy

    # Redis down at start: the proxy serves, and says so, the URL with it.
    url = f"redis://:hunter2-storepw@127.0.0.1:{free_port()}/0"
    proxy = start_proxy(tmp_path, {"upstreams": [{"name": "m", "base_url": "builtin:mock"}], "store": {"url": url}})
    proxy.program.stop()
    assert "unreachable at start" in proxy.program.output
    assert "hunter2" not in proxy.program.output and ":***@127.0.0.1" in proxy.program.output
    # A scheme the proxy does not know: refused, the URL shown without it.
    config = tmp_path / "config.yaml"
    config.write_text(
        "upstreams: [{name: m, base_url: 'builtin:mock'}]\nstore: {url: 'rediss://:hunter2-storepw@h/0'}\n"
    )
    result = _run("proxy.py", "--config", str(config), "--port", str(free_port()))
    assert result.returncode == 2 and "is not supported" in result.stderr
    assert "hunter2" not in result.stderr
