"""CPU time and resident memory of processes, from /proc."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (nginx's workers)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == pid:
                    found.append(int(entry))
        return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After "pid (comm)": state is fields[0], so utime (14th) and stime (15th) are [11], [12].
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def total_cpu(pids: Iterable[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def total_rss_kb(pids: Iterable[int]) -> int:
    return sum(rss_kb(p) for p in pids)


@dataclass
class CpuWindow:
    """CPU seconds per role over one measured window, and that window's wall time."""

    wall_s: float
    seconds: dict[str, float]
    machine_busy: float = 0.0  # share of all cores busy (any process) over the whole window

    def share(self, role: str) -> float:
        """Fraction of one core the role used."""
        return self.seconds.get(role, 0.0) / self.wall_s if self.wall_s > 0 else 0.0

    def rest(self) -> float:
        """Fraction of one core busy with anything else (softirq, other processes)."""
        cores = os.cpu_count() or 1
        return max(0.0, self.machine_busy * cores - sum(self.share(role) for role in self.seconds))


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat (idle + iowait = not busy)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - values[3] - values[4], total


class CpuMeter:
    """Snapshot CPU of named groups of pids at start(), difference at stop()."""

    def __init__(self, roles: dict[str, Callable[[], list[int]]]) -> None:
        self._roles = roles
        self._start: dict[str, float] = {}
        self._t0 = 0.0
        self._machine = (0, 0)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = {role: total_cpu(pids()) for role, pids in self._roles.items()}
        self._machine = machine_ticks()

    def stop(self, wall_s: float | None = None) -> CpuWindow:
        """``wall_s``: the run's own duration, when the window held idle set-up time."""
        wall = time.monotonic() - self._t0 if wall_s is None else wall_s
        used = {role: total_cpu(pids()) - self._start[role] for role, pids in self._roles.items()}
        busy, total = machine_ticks()
        if wall_s is not None:  # all cores' jiffies over the run itself
            total = self._machine[1] + round(wall_s * (os.cpu_count() or 1) / _TICK_S)
        busy_share = min(1.0, (busy - self._machine[0]) / max(1, total - self._machine[1]))
        return CpuWindow(wall, used, busy_share)


class RssSampler:
    """Total VmRSS of some pids every ``interval_s`` in a thread; the peak seen."""

    def __init__(self, pids: Callable[[], list[int]], interval_s: float = 0.1) -> None:
        self._pids = pids
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak_kb = 0
        self.samples = 0

    def __enter__(self) -> RssSampler:
        self.peak_kb = total_rss_kb(self._pids())
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_kb = max(self.peak_kb, total_rss_kb(self._pids()))
            self.samples += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.peak_kb = max(self.peak_kb, total_rss_kb(self._pids()))


def event_loop_of(pid: int) -> str:
    """uvloop if the process has uvloop's extension mapped, else asyncio (a Python server's loop)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "uvloop" if any("uvloop/loop." in line for line in f) else "asyncio"
    except OSError:
        return "unknown"
