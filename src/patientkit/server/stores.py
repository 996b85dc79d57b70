"""One store connection per server thread, opened on first use (and kept until exit)."""

from __future__ import annotations

import threading
from pathlib import Path

from patientkit.core.store import Store
from patientkit.stores import open_store


class Stores:
    """The server's stores: `get()` is the calling thread's own connection to the store at
    `target` (a SQLite path or a PostgreSQL URL, `patientkit.stores.open_store`). The
    store is opened (created, migrated) once at construction, so a bad store fails at
    start-up (UsageError), not on a request."""

    def __init__(self, target: str | Path) -> None:
        self.target = target
        self._local = threading.local()
        open_store(target).close()

    def get(self) -> Store:
        store: Store | None = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = open_store(self.target)
        return store
