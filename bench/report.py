"""Result tables: printed as Markdown (pasted as-is into BENCHMARKS.md) and kept for --json."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .procstat import CpuWindow
from .stats import median


@dataclass
class Table:
    scenario: str
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # raw figures per target, for --json
    text_columns: int = 1  # leading columns that are words, not figures (left-aligned)

    def add(self, target: str, cells: list[str], figures: dict[str, Any]) -> None:
        self.rows.append([target, *cells])
        self.data[target] = figures

    def markdown(self) -> str:
        lines = [f"### {self.scenario}: {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" if i < self.text_columns else "---:" for i in range(len(self.columns))) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


ROLES = ("client", "mock", "server")


def cpu_cell(window: CpuWindow) -> str:
    """Share of one core per role, then the rest of the machine's busy time: "95 / 80 / 60 / 12"."""
    return " / ".join(f"{round(share * 100)}" for share in [*(window.share(r) for r in ROLES), window.rest()])


CPU_COLUMN = "CPU % of one core: clients / mock / server / rest"
CPU_NOTE = (
    "CPU: utime+stime from /proc/PID/stat over the run, in % of one core (200 = both cores); rest = all "
    "other busy time of the machine from /proc/stat: the kernel's loopback TCP work in softirq, and any "
    "other process"
)

# A process using at least this share of one core is saturated: it is the limit.
SATURATED = 0.9


def bottleneck(window: CpuWindow, cores: int, clients: int) -> str | None:
    """What limited a run, from the CPU each role used; None when nothing was saturated."""
    busiest = []
    if window.share("mock") >= SATURATED:
        busiest.append(f"the mock ({window.share('mock'):.0%} of a core)")
    if window.share("server") >= SATURATED:
        busiest.append(f"the server ({window.share('server'):.0%} of a core)")
    if window.share("client") >= SATURATED * clients:
        busiest.append(f"the clients ({window.share('client'):.0%} over {clients} processes)")
    if window.machine_busy >= SATURATED:
        busiest.append(f"the machine: all {cores} cores {window.machine_busy:.0%} busy")
    return ", ".join(busiest) if busiest else None


def ratio(value: float | None, floor: float | None) -> float | None:
    """``value`` as a multiple of the floor's figure; None where that means nothing:
    a figure missing, the floor's ≤ 0 or the value < 0 (an added latency within the noise)."""
    if value is None or floor is None or floor <= 0 or value < 0:
        return None
    return value / floor


def ratios_by_round(values: Sequence[float | None], floors: Sequence[float | None]) -> list[float | None]:
    """Each round's figure as a multiple of the floor's in the same round (see ``Context.in_turns``)."""
    return [ratio(value, floor) for value, floor in zip(values, floors, strict=True)]


def median_ratio(ratios: Sequence[float | None]) -> float | None:
    """The median of the ratios that mean something; None if none does."""
    known = [r for r in ratios if r is not None]
    return median(known) if known else None


def ratios_cell(ratios: Sequence[float | None], sep: str = " / ") -> str:
    return sep.join("n/a" if r is None else f"{r:.2f}" for r in ratios)


FLOOR_NOTE = (
    "÷ floor: the figure divided by the aiohttp floor's in the same run (bench/floor.py: one ClientSession, "
    "bytes passed through, no record, tee, audit, metrics or cancel route); n/a where the floor's figure is ≤ 0 "
    "or the target's < 0 (an added latency within the noise)"
)
