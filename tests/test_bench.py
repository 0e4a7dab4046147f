"""The benchmark harness works: ``python -m bench --quick --only latency cancel disconnect``.

Only that it runs and reports: exit 0, one table per scenario with a row per
target (nginx when installed), figures where figures belong. No timing is
asserted: the numbers depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.nginx import find_nginx

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ["latency", "cancel", "disconnect"]


def _tables(output: str) -> dict[str, list[list[str]]]:
    """The rows of each printed Markdown table, by scenario (header and rule left out)."""
    tables: dict[str, list[list[str]]] = {}
    current: list[list[str]] | None = None
    for line in output.splitlines():
        if line.startswith("### "):
            current = tables.setdefault(line[4:].split(":", 1)[0], [])
        elif line.startswith("|") and current is not None:
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if cells[0] != "target" and not set(cells[0]) <= {"-"}:
                current.append(cells)
        elif not line.strip() and current:
            current = None
    return tables


def _is_number(cell: str) -> bool:
    try:
        float(cell.replace(",", "").replace("+", ""))
    except ValueError:
        return False
    return True


def test_quick_bench_runs_and_reports(tmp_path: Path) -> None:
    results = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", *SCENARIOS, "--json", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    assert "FAILED" not in done.stdout
    assert "cores:" in done.stdout and "nginx:" in done.stdout  # the machine is described

    targets = ["direct", "nginx", "cancelproxy"] if find_nginx() else ["direct", "cancelproxy"]
    if not find_nginx():
        assert "apt-get install nginx-light" in done.stdout
    tables = _tables(done.stdout)
    assert set(SCENARIOS) <= tables.keys(), done.stdout

    latency = {row[0]: row for row in tables["latency"]}
    assert list(latency) == targets
    for row in latency.values():
        assert all(_is_number(cell) for cell in row[1:3]), row  # p50, p99
    assert all(_is_number(cell) for cell in latency["cancelproxy"][3:5])  # added p50, p99

    cancel = tables["cancel"]
    assert [row[0] for row in cancel if not row[0].startswith("cancelproxy")] == targets[:-1]
    assert all("n/a" in row[2] for row in cancel if not row[0].startswith("cancelproxy"))
    proxied = [row for row in cancel if row[0].startswith("cancelproxy")]
    assert len(proxied) == 2  # one at a time, and concurrent
    for row in proxied:
        assert all(_is_number(figure) for figure in row[2].split(" / ")), row

    disconnect = tables["disconnect"]
    assert sorted({row[0] for row in disconnect}) == sorted(targets)
    assert len(disconnect) == 2 * len(targets)  # mid-stream and silent
    assert all(_is_number(cell) for row in disconnect for cell in row[2:5])

    document = json.loads(results.read_text())
    assert document["failed"] == []
    assert set(document["scenarios"]) == set(SCENARIOS)
