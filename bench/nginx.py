"""nginx as a baseline reverse proxy in front of the same mock provider."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

INSTALL_HINT = "apt-get install nginx-light"

# One worker: cancelproxy is one process too. keepalive_requests is raised on
# both sides so one keep-alive client connection lasts the whole latency run
# (nginx's default closes it every 1000 requests).
_CONFIG = """\
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    upstream mock {{
        server 127.0.0.1:{mock_port};
        keepalive 512;
        keepalive_requests 100000;
    }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 100000;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


def find_nginx() -> str | None:
    """nginx on PATH, or Debian's /usr/sbin/nginx (not on a non-root PATH)."""
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").is_file():
        found = "/usr/sbin/nginx"
    return found


def nginx_version(binary: str) -> str:
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    text = (done.stderr or done.stdout).strip()
    return text.removeprefix("nginx version: ")


def write_config(tmp: Path, port: int, mock_port: int) -> Path:
    path = tmp / "nginx.conf"
    path.write_text(_CONFIG.format(tmp=tmp, port=port, mock_port=mock_port))
    return path


def command(binary: str, tmp: Path, config: Path) -> list[str]:
    return [binary, "-p", str(tmp), "-e", str(tmp / "nginx-error.log"), "-c", str(config), "-g", "daemon off;"]
