"""``python -m bench.instructions``: instructions per request, counted by callgrind.

CPU time moves with whatever else the machine does; an instruction count does
not. The same binary, input and environment give the same count to a fraction
of a percent, so a change of a few percent in the per-request path, lost in the
run-to-run spread of ``python -m bench``, is read here exactly.

The aiohttp floor and cancelproxy (``python proxy.py``) each run under
``valgrind --tool=callgrind`` in front of the mock provider (which runs
natively), and are sent the same sequential requests from this process:
each case uncounted first (warm-up), then each case counted alone. Only user-space
instructions are counted: the kernel's work (the syscalls, loopback TCP), about
the same per request for both, is not in them, which is why these ratios are
larger than those of CPU time. Under callgrind a program runs ~50x slower, so
the counts are small and the run takes a few minutes.

    python -m bench.instructions [--requests N] [--warm-up N] [--store URL]

The paced case sends a fiftieth of the requests (20 of 1,000, each a second long).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from . import machine
from .client import JSON, chat_body
from .fleet import FLOOR, ROOT, floor_command, mock_program, proxy_command, proxy_config
from .procs import Program, free_port

# A program under callgrind starts in tens of seconds, not one.
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Case:
    name: str
    stream: bool
    tokens: int
    rate: float = 0.0  # deltas a second from the mock; 0: as fast as it sends
    share: int = 1  # this case sends the run's request counts ÷ share (a paced stream lasts a second)

    def count(self, requests: int) -> int:
        """How many of the run's ``requests`` (counted or warm-up) this case sends."""
        return max(1, requests // self.share)


CASES = (
    Case("not streamed (1 token)", stream=False, tokens=1),
    Case("streamed (1 token)", stream=True, tokens=1),
    Case("streamed (101 tokens)", stream=True, tokens=101),
    # At rate 0 a program under callgrind gets a 101-token stream in a few
    # reads; at 100 a second each delta is a read and a write of its own, as
    # at a chat's pace.
    Case("streamed (101 tokens, 100 a second)", stream=True, tokens=101, rate=100.0, share=50),
)


class Counted:
    """A program under callgrind, counting only while told to."""

    def __init__(self, name: str, args: list[str], port: int, out_dir: Path) -> None:
        self._out = out_dir / f"{name.replace(' ', '-')}.callgrind"
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={self._out}"]
        self.program = Program(
            name,
            [*valgrind, *args],
            cwd=ROOT,
            ready_port=port,
            # One hash seed: dicts and sets laid out alike from run to run.
            env={"PYTHONHASHSEED": "0"},
            start_timeout_s=START_TIMEOUT_S,
        )
        self.dumps = 0

    def start(self) -> None:
        self.program.start()

    def stop(self) -> None:
        self.program.stop()

    def counting(self, on: bool) -> None:
        if on:
            self._control("--zero")
        self._control("--instr=on" if on else "--instr=off")

    def dump(self) -> int:
        """Write the counts so far out; the instructions they add up to."""
        self._control("--dump")
        self.dumps += 1
        dumped = Path(f"{self._out}.{self.dumps}")
        for line in dumped.read_text().splitlines():
            if line.startswith("totals:"):
                return int(line.split()[1])
        raise RuntimeError(f"{dumped} has no totals line")

    def _control(self, command: str) -> None:
        subprocess.run(["callgrind_control", command, str(self.program.pid)], check=True, capture_output=True)


async def _send(url: str, case: Case, count: int) -> None:
    body = chat_body(stream=case.stream, tokens=case.tokens, rate=case.rate)
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.post(url, data=body, headers=JSON) as answer:
                if answer.status != 200:
                    raise RuntimeError(f"{url}: {answer.status} {await answer.text()}")
                await answer.read()


def _count(target: Counted, url: str, requests: int, warm_up: int) -> dict[str, float]:
    """Instructions per request of each case."""
    for case in CASES:  # every path warm (imports, caches, pools) before any is counted
        asyncio.run(_send(url, case, case.count(warm_up)))
    per_request = {}
    for case in CASES:
        count = case.count(requests)
        target.counting(True)
        asyncio.run(_send(url, case, count))
        target.counting(False)
        per_request[case.name] = target.dump() / count
    return per_request


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="counted requests per case (default 1000)")
    parser.add_argument("--warm-up", type=int, default=200, help="uncounted requests of each case first (default 200)")
    parser.add_argument("--store", metavar="URL", help="cancelproxy's store.url (default: SQLite, as shipped)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind not found on PATH (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="cancelproxy-instructions-") as tmp_dir:
        tmp = Path(tmp_dir)
        mock_port = free_port()
        mock = mock_program(mock_port)
        mock.start()
        mock_root = f"http://127.0.0.1:{mock_port}"
        figures: dict[str, dict[str, float]] = {}
        try:
            for name in (FLOOR, "cancelproxy"):
                port = free_port()
                if name == FLOOR:
                    command = floor_command(port, mock_root)
                else:
                    command = proxy_command(port, proxy_config(tmp, mock_root, args.store))
                target = Counted(name, command, port, tmp)
                target.start()
                try:
                    figures[name] = _count(
                        target, f"http://127.0.0.1:{port}/v1/chat/completions", args.requests, args.warm_up
                    )
                finally:
                    target.stop()
        finally:
            mock.stop()
    print(_report(figures, args))
    return 0


def _report(figures: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    store = args.store or "SQLite"
    lines = [
        f"# instructions per request (callgrind), {args.requests} sequential requests per case",
        f"cancelproxy revision {machine.revision(ROOT)}, store {store}, Python {platform.python_version()}",
        "",
        "| case | aiohttp floor | cancelproxy | ÷ floor |",
        "|---|---:|---:|---:|",
    ]
    floor, proxy = figures[FLOOR], figures["cancelproxy"]
    for case in CASES:
        lines.append(
            f"| {case.name} | {floor[case.name]:,.0f} | {proxy[case.name]:,.0f} | "
            f"{proxy[case.name] / floor[case.name]:.2f}× |"
        )
    # What one more delta costs: a long stream's count less the 1-token one's.
    short = CASES[1]
    for long, label in ((CASES[2], "per delta"), (CASES[3], "per delta at 100 a second, a read each")):
        extra = long.tokens - short.tokens
        per_delta = {name: (f[long.name] - f[short.name]) / extra for name, f in figures.items()}
        lines.append(
            f"| {label} (({long.name}) − ({short.name})) ÷ {extra} | {per_delta[FLOOR]:,.0f} | "
            f"{per_delta['cancelproxy']:,.0f} | {per_delta['cancelproxy'] / per_delta[FLOOR]:.2f}× |"
        )
    paced = CASES[3]
    lines += [
        "",
        f"({paced.name}: {paced.count(args.requests)} counted requests, after "
        f"{paced.count(args.warm_up)} uncounted; what the proxy does on a clock while it streams, "
        "the partial record's flushes among it, is in its count)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
