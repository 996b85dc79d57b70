"""Open a store by the form of its target (SPEC.md: Command-line surface, `STORE`).

* `postgresql://…` or `postgres://…`: `patientkit.postgres.PostgresStore(url)`, imported
  only then (psycopg is an optional extra; missing, it is a UsageError, exit 2, naming
  `pip install 'patientkit[postgres]'`);
* anything else: a SQLite file path, `patientkit.core.storage.SQLiteStore(path)`.

Commands, engines, the store's child process and the server get their stores here and
depend only on the `patientkit.core.store.Store` protocol.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from patientkit.errors import UsageError

if TYPE_CHECKING:
    from patientkit.core.store import Store

POSTGRES_SCHEMES = ("postgresql", "postgres")
POSTGRES_EXTRA = "pip install 'patientkit[postgres]'"


def is_url(target: str | Path) -> bool:
    """True for a PostgreSQL URL (`postgresql://` or `postgres://`), False for a path."""
    return isinstance(target, str) and target.split("://", 1)[0].lower() in POSTGRES_SCHEMES


PASSWORD_PARAMETER = re.compile(r"(password=)([^&\s]*)", re.IGNORECASE)


def shown(target: str | Path) -> str:
    """The target as messages and logs show it: a path as it is; a URL with its password,
    if any (`user:PASSWORD@host`, or `password=` in the query or a libpq `key=value`
    string), replaced by `***`."""
    if isinstance(target, Path):
        return str(target)
    try:
        parts = urlsplit(target)
    except ValueError:
        return "***"
    if parts.password is not None:
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        target = urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    return PASSWORD_PARAMETER.sub(r"\1***", target)


def open_store(target: str | Path) -> Store:
    """The store at `target`, created and migrated if need be: a PostgreSQL store for a
    URL, else the SQLite file. UsageError (exit 2) if it cannot be opened, or if the
    `postgres` extra is not installed for a URL."""
    if is_url(target):
        store: Store = _postgres(str(target)).PostgresStore(str(target))
        return store
    from patientkit.core.storage import SQLiteStore

    return SQLiteStore(target)


def open_existing(target: str | Path) -> Store:
    """`open_store` for commands that only read: a SQLite file that does not exist, or a
    folder, is a UsageError (`storage.must_exist`), and neither is created. (A PostgreSQL
    database exists or cannot be connected to.)"""
    if not is_url(target):
        from patientkit.core.storage import must_exist

        must_exist(Path(target))
    return open_store(target)


def store_info(target: str | Path) -> dict[str, object]:
    """What `store info` prints (SPEC.md: `store info`), never creating, migrating or
    changing a SQLite store (`storage.describe`); a PostgreSQL store's own `info()`."""
    if is_url(target):
        info: dict[str, object] = _postgres(str(target)).describe(str(target))
        return info
    from patientkit.core.storage import describe

    return describe(target)


def _postgres(url: str) -> ModuleType:
    """`patientkit.postgres`, imported now (it imports psycopg at once); UsageError when
    psycopg (or the module) is not installed."""
    try:  # by name: the module is optional
        return importlib.import_module("patientkit.postgres")
    except ModuleNotFoundError as exc:
        missing = "" if (exc.name or "").startswith("patientkit") else f" ({exc.name} is missing)"
        raise UsageError(
            f"{shown(url)}: a PostgreSQL store needs the postgres extra{missing}: {POSTGRES_EXTRA}"
        ) from None
