"""The JavaScript side of the tests: npm packages, one headless Chromium per module, node scripts.

The README's test command is only ``python -m pytest``, so the packages of
tests/js are installed here when absent (``npm ci``, npm's cache in ~/.npm,
outside the clone). Node and Debian's Chromium are required: a machine
without them fails these tests, never skips them (.ci/run installs both).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, Program

__all__ = ["CHROMIUM", "JS_DIR", "browser_fixture", "js_packages_fixture", "node", "run_node", "run_scenario"]

JS_DIR = ROOT / "tests" / "js"
CHROMIUM = Path("/usr/bin/chromium")


def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is needed for the browser and module tests (apt-get install nodejs npm)")
    return found


# Fixtures under names of their own, so a test module imports them without
# shadowing the parameter names it asks for.
@pytest.fixture(scope="session", name="js_packages")
def js_packages_fixture() -> Path:
    """tests/js/node_modules, installed from package-lock.json when absent or older than it."""
    npm = shutil.which("npm")
    node()
    if npm is None:
        pytest.fail("npm is needed to install the JavaScript test packages (apt-get install npm)")
    lock = JS_DIR / "package-lock.json"
    installed = JS_DIR / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"],
            cwd=JS_DIR,
            check=True,
            timeout=600,
        )
    return JS_DIR


@pytest.fixture(scope="module", name="browser")
def browser_fixture(js_packages: Path) -> Iterator[str]:
    """One headless Chromium for the module; its Playwright endpoint."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is needed for the browser tests (apt-get install chromium)")
    program = Program([node(), "launch_browser.mjs"], ready_marker="browser listening on ", cwd=JS_DIR)
    program.start()
    endpoint = next(line for line in program.lines if "browser listening on " in line).split()[-1]
    yield endpoint
    program.stop()


async def run_node(args: list[str], env: dict[str, str], timeout: float = 120.0) -> str:
    """Run node in tests/js; its stdout. A failure shows what it printed."""
    process = await asyncio.create_subprocess_exec(
        node(),
        *args,
        cwd=JS_DIR,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    out, err = stdout.decode(), stderr.decode()
    assert process.returncode == 0, f"node {' '.join(args)} failed ({process.returncode}):\n{err}\n{out}"
    return out


async def run_scenario(name: str, endpoint: str, proxy_root: str, mock_root: str, **args: Any) -> dict[str, Any]:
    """One scenario of ui_scenarios.mjs; what the page showed."""
    env = {
        "BROWSER_WS": endpoint,
        "PROXY_URL": proxy_root,
        "MOCK_URL": mock_root,
        "SCENARIO_ARGS": json.dumps(args),
    }
    out = await run_node(["ui_scenarios.mjs", name], env)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert result.get("errors", []) == [], f"the page threw: {result['errors']}"
    return result
