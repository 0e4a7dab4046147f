"""Record stores, chosen by ``store.url``: memory://, sqlite:///path.db, redis://host:port/db."""

from __future__ import annotations

from .base import Store, StoreError
from .memory import MemoryStore

__all__ = ["MemoryStore", "Store", "StoreError", "open_store"]


def open_store(url: str, *, key_prefix: str) -> Store:
    """The backend for a ``store.url`` (already validated by the config)."""
    scheme = url.split("://", 1)[0]
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///"))
    if scheme == "redis":
        from .redis import RedisStore

        return RedisStore(url, key_prefix=key_prefix)
    raise ValueError(f"store.url: unsupported scheme '{scheme}'")
