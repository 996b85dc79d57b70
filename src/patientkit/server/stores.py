"""The server's stores: one connection per server thread (SQLite), or one store for the
whole process (PostgreSQL: a pool that every thread shares)."""

from __future__ import annotations

import threading
from pathlib import Path

from patientkit.core.store import Store
from patientkit.stores import open_store


class Stores:
    """The server's stores of the store at `target` (a SQLite path or a PostgreSQL URL,
    `patientkit.stores.open_store`): `get()` is the store the calling thread uses. A store
    that is `shared` (PostgreSQL: thread-safe, a connection pool) is one instance for
    every thread of this process; else each thread opens its own connection on first use
    (and keeps it until exit). The store is opened (created, migrated) at construction,
    so a bad store fails at start-up (UsageError), not on a request. Build one per process
    (`serve --workers N`: one per worker): a shared store must not cross a fork."""

    def __init__(self, target: str | Path) -> None:
        self.target = target
        self._local = threading.local()
        first = open_store(target)
        self._shared: Store | None = first if first.shared else None
        if self._shared is None:
            first.close()

    def get(self) -> Store:
        if self._shared is not None:
            return self._shared
        store: Store | None = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = open_store(self.target)
        return store
