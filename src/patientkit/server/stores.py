"""One SQLite connection per server thread, opened on first use (and kept until exit)."""

from __future__ import annotations

import threading
from pathlib import Path

from patientkit.core.storage import Store


class Stores:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        Store(path).close()  # create and migrate now: fail at start-up, not on a request

    def get(self) -> Store:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = Store(self.path)
        return store
