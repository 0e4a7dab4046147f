"""The machine the figures come from."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def revision(root: Path) -> str:
    """The commit the proxy runs from, and whether its code has uncommitted changes (read-only git calls)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "cancelproxy", "proxy.py"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + (" + uncommitted changes to cancelproxy/" if dirty else "")


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def describe(nginx_version: str | None, client_loop: str) -> dict[str, str]:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "aiohttp": version("aiohttp"),
        "nginx": nginx_version or "not found",
        "client event loop": client_loop + (f" {version('uvloop')}" if client_loop == "uvloop" else ""),
        "load average at start": load_average(),
    }


def markdown(info: dict[str, str]) -> str:
    return "\n".join(f"- {key}: {value}" for key, value in info.items())
