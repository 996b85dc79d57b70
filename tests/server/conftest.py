"""Fixtures of the records API tests: the application in this process for pure API
behaviour, one real `patientkit serve` for the tests of its logs, and a prefix that makes
each test's test_ids and clinic_ids its own."""

import contextlib
import uuid

import httpx
import pytest
from starlette.testclient import TestClient

from patientkit.server.app import build_app
from tests.helpers import Server, default_tls
from tests.pg import STORES, new_store


@pytest.fixture(scope="module", params=STORES)
def store_target(request, tmp_path_factory):
    """The API contract tests run on both stores: target(name) is a new store's target,
    a SQLite file in the module's folder, or the URL of a new PostgreSQL store (a schema, each
    dropped after the module; skipped, with the reason, without PATIENTKIT_TEST_POSTGRES)."""
    folder = tmp_path_factory.mktemp(request.param)
    with contextlib.ExitStack() as stack:

        def target(name: str) -> str:
            if request.param == "sqlite":
                return str(folder / f"{name}.db")
            return stack.enter_context(new_store())

        yield target


@pytest.fixture(scope="module")
def api(store_target):
    """The application of `patientkit serve` (build_app) in this process, through
    Starlette's TestClient, on each store (`store_target`); `api.db` is its store's
    target. Each test uses its own ids."""
    db = store_target("api")
    with TestClient(build_app(db)) as client:
        client.db = db
        yield client


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """One real `patientkit serve` for the tests that read what it logs, shared by the
    modules (each test uses its own ids); `served.client` talks to it."""
    folder = tmp_path_factory.mktemp("records-served")
    server = Server(folder / "serve.log", "--db", str(folder / "api.db"))
    with httpx.Client(verify=default_tls(), base_url=server.url, timeout=60) as client:
        server.client = client
        yield server
    server.stop()


@pytest.fixture
def ids():
    """A prefix that makes this test's test_ids and clinic_ids its own."""
    return uuid.uuid4().hex[:8]
