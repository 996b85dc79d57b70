"""`patientkit.stores`: a store is chosen by the form of its target."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from patientkit.core.storage import SQLiteStore
from patientkit.core.store import Store
from patientkit.errors import UsageError
from patientkit.stores import is_url, open_existing, open_store, shown


def test_a_path_opens_the_sqlite_store(tmp_path: Path) -> None:
    store: Store = open_store(tmp_path / "s.db")
    with store:
        assert isinstance(store, SQLiteStore)
        assert store.info()["backend"] == "sqlite"
    assert (tmp_path / "s.db").is_file()


def test_only_postgres_urls_are_urls() -> None:
    assert is_url("postgresql://u@h:5432/db") and is_url("postgres://h/db")
    assert not is_url("postgresql.db") and not is_url(Path("postgresql://h/db"))
    assert not is_url("http://127.0.0.1:8000")


def test_a_password_is_never_shown() -> None:
    assert shown("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert shown("postgresql://u@h/db") == "postgresql://u@h/db"
    assert shown("a.db") == "a.db"


def test_a_url_without_the_extra_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "patientkit.postgres", None)  # as if not installed
    with pytest.raises(UsageError) as raised:
        open_store("postgresql://u:secret@h/db")
    message = str(raised.value)
    assert message.endswith("pip install 'patientkit[postgres]'")
    assert "secret" not in message and "postgresql://u:***@h/db" in message
    assert raised.value.exit_code == 2


def test_an_existing_store_is_never_created(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as raised:
        open_existing(tmp_path / "no.db")
    assert str(raised.value) == f"{tmp_path / 'no.db'}: no such store"
    with pytest.raises(UsageError, match="is a folder, not a store"):
        open_existing(tmp_path)
    assert not (tmp_path / "no.db").exists()
