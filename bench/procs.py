"""Subprocesses the harness starts: output drained, readiness awaited, always stopped."""

from __future__ import annotations

import collections
import ctypes
import os
import resource
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def die_with_parent() -> None:
    """Have the kernel send this process SIGTERM when its parent dies, even by SIGKILL
    (used as a subprocess preexec_fn, and by the client processes themselves)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):
        pass  # not Linux: the harness's own cleanup still stops everything


class Program:
    """One subprocess. Ready when ``ready_marker`` shows in its output, or else when
    ``ready_port`` accepts connections."""

    def __init__(
        self,
        name: str,
        args: list[str],
        *,
        cwd: Path,
        ready_marker: str | None = None,
        ready_port: int | None = None,
        env: dict[str, str] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.start_timeout_s = start_timeout_s
        self.args = args
        self.cwd = cwd
        self.ready_marker = ready_marker
        self.ready_port = ready_port
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen[str] | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=300)
        self._ready = threading.Event()
        self._drainer: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.args,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=die_with_parent,
        )
        self._drainer = threading.Thread(target=self._drain, name=f"drain-{self.name}", daemon=True)
        self._drainer.start()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            if self.ready_marker is not None and self._ready.wait(0.05):
                return
            if self.ready_port is not None and port_open(self.ready_port):
                return
            if self.ready_port is not None:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start ({' '.join(self.args)}):\n{self.output}")

    def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if self.ready_marker is not None and self.ready_marker in line:
                self._ready.set()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; idempotent."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)
        if self._drainer is not None:
            self._drainer.join(5)
        if process.stdout is not None:
            process.stdout.close()
        return process.returncode
