"""A Node.js project with the npm packages a test runs, made once per test session.

npm keeps its cache in ~/.npm, outside the clone, so after the first run an
install is local. Without node or npm the tests fail: they must not skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["NODE_PACKAGES", "node_project"]

# The official SDKs, as the README and the end-to-end tests use them.
NODE_PACKAGES = ("openai@^7", "@anthropic-ai/sdk@^1")


def node_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with package.json (ES modules) and NODE_PACKAGES installed."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        pytest.fail("node and npm are needed for the Node SDK tests (apt-get install nodejs npm)")
    project = tmp_path_factory.mktemp("node")
    (project / "package.json").write_text('{"type": "module", "private": true}')
    subprocess.run(
        [npm, "install", "--silent", "--no-audit", "--no-fund", *NODE_PACKAGES], cwd=project, check=True, timeout=300
    )
    return project
