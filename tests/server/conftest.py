"""Fixtures of the records API tests: one real `patientkit serve` per test module, and a
prefix that makes each test's test_ids and clinic_ids its own."""

import contextlib
import uuid

import pytest

from tests.conftest import Server
from tests.pg import STORES, new_database


def record(test_id="T1", clinic="C1", **changes):
    """A valid test record (its patient and result marked secret, for the log checks)."""
    value = {
        "test_id": test_id,
        "patient_id": "PATIENT-SECRET-7",
        "clinic_id": clinic,
        "test_type": "hiv-antibody",
        "result": "RESULT-SECRET-42",
    }
    value.update(changes)
    return value


@pytest.fixture(scope="module", params=STORES)
def store_target(request, tmp_path_factory):
    """The API contract tests run on both stores: target(name) is a new store's target,
    a SQLite file in the module's folder, or the URL of a new PostgreSQL database (each
    dropped after the module; skipped, with the reason, without PATIENTKIT_TEST_POSTGRES)."""
    folder = tmp_path_factory.mktemp(request.param)
    with contextlib.ExitStack() as stack:

        def target(name: str) -> str:
            if request.param == "sqlite":
                return str(folder / f"{name}.db")
            return stack.enter_context(new_database())

        yield target


@pytest.fixture(scope="module")
def api(tmp_path_factory, store_target):
    """One server for the tests that do not need their own: each test uses its own ids."""
    folder = tmp_path_factory.mktemp("records-api")
    db = store_target("api")
    server = Server(folder / "serve.log", "--db", db)
    server.db = db
    yield server
    server.stop()


@pytest.fixture
def ids():
    """A prefix that makes this test's test_ids and clinic_ids its own."""
    return uuid.uuid4().hex[:8]
