"""Fixtures of the records API tests: one real `patientkit serve` per test module, and a
prefix that makes each test's test_ids and clinic_ids its own."""

import uuid

import pytest

from tests.helpers import Server


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """One server for the tests that do not need their own: each test uses its own ids."""
    folder = tmp_path_factory.mktemp("records-api")
    server = Server(folder / "serve.log", "--db", str(folder / "api.db"))
    server.db = folder / "api.db"
    yield server
    server.stop()


@pytest.fixture
def ids():
    """A prefix that makes this test's test_ids and clinic_ids its own."""
    return uuid.uuid4().hex[:8]
