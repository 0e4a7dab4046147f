"""Client processes: the load generator, so it is not the bottleneck of one process.

A fixed pool of spawned processes, each running one job at a time: an async
function (module-level, imported by name in the child) run to completion in its
own event loop (uvloop when installed). Jobs carry a ``start_at``
``time.monotonic()`` instant when several must begin together: CLOCK_MONOTONIC
is shared by every process on Linux.
"""

from __future__ import annotations

import importlib
import multiprocessing
import multiprocessing.connection
import signal
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .procs import die_with_parent, raise_nofile_limit


@dataclass(frozen=True)
class Job:
    func: str  # "module:function", an async function
    kwargs: dict[str, Any] = field(default_factory=dict)


def event_loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_async(coro: Awaitable[Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


def _serve(conn: multiprocessing.connection.Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    die_with_parent()
    raise_nofile_limit()
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return  # the parent is gone
        if job is None:
            return
        try:
            module, name = job.func.split(":")
            func: Callable[..., Awaitable[Any]] = getattr(importlib.import_module(module), name)
            conn.send(("ok", run_async(func(**job.kwargs))))
        except BaseException:
            conn.send(("error", traceback.format_exc()))


async def ready() -> int:
    """A first job: imports what every client job uses, so no scenario pays for it."""
    import importlib

    from . import scenarios

    for name in scenarios.NAMES:
        importlib.import_module(f"{scenarios.__name__}.{scenarios.module_of(name)}")
    import aiohttp  # noqa: F401

    return 0


class WorkerPool:
    def __init__(self, size: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._conns: list[multiprocessing.connection.Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        for i in range(size):
            parent, child = context.Pipe()
            proc = context.Process(target=_serve, args=(child,), name=f"bench-client-{i}", daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self.run([Job("bench.workers:ready")] * size, timeout_s=60)

    @property
    def size(self) -> int:
        return len(self._procs)

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def run(self, jobs: list[Job], timeout_s: float) -> list[Any]:
        """Run jobs[i] on worker i, all at once; their results in order."""
        if len(jobs) > len(self._conns):
            raise ValueError(f"{len(jobs)} jobs for {len(self._conns)} workers")
        for conn, job in zip(self._conns, jobs, strict=False):  # jobs[i] to worker i; spare workers idle
            conn.send(job)
        results: list[Any] = []
        failures: list[str] = []
        deadline = time.monotonic() + timeout_s
        for conn, job in zip(self._conns, jobs, strict=False):
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                self.close()  # a stuck worker cannot be trusted with the next job
                raise TimeoutError(f"client job {job.func} did not finish in {timeout_s:.0f} s")
            status, value = conn.recv()
            if status != "ok":
                failures.append(f"client job {job.func} failed:\n{value}")
            results.append(value)
        if failures:
            raise RuntimeError(failures[0])
        return results

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc in self._procs:
            proc.join(3)
            if proc.is_alive():
                proc.kill()
                proc.join(3)
        for conn in self._conns:
            conn.close()
        self._conns.clear()
