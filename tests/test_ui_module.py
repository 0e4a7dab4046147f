"""cancelproxy.js, the page's module, under Node's test runner against ``python proxy.py``.

The tests are tests/js/cancelproxy.test.mjs; this runs them with the real proxy and mock provider.
"""

from __future__ import annotations

from .browser import js_packages_fixture, run_node  # noqa: F401
from .conftest import MockProvider, Proxy


async def test_the_module_api(js_packages: object, proxy: Proxy, mock_provider: MockProvider) -> None:
    out = await run_node(
        ["--test", "--test-reporter=spec", "cancelproxy.test.mjs"],
        {"PROXY_URL": proxy.root, "MOCK_URL": mock_provider.root},
    )
    assert "# fail 0" in out or "ℹ fail 0" in out, out
