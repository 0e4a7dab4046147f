"""Record stores, chosen by ``store.url``."""

from __future__ import annotations

from .base import Store
from .memory import MemoryStore

__all__ = ["MemoryStore", "Store", "open_store"]


def open_store(url: str) -> Store:
    """The backend for a ``store.url`` (already validated by the config)."""
    scheme = url.split("://", 1)[0]
    if scheme == "memory":
        return MemoryStore()
    raise ValueError(f"store.url: unsupported scheme '{scheme}'")
