"""Which upstream, which URL, which headers."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from cancelproxy.config import parse_config
from cancelproxy.routing import choose_upstream, request_headers, response_headers, upstream_url

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


def test_upstream_url_keeps_path_and_query_as_sent() -> None:
    assert (
        str(upstream_url("https://api.openai.com/v1", "/chat/completions", ""))
        == "https://api.openai.com/v1/chat/completions"
    )
    assert (
        str(upstream_url("https://api.deepseek.com", "/chat/completions", ""))
        == "https://api.deepseek.com/chat/completions"
    )
    url = upstream_url("http://h/v1", "/files/a%2Fb", "limit=5&after=x%20y")
    assert str(url) == "http://h/v1/files/a%2Fb?limit=5&after=x%20y"


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
    assert sorted(k for k, _ in out.items()) == [
        "Content-Type",
        "Set-Cookie",
        "Set-Cookie",
        "x-ratelimit-remaining-tokens",
    ]
