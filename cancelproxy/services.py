"""The proxy's shared resources, as one typed record kept in the aiohttp app.

Made and closed in one place (``app.py``'s cleanup context); handlers reach
them through ``request.app[SERVICES]``. No module holds state of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from yarl import URL

from .aborts import Aborter
from .audit import AuditSink
from .cluster import Cluster
from .config import Config
from .metrics import Metrics
from .registry import Registry
from .replay import Replays
from .store import Store
from .store.streams import RedisStreams
from .store.writer import StoreWriter

__all__ = ["SERVICES", "Services"]


@dataclass
class Services:
    config: Config
    client: aiohttp.ClientSession
    store: Store
    writer: StoreWriter
    registry: Registry
    cluster: Cluster
    audit: AuditSink
    metrics: Metrics
    aborter: Aborter
    replays: Replays
    # Redis only: streams mirrored for readers on other replicas.
    streams: RedisStreams | None
    # Upstream name -> base URL to send to (``builtin:mock`` resolved to its port).
    base_urls: dict[str, URL]
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("cancelproxy"))


SERVICES: web.AppKey[Services] = web.AppKey("cancelproxy.services", Services)
