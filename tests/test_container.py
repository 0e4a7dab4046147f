"""The image, built from this repository and run with podman: what a user of the Dockerfile gets.

One build per run (the ``image`` fixture), on a local stand-in for
``python:3.11-slim`` where no registry can be reached (see container_base.py).
Each test runs its own containers with the shipped config, reached through
the published port, and removes them (and its volume) whatever happens.
Without podman the tests fail, not skip: CI must run them.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from .conftest import ROOT, Program, free_port
from .container_base import BaseImageError, build_options, podman
from .helpers import content_of, open_stream, read_record

USER_KEY = "sk-user-a-0123456789abcdef"
BUILD_TIMEOUT_S = 600.0
PODMAN_TIMEOUT_S = 60.0
# More than the shipped shutdown_grace_s (10), as compose.example.yaml's
# stop_grace_period: podman's default of 10 s would kill the proxy while it
# still drains, and the exit code would be 137.
STOP_TIMEOUT_S = 15
# WORKDIR of the image: the shipped config's sqlite:///cancelproxy.db lands here.
DATA_DIR = "/var/lib/cancelproxy"
# This machine refuses podman's default rlimits.
RUN_LIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")


def _podman_or_fail() -> list[str]:
    try:
        return podman()
    except BaseImageError as error:
        pytest.fail(f"no podman for the container tests: {error}", pytrace=False)


def _podman(*args: str, timeout: float = PODMAN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_podman_or_fail(), *args], capture_output=True, text=True, timeout=timeout)


def _podman_ok(*args: str, timeout: float = PODMAN_TIMEOUT_S) -> str:
    result = _podman(*args, timeout=timeout)
    assert result.returncode == 0, f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The repository's Dockerfile, built as it stands; removed after the module."""
    _podman_or_fail()
    try:
        options = build_options()
    except BaseImageError as error:
        pytest.fail(f"no base image for the container tests: {error}", pytrace=False)
    tag = f"localhost/cancelproxy-test:{uuid.uuid4().hex[:12]}"
    # docker format: OCI image config has no HEALTHCHECK.
    build = _podman("build", *options, "--format", "docker", "--tag", tag, str(ROOT), timeout=BUILD_TIMEOUT_S)
    assert build.returncode == 0, f"podman build failed:\n{build.stdout}{build.stderr}"
    try:
        yield tag
    finally:
        _podman("rmi", "--force", tag)


@dataclass
class Container:
    """One ``podman run``, attached: its output is the container's, its exit the container's."""

    name: str
    port: int
    program: Program

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def exit_code(self) -> int:
        return int(_podman_ok("inspect", "--format", "{{.State.ExitCode}}", self.name).strip())


@dataclass
class Containers:
    """Starts containers of the image, and removes every one of them, and their volume."""

    image: str
    started: list[Container] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def volume(self) -> str:
        name = f"cancelproxy-test-{uuid.uuid4().hex[:12]}"
        _podman_ok("volume", "create", name)
        self.volumes.append(name)
        return name

    def start(self, volume: str | None = None) -> Container:
        name, port = f"cancelproxy-test-{uuid.uuid4().hex[:12]}", free_port()
        mount = ["--volume", f"{volume}:{DATA_DIR}"] if volume else []
        args = [
            *_podman_or_fail(), "run", "--name", name, *RUN_LIMITS, "--stop-timeout", str(STOP_TIMEOUT_S),
            "--publish", f"127.0.0.1:{port}:8080", *mount, self.image,
        ]  # fmt: skip
        program = Program(args, ready_marker="listening on")
        container = Container(name, port, program)
        self.started.append(container)
        program.start()
        return container

    def remove_all(self) -> None:
        for container in self.started:
            _podman("rm", "--force", "--time", "0", container.name)
            container.program.stop()
        for volume in self.volumes:
            _podman("volume", "rm", "--force", volume)


@pytest.fixture
def containers(image: str) -> Iterator[Containers]:
    made = Containers(image)
    try:
        yield made
    finally:
        made.remove_all()


def _client(container: Container) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=container.base_url, api_key=USER_KEY, max_retries=0)


async def _post(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, headers={"Authorization": f"Bearer {USER_KEY}"}) as response:
            return response.status, await response.json()


def _stored_records(volume: str, scratch: Path) -> dict[str, dict[str, Any]]:
    """The records as the SQLite file on the volume holds them, read on the host.

    A copy is read, so the host's sqlite never leaves root-owned -shm/-wal
    files in a directory the proxy (uid 10001) must write.
    """
    mountpoint = Path(_podman_ok("volume", "inspect", "--format", "{{.Mountpoint}}", volume).strip())
    for suffix in ("", "-wal"):
        source = mountpoint / f"cancelproxy.db{suffix}"
        if source.exists():
            shutil.copyfile(source, scratch / source.name)
    with sqlite3.connect(scratch / "cancelproxy.db") as connection:
        rows = connection.execute("SELECT request_id, data FROM records").fetchall()
    return {request_id: json.loads(data) for request_id, data in rows}


def test_healthcheck_passes_and_it_runs_as_10001(containers: Containers) -> None:
    container = containers.start()
    health = _podman("healthcheck", "run", container.name)
    assert health.returncode == 0, f"healthcheck: {health.stdout}{health.stderr}"
    assert _podman_ok("inspect", "--format", "{{.State.Health.Status}}", container.name).strip() == "healthy"
    # The proxy itself (PID 1), not only what `podman exec` would run as.
    status = _podman_ok("exec", container.name, "cat", "/proc/1/status")
    ids = {line.split(":")[0]: line.split()[1:] for line in status.splitlines() if line.startswith(("Uid:", "Gid:"))}
    assert ids == {"Uid": ["10001"] * 4, "Gid": ["10001"] * 4}, status


async def test_a_stream_and_its_cancel_through_the_published_port(containers: Containers) -> None:
    container = containers.start()
    session_id = f"chat-{uuid.uuid4().hex[:12]}"
    received: list[str] = []
    finish_reasons: list[str] = []
    ack: dict[str, Any] | None = None
    async with _client(container) as client:
        stream = await open_stream(client, {"tokens": 400, "rate": 20}, session_id=session_id)
        request_id = stream.response.headers["x-request-id"]
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    received.append(choice.delta.content)
                if choice.finish_reason:
                    finish_reasons.append(choice.finish_reason)
            if len(received) >= 5 and ack is None:
                status, ack = await _post(f"{container.root}/sessions/{session_id}/cancel")
                assert status == 200, ack

    assert ack == {"success": True, "cancelled": True, "session_id": session_id, "request_ids": [request_id]}
    assert finish_reasons == ["cancelled"]
    assert 5 <= len(received) < 400
    record = await read_record(container.root, request_id, USER_KEY)
    assert (record["status"], record["stop_reason"]) == ("stopped", "cancel")
    assert record["content"] == "".join(received) == content_of(len(received))


async def test_sigterm_exits_0_with_final_records_that_survive_on_the_volume(
    containers: Containers, tmp_path: Path
) -> None:
    volume = containers.volume()
    first = containers.start(volume)
    async with _client(first) as client:
        completed = await open_stream(client, {"tokens": 4, "rate": 0})
        completed_id = completed.response.headers["x-request-id"]
        assert "".join([c.choices[0].delta.content or "" async for c in completed if c.choices]) == content_of(4)

        # A stream outlasting the shutdown grace is in flight when podman stops the container.
        in_flight = await open_stream(client, {"tokens": 2000, "rate": 20})
        in_flight_id = in_flight.response.headers["x-request-id"]
        received: list[str] = []
        finish_reasons: list[str] = []
        stopping: asyncio.Task[subprocess.CompletedProcess[str]] | None = None
        async for chunk in in_flight:  # the proxy ends it cleanly: no error raised here
            for choice in chunk.choices:
                if choice.delta.content:
                    received.append(choice.delta.content)
                if choice.finish_reason:
                    finish_reasons.append(choice.finish_reason)
            if len(received) >= 5 and stopping is None:
                stopping = asyncio.create_task(
                    asyncio.to_thread(_podman, "stop", first.name, timeout=STOP_TIMEOUT_S + PODMAN_TIMEOUT_S)
                )
        assert stopping is not None
        stopped = await stopping

    assert stopped.returncode == 0, stopped.stderr
    assert first.exit_code() == 0, first.program.output
    assert first.program.stop() == 0, first.program.output
    assert finish_reasons == ["cancelled"]
    assert 5 <= len(received) < 2000

    # Final in the file at exit, before any later start could mend it.
    stored = _stored_records(volume, tmp_path)
    assert stored[in_flight_id]["status"] == "interrupted"
    assert stored[in_flight_id]["content"] == "".join(received)
    assert stored[completed_id]["status"] == "completed"

    # A new container on the same volume serves them: the volume, not the
    # container's own filesystem, is what kept them.
    second = containers.start(volume)
    interrupted = await read_record(second.root, in_flight_id, USER_KEY)
    assert (interrupted["status"], interrupted["content"]) == ("interrupted", "".join(received))
    kept = await read_record(second.root, completed_id, USER_KEY)
    assert (kept["status"], kept["content"]) == ("completed", content_of(4))
