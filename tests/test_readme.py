"""The README's snippets, run as written against the shipped config's mock model.

Only the port changes: the proxy here listens on a free one, not 8080.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT, Program, free_port
from .helpers import content_of

README = (ROOT / "README.md").read_text()


def snippet(name: str) -> str:
    match = re.search(rf"<!-- readme-test: {name} -->\n```\w+\n(.*?)```", README, re.S)
    assert match, f"README has no snippet '{name}'"
    return match.group(1)


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``python proxy.py`` with the shipped config.yaml (its SQLite file in a temp dir)."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("readme")
    program = Program(
        [sys.executable, str(ROOT / "proxy.py"), "--config", str(ROOT / "config.yaml"), "--port", str(port)],
        ready_marker="listening on",
    )
    program.cwd = workdir
    program.start()
    yield port
    program.stop()


def as_written(code: str, port: int) -> str:
    return code.replace("127.0.0.1:8080", f"127.0.0.1:{port}")


def test_the_readme_starts_with_the_two_commands() -> None:
    commands = [line.strip() for line in README.splitlines() if line.startswith("    python3 -m venv")]
    assert commands[:2] == [
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python proxy.py",
        "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest",
    ]
    assert (ROOT / ".ci" / "run").read_text().strip().endswith(commands[1])


def test_curl_stream_cancel_read(port: int) -> None:
    command = ["bash", "-c", as_written(snippet("curl-stream"), port)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as stream:
        assert stream.stdout is not None
        first = stream.stdout.readline()  # the stream is flowing: Stop now
        assert first.startswith("data: {")
        cancel = subprocess.run(
            ["bash", "-c", as_written(snippet("curl-cancel"), port)], capture_output=True, text=True, timeout=30
        )
        ack = json.loads(cancel.stdout)
        assert ack["cancelled"] is True and ack["session_id"] == "chat-1"
        rest = stream.stdout.read()
        assert stream.wait(30) == 0
    assert '"finish_reason":"cancelled"' in rest and rest.endswith("data: [DONE]\n\n")
    read = subprocess.run(
        ["bash", "-c", as_written(snippet("curl-read"), port)], capture_output=True, text=True, timeout=30
    )
    (record,) = json.loads(read.stdout)["requests"]
    assert (record["status"], record["stop_reason"]) == ("stopped", "cancel")
    assert 0 < len(record["content"].split()) < 400


def test_python_sdk_snippet(port: int, tmp_path: Path) -> None:
    script = tmp_path / "chat.py"
    script.write_text(as_written(snippet("python-sdk"), port))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == content_of(40) + "\n"


def test_node_sdk_snippet(port: int, node_sdks: Path) -> None:
    (node_sdks / "chat.mjs").write_text(as_written(snippet("node-sdk"), port))
    result = subprocess.run(["node", "chat.mjs"], cwd=node_sdks, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == content_of(40) + "\n"


def test_frontend_pattern(port: int, tmp_path: Path) -> None:
    script = tmp_path / "frontend.mjs"
    script.write_text(as_written(snippet("frontend"), port))
    result = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stopped stopped kept as shown"


def test_compose_snippet_names_the_proxy_and_an_app() -> None:
    import yaml

    blocks = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", README, re.S)]
    (compose,) = [block for block in blocks if "services" in block]
    services = compose["services"]
    assert set(services) == {"cancelproxy", "app"}
    assert services["app"]["environment"]["OPENAI_BASE_URL"] == "http://cancelproxy:8080/v1"


def test_the_abort_hook_example_is_a_valid_config() -> None:
    import yaml

    from cancelproxy.config import parse_config

    blocks = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", README, re.S)]
    (example,) = [block for block in blocks if "upstreams" in block]
    config = parse_config(example, env={})
    hooks = {upstream.name: upstream.abort for upstream in config.upstreams}
    assert hooks["sglang"] is not None and hooks["sglang"].body == {"rid": "{upstream_id}"}
    assert hooks["llamacpp"] is not None and hooks["llamacpp"].method == "DELETE"
