"""The benchmark harness works: ``python -m bench --quick --only SCENARIOS`` (seven of them).

Only that it runs and reports: exit 0, one table per scenario with a row per
target (the aiohttp floor; nginx when installed), figures where figures belong.
No timing is asserted: the numbers depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.fleet import FLOOR
from bench.nginx import find_nginx

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ["latency", "throughput", "responses", "cancel_new_conn", "disconnect", "concurrent_streams", "resume"]


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

    targets = ["direct", FLOOR, "nginx", "cancelproxy"] if find_nginx() else ["direct", FLOOR, "cancelproxy"]
    if not find_nginx():
        assert "apt-get install nginx-light" in done.stdout
    tables = _tables(done.stdout)
    assert set(SCENARIOS) <= tables.keys(), done.stdout

    latency = {row[0]: row for row in tables["latency"]}
    assert list(latency) == targets
    for row in latency.values():
        assert all(_is_number(cell) for cell in row[1:3]), row  # p50, p99
    assert all(_is_number(cell) for cell in latency["cancelproxy"][3:6])  # added p50, p99, CPU
    assert _is_number(latency["cancelproxy"][6].split(" / ")[2])  # CPU ÷ the floor's

    throughput = {row[0]: row for row in tables["throughput"]}
    assert list(throughput) == targets
    assert all(_is_number(figure) for figure in throughput["cancelproxy"][5].split(" / ")), throughput  # ÷ floor

    responses = {(row[0], row[1]): row for row in tables["responses"]}
    assert list(responses) == [(target, protocol) for target in targets for protocol in ("chat", "responses")]
    for protocol in ("chat", "responses"):  # ÷ floor: added p50, chunks/s, CPU per chunk
        assert all(_is_number(figure) for figure in responses["cancelproxy", protocol][8].split(" / ")), responses
    assert all(_is_number(figure) for figure in responses["cancelproxy", "responses"][9].split(" / "))  # ÷ chat

    cancel = tables["cancel_new_conn"]
    assert [row[0] for row in cancel if not row[0].startswith("cancelproxy")] == targets[:-1]
    assert all("n/a" in row[2] for row in cancel if not row[0].startswith("cancelproxy"))
    proxied = [row for row in cancel if row[0].startswith("cancelproxy")]
    assert len(proxied) == 1
    assert all(_is_number(figure) for cell in proxied[0][2:4] for figure in cell.split(" / ")), proxied
    assert proxied[0][4] == "0 / 0"  # no token after an acknowledged cancel

    disconnect = tables["disconnect"]
    assert sorted({row[0] for row in disconnect}) == sorted(targets)
    assert len(disconnect) == 2 * len(targets)  # mid-stream and silent
    assert all(_is_number(cell) for row in disconnect for cell in row[2:5])

    streams = {row[0]: row for row in tables["concurrent_streams"]}
    assert list(streams) == targets
    for name in (FLOOR, "cancelproxy"):  # the GC figures of both Python proxies
        assert _is_number(streams[name][4]), streams[name]  # GC % of the server's CPU
        assert all(_is_number(n) for n in streams[name][5].split(" / ")), streams[name]  # collections per generation
    assert _is_number(streams["cancelproxy"][7].split(" / ")[0])  # CPU per chunk ÷ the floor's

    resume = {row[0]: row for row in tables["resume"]}
    assert list(resume) == targets
    assert all(row[2] == "n/a (no resume route)" for name, row in resume.items() if name != "cancelproxy")
    resumed = resume["cancelproxy"]
    assert all(_is_number(figure) for cell in resumed[2:5] for figure in cell.split(" / ")), resumed  # first bytes
    assert _is_number(resumed[5]), resumed  # KB kept per stream
    # Every resumed stream adds up to the mock's own bytes (the scenario counts
    # the ones that do not as errors).
    assert resumed[-1] == "0", resumed

    document = json.loads(results.read_text())
    assert document["failed"] == []
    assert set(document["scenarios"]) == set(SCENARIOS)


def test_instruction_counts_run_and_report() -> None:
    # Small counts: only that it runs under callgrind and reports a count per case.
    done = subprocess.run(
        [sys.executable, "-m", "bench.instructions", "--requests", "3", "--warm-up", "3", "--store", "memory://"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    rows = [line.strip("|").split("|") for line in done.stdout.splitlines() if line.startswith("| ")]
    cases = [cells[0].strip() for cells in rows[1:]]
    assert cases[:4] == [
        "not streamed (1 token)",
        "streamed (1 token)",
        "streamed (101 tokens)",
        "streamed (101 tokens, 100 a second)",
    ], done.stdout
    assert cases[4].startswith("per delta (") and cases[5].startswith("per delta at 100 a second"), done.stdout
    for cells in rows[1:]:
        floor, proxy = (int(cell.replace(",", "")) for cell in cells[1:3])
        assert floor > 0 and proxy > 0, cells
        assert cells[3].strip().endswith("×")
