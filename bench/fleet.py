"""The programs under test: the mock provider, the aiohttp floor, cancelproxy and (if present) nginx."""

from __future__ import annotations

import contextlib
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import nginx
from .client import PATHS, Protocol
from .procs import Program, free_port
from .procstat import children

ROOT = Path(__file__).resolve().parent.parent
FLOOR = "aiohttp floor"  # the target name of bench/floor.py


@dataclass
class Target:
    """Where a client sends its requests, and which processes serve them there."""

    name: str  # direct | nginx | aiohttp floor | cancelproxy
    root: str  # http://127.0.0.1:PORT
    server_pids: Callable[[], list[int]] = field(default=lambda: [])
    gc_metrics: bool = False  # serves GET /metrics with the garbage collector's figures (GcStats)

    @property
    def chat_url(self) -> str:
        return self.url("chat")

    def url(self, protocol: Protocol) -> str:
        """Where streams of ``protocol`` go (the floor and nginx pass any path through)."""
        return f"{self.root}{PATHS[protocol]}"

    @property
    def metrics_url(self) -> str:
        return f"{self.root}/metrics"


@dataclass
class Fleet:
    mock: Program
    mock_root: str
    targets: list[Target]
    nginx_skipped: str | None  # why there is no nginx row
    tmp: Path
    programs: list[Program]

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)

    def clear_mock(self) -> None:
        """Forget the mock's records, so its lookups stay cheap from one scenario to the next."""
        request = urllib.request.Request(f"{self.mock_root}/_mock/requests", method="DELETE")
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()

    def check_alive(self) -> None:
        for program in self.programs:
            if not program.alive():
                raise RuntimeError(f"{program.name} exited:\n{program.output[-3000:]}")


def proxy_config(tmp: Path, mock_root: str, store: str | None) -> Path:
    """cancelproxy's config for a run in ``tmp`` in front of the mock (the store: SQLite unless ``store``)."""
    config = {
        "default_upstream": "mock",
        "upstreams": [{"name": "mock", "base_url": f"{mock_root}/v1", "models": ["mock-*"]}],
        "store": {"url": store or f"sqlite:///{tmp / 'bench.db'}"},  # the shipped default backend
        "audit": {"path": str(tmp / "audit.log")},
        "log_level": "warning",
        "shutdown_grace_s": 2,  # nothing is in flight when the harness stops it
    }
    path = tmp / "cancelproxy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def mock_program(port: int) -> Program:
    """The mock provider on ``port``, not started yet."""
    return Program(
        "mock",
        [sys.executable, "-m", "cancelproxy", "mock-upstream", "--port", str(port)],
        cwd=ROOT,
        ready_marker="listening on",
    )


def floor_command(port: int, mock_root: str) -> list[str]:
    return [sys.executable, "-m", "bench.floor", "--port", str(port), "--upstream", mock_root]


def proxy_command(port: int, config: Path) -> list[str]:
    return [sys.executable, "proxy.py", "--config", str(config), "--port", str(port)]


@contextlib.contextmanager
def running_fleet(tmp: Path, with_nginx: bool = True, store: str | None = None) -> Iterator[Fleet]:
    """Start everything; stop everything on the way out, whatever happened."""
    with contextlib.ExitStack() as stack:
        mock_port = free_port()
        mock = mock_program(mock_port)
        stack.callback(mock.stop)
        mock.start()
        mock_root = f"http://127.0.0.1:{mock_port}"
        programs = [mock]
        targets = [Target("direct", mock_root)]

        # The floor before nginx: each row's ratio to the floor is known when the row is made.
        port = free_port()
        floor = Program(
            FLOOR,
            floor_command(port, mock_root),
            cwd=ROOT,
            ready_marker="listening on",
        )
        stack.callback(floor.stop)
        floor.start()
        programs.append(floor)
        floor_pid = floor.pid
        targets.append(Target(FLOOR, f"http://127.0.0.1:{port}", lambda: [floor_pid], gc_metrics=True))

        skipped: str | None = None
        binary = nginx.find_nginx() if with_nginx else None
        if binary is None:
            skipped = f"nginx not found on PATH: skipped (install it with `{nginx.INSTALL_HINT}`)"
        else:
            port = free_port()
            config = nginx.write_config(tmp, port, mock_port)
            server = Program("nginx", nginx.command(binary, tmp, config), cwd=tmp, ready_port=port)
            stack.callback(server.stop)
            server.start()
            programs.append(server)
            master = server.pid
            targets.append(Target("nginx", f"http://127.0.0.1:{port}", lambda: [master, *children(master)]))

        port = free_port()
        proxy = Program(
            "cancelproxy",
            proxy_command(port, proxy_config(tmp, mock_root, store)),
            cwd=ROOT,
            ready_marker="listening on",
        )
        stack.callback(proxy.stop)
        proxy.start()
        programs.append(proxy)
        proxy_pid = proxy.pid
        targets.append(Target("cancelproxy", f"http://127.0.0.1:{port}", lambda: [proxy_pid], gc_metrics=True))
        yield Fleet(mock, mock_root, targets, skipped, tmp, programs)
