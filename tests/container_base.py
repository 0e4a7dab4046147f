"""Podman on this kind of machine, and a local stand-in for ``python:3.11-slim``.

The Dockerfile starts ``FROM python:3.11-slim``, for real users. Where no
image registry can be reached (CI here), that base cannot be pulled, so an
image of the same Python (Debian bookworm's 3.11) is made from Debian's own
packages with debootstrap and given to ``podman build --from``: the
Dockerfile is built unchanged, and no fake ``python:3.11-slim`` is planted in
the machine's image store.

The stand-in is only Debian: it lives in podman's image storage, outside any
clone, under a tag that is a digest of its recipe, so it is made once (about
a minute) and reused until the recipe changes. What the host needs to reach
its package index (its CA bundle, its pip settings) changes from machine to
machine, so it is not baked in: ``build_options`` mounts it into the build's
RUN steps only, and the image built keeps none of it.

    podman build $(python -m tests.container_base) --format docker -t cancelproxy .
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["BaseImageError", "base_image", "build_options", "podman"]

SUITE = "bookworm"  # Debian 12: Python 3.11, as in python:3.11-slim
PACKAGES = ("python3", "python3-pip", "python3-venv")
REPOSITORY = "localhost/cancelproxy-base"
# Raise when the recipe changes beyond what the digest sees, so the cached image is made anew.
RECIPE_VERSION = "2"
DEBOOTSTRAP_TIMEOUT_S = 1200.0
# Where the pip settings given to builds are written: outside any clone, kept between runs.
PIP_SETTINGS_DIR = Path("/var/cache/cancelproxy-ci/pip")
# pip reads its site settings from here too (XDG_CONFIG_DIRS): the stand-in has
# it empty, so mounting onto it leaves nothing behind in the image built.
BUILD_PIP_DIR = "/etc/xdg/pip"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# What python:3.11-slim puts on PATH and in the environment; and Debian marks
# its Python as externally managed, which the official image does not.
IMAGE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    "ENV PIP_BREAK_SYSTEM_PACKAGES=1",
    'CMD ["python3"]',
)
# The host's pip settings that concern reaching its package index over the
# network. Paths and file:// indexes of the host mean nothing inside a build.
PIP_NETWORK_KEYS = ("index-url", "extra-index-url", "trusted-host", "timeout", "default-timeout", "retries")


class BaseImageError(RuntimeError):
    """The machine lacks what the container check needs, or a step failed."""


def podman() -> list[str]:
    """The podman command line as it works here.

    crun refuses this machine's hybrid cgroups, and no systemd manages them:
    runc with podman's own cgroupfs manager does.
    """
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if missing:
        raise BaseImageError(f"{' and '.join(missing)} not on PATH (apt-get install podman runc)")
    return ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]


def _run(args: Sequence[str], timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise BaseImageError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def _host_pip_config() -> dict[str, str]:
    """The host pip's settings (files and PIP_* variables), as ``pip config list`` merges them."""
    listing = _run([sys.executable, "-m", "pip", "config", "list"]).stdout
    settings: dict[str, str] = {}
    for line in listing.splitlines():
        name, _, value = line.partition("=")
        key = name.rpartition(".")[2]
        settings[key] = value.strip().strip("'\"")
    return settings


def pip_conf(host: dict[str, str]) -> str:
    """The build's pip.conf: the host's network settings, and the host's CA bundle as mounted."""
    lines = ["[global]", f"cert = {CA_BUNDLE}"]
    for key in PIP_NETWORK_KEYS:
        value = host.get(key)
        if value is None:
            continue
        if key.endswith("index-url"):
            value = " ".join(url for url in value.split() if url.startswith(("http://", "https://")))
        if value:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def _host_ca_bundle(host: dict[str, str]) -> Path:
    """The bundle the host's pip trusts: pip's own ``cert`` setting, else the system's."""
    for candidate in (host.get("cert"), os.environ.get("SSL_CERT_FILE"), CA_BUNDLE):
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    raise BaseImageError(f"no CA bundle found on the host (looked for pip's cert, SSL_CERT_FILE, {CA_BUNDLE})")


def _tag() -> str:
    digest = hashlib.sha256()
    for part in (RECIPE_VERSION, SUITE, *PACKAGES, *IMAGE_CHANGES):
        digest.update(part.encode() + b"\0")
    return f"{REPOSITORY}:{SUITE}-{digest.hexdigest()[:12]}"


def _exists(tag: str) -> bool:
    return subprocess.run([*podman(), "image", "exists", tag], capture_output=True).returncode == 0


def _make(tag: str) -> None:
    if shutil.which("debootstrap") is None:
        raise BaseImageError("debootstrap not on PATH (apt-get install debootstrap)")
    # Not under /tmp: a tmpfs mounted nodev would break the device nodes debootstrap makes.
    with tempfile.TemporaryDirectory(prefix="cancelproxy-base-", dir="/var/tmp") as work:
        rootfs = Path(work) / "rootfs"
        _run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs)],
            timeout=DEBOOTSTRAP_TIMEOUT_S,
        )
        # The official image's python and pip live in /usr/local/bin.
        (rootfs / "usr/local/bin/python").symlink_to("/usr/bin/python3")
        (rootfs / "usr/local/bin/pip").symlink_to("/usr/bin/pip3")
        (rootfs / BUILD_PIP_DIR.lstrip("/")).mkdir(parents=True)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        tarball = Path(work) / "rootfs.tar"
        _run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."], timeout=600)
        changes = [arg for change in IMAGE_CHANGES for arg in ("--change", change)]
        _run([*podman(), "import", *changes, str(tarball), tag], timeout=600)


def _remove_stale(keep: str) -> None:
    """Stand-ins of earlier recipes only take space."""
    listing = subprocess.run(
        [*podman(), "images", "--format", "{{.Repository}}:{{.Tag}}", REPOSITORY],
        capture_output=True,
        text=True,
    )
    for tag in listing.stdout.split():
        if tag != keep:
            subprocess.run([*podman(), "rmi", tag], capture_output=True)


def base_image() -> str:
    """The stand-in's tag, made first if this machine does not have it yet."""
    tag = _tag()
    if not _exists(tag):
        _make(tag)
        _remove_stale(keep=tag)
    return tag


def build_options() -> list[str]:
    """The ``podman build`` options that build the Dockerfile here, on the stand-in.

    The build's RUN steps reach the package index as the host does: through
    the host's network, trusting the host's CA bundle, with the host's pip
    settings, mounted for the build only.
    """
    host = _host_pip_config()
    ca_bundle = _host_ca_bundle(host)
    PIP_SETTINGS_DIR.mkdir(parents=True, exist_ok=True)
    # Written whole, then renamed: a concurrent build never reads half a file.
    with tempfile.NamedTemporaryFile("w", dir=PIP_SETTINGS_DIR, prefix=".pip.conf.", delete=False) as draft:
        draft.write(pip_conf(host))
    os.chmod(draft.name, 0o644)
    os.replace(draft.name, PIP_SETTINGS_DIR / "pip.conf")
    return [
        "--from", base_image(), "--pull=never", "--network", "host",
        "--volume", f"{ca_bundle}:{CA_BUNDLE}:ro", "--volume", f"{PIP_SETTINGS_DIR}:{BUILD_PIP_DIR}:ro",
    ]  # fmt: skip


def main() -> int:
    try:
        print(shlex.join(build_options()))
    except BaseImageError as error:
        print(f"container_base: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
