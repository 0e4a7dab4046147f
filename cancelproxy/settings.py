"""The proxy's settings: frozen records, read once from config.yaml by ``config.py``.

Everything a module needs to know of the configuration comes as one of these;
nothing else reads the environment or the YAML file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

__all__ = [
    "BUILTIN_MOCK",
    "AbortHook",
    "AuditConfig",
    "Config",
    "ConfigError",
    "CorsConfig",
    "Limits",
    "Listen",
    "OnDisconnect",
    "ResumeConfig",
    "StoreConfig",
    "UiConfig",
    "Upstream",
]

# An upstream whose base_url is this runs the mock provider inside the proxy
# process, on a loopback port, so the shipped config works with no network.
BUILTIN_MOCK = "builtin:mock"


class ConfigError(ValueError):
    """A configuration problem; the message starts with the key it concerns."""


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True)
class AbortHook:
    """The request an upstream's engine needs to stop a generation whose client left.

    Some engines keep generating after the connection closes (SGLang's zombie
    requests; llama.cpp streams kept on purpose). After closing the
    connection the proxy sends this: ``path`` on the upstream's origin, and a
    ``body`` (JSON). ``{upstream_id}`` (the id the engine put in its answer)
    and ``{request_id}`` (the proxy's) are filled in.
    """

    method: str = "POST"
    path: str = "/abort_request"
    body: Any = None  # a JSON value whose strings may hold the placeholders; None: no body
    timeout_s: float = 5.0


@dataclass(frozen=True)
class Upstream:
    name: str
    base_url: str
    # repr=False: a key must never reach a log line through a repr().
    api_key: str = field(default="", repr=False)
    models: tuple[str, ...] = ()
    # "user:password" from a base_url's userinfo, sent as HTTP Basic auth. It
    # is taken out of base_url: aiohttp's client refuses a URL with credentials
    # beside an Authorization header, and a client's must never win over it.
    basic_auth: str = field(default="", repr=False)
    abort: AbortHook | None = None

    def serves(self, model: str) -> bool:
        return any(fnmatchcase(model, pattern) for pattern in self.models)

    @property
    def is_builtin_mock(self) -> bool:
        return self.base_url == BUILTIN_MOCK


@dataclass(frozen=True)
class StoreConfig:
    url: str = "memory://"
    # Partial answers of all streams are written together this often; final
    # states are written at once.
    flush_interval_ms: int = 200
    # Records that ended longer ago than this are deleted (None: kept for ever).
    retention_s: float | None = 7 * 86400.0
    # Redis: every key starts with this, so several deployments can share a server.
    key_prefix: str = "cancelproxy:"
    # Redis: how often a replica says it is alive; after three missed beats its
    # in-progress requests are marked interrupted by the others.
    heartbeat_s: float = 2.0


@dataclass(frozen=True)
class AuditConfig:
    path: str = "-"


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 20 * 1024 * 1024
    # The longest one SSE event of an answer may grow before the stream is
    # failed: a line that never ends must not be buffered without bound.
    max_event_bytes: int = 8 * 1024 * 1024
    connect_timeout_s: float = 10.0
    # From sending the request to the first byte of the answer's body: a
    # reasoning model may think for minutes before it says anything.
    first_byte_timeout_s: float = 600.0
    # The longest silence between two body chunks once the answer started.
    idle_timeout_s: float = 300.0
    # A connected client that stops reading must not pin a stream for ever.
    write_timeout_s: float = 30.0
    # How long a cancel route waits for the stream to reach its final state.
    cancel_timeout_s: float = 10.0
    # A client sends a request head (request line and header fields) in one
    # packet or a few: one that takes longer, counted from the connection's
    # opening or from the head's first byte, is cut off (408). Slow heads
    # would otherwise hold connections, and so descriptors, for ever.
    head_timeout_s: float = 20.0
    # The whole request body must have arrived this long after its head (408).
    body_timeout_s: float = 60.0
    # Client connections open at once; None: as many as the open-file limit
    # allows (server.connection_budget). When full, a new connection takes
    # the place of the one that has waited longest for its request head.
    max_connections: int | None = None


@dataclass(frozen=True)
class OnDisconnect:
    # How long a generation whose client went away goes on for a reader that
    # resumes it (0: a dropped client stops it at once). A request may ask for
    # its own with the X-Disconnect-Grace header, up to max_grace_s.
    grace_s: float = 0.0
    max_grace_s: float = 30.0


@dataclass(frozen=True)
class ResumeConfig:
    # What the streams kept for resumed readers may hold together (each one
    # at most limits.max_body_bytes); the oldest ended ones go first.
    max_total_bytes: int = 256 * 1024 * 1024
    # How long an ended stream stays resumable (redis: its stream's expiry).
    keep_s: float = 60.0


@dataclass(frozen=True)
class UiConfig:
    # The reference chat page at /ui/. Off unless asked for: a proxy deployed
    # as a sidecar serves no page nobody looks at.
    enabled: bool = False


@dataclass(frozen=True)
class CorsConfig:
    # Browser origins that may call the API routes (e.g. "https://app.example.com",
    # or "*"). Empty: no CORS answers at all, as before.
    allow_origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    upstreams: tuple[Upstream, ...]
    default_upstream: str
    listen: Listen = Listen()
    store: StoreConfig = StoreConfig()
    audit: AuditConfig = AuditConfig()
    limits: Limits = Limits()
    ui: UiConfig = UiConfig()
    cors: CorsConfig = CorsConfig()
    admin_token: str = field(default="", repr=False)
    cancel_finish_reason: str = "cancelled"
    # On SIGTERM/SIGINT: how long in-flight streams may go on before they are
    # stopped (upstream closed, client ended cleanly, record interrupted).
    shutdown_grace_s: float = 10.0
    log_level: str = "info"
    on_disconnect: OnDisconnect = OnDisconnect()
    resume: ResumeConfig = ResumeConfig()

    def upstream(self, name: str) -> Upstream | None:
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        return None
