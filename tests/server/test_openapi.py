"""SPEC.md "The server", OpenAPI: GET /openapi.json is a valid OpenAPI 3.1 document of
every route of the app (each route, each method: nothing missing, nothing extra), and a
bounded schemathesis run against a real `serve` finds no 5xx and no answer outside it."""

from __future__ import annotations

import importlib.util

import httpx
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route
from starlette.testclient import TestClient

from patientkit.server.app import build_app
from patientkit.server.openapi import document

pytestmark = pytest.mark.slow  # long waits: scheduled first (tests/conftest.py)

TOKEN = "openapi-token-5"


def app_operations(app) -> set[tuple[str, str]]:
    """(path template, method) of every route of the app (HEAD is GET's twin)."""
    while not hasattr(app, "routes"):  # through the middleware to Starlette
        app = app.app
    found = set()
    for route in app.routes:
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method != "HEAD":
                found.add((route.path, method.lower()))
    return found


def document_operations(doc) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item}


@pytest.mark.parametrize("bulk", [True, False])
@pytest.mark.parametrize("metrics", [True, False])
def test_every_route_of_the_app_is_in_the_document(tmp_path, bulk, metrics):
    app = build_app(tmp_path / "o.db", bulk=bulk, metrics=metrics)
    served = TestClient(app).get("/openapi.json")
    assert served.status_code == 200
    doc = served.json()
    assert doc == document(bulk=bulk, metrics=metrics)
    assert document_operations(doc) == app_operations(app)
    validate(doc)  # openapi-spec-validator: a valid OpenAPI 3.1 document
    assert doc["openapi"] == "3.1.0"


def test_every_route_but_ping_documents_its_401(tmp_path):
    doc = document()
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if (path, method) == ("/api/ping", "get"):
                assert operation["security"] == []
            else:
                assert operation["responses"]["401"]["headers"]["WWW-Authenticate"]


@pytest.mark.skipif(
    importlib.util.find_spec("schemathesis") is None, reason="schemathesis not installed"
)
def test_schemathesis_finds_no_5xx_and_no_undocumented_answer(serve, tmp_path, exports_dir):
    """`schemathesis run`, its own command-line entry point called in this process (as
    click runs it: the same phases, checks and output; no interpreter to start and no
    second import of hypothesis, httpx and jsonschema: about 1.5 CPU-seconds less)."""
    server = serve(
        "--db",
        str(tmp_path / "fuzz.db"),
        "--exports",
        str(exports_dir),
        env={"PATIENTKIT_TOKEN": TOKEN},
    )
    assert httpx.get(f"{server.url}/openapi.json").status_code == 401
    from click.testing import CliRunner  # schemathesis's asserts are not rewritten (addopts)
    from schemathesis.cli import schemathesis

    done = CliRunner().invoke(
        schemathesis,
        [
            "run",
            f"{server.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance,response_headers_conformance",
            "--max-examples",
            "5",
            "--seed",
            "13",
            "--generation-database",
            "none",
            "--no-color",
        ],
        catch_exceptions=False,
    )
    assert done.exit_code == 0, done.output[-6000:]
    assert "Tested: 12" in done.output
    text = server.log.read_text()
    assert '"status": 5' not in text and "Traceback" not in text
