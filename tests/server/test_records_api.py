"""The test records API: statuses, bodies and what is stored through Starlette's
TestClient on the application of `patientkit serve` (build_app) in this process; its logs,
and retries through its chaos, against a real `patientkit serve`."""

import json
import time
import uuid

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from patientkit.core.storage import SQLiteStore
from patientkit.server.app import build_app
from patientkit.stores import open_store
from tests.helpers import default_tls, record, web
from tests.server.bodies import bodies, json_values

FIELDS = ("test_id", "patient_id", "clinic_id", "test_type", "result")
CREATED_AT = 27  # len("2025-01-02T03:04:05.123456Z")


def post(client, body, request_id=None, raw=None):
    """POST /tests through `client` (a TestClient, or an httpx.Client on a server)."""
    headers = {"X-Request-ID": request_id} if request_id else {}
    if raw is not None:
        return client.post("/tests", content=raw, headers=headers)
    return client.post("/tests", json=body, headers=headers)


def listing(client, clinic):
    response = client.get("/tests", params={"clinic_id": clinic})
    assert response.status_code == 200
    return response.json()


def test_create_then_conflict_and_never_overwritten(api, ids):
    response = post(api, record(f"{ids}-T1", clinic=ids))
    assert response.status_code == 200
    assert response.json() == {"status": "success", "test_id": f"{ids}-T1"}
    again = post(api, record(f"{ids}-T1", clinic=ids, result="other"))
    assert again.status_code == 409
    assert again.json() == {"error": "Conflict: test_id exists"}
    (stored,) = listing(api, ids)
    assert stored["result"] == "RESULT-SECRET-42"


INVALID = [
    (b"not json", "Invalid JSON"),
    (b"", "Invalid JSON"),
    (b"[1, 2]", "Invalid JSON"),
    (b'"a string"', "Invalid JSON"),
    (b"null", "Invalid JSON"),
    (b"{bad", "Invalid JSON"),
    (json.dumps({k: v for k, v in record().items() if k != "test_id"}), "test_id"),
    (json.dumps(record(patient_id=17)), "patient_id"),
    (json.dumps(record(clinic_id="")), "clinic_id"),
    (json.dumps(record(test_type=None)), "test_type"),
    (json.dumps(record(result=" \t ")), "result"),
    (json.dumps(record(result=True)), "result"),
    (json.dumps(record(result=["x"])), "result"),
    (json.dumps({"result": "x"}), "test_id"),  # the first failing field in SPEC order
    (json.dumps(record(test_type=1, clinic_id=2)), "clinic_id"),
    # bodies that cannot be parsed: the API's own 400, never a 500 (issue 9, case 05)
    (b"[" * 100_000, "Invalid JSON"),
    (
        json.dumps(record(result="X"))[:-1].encode() + b', "n": ' + b"9" * 5000 + b"}",
        "Invalid JSON",
    ),
    (
        json.dumps(record(result="X"))[:-1].encode() + b', "n": ' + b"[" * 150 + b"]" * 150 + b"}",
        "Invalid JSON",
    ),
    (json.dumps(record(patient_id="\ud800")).encode(), "Invalid JSON"),
    (
        json.dumps(record(patient_id="Jos\xe9"), ensure_ascii=False).encode("latin-1"),
        "Invalid JSON",
    ),
]
UNPARSEABLE_REASONS = [
    "nesting too deep (more than 100 levels of arrays and objects)",
    "n: number too large (5000 digits)",
    "nesting too deep (more than 100 levels of arrays and objects)",
    "patient_id: lone surrogate escape (\\ud800-\\udfff without its pair), not valid in UTF-8",
    "not valid UTF-8",
]


@pytest.mark.parametrize("body, problem", INVALID)
def test_invalid_bodies_are_400_with_specs_message(api, body, problem):
    raw = body if isinstance(body, bytes) else body.encode()
    response = post(api, None, raw=raw)
    assert response.status_code == 400
    message = problem if problem == "Invalid JSON" else f"Invalid or missing field: {problem}"
    assert response.json() == {"error": message}


def test_nothing_invalid_is_stored(tmp_path):
    with TestClient(build_app(tmp_path / "invalid.db")) as client:
        for body, _ in INVALID:
            post(client, None, raw=body if isinstance(body, bytes) else body.encode())
    with SQLiteStore(tmp_path / "invalid.db") as store:
        assert store.record_count() == 0


def test_unparseable_bodies_are_logged_with_their_reason_and_the_server_stays_up(served):
    """On the session's `served` (tests/server/conftest): the up-* request ids and the
    clinic C-UP are this test's alone."""
    server = served
    ours = [f"up-{n}" for n in range(len(UNPARSEABLE_REASONS))]
    with httpx.Client(verify=default_tls(), base_url=server.url) as client:
        for request_id, (body, _) in zip(ours, INVALID[-len(UNPARSEABLE_REASONS) :], strict=True):
            answer = post(client, None, request_id=request_id, raw=body)
            assert answer.json() == {"error": "Invalid JSON"}
    logged = [
        line["reason"]
        for line in logged_until(server, ours[-1])
        if line["event"] == "record invalid" and line.get("request_id") in ours
    ]
    assert logged == [f"Invalid JSON: {reason}" for reason in UNPARSEABLE_REASONS]
    assert not any(
        "Jos" in line or "SECRET" in line for line in server.log.read_text().splitlines()
    )
    with httpx.Client(verify=default_tls(), base_url=server.url) as client:
        assert post(client, record("T9", clinic="C-UP")).status_code == 200
        assert [r["test_id"] for r in listing(client, "C-UP")] == ["T9"]


def test_an_oversize_body_is_413_and_stores_nothing(tmp_path):
    with TestClient(build_app(tmp_path / "small.db", max_body=300)) as client:
        response = post(client, record(result="x" * 400))
        assert response.status_code == 413
        assert response.json() == {"error": "Request body is larger than 300 bytes."}
        assert post(client, record("T2")).status_code == 200
        assert [r["test_id"] for r in listing(client, "C1")] == ["T2"]


def test_listing_needs_a_clinic(api):
    for url in ("/tests", "/tests?clinic_id=", "/tests?clinic_id=%20"):
        response = api.get(url)
        assert response.status_code == 400, url
        assert response.json() == {"error": "clinic_id is required"}


def test_listing_a_clinic_oldest_first_with_created_at(api, ids):
    assert listing(api, f"{ids}-C1") == []
    for n in range(3):
        post(api, record(f"{ids}-A{n}", clinic=f"{ids}-C1"))
        post(api, record(f"{ids}-B{n}", clinic=f"{ids}-C2"))
    found = listing(api, f"{ids}-C1")
    assert [r["test_id"] for r in found] == [f"{ids}-A0", f"{ids}-A1", f"{ids}-A2"]
    for item in found:
        assert set(item) == {*FIELDS, "created_at"}
        assert item["created_at"].endswith("Z") and len(item["created_at"]) == CREATED_AT
        assert {k: item[k] for k in FIELDS} == record(item["test_id"], clinic=f"{ids}-C1")
    assert [r["created_at"] for r in found] == sorted(r["created_at"] for r in found)
    assert listing(api, f"{ids}-nobody") == []


def test_a_long_listing_is_complete_across_pages(api, ids):
    with open_store(api.db) as store:  # faster than 1,234 POSTs; the server's own store
        store.add_records([record(f"{ids}-R{n:05d}", clinic=f"{ids}-BIG") for n in range(1234)])
        store.add_records([record(f"{ids}-Z-other", clinic=f"{ids}-OTHER")])
    found = listing(api, f"{ids}-BIG")
    assert [r["test_id"] for r in found] == [f"{ids}-R{n:05d}" for n in range(1234)]


def test_a_repeated_request_id_gets_the_original_answer(api, ids):
    one, two = record(f"{ids}-T1", clinic=ids), record(f"{ids}-T2", clinic=ids)
    first = post(api, one, request_id=f"{ids}-retry-1")
    assert (first.status_code, first.headers["x-request-id"]) == (200, f"{ids}-retry-1")
    again = post(api, one, request_id=f"{ids}-retry-1")
    assert again.status_code == 200
    assert again.json() == {"status": "success", "test_id": f"{ids}-T1"}
    assert post(api, one, request_id=f"{ids}-retry-2").status_code == 409
    assert post(api, one).status_code == 409
    # a duplicate's answer is remembered too
    assert post(api, one, request_id=f"{ids}-retry-2").status_code == 409
    # the same request id for another test_id is another record
    assert post(api, two, request_id=f"{ids}-retry-1").status_code == 200
    assert len(listing(api, ids)) == 2


def test_retries_through_chaos_create_each_record_exactly_once(serve, tmp_path):
    """Chaos answers 503, or processes the request and drops the answer. A client that
    retries with the same X-Request-ID until it gets an answer must see 200 for every
    new record, and the store must hold each once."""
    server = serve("--db", str(tmp_path / "chaos.db"), "--chaos", "0.6", "--chaos-seed", "3")
    lost = 0
    with httpx.Client(verify=default_tls(), base_url=server.url) as client:
        for n in range(40):
            request_id = str(uuid.uuid4())
            while True:
                try:
                    response = client.post(
                        "/tests", json=record(f"T{n}"), headers={"X-Request-ID": request_id}
                    )
                except httpx.TransportError:
                    lost += 1
                    continue
                if response.status_code != 503:
                    break
            assert response.status_code == 200, n
    assert lost > 0  # some answers were cut after the record was stored
    with SQLiteStore(tmp_path / "chaos.db") as store:
        assert sorted(r["test_id"] for r in store.records_for_clinic("C1")) == sorted(
            f"T{n}" for n in range(40)
        )


def logged_until(server, request_id, timeout=10.0):
    """The log lines once the request line of `request_id` is written (the middleware
    writes it after the answer has gone out)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = server.log_lines()
        done = any(
            line.get("request_id") == request_id and line["event"] == "request" for line in lines
        )
        if done or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def test_logs_carry_the_request_id_and_no_health_data(served):
    """On the session's `served` (tests/server/conftest): the clinic C-LOG, T1 and T2
    and the log-* request ids are this test's alone."""
    api = served
    with httpx.Client(verify=default_tls(), base_url=api.url) as client:
        post(client, record("T1", clinic="C-LOG"), request_id="log-create")
        post(client, record("T1", clinic="C-LOG"), request_id="log-dup")
        post(client, record("T2", clinic="C-LOG", result=""), request_id="log-invalid")
        post(client, None, request_id="log-json", raw=b"{nope")
    web.get(f"{api.url}/tests?clinic_id=C-LOG", headers={"X-Request-ID": "log-list"})
    web.get(f"{api.url}/tests?clinic_id=QUERY-SECRET-9", headers={"X-Request-ID": "log-q"})
    web.get(f"{api.url}/tests", headers={"X-Request-ID": "log-noclinic"})
    lines = logged_until(api, "log-noclinic")
    text = api.log.read_text()
    # health data, and (SPEC.md, Logs) never a query string value
    for secret in ("PATIENT-SECRET-7", "RESULT-SECRET-42", "hiv-antibody", "QUERY-SECRET-9"):
        assert secret not in text
    by_id = {}
    for line in lines:
        if "request_id" in line:
            by_id.setdefault(line["request_id"], []).append(line)
    events = {rid: [line["event"] for line in found] for rid, found in by_id.items()}
    assert events["log-create"] == ["record stored", "request"]
    assert events["log-dup"] == ["record duplicate", "request"]
    assert events["log-invalid"] == ["record invalid", "request"]
    assert events["log-json"] == ["record invalid", "request"]
    assert events["log-list"] == ["records listed", "request"]
    assert events["log-noclinic"] == ["records not listed", "request"]
    stored = by_id["log-create"][0]
    assert (stored["test_id"], stored["clinic_id"], stored["status"]) == ("T1", "C-LOG", 200)
    assert by_id["log-invalid"][0]["reason"] == "Invalid or missing field: result"
    assert by_id["log-list"][0]["count"] == 1
    assert [line["status"] for line in lines if line.get("request_id") == "log-dup"][-1] == 409


# --- any body (issue 9: fuzzing each server body parser, through the endpoint) ----------

_field = st.one_of(st.text(min_size=1, max_size=6), json_values())
_records = st.fixed_dictionaries({}, optional=dict.fromkeys(FIELDS, _field))
RECORD_ERRORS = {"Invalid JSON", *(f"Invalid or missing field: {name}" for name in FIELDS)}


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(bodies(_records))
def test_any_post_body_gets_a_documented_answer(api, body):
    """Bytes of any kind, JSON of any shape: 200 with the test_id, 409, or 400 with one of
    SPEC's messages (413 past the body limit); never a 5xx."""
    response = api.post("/tests", content=body)
    answer = response.json()
    if response.status_code == 200:
        assert answer["status"] == "success" and isinstance(answer["test_id"], str)
    elif response.status_code == 409:
        assert answer == {"error": "Conflict: test_id exists"}
    elif response.status_code != 413:
        assert response.status_code == 400, response.text
        assert answer["error"] in RECORD_ERRORS, response.text
