"""``--profile DIR``: py-spy samples the mock and cancelproxy during each scenario.

The profiles are collapsed stacks (``DIR/<scenario>-<program>.txt``, one
``frame;frame;... count`` line per stack, for flamegraph tools); a summary of
where the samples fell is printed with them. py-spy is optional:
``pip install py-spy`` (it needs ptrace rights, e.g. root or CAP_SYS_PTRACE).
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType

RATE_HZ = 250


def find_py_spy() -> str | None:
    return shutil.which("py-spy") or next(
        (str(p) for p in [Path(sys.executable).parent / "py-spy"] if p.is_file()), None
    )


class Profiles:
    """py-spy on each pid for the duration of a ``with`` block."""

    def __init__(self, binary: str, directory: Path, scenario: str, pids: dict[str, int]) -> None:
        self._binary = binary
        self._directory = directory
        self._scenario = scenario
        self._pids = pids
        self._running: list[tuple[subprocess.Popen[bytes], Path]] = []

    def __enter__(self) -> Profiles:
        self._directory.mkdir(parents=True, exist_ok=True)
        for name, pid in self._pids.items():
            out = self._directory / f"{self._scenario}-{name}.txt"
            spy = subprocess.Popen(
                [
                    self._binary,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(RATE_HZ),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self._running.append((spy, out))
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for spy, _ in self._running:
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for spy, _ in self._running:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(5)

    def summaries(self, top: int = 12) -> str:
        return "\n".join(summarize(out, top) for _, out in self._running if out.exists())


def summarize(path: Path, top: int = 12) -> str:
    """Where the samples fell: the frame on top of each stack ("self"), by package and by function.
    (Totals along the stack would mislead: py-spy cuts coroutine stacks at each task.)"""
    own: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        raw = stack.split(";")
        frames = [_short(f) for f in raw]
        samples += int(count)
        own[frames[-1]] += int(count)
        packages[_package(raw[-1])] += int(count)
    if samples == 0:
        return f"{path.name}: no samples"
    lines = [
        f"{path.name}: {samples} samples of busy threads at {RATE_HZ} Hz (≈ {samples / RATE_HZ:.1f} s)",
        "  self, by package (cancelproxy by module):",
    ]
    lines += [f"    {n / samples:6.1%}  {package}" for package, n in packages.most_common(top)]
    lines.append("  self, by function:")
    lines += [f"    {n / samples:6.1%}  {frame}" for frame, n in own.most_common(top)]
    return "\n".join(lines)


def _package(frame: str) -> str:
    """Where a frame's code lives: ``cancelproxy/relay.py``, ``aiohttp``, ``asyncio``, ...
    ``run_app`` itself on top means native code under the event loop (uvloop's C
    loop: polling, socket calls) with no Python frame of its own."""
    name, _, where = frame.partition(" (")
    if name == "run_app":
        return "event loop, native (uvloop C code and syscalls)"
    path = where.rstrip(")").rsplit(":", 1)[0]  # py-spy writes paths from the package: aiohttp/web.py
    if path.startswith("cancelproxy/") or "/" not in path:
        return path.removesuffix(".py") if "/" not in path else path
    return path.split("/")[0]


def _short(frame: str) -> str:
    """``func (/long/path/to/pkg/module.py:12)`` → ``func (pkg/module.py:12)``."""
    name, _, where = frame.partition(" (")
    parts = where.rstrip(")").split("/")
    return f"{name} ({'/'.join(parts[-2:])})" if where else name
