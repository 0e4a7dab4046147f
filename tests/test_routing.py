"""Which upstream, which URL, which headers."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from cancelproxy.config import Upstream, parse_config
from cancelproxy.routing import UnsafePath, choose_upstream, request_headers, response_headers, upstream_url

CONFIG = parse_config(
    {
        "default_upstream": "openai",
        "upstreams": [
            {"name": "openai", "base_url": "https://api.openai.com/v1", "models": ["gpt-*", "o1*"]},
            {"name": "deepseek", "base_url": "https://api.deepseek.com", "api_key": "sk-ds", "models": ["deepseek-*"]},
            {"name": "wide", "base_url": "http://127.0.0.1:9/v1", "models": ["*"]},
        ],
    },
    env={},
)


def _name(explicit: str | None, model: object) -> str | None:
    upstream = choose_upstream(CONFIG, explicit, model)
    return upstream.name if upstream else None


def test_upstream_choice() -> None:
    assert _name(None, "deepseek-reasoner") == "deepseek"
    assert _name(None, "gpt-4o") == "openai"
    assert _name(None, "claude") == "wide"  # first match wins, in config order
    assert _name(None, None) == "openai"  # no model: the default
    assert _name(None, 42) == "openai"
    assert _name("deepseek", "gpt-4o") == "deepseek"  # an explicit prefix beats the model
    assert _name("nope", "gpt-4o") is None


def _url(base: str, raw_path: str, prefix: tuple[str, ...] = ("v1",), query: str = "") -> str:
    return str(upstream_url(URL(base), raw_path, prefix, query))


def test_upstream_url_keeps_path_and_query_as_sent() -> None:
    assert _url("https://api.openai.com/v1", "/v1/chat/completions") == "https://api.openai.com/v1/chat/completions"
    assert _url("https://api.deepseek.com", "/v1/chat/completions") == "https://api.deepseek.com/chat/completions"
    assert (
        _url("http://h/v1", "/v1/files/a%2Fb", query="limit=5&after=x%20y")
        == "http://h/v1/files/a%2Fb?limit=5&after=x%20y"
    )
    assert _url("http://h:81/base", "/deepseek/v1/models", ("deepseek", "v1")) == "http://h:81/base/models"


def test_an_encoded_prefix_is_cut_by_segments_not_by_length() -> None:
    # /%761 decodes to /v1: cut by the decoded prefix's length, the tail was "61/..."
    # and with base_url http://127.0.0.1:300 the proxy connected to port 30061.
    assert _url("http://127.0.0.1:300", "/%761/chat/completions") == "http://127.0.0.1:300/chat/completions"
    assert _url("http://h/v1", "/%64eepseek/%76%31/models", ("deepseek", "v1")) == "http://h/v1/models"


@pytest.mark.parametrize(
    "raw_path",
    [
        "/v1/../admin",
        "/v1/./models",
        "/v1/chat/../../admin",
        "/v1/%2e%2e/admin",
        "/v1/%2E%2E/admin",
        "/v1/%2E%2E%2Fadmin",
        "/v1/.%2e/admin",
        "/v1/%252e%252e/admin",
        "/v1/..;/admin",
        "/v1/..%5cadmin",
        "/v1/x%00y",
        "/v2/models",
        "/%2F/v1/models",
    ],
)
def test_no_path_reaches_outside_the_base_url(raw_path: str) -> None:
    with pytest.raises(UnsafePath):
        upstream_url(URL("http://127.0.0.1:300/base/v1"), raw_path, ("v1",), "")


def test_the_origin_never_moves() -> None:
    for tail in ("@evil.example/x", ":8080/x", "%40evil/x", "//evil.example/x", "%2F%2Fevil/x"):
        url = upstream_url(URL("http://127.0.0.1:300/base"), "/v1/" + tail, ("v1",), "")
        assert (url.scheme, url.host, url.port) == ("http", "127.0.0.1", 300), tail
        assert url.raw_path.startswith("/base/"), tail


def test_request_headers() -> None:
    incoming = CIMultiDictProxy(
        CIMultiDict(
            {
                "Host": "proxy:8080",
                "Authorization": "Bearer client",
                "Connection": "keep-alive, X-Private",
                "X-Private": "hop",
                "Keep-Alive": "timeout=5",
                "Transfer-Encoding": "chunked",
                "Content-Length": "10",
                "X-Session-Id": "s1",
                "OpenAI-Organization": "org",
                "Accept": "text/event-stream",
            }
        )
    )
    openai = CONFIG.upstream("openai")
    deepseek = CONFIG.upstream("deepseek")
    assert openai is not None and deepseek is not None
    assert dict(request_headers(incoming, openai)) == {
        "Authorization": "Bearer client",
        "OpenAI-Organization": "org",
        "Accept": "text/event-stream",
    }
    assert request_headers(incoming, deepseek)["Authorization"] == "Bearer sk-ds"


def test_a_configured_credential_replaces_every_client_credential() -> None:
    incoming = CIMultiDictProxy(
        CIMultiDict({"Authorization": "Bearer client", "x-api-key": "client", "api-key": "client", "X-Other": "1"})
    )
    deepseek = CONFIG.upstream("deepseek")
    assert deepseek is not None
    assert dict(request_headers(incoming, deepseek)) == {"X-Other": "1", "Authorization": "Bearer sk-ds"}
    assert dict(request_headers(incoming, deepseek, key_header="x-api-key")) == {"X-Other": "1", "x-api-key": "sk-ds"}
    basic = Upstream(name="b", base_url="http://h", basic_auth="user:pa:ss")
    assert dict(request_headers(incoming, basic)) == {"X-Other": "1", "Authorization": "Basic dXNlcjpwYTpzcw=="}


def test_expect_and_proxy_headers_are_not_forwarded() -> None:
    incoming = CIMultiDictProxy(CIMultiDict({"Expect": "100-continue", "X-Disconnect-Grace": "5", "X-Ok": "1"}))
    openai = CONFIG.upstream("openai")
    assert openai is not None
    assert dict(request_headers(incoming, openai)) == {"X-Ok": "1"}


def test_response_headers() -> None:
    incoming = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Content-Type", "text/event-stream"),
                ("Content-Length", "100"),
                ("Transfer-Encoding", "chunked"),
                ("Connection", "close"),
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
                ("x-ratelimit-remaining-tokens", "999"),
            ]
        )
    )
    out = response_headers(incoming)
    assert out.getall("Set-Cookie") == ["a=1", "b=2"]
    # The length is the relay's to keep or drop (tests/test_e2e_stream_endings.py), never the framing.
    assert sorted(k for k, _ in out.items()) == [
        "Content-Length",
        "Content-Type",
        "Set-Cookie",
        "Set-Cookie",
        "x-ratelimit-remaining-tokens",
    ]
