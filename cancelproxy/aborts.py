"""Upstream ``abort:`` hooks: the engine's own stop request, after the connection is closed.

Closing the connection stops most engines (vLLM within a second, TGI at the
next token); some keep generating, and billing compute, until they reach
``max_tokens``: SGLang's zombie requests, llama.cpp's streams kept on purpose.
For an upstream with an ``abort:`` hook, a stopped generation (a cancel, or
its client leaving) is followed by that request.

It is best effort and never in anyone's way: it runs as a task the app owns,
after the client has its end and a cancel its ack, bounded by the hook's
``timeout_s``; a failure is logged and counted, nothing else.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from .config import AbortHook
from .metrics import Metrics
from .routing import UnsafePath, check_segment
from .tasks import cancel_and_wait

__all__ = ["Aborter", "fill"]

# How long shutdown waits for aborts still under way.
_CLOSE_TIMEOUT_S = 5.0


def fill(template: Any, values: Mapping[str, str], *, quoted: bool = False) -> Any:
    """``template`` with ``{name}`` replaced by ``values[name]`` in every string
    it holds (percent-encoded where it is a path). Only these placeholders are
    touched: other braces (JSON in a string) stay as written."""
    if isinstance(template, str):
        for name, value in values.items():
            template = template.replace("{" + name + "}", quote(value, safe="") if quoted else value)
        return template
    if isinstance(template, dict):
        return {key: fill(value, values) for key, value in template.items()}
    if isinstance(template, list):
        return [fill(value, values) for value in template]
    return template


def _needs(template: Any, name: str) -> bool:
    return ("{" + name + "}") in json.dumps(template)


class Aborter:
    def __init__(self, client: aiohttp.ClientSession, metrics: Metrics, log: logging.Logger) -> None:
        self._client = client
        self._metrics = metrics
        self._log = log
        self._tasks: set[asyncio.Task[None]] = set()

    def abort(
        self,
        upstream: str,
        hook: AbortHook,
        base_url: URL,
        *,
        upstream_id: str | None,
        request_id: str,
        headers: Mapping[str, str],
    ) -> None:
        """Send ``hook`` for one stopped generation, in the background."""
        if not upstream_id and (_needs(hook.path, "upstream_id") or _needs(hook.body, "upstream_id")):
            # Stopped before the engine said its id: there is nothing to name.
            self._metrics.upstream_abort(upstream, "skipped")
            self._log.info("abort: %s stopped before %s named it; no abort sent", request_id, upstream)
            return
        values = {"upstream_id": upstream_id or "", "request_id": request_id}
        path = fill(hook.path, values, quoted=True)
        try:
            # Only the segments an id went into: the configured ones are the operator's.
            for written, filled in zip(hook.path.split("/"), path.split("/"), strict=True):
                if filled != written:
                    check_segment(filled)
        except UnsafePath as exc:
            # Percent-encoding keeps a "/" of the id inside its segment, but an
            # id that makes a whole segment a dot segment ("..", "%2e%2e" to a
            # server that decodes twice, "..;" to one that drops parameters)
            # is a step in the path: "/v1/stream/.." is "/v1/", and the
            # configured key would go there. The id is the engine's, but an
            # engine may take it from the client's body (SGLang's rid).
            self._metrics.upstream_abort(upstream, "skipped")
            self._log.warning("abort: %s named %s %r: %s; no abort sent", upstream, request_id, upstream_id, exc)
            return
        url = base_url.origin().with_path(path, encoded=True)
        body = None if hook.body is None else json.dumps(fill(hook.body, values)).encode()
        task = asyncio.ensure_future(self._send(upstream, hook, url, body, dict(headers), request_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(
        self, upstream: str, hook: AbortHook, url: URL, body: bytes | None, headers: dict[str, str], request_id: str
    ) -> None:
        if body is not None:
            headers["Content-Type"] = "application/json"
        outcome = "failed"
        try:
            async with asyncio.timeout(hook.timeout_s):
                async with self._client.request(hook.method, url, data=body, headers=headers) as answer:
                    await answer.read()
                    outcome = "sent" if answer.status < 400 else "failed"
                    if answer.status >= 400:
                        self._log.warning("abort: %s answered %d for %s", upstream, answer.status, request_id)
        except TimeoutError:
            outcome = "timed_out"
            self._log.warning("abort: %s did not answer within %gs for %s", upstream, hook.timeout_s, request_id)
        except (aiohttp.ClientError, OSError) as exc:
            self._log.warning("abort: could not reach %s for %s: %s", upstream, request_id, exc)
        self._metrics.upstream_abort(upstream, outcome)

    async def close(self) -> None:
        """Give the aborts under way a moment, then drop them."""
        if not self._tasks:
            return
        pending = list(self._tasks)
        _, late = await asyncio.wait(pending, timeout=_CLOSE_TIMEOUT_S)
        await cancel_and_wait(*late)
