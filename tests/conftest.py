"""Fixtures that start the real programs: the mock provider and ``python proxy.py``.

aiohttp's test server always enables handler cancellation, so a test built on
it can pass while the real entry point does not cancel. The end-to-end tests
therefore drive subprocesses over real sockets.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from .node import node_project

# A real Redis for every test that asks for one (never skipped: see redis_server.py).
from .redis_server import redis_key_prefix, redis_server, redis_url  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Program:
    """A subprocess whose output is collected; ready once it prints its marker line."""

    args: list[str]
    ready_marker: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    # RLIMIT_NOFILE (soft and hard) of the process, to see it run out of descriptors.
    open_files: int | None = None
    process: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    _drainer: threading.Thread | None = None

    def start(self) -> None:
        ready = threading.Event()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        open_files = self.open_files

        def limit_open_files() -> None:  # runs in the child, between fork and exec
            if open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

        self.process = subprocess.Popen(
            self.args,
            cwd=self.cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=limit_open_files if open_files is not None else None,
        )

        def drain() -> None:
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                self.lines.append(line)
                if self.ready_marker in line:
                    ready.set()
            ready.set()  # it exited: don't wait for a line that will never come

        self._drainer = threading.Thread(target=drain, daemon=True)
        self._drainer.start()
        if not ready.wait(START_TIMEOUT_S) or self.process.poll() is not None:
            self.stop()
            raise RuntimeError(f"{self.args} did not start:\n{self.output}")

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._drainer is not None:
            self._drainer.join(5)  # it ends at EOF, once the process is gone
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


@dataclass
class Served:
    """A program serving HTTP on a loopback port."""

    program: Program
    port: int

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"


@dataclass
class MockProvider(Served):
    pass


@dataclass
class Proxy(Served):
    config_path: Path


def start_mock(port: int | None = None) -> MockProvider:
    port = free_port() if port is None else port
    program = Program(
        [sys.executable, "-m", "cancelproxy", "mock-upstream", "--port", str(port)],
        ready_marker="listening on",
    )
    program.start()
    return MockProvider(program, port)


def proxy_config(mock: MockProvider, **overrides: object) -> dict[str, object]:
    config: dict[str, object] = {
        "default_upstream": "mock",
        "upstreams": [
            {"name": "mock", "base_url": mock.base_url, "models": ["mock-*"]},
            {"name": "keyed", "base_url": mock.base_url, "api_key": "${KEYED_API_KEY}", "models": ["keyed-*"]},
        ],
        "store": {"url": "memory://"},
        "admin_token": "admin-secret-token",
    }
    config.update(overrides)
    return config


def start_proxy(
    tmp_path: Path, config: dict[str, object], env: dict[str, str] | None = None, *, open_files: int | None = None
) -> Proxy:
    port = free_port()
    config_path = tmp_path / f"proxy-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    program = Program(
        [sys.executable, "proxy.py", "--config", str(config_path), "--port", str(port)],
        ready_marker="listening on",
        env={"KEYED_API_KEY": "sk-upstream-secret-0123456789", **(env or {})},
        open_files=open_files,
    )
    program.start()
    return Proxy(program, port, config_path)


@pytest.fixture(scope="session")
def node_sdks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Node.js project with the official SDKs installed (see node.py)."""
    return node_project(tmp_path_factory)


@pytest.fixture(scope="session")
def mock_provider() -> Iterator[MockProvider]:
    mock = start_mock()
    yield mock
    mock.program.stop()


@pytest.fixture(scope="module")
def proxy(mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    proxy = start_proxy(tmp_path_factory.mktemp("proxy"), proxy_config(mock_provider))
    yield proxy
    proxy.program.stop()
