"""Configuration: config.yaml plus ``${VAR}`` expansion, read once into the frozen records of ``settings.py``.

Nothing else in the package reads the environment or the YAML file. Every
validation error names the key it is about (``upstreams[1].base_url: ...``) so
a bad config stops the start with one line a user can act on. The records are
named here too: ``from .config import Config`` is where modules take them from.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from yarl import URL

from .settings import (
    BUILTIN_MOCK,
    AbortHook,
    AuditConfig,
    Config,
    ConfigError,
    CorsConfig,
    Limits,
    Listen,
    OnDisconnect,
    ResumeConfig,
    StoreConfig,
    UiConfig,
    Upstream,
)

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
    "load_config",
    "parse_config",
    "without_password",
]


# Upstream names share the first path segment with the proxy's own routes.
_RESERVED_NAMES = frozenset({"v1", "api", "sessions", "requests", "metrics", "healthz", "readyz", "ui"})
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_STORE_SCHEMES = ("memory", "sqlite", "redis")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
# A browser's Origin: scheme, host and an optional port, nothing after.
_ORIGIN_RE = re.compile(r"^https?://[^/?#\s]+$")


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; ``env`` defaults to ``os.environ``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_config(raw if raw is not None else {}, os.environ if env is None else env)


def parse_config(raw: Any, env: Mapping[str, str]) -> Config:
    top = _mapping(raw, "config")
    _reject_unknown(
        top,
        "",
        {
            "listen",
            "default_upstream",
            "upstreams",
            "store",
            "audit",
            "limits",
            "admin_token",
            "cancel_finish_reason",
            "shutdown_grace_s",
            "log_level",
            "on_disconnect",
            "resume",
            "ui",
            "cors",
        },
    )
    reader = _Reader(env)

    listen_raw = _mapping(top.get("listen", {}), "listen")
    _reject_unknown(listen_raw, "listen.", {"host", "port"})
    listen = Listen(
        host=reader.string(listen_raw, "listen.host", "host", Listen.host),
        port=reader.integer(listen_raw, "listen.port", "port", Listen.port, minimum=0, maximum=65535),
    )

    upstreams_raw = top.get("upstreams")
    if not isinstance(upstreams_raw, list) or not upstreams_raw:
        raise ConfigError("upstreams: must be a non-empty list")
    upstreams = tuple(_upstream(reader, item, f"upstreams[{i}]") for i, item in enumerate(upstreams_raw))
    names = [u.name for u in upstreams]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"upstreams[{i}].name: '{name}' is used twice")

    default_upstream = reader.string(top, "default_upstream", "default_upstream", upstreams[0].name)
    if default_upstream not in names:
        raise ConfigError(f"default_upstream: '{default_upstream}' is not one of the upstreams ({', '.join(names)})")

    store = _store(reader, _mapping(top.get("store", {}), "store"))

    audit_raw = _mapping(top.get("audit", {}), "audit")
    _reject_unknown(audit_raw, "audit.", {"path"})
    audit = AuditConfig(path=reader.string(audit_raw, "audit.path", "path", AuditConfig.path))

    limits_raw = _mapping(top.get("limits", {}), "limits")
    _reject_unknown(limits_raw, "limits.", set(Limits.__dataclass_fields__))
    defaults = Limits()
    limits = Limits(
        max_body_bytes=reader.integer(
            limits_raw, "limits.max_body_bytes", "max_body_bytes", defaults.max_body_bytes, minimum=1
        ),
        max_event_bytes=reader.integer(
            limits_raw, "limits.max_event_bytes", "max_event_bytes", defaults.max_event_bytes, minimum=1024
        ),
        **{
            name: reader.seconds(limits_raw, f"limits.{name}", name, getattr(defaults, name))
            for name in (
                "connect_timeout_s",
                "first_byte_timeout_s",
                "idle_timeout_s",
                "write_timeout_s",
                "cancel_timeout_s",
                "head_timeout_s",
                "body_timeout_s",
            )
        },
        max_connections=None
        if limits_raw.get("max_connections") is None
        else reader.integer(limits_raw, "limits.max_connections", "max_connections", 0, minimum=1),
    )

    finish_reason = reader.string(top, "cancel_finish_reason", "cancel_finish_reason", "cancelled")
    if not finish_reason:
        raise ConfigError("cancel_finish_reason: must not be empty")

    log_level = reader.string(top, "log_level", "log_level", "info").lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level: '{log_level}' must be one of debug, info, warning, error")

    disconnect_raw = _mapping(top.get("on_disconnect", {}), "on_disconnect")
    _reject_unknown(disconnect_raw, "on_disconnect.", {"grace_s", "max_grace_s"})
    on_disconnect = OnDisconnect(
        grace_s=reader.seconds(disconnect_raw, "on_disconnect.grace_s", "grace_s", OnDisconnect.grace_s, zero=True),
        max_grace_s=reader.seconds(
            disconnect_raw, "on_disconnect.max_grace_s", "max_grace_s", OnDisconnect.max_grace_s, zero=True
        ),
    )
    if on_disconnect.grace_s > on_disconnect.max_grace_s:
        raise ConfigError(f"on_disconnect.grace_s: {on_disconnect.grace_s:g} is more than max_grace_s")
    resume_raw = _mapping(top.get("resume", {}), "resume")
    _reject_unknown(resume_raw, "resume.", {"max_total_bytes", "keep_s"})
    resume = ResumeConfig(
        max_total_bytes=reader.integer(
            resume_raw, "resume.max_total_bytes", "max_total_bytes", ResumeConfig.max_total_bytes, minimum=0
        ),
        keep_s=reader.seconds(resume_raw, "resume.keep_s", "keep_s", ResumeConfig.keep_s),
    )

    ui_raw = _mapping(top.get("ui", {}), "ui")
    _reject_unknown(ui_raw, "ui.", {"enabled"})
    ui = UiConfig(enabled=reader.boolean(ui_raw, "ui.enabled", "enabled", UiConfig.enabled))

    return Config(
        on_disconnect=on_disconnect,
        resume=resume,
        ui=ui,
        cors=_cors(reader, _mapping(top.get("cors", {}), "cors")),
        shutdown_grace_s=reader.seconds(top, "shutdown_grace_s", "shutdown_grace_s", Config.shutdown_grace_s),
        log_level=log_level,
        listen=listen,
        default_upstream=default_upstream,
        upstreams=upstreams,
        store=store,
        audit=audit,
        limits=limits,
        admin_token=reader.string(top, "admin_token", "admin_token", ""),
        cancel_finish_reason=finish_reason,
    )


def without_password(url: str) -> str:
    """``url`` as logs and errors may show it: a password in it (a Redis URL's,
    a base_url's Basic auth) replaced by ``***``."""
    try:
        parsed = URL(url)
    except ValueError:
        return url.split("@", 1)[-1] if "@" in url else url  # not a URL: nothing before an @ is shown
    return str(parsed.with_password("***")) if parsed.password is not None else url


def _store(reader: _Reader, raw: Mapping[str, Any]) -> StoreConfig:
    _reject_unknown(raw, "store.", {"url", "flush_interval_ms", "retention", "key_prefix", "heartbeat_s"})
    defaults = StoreConfig()
    url = reader.string(raw, "store.url", "url", defaults.url)
    scheme = url.split(":", 1)[0]
    if scheme not in _STORE_SCHEMES or not url.startswith(f"{scheme}://"):
        shown = without_password(url)
        raise ConfigError(f"store.url: '{shown}' is not supported (use {', '.join(s + '://' for s in _STORE_SCHEMES)})")
    if scheme == "sqlite" and not url.removeprefix("sqlite:///"):
        raise ConfigError(f"store.url: '{url}' names no file (sqlite:///path.db)")
    retention = raw.get("retention", "7d")
    retention_s: float | None = None
    if retention not in (None, "", "forever"):
        match = _DURATION_RE.match(reader.expand(str(retention), "store.retention"))
        if match is None or float(match.group(1)) <= 0:
            raise ConfigError(f"store.retention: '{retention}' must be a duration such as 12h or 7d, or 'forever'")
        retention_s = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    return StoreConfig(
        url=url,
        flush_interval_ms=reader.integer(
            raw, "store.flush_interval_ms", "flush_interval_ms", defaults.flush_interval_ms, minimum=1
        ),
        retention_s=retention_s,
        key_prefix=reader.string(raw, "store.key_prefix", "key_prefix", defaults.key_prefix),
        heartbeat_s=reader.seconds(raw, "store.heartbeat_s", "heartbeat_s", defaults.heartbeat_s),
    )


def _cors(reader: _Reader, raw: Mapping[str, Any]) -> CorsConfig:
    _reject_unknown(raw, "cors.", {"allow_origins"})
    origins_raw = raw.get("allow_origins") or []
    if not isinstance(origins_raw, list):
        raise ConfigError("cors.allow_origins: must be a list of origins such as https://app.example.com, or ['*']")
    origins = []
    for i, item in enumerate(origins_raw):
        key = f"cors.allow_origins[{i}]"
        if not isinstance(item, str):
            raise ConfigError(f"{key}: must be a string, not {type(item).__name__}")
        # Browsers send an Origin in lower case; a configured one is compared so.
        origin = reader.expand(item, key).strip().rstrip("/").lower()
        if origin != "*" and not _ORIGIN_RE.match(origin):
            raise ConfigError(f"{key}: '{origin}' must be an origin (scheme://host[:port], no path) or '*'")
        # A browser leaves the scheme's own port out of an Origin: so must the
        # configured one, or it never matches.
        for scheme, port in (("http", ":80"), ("https", ":443")):
            if origin.startswith(f"{scheme}://") and origin.endswith(port):
                origin = origin.removesuffix(port)
        origins.append(origin)
    return CorsConfig(allow_origins=tuple(origins))


def _upstream(reader: _Reader, raw: Any, key: str) -> Upstream:
    item = _mapping(raw, key)
    _reject_unknown(item, f"{key}.", {"name", "base_url", "api_key", "models", "abort"})
    name = reader.string(item, f"{key}.name", "name", None)
    if not _NAME_RE.match(name):
        raise ConfigError(f"{key}.name: '{name}' must be lowercase letters, digits, '-' or '_'")
    if name in _RESERVED_NAMES:
        raise ConfigError(f"{key}.name: '{name}' is reserved for the proxy's own routes")
    base_url = reader.string(item, f"{key}.base_url", "base_url", None).rstrip("/")
    api_key = reader.string(item, f"{key}.api_key", "api_key", "")
    basic_auth = ""
    if base_url != BUILTIN_MOCK:
        url = URL(base_url)
        shown = without_password(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"{key}.base_url: '{shown}' must be an http(s) URL or '{BUILTIN_MOCK}'")
        if url.query_string or url.fragment:
            raise ConfigError(f"{key}.base_url: '{shown}' must not have a query or fragment")
        if url.user is not None:
            if api_key:
                raise ConfigError(f"{key}.base_url: has a user:password and api_key is set too; keep one credential")
            basic_auth = f"{url.user}:{url.password or ''}"
            base_url = str(url.with_user(None)).rstrip("/")
    models_raw = item.get("models", [])
    if not isinstance(models_raw, list) or not all(isinstance(m, str) for m in models_raw):
        raise ConfigError(f"{key}.models: must be a list of glob patterns")
    abort = _abort_hook(reader, item["abort"], f"{key}.abort") if item.get("abort") is not None else None
    return Upstream(
        name=name, base_url=base_url, api_key=api_key, models=tuple(models_raw), basic_auth=basic_auth, abort=abort
    )


_ABORT_METHODS = ("POST", "DELETE", "PUT", "GET")


def _abort_hook(reader: _Reader, raw: Any, key: str) -> AbortHook:
    item = _mapping(raw, key)
    _reject_unknown(item, f"{key}.", {"method", "path", "body", "timeout_s"})
    method = reader.string(item, f"{key}.method", "method", AbortHook.method).upper()
    if method not in _ABORT_METHODS:
        raise ConfigError(f"{key}.method: '{method}' must be one of {', '.join(_ABORT_METHODS)}")
    path = reader.string(item, f"{key}.path", "path", None)
    if not path.startswith("/"):
        raise ConfigError(f"{key}.path: '{path}' must start with / (a path on the upstream's host)")
    body = item.get("body")
    if body is not None and not isinstance(body, (dict, list, str)):
        raise ConfigError(f"{key}.body: must be a mapping, a list or a string (sent as JSON)")
    return AbortHook(
        method=method,
        path=path,
        body=body,
        timeout_s=reader.seconds(item, f"{key}.timeout_s", "timeout_s", AbortHook.timeout_s),
    )


class _Reader:
    """Typed reads of scalar values, with ``${VAR}`` expansion of strings."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def expand(self, value: str, key: str) -> str:
        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in self._env and (default is None or self._env[name] != ""):
                return self._env[name]
            if default is not None:
                return default
            raise ConfigError(f"{key}: environment variable {name} is not set (write ${{{name}:-}} to allow it empty)")

        return _VAR_RE.sub(substitute, value)

    def _scalar(self, raw: Mapping[str, Any], key: str, field_name: str, default: Any) -> Any:
        if field_name not in raw or raw[field_name] is None:
            if default is None:
                raise ConfigError(f"{key}: is required")
            return default
        value = raw[field_name]
        return self.expand(value, key) if isinstance(value, str) else value

    def string(self, raw: Mapping[str, Any], key: str, field_name: str, default: str | None) -> str:
        value = self._scalar(raw, key, field_name, default)
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, not {type(value).__name__}")
        return value

    def boolean(self, raw: Mapping[str, Any], key: str, field_name: str, default: bool) -> bool:
        value = self._scalar(raw, key, field_name, default)
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            value = value.strip().lower() == "true"  # from a ${VAR}
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, not {value!r}")
        return value

    def integer(
        self,
        raw: Mapping[str, Any],
        key: str,
        field_name: str,
        default: int,
        *,
        minimum: int,
        maximum: int | None = None,
    ) -> int:
        value = self._scalar(raw, key, field_name, default)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, not {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise ConfigError(f"{key}: must be {bound}, not {value}")
        return value

    def seconds(
        self, raw: Mapping[str, Any], key: str, field_name: str, default: float, *, zero: bool = False
    ) -> float:
        """A number of seconds, more than 0 (or 0 too, with ``zero``)."""
        value = self._scalar(raw, key, field_name, default)
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: must be a number of seconds, not {value!r}") from None
        if isinstance(value, bool) or not (seconds >= 0 if zero else seconds > 0) or seconds != seconds:
            kind = "a number of seconds, 0 or more" if zero else "a positive number of seconds"
            raise ConfigError(f"{key}: must be {kind}, not {value!r}")
        return seconds


def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: must be a mapping, not {type(value).__name__}")
    return value


def _reject_unknown(raw: Mapping[str, Any], prefix: str, known: set[str]) -> None:
    # A typo such as "upstream:" would otherwise be silently ignored.
    for name in raw:
        if name not in known:
            raise ConfigError(f"{prefix}{name}: unknown key (known: {', '.join(sorted(known))})")
