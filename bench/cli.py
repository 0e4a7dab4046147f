"""``python -m bench [--quick] [--only SCENARIO ...] [--json FILE]``, and diagnostics options."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from . import machine, nginx
from .fleet import FLOOR, ROOT, running_fleet
from .gcfigures import GcWatch
from .procs import raise_nofile_limit
from .procstat import event_loop_of
from .profile import Profiles, find_py_spy
from .report import CPU_NOTE, Table
from .scenarios import NAMES, Context, scenario
from .settings import FULL, QUICK
from .workers import WorkerPool, event_loop_name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="direct (client → mock), the aiohttp floor, nginx and cancelproxy side by side, on 127.0.0.1 only",
    )
    parser.add_argument("--quick", action="store_true", help="small counts: the whole run in under a minute")
    parser.add_argument(
        "--only", nargs="+", choices=NAMES, metavar="SCENARIO", help=f"run only these scenarios ({', '.join(NAMES)})"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure to FILE as JSON")
    parser.add_argument(
        "--store",
        metavar="URL",
        help="cancelproxy's store.url (default: sqlite:///<tmpdir>/bench.db, the shipped default "
        "backend); memory:// tells what the store costs",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record the mock, the aiohttp floor and cancelproxy with py-spy during each scenario, into DIR",
    )
    parser.add_argument(
        "--slow-rounds",
        type=int,
        metavar="N",
        help="slow_streams rounds per proxy (default 3, --quick 2): more rounds tell a leak from a warm-up",
    )
    parser.add_argument("--clients", type=int, default=2, help="client processes for concurrent load (default 2)")
    return parser


_PYTHON_PROGRAMS = ("mock", FLOOR, "cancelproxy")
# Scenarios whose tables have GC columns of their own: no note over the whole scenario.
_OWN_GC_FIGURES = {"concurrent_streams"}


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every cleanup on the way out


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = dataclasses.replace(QUICK if args.quick else FULL, clients=max(1, args.clients))
    if args.slow_rounds is not None:
        settings = dataclasses.replace(settings, slow_rounds=max(1, args.slow_rounds))
    chosen = [name for name in NAMES if args.only is None or name in args.only]
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored (`cmd &`)
    nofile = raise_nofile_limit()
    binary = nginx.find_nginx()
    info = machine.describe(nginx.nginx_version(binary) if binary else None, event_loop_name())
    info["RLIMIT_NOFILE"] = str(nofile)
    info["cancelproxy revision"] = machine.revision(ROOT)
    command = "python -m bench" + (" " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else "")
    started = time.monotonic()
    tables: list[Table] = []
    failed: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="cancelproxy-bench-") as tmp,
        running_fleet(Path(tmp), store=args.store) as fleet,
    ):
        for program in fleet.programs:
            if program.name in _PYTHON_PROGRAMS:
                info[f"{program.name} event loop"] = event_loop_of(program.pid)
        print(f"# cancelproxy benchmark ({settings.mode})\n\n`{command}`\n\n{machine.markdown(info)}\n", flush=True)
        print(_setup(fleet.nginx_skipped, settings.clients, args.store), flush=True)
        pool = WorkerPool(settings.clients)
        try:
            _run_all(Context(settings, fleet, pool, run_id=uuid.uuid4().hex[:8]), chosen, args.profile, tables, failed)
        finally:
            pool.close()
    elapsed = time.monotonic() - started
    print(f"Total wall time: {elapsed:.1f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""), flush=True)
    if args.json is not None:
        _write_json(args.json, settings.mode, info, tables, failed, elapsed)
    return 1 if failed else 0


def _run_all(ctx: Context, chosen: list[str], profile_dir: Path | None, tables: list[Table], failed: list[str]) -> None:
    """Each scenario in turn, its table printed as soon as it is done; a failure is
    reported and the next one runs, unless a program under test is gone."""
    for name in chosen:
        began = time.monotonic()
        try:
            gc_watch = GcWatch(ctx.targets)
            table = _run_scenario(name, ctx, profile_dir)
            ctx.fleet.check_alive()
            if name not in _OWN_GC_FIGURES:
                gc_watch.report(table)
        except Exception:
            failed.append(name)
            print(f"### {name}: FAILED\n\n```\n{traceback.format_exc()}```\n", flush=True)
            if not all(p.alive() for p in ctx.fleet.programs):
                return
            continue
        table.data["duration_s"] = round(time.monotonic() - began, 2)
        tables.append(table)
        print(table.markdown() + "\n", flush=True)


def _run_scenario(name: str, ctx: Context, profile_dir: Path | None) -> Table:
    if profile_dir is None:
        return scenario(name)(ctx)
    binary = find_py_spy()
    if binary is None:
        raise RuntimeError("--profile needs py-spy: pip install py-spy")
    pids = {p.name.replace(" ", "-"): p.pid for p in ctx.fleet.programs if p.name in _PYTHON_PROGRAMS}
    with Profiles(binary, profile_dir, name, pids) as profiles:
        table = scenario(name)(ctx)
    print(f"```\n{profiles.summaries()}\n```\n", flush=True)
    return table


def _setup(nginx_skipped: str | None, clients: int, store: str | None) -> str:
    targets = [
        "**direct** (client → mock provider)",
        f"**{FLOOR}** (`python -m bench.floor`: the least an aiohttp proxy does, run as cancelproxy is)",
    ]
    if nginx_skipped is None:
        targets.append(
            "**nginx** (1 worker process, as cancelproxy is one process; proxy_buffering off, upstream keepalive 512)"
        )
    targets.append(
        f"**cancelproxy** (`python proxy.py`, {f'store {store}' if store else 'SQLite store'}, audit to "
        "a file, log_level warning)"
    )
    lines = [
        f"Targets: {', '.join(targets[:-1])} and {targets[-1]}, all in front of one mock provider; load from "
        f"{clients} client processes.",
        f"\n{CPU_NOTE}.",
    ]
    if nginx_skipped is not None:
        lines.append(f"\n{nginx_skipped}.")
    return "\n".join(lines) + "\n"


def _write_json(
    path: Path, mode: str, info: dict[str, str], tables: list[Table], failed: list[str], elapsed: float
) -> None:
    document: dict[str, Any] = {
        "mode": mode,
        "machine": info,
        "wall_s": round(elapsed, 2),
        "failed": failed,
        "scenarios": {t.scenario: t.as_json() for t in tables},
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
