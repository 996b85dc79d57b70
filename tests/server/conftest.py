"""Fixtures of the records API tests: the application in this process for pure API
behaviour, one real `patientkit serve` for the tests of its logs, and a prefix that makes
each test's test_ids and clinic_ids its own."""

import uuid

import httpx
import pytest
from starlette.testclient import TestClient

from patientkit.server.app import build_app
from tests.helpers import Server


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """The application of `patientkit serve` (build_app) in this process, through
    Starlette's TestClient; `api.db` is its store. Each test uses its own ids."""
    folder = tmp_path_factory.mktemp("records-api")
    with TestClient(build_app(folder / "api.db")) as client:
        client.db = folder / "api.db"
        yield client


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """One real `patientkit serve` for the tests that read what it logs, shared by the
    modules (each test uses its own ids); `served.client` talks to it."""
    folder = tmp_path_factory.mktemp("records-served")
    server = Server(folder / "serve.log", "--db", str(folder / "api.db"))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        server.client = client
        yield server
    server.stop()


@pytest.fixture
def ids():
    """A prefix that makes this test's test_ids and clinic_ids its own."""
    return uuid.uuid4().hex[:8]
