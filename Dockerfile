# cancelproxy: the proxy, listening on 0.0.0.0:8080, configured by
# /etc/cancelproxy/config.yaml (the shipped config.yaml; mount your own there).
#   docker build -t cancelproxy .
#   docker run --stop-timeout 15 -p 8080:8080 -e OPENAI_API_KEY -v "$PWD/config.yaml:/etc/cancelproxy/config.yaml:ro" cancelproxy
# (--stop-timeout above shutdown_grace_s: streams in flight get their grace, then their records are written)
FROM python:3.11-slim

# Unbuffered output: log and audit lines reach `docker logs` as they happen.
# No *_created series on /metrics: one extra gauge per counter and histogram
# series that dashboards rarely use.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PROMETHEUS_DISABLE_CREATED_SERIES=true

# A fixed uid/gid, so a mounted volume can be given to it (chown 10001).
# /var/lib/cancelproxy is its writable place, e.g. for a sqlite:/// store
# or an audit file.
RUN groupadd --system --gid 10001 cancelproxy \
    && useradd --system --uid 10001 --gid cancelproxy --no-create-home --shell /usr/sbin/nologin cancelproxy \
    && install -d -o cancelproxy -g cancelproxy /var/lib/cancelproxy

WORKDIR /app

# Only what the package build needs (pyproject names README.md as its readme).
COPY pyproject.toml README.md ./
COPY cancelproxy ./cancelproxy
RUN pip install --no-cache-dir .

COPY config.yaml /etc/cancelproxy/config.yaml

# The shipped config keeps records in sqlite:///cancelproxy.db, relative to
# the working directory: this one is the non-root user's writable place.
WORKDIR /var/lib/cancelproxy

# Numeric, so a runtime (Kubernetes runAsNonRoot) can tell it is not root.
USER 10001:10001

EXPOSE 8080

# aiohttp stops on SIGTERM gracefully: in-flight streams get a few seconds,
# then are stopped and their records written.
STOPSIGNAL SIGTERM

# slim has no curl: the stdlib asks /healthz (urlopen raises, so exits 1, on
# anything but a 2xx). Port 8080 is listen.port of the shipped config.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

CMD ["cancelproxy", "serve", "--config", "/etc/cancelproxy/config.yaml", "--host", "0.0.0.0"]
