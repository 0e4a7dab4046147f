"""config.yaml → frozen Config; every error names its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cancelproxy.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent


def _minimal(**extra: Any) -> dict[str, Any]:
    return {"upstreams": [{"name": "a", "base_url": "http://127.0.0.1:1/v1", "models": ["a-*"]}], **extra}


def test_shipped_config_loads_without_any_environment() -> None:
    config = load_config(ROOT / "config.yaml", env={})
    assert [u.name for u in config.upstreams] == ["openai", "deepseek", "mock"]
    assert config.default_upstream == "openai"
    assert config.upstream("mock") is not None and config.upstream("mock").is_builtin_mock  # type: ignore[union-attr]
    assert config.upstream("openai").api_key == ""  # type: ignore[union-attr]
    assert config.listen.port == 8080 and config.cancel_finish_reason == "cancelled"
    assert config.limits.max_body_bytes == 20971520
    assert (config.limits.head_timeout_s, config.limits.body_timeout_s, config.limits.max_connections) == (20, 60, None)
    assert config.store.url == "sqlite:///cancelproxy.db" and config.store.retention_s == 7 * 86400
    assert config.ui.enabled is True and config.cors.allow_origins == ()


def test_environment_variables_are_expanded() -> None:
    config = load_config(ROOT / "config.yaml", env={"OPENAI_API_KEY": "sk-from-env", "CANCELPROXY_ADMIN_TOKEN": "adm"})
    assert config.upstream("openai").api_key == "sk-from-env"  # type: ignore[union-attr]
    assert config.admin_token == "adm"


def test_keys_never_show_in_a_repr() -> None:
    config = load_config(
        ROOT / "config.yaml", env={"OPENAI_API_KEY": "sk-secret-value", "CANCELPROXY_ADMIN_TOKEN": "adm-secret"}
    )
    assert "sk-secret-value" not in repr(config) and "adm-secret" not in repr(config)


def test_defaults_and_model_globs() -> None:
    config = parse_config(_minimal(), env={})
    assert config.default_upstream == "a"
    assert config.store.url == "memory://"
    upstream = config.upstream("a")
    assert upstream is not None and upstream.serves("a-1") and not upstream.serves("b-1")
    assert config.ui.enabled is False and config.cors.allow_origins == ()


def test_ui_and_cors() -> None:
    config = parse_config(
        _minimal(ui={"enabled": "${UI:-true}"}, cors={"allow_origins": ["https://App.Example.com/", "*"]}), env={}
    )
    assert config.ui.enabled is True
    assert config.cors.allow_origins == ("https://app.example.com", "*")
    # Written with the scheme's own port, an origin never matched what browsers send.
    config = parse_config(
        _minimal(cors={"allow_origins": ["http://localhost:80", "https://a.test:443", "https://b.test:1443"]}), env={}
    )
    assert config.cors.allow_origins == ("http://localhost", "https://a.test", "https://b.test:1443")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "upstreams: must be a non-empty list"),
        (_minimal(upstream=[]), "upstream: unknown key"),
        (_minimal(default_upstream="nope"), "default_upstream: 'nope' is not one of the upstreams"),
        ({"upstreams": [{"name": "a"}]}, "upstreams[0].base_url: is required"),
        (
            {"upstreams": [{"name": "a", "base_url": "ftp://x"}]},
            "upstreams[0].base_url: 'ftp://x' must be an http(s) URL",
        ),
        ({"upstreams": [{"name": "Bad Name", "base_url": "http://x"}]}, "upstreams[0].name: 'Bad Name' must be"),
        ({"upstreams": [{"name": "sessions", "base_url": "http://x"}]}, "upstreams[0].name: 'sessions' is reserved"),
        (
            {"upstreams": [{"name": "a", "base_url": "http://x"}, {"name": "a", "base_url": "http://y"}]},
            "upstreams[1].name: 'a' is used twice",
        ),
        (_minimal(listen={"port": "eighty"}), "listen.port: must be an integer"),
        (_minimal(listen={"port": 70000}), "listen.port: must be between 0 and 65535"),
        (_minimal(limits={"idle_timeout_s": 0}), "limits.idle_timeout_s: must be a positive number"),
        (_minimal(limits={"max_body_bytes": "lots"}), "limits.max_body_bytes: must be an integer"),
        (_minimal(limits={"head_timeout_s": "soon"}), "limits.head_timeout_s: must be a number of seconds"),
        (_minimal(limits={"max_connections": 0}), "limits.max_connections: must be at least 1"),
        (_minimal(store={"url": "postgres://x"}), "store.url: 'postgres://x' is not supported"),
        (_minimal(admin_token="${NOT_SET}"), "admin_token: environment variable NOT_SET is not set"),
        (_minimal(cancel_finish_reason=""), "cancel_finish_reason: must not be empty"),
        ("just a string", "config: must be a mapping"),
        (_minimal(ui={"enabled": "yes"}), "ui.enabled: must be true or false"),
        (_minimal(ui={"enable": True}), "ui.enable: unknown key"),
        (_minimal(cors={"allow_origins": "*"}), "cors.allow_origins: must be a list"),
        (
            _minimal(cors={"allow_origins": ["https://a.test/app"]}),
            "cors.allow_origins[0]: 'https://a.test/app' must be",
        ),
        (_minimal(cors={"allow_origins": [3000]}), "cors.allow_origins[0]: must be a string"),
        ({"upstreams": [{"name": "ui", "base_url": "http://x"}]}, "upstreams[0].name: 'ui' is reserved"),
        (
            {"upstreams": [{"name": "a", "base_url": "http://u:p@x", "api_key": "k"}]},
            "upstreams[0].base_url: has a user:password and api_key is set too",
        ),
    ],
)
def test_bad_config_names_the_key(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(raw, env={})
    assert message in str(raised.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, env={})


def test_userinfo_leaves_the_base_url_for_basic_auth() -> None:
    config = parse_config({"upstreams": [{"name": "a", "base_url": "http://bob:pa%3Ass@x:81/v1/"}]}, env={})
    upstream = config.upstream("a")
    assert upstream is not None
    assert (upstream.base_url, upstream.basic_auth) == ("http://x:81/v1", "bob:pa:ss")
    assert "pa:ss" not in repr(config)
    with pytest.raises(ConfigError) as raised:
        parse_config({"upstreams": [{"name": "a", "base_url": "ftp://bob:secret@x"}]}, env={})
    assert "secret" not in str(raised.value)
