"""A real Redis for the tests: the ``redis_url`` fixture and a server they can stop.

``REDIS_URL`` points the tests at an existing server; otherwise they start
``redis-server`` on a free port. With neither, the tests fail rather than
skip: CI must run them. Tests share one server, so each uses its own key
prefix (``redis_key_prefix``) and nothing is ever flushed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator, Sequence

import pytest

__all__ = ["RedisServer", "redis_key_prefix", "redis_server", "redis_url", "unique_key_prefix"]

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0
# Logged once the server listens (Redis 7.2 appends " tcp" to it).
READY_MARKER = "Ready to accept connections"


def unique_key_prefix() -> str:
    """Keys no other test sees, on a server other tests share."""
    return f"cancelproxy-test:{uuid.uuid4().hex}:"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A ``redis-server`` subprocess on a fixed port, without persistence.

    ``stop()`` and ``start()`` again bring it back on the same port (and
    therefore the same ``url``), empty: how a test takes Redis away mid-run.
    """

    def __init__(self, port: int | None = None, *, host: str = "127.0.0.1", launcher: Sequence[str] = ()) -> None:
        """``launcher`` runs the server another way (``ip netns exec NS``: on another host)."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH (install Redis, or set REDIS_URL)")
        self.binary = binary
        self.host = host
        self.launcher = list(launcher)
        self.port = port if port is not None else _free_port()
        self.lines: list[str] = []
        self._process: subprocess.Popen[str] | None = None
        self._drainer: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        args = [*self.launcher, self.binary, "--port", str(self.port), "--bind", self.host]
        args += ["--save", "", "--appendonly", "no"]
        if self.host != "127.0.0.1":
            # Without a password Redis refuses clients of other hosts unless
            # told not to; this server is the tests' own.
            args += ["--protected-mode", "no"]
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._process = process
        ready = threading.Event()

        def drain() -> None:
            # Read to the end, not just to the marker: a full pipe would block the server.
            assert process.stdout is not None
            for line in process.stdout:
                self.lines.append(line)
                if READY_MARKER in line:
                    ready.set()
            ready.set()  # it exited: don't wait for a line that will never come

        self._drainer = threading.Thread(target=drain, daemon=True)
        self._drainer.start()
        if not ready.wait(START_TIMEOUT_S) or process.poll() is not None:
            self.stop()
            raise RuntimeError(f"redis-server did not start on port {self.port}:\n{''.join(self.lines)}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._drainer is not None:
            self._drainer.join(5)  # it ends at EOF, once the process is gone
            self._drainer = None
        if process.stdout is not None:
            process.stdout.close()


def _start_or_fail(port: int | None = None) -> RedisServer:
    try:
        server = RedisServer(port)
        server.start()
    except RuntimeError as error:
        pytest.fail(f"no Redis for the tests: {error}", pytrace=False)
    return server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis every test may share: ``REDIS_URL``, or a server started for the run."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    server = _start_or_fail()
    yield server.url
    server.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A Redis of the test's own, running; the test may stop and restart it."""
    server = _start_or_fail()
    yield server
    server.stop()


@pytest.fixture
def redis_key_prefix() -> str:
    return unique_key_prefix()
