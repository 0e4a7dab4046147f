"""The scenarios: each has client jobs (run in the worker processes) and a ``run``
(in the harness process) that dispatches them and builds its table."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ..fleet import Fleet, Target
from ..procstat import CpuMeter
from ..report import Table
from ..settings import Settings
from ..workers import WorkerPool

Measured = TypeVar("Measured")


@dataclass
class Context:
    settings: Settings
    fleet: Fleet
    pool: WorkerPool
    run_id: str  # prefix of every mock tag and session id of this run

    @property
    def targets(self) -> list[Target]:
        return self.fleet.targets

    @property
    def fleet_cores(self) -> int:
        return os.cpu_count() or 1

    def cpu_meter(self, target: Target) -> CpuMeter:
        mock_pid = self.fleet.mock.pid
        return CpuMeter({"client": self.pool.pids, "mock": lambda: [mock_pid], "server": target.server_pids})

    def start_at(self, delay_s: float = 0.3) -> float:
        """A common start instant for jobs sent to several workers now."""
        return time.monotonic() + delay_s

    def in_turns(self, rounds: int, measure: Callable[[Target], Measured]) -> dict[str, list[Measured]]:
        """``rounds`` rounds, each measuring every target in turn; by target name.

        Whatever else the machine does for a few seconds then falls on one
        round of each target, not on every round of one, so a round's figure
        is compared with the floor's of the same round (``report.ratios_by_round``).
        """
        measured: dict[str, list[Measured]] = {target.name: [] for target in self.targets}
        for _ in range(rounds):
            for target in self.targets:
                measured[target.name].append(measure(target))
        return measured

    def split(self, total: int) -> list[int]:
        """``total`` streams shared as evenly as possible by the client processes."""
        size = self.pool.size
        return [total // size + (1 if i < total % size else 0) for i in range(size)]


Scenario = Callable[[Context], Table]

# name → "module:function" in this package, in the order they run.
_SCENARIOS = {
    "latency": "latency:run_latency",
    "ttft": "latency:run_ttft",
    "conversation": "latency:run_conversation",
    "throughput": "throughput:run",
    "responses": "responses:run",
    "slow_streams": "slow_streams:run",
    "cancel": "cancel:run",
    "cancel_new_conn": "cancel_new_conn:run",
    "disconnect": "disconnect:run",
    "concurrent_streams": "concurrent_streams:run",
    "resume": "resume:run",
}
NAMES = list(_SCENARIOS)


def module_of(name: str) -> str:
    return _SCENARIOS[name].split(":")[0]


def scenario(name: str) -> Scenario:
    module, function = _SCENARIOS[name].split(":")
    found: Scenario = getattr(importlib.import_module(f"{__name__}.{module}"), function)
    return found
