"""The package's public surface, and the static checks it is held to."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cancelproxy

ROOT = Path(__file__).resolve().parent.parent


def test_public_names_are_few_sorted_and_all_exported() -> None:
    assert cancelproxy.__all__ == sorted(cancelproxy.__all__)
    public = {name for name in dir(cancelproxy) if not name.startswith("_")}
    modules = {p.stem for p in (ROOT / "cancelproxy").iterdir() if p.suffix == ".py" or p.is_dir()}
    assert public - modules == set(cancelproxy.__all__) - {"__version__"}


def _tool(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[test]'"
    return found


def test_ruff() -> None:
    result = subprocess.run(
        [_tool("ruff"), "check", "cancelproxy", "tests", "bench"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = subprocess.run([_tool("mypy")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
