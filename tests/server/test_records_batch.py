"""POST /tests/batch: verdicts, statuses and what is stored through Starlette's TestClient
on the application of `patientkit serve` (build_app) in this process, and fuzzed there;
what it logs against a real `patientkit serve`."""

import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from patientkit.server.app import build_app
from tests.helpers import examples, record

NDJSON = {"content-type": "application/x-ndjson"}
CONFLICT = "Conflict: test_id exists"


def ndjson(lines):
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)


def batch(client, body, headers=None, request_id=None):
    """POST /tests/batch through `client` (a TestClient, or an httpx.Client on a server)."""
    headers = dict(headers or {})
    if request_id:
        headers["X-Request-ID"] = request_id
    if isinstance(body, list):
        return client.post("/tests/batch", json=body, headers=headers)
    content = body.encode() if isinstance(body, str) else body
    return client.post("/tests/batch", content=content, headers=headers)


def ok(test_id):
    return {"test_id": test_id, "status": 200}


def dup(test_id):
    return {"test_id": test_id, "status": 409, "error": CONFLICT}


def bad(test_id, error):
    return {"test_id": test_id, "status": 400, "error": error}


def mixed(ids):
    """(lines, expected results): valid, invalid, not JSON, not objects, a duplicate of
    the store and one repeated in the batch; `S` is stored before. Clinic `ids`."""

    def i(name):
        return f"{ids}-{name}"

    def record(test_id, **changes):
        return globals()["record"](test_id, clinic=ids, **changes)

    lines = [
        record(i("V1"), result="first wins"),
        record(i("V2"), result=""),
        "not json",
        "[1, 2]",
        '"just a string"',
        "",  # a blank line is no record
        "null",
        {k: v for k, v in record(i("x")).items() if k != "test_id"},
        record(i("V3"), patient_id=17),
        record(i("S"), result="again"),
        record(i("V1"), result="second loses"),
        {**record(i("V4")), "note": "extra fields are not stored"},
        record(17),
        '{"test_id": "cut", "patient_id": ',
        record(i("V5"), clinic_id=" "),
    ]
    expected = [
        ok(i("V1")),
        bad(i("V2"), "Invalid or missing field: result"),
        bad(None, "Invalid JSON"),
        bad(None, "Invalid JSON"),
        bad(None, "Invalid JSON"),
        bad(None, "Invalid JSON"),
        bad(None, "Invalid or missing field: test_id"),
        bad(i("V3"), "Invalid or missing field: patient_id"),
        dup(i("S")),
        dup(i("V1")),
        ok(i("V4")),
        bad(None, "Invalid or missing field: test_id"),
        bad(None, "Invalid JSON"),
        bad(i("V5"), "Invalid or missing field: clinic_id"),
    ]
    return lines, expected


def answer(results):
    return {
        "results": results,
        "created": sum(r["status"] == 200 for r in results),
        "duplicates": sum(r["status"] == 409 for r in results),
        "invalid": sum(r["status"] == 400 for r in results),
    }


def clinic(client, clinic_id):
    response = client.get("/tests", params={"clinic_id": clinic_id})
    assert response.status_code == 200
    return response.json()


def test_mixed_ndjson_batch_exact_verdicts_in_order(api, ids):
    assert api.post("/tests", json=record(f"{ids}-S", clinic=ids)).status_code == 200
    lines, expected = mixed(ids)
    response = batch(api, ndjson(lines), NDJSON)
    assert response.status_code == 200
    assert response.json() == answer(expected)
    assert response.json()["created"] == 2
    stored = {r["test_id"]: r for r in clinic(api, ids)}
    assert sorted(stored) == sorted([f"{ids}-S", f"{ids}-V1", f"{ids}-V4"])
    assert stored[f"{ids}-V1"]["result"] == "first wins"  # the first in the batch won
    assert stored[f"{ids}-S"]["result"] == "RESULT-SECRET-42"  # never overwritten
    assert "note" not in stored[f"{ids}-V4"]
    # one transaction: the records of one batch share its time
    assert stored[f"{ids}-V1"]["created_at"] == stored[f"{ids}-V4"]["created_at"]


@pytest.mark.parametrize("headers", [None, {"content-type": "application/json"}])
def test_a_json_array_gets_the_same_verdicts(api, ids, headers):
    lines, _ = mixed(ids)
    array = [[1, 2], "just a string", None, *(line for line in lines if isinstance(line, dict))]
    body = [record(f"{ids}-S", clinic=ids), *array]  # S is new here, its later copy a 409
    response = batch(api, json.dumps(body), headers)
    assert response.status_code == 200
    assert response.json() == answer(
        [
            ok(f"{ids}-S"),
            *[bad(None, "Invalid JSON")] * 3,
            ok(f"{ids}-V1"),
            bad(f"{ids}-V2", "Invalid or missing field: result"),
            bad(None, "Invalid or missing field: test_id"),
            bad(f"{ids}-V3", "Invalid or missing field: patient_id"),
            dup(f"{ids}-S"),
            dup(f"{ids}-V1"),
            ok(f"{ids}-V4"),
            bad(None, "Invalid or missing field: test_id"),
            bad(f"{ids}-V5", "Invalid or missing field: clinic_id"),
        ]
    )


def test_an_element_that_cannot_be_taken_is_one_invalid_record(api, ids):
    body = (
        b"["
        + json.dumps(record(f"{ids}-A")).encode()
        + b', {"n": '
        + b"9" * 5000
        + b"}, "
        + b"[" * 150
        + b"]" * 150
        + b', {"x": "\\ud800"}, '
        + json.dumps(record(f"{ids}-B")).encode()
        + b"]"
    )
    response = batch(api, body)
    assert response.status_code == 200
    assert response.json() == answer(
        [ok(f"{ids}-A"), *[bad(None, "Invalid JSON")] * 3, ok(f"{ids}-B")]
    )


def test_a_line_of_bytes_that_are_not_utf8_is_one_invalid_record(api, ids):
    body = (
        json.dumps(record(f"{ids}-A")).encode()
        + b"\n"
        + json.dumps(record(f"{ids}-X", patient_id="Jos\xe9"), ensure_ascii=False).encode("latin-1")
        + b"\n"
        + json.dumps(record(f"{ids}-B")).encode()
    )  # the last line without its newline
    response = batch(api, body, NDJSON)
    assert response.json() == answer([ok(f"{ids}-A"), bad(None, "Invalid JSON"), ok(f"{ids}-B")])


@pytest.mark.parametrize(
    "body, headers",
    [
        (b"", None),
        (b"  \n\n ", NDJSON),
        (b"[1, 2", None),
        (b"[1 2]", None),
        (b"[1] x", None),
        (b'{"test_id": "T"}', {"content-type": "application/json"}),  # not an array
        (b"[", None),
    ],
)
def test_a_body_that_is_neither_ndjson_nor_an_array_is_invalid_json(api, body, headers):
    response = batch(api, body, headers)
    assert response.status_code == 400
    assert response.json() == {"error": "Invalid JSON"}


def test_an_empty_array_is_an_empty_answer(api):
    response = batch(api, [])
    assert response.status_code == 200
    assert response.json() == {"results": [], "created": 0, "duplicates": 0, "invalid": 0}


def test_a_repeated_request_id_gets_the_original_answer(served, ids):
    api = served.client
    body = ndjson([record(f"{ids}-A", clinic=ids), record(f"{ids}-B", clinic=ids)])
    first = batch(api, body, NDJSON, request_id=f"{ids}-batch-1")
    assert first.status_code == 200
    assert first.headers["x-request-id"] == f"{ids}-batch-1"
    assert first.json() == answer([ok(f"{ids}-A"), ok(f"{ids}-B")])
    again = batch(api, body, NDJSON, request_id=f"{ids}-batch-1")
    assert (again.status_code, again.text) == (200, first.text)  # not 409s
    other = batch(api, body, NDJSON, request_id=f"{ids}-batch-2")
    assert other.json() == answer([dup(f"{ids}-A"), dup(f"{ids}-B")])
    assert batch(api, body, NDJSON).json() == other.json()  # no id: not remembered
    # SPEC: the same request id gets its original answer, whatever the body
    third = batch(api, ndjson([record(f"{ids}-C")]), NDJSON, request_id=f"{ids}-batch-1")
    assert third.text == first.text
    assert sorted(r["test_id"] for r in clinic(api, ids)) == [f"{ids}-A", f"{ids}-B"]
    events = [
        line["event"] for line in served.log_lines() if line.get("request_id") == f"{ids}-batch-1"
    ]
    assert (events.count("batch stored"), events.count("batch repeated")) == (1, 2)


def test_a_batch_and_a_single_post_with_one_request_id_are_two_requests(api, ids):
    request_id = f"{ids}-shared"
    single = api.post("/tests", json=record(f"{ids}-A"), headers={"X-Request-ID": request_id})
    assert single.status_code == 200
    response = batch(api, ndjson([record(f"{ids}-A"), record(f"{ids}-B")]), NDJSON, request_id)
    assert response.json() == answer([dup(f"{ids}-A"), ok(f"{ids}-B")])
    again = api.post("/tests", json=record(f"{ids}-A"), headers={"X-Request-ID": request_id})
    assert (again.status_code, again.json()["status"]) == (200, "success")


@pytest.mark.parametrize("kind", ["ndjson", "array"])
def test_more_than_10000_records_is_413_and_stores_nothing(api, ids, kind):
    records = [record(f"{ids}-{n}", clinic=ids) for n in range(10_001)]
    body = ndjson(records) if kind == "ndjson" else json.dumps(records)
    response = batch(api, body, NDJSON if kind == "ndjson" else None)
    assert response.status_code == 413
    assert response.json() == {"error": "Too many records: a batch holds at most 10000."}
    assert clinic(api, ids) == []


def test_10000_records_are_one_batch(api, ids):
    """10,000 is the limit, not past it."""
    records = [record(f"{ids}-{n}", clinic=ids) for n in range(10_000)]
    response = batch(api, ndjson(records), NDJSON)
    assert response.status_code == 200
    assert response.json()["created"] == 10_000


def test_a_body_over_the_limit_is_413_and_stores_nothing(tmp_path):
    with TestClient(build_app(tmp_path / "small.db", max_body=300)) as server:
        response = batch(server, ndjson([record("A"), record("B"), record("C")]), NDJSON)
        assert response.status_code == 413
        assert response.json() == {"error": "Request body is larger than 300 bytes."}
        assert clinic(server, "C1") == []
        assert batch(server, ndjson([record("A")]), NDJSON).json() == answer([ok("A")])


def test_a_server_without_bulk_answers_404(tmp_path):
    with TestClient(build_app(tmp_path / "old.db", bulk=False)) as server:
        response = batch(server, ndjson([record("A")]), NDJSON)
        assert response.status_code == 404
        assert clinic(server, "C1") == []
        assert server.post("/tests", json=record("A")).status_code == 200


def test_batch_logs_carry_counts_and_no_health_data(served, ids):
    lines, _ = mixed(ids)
    batch(served.client, ndjson(lines), NDJSON, request_id=f"{ids}-log")
    batch(served.client, b"[1, 2", request_id=f"{ids}-log-bad")
    text = served.log.read_text()
    for secret in ("PATIENT-SECRET-7", "RESULT-SECRET-42", "hiv-antibody", "first wins"):
        assert secret not in text
    logged = {
        line["request_id"]: line
        for line in served.log_lines()
        if line.get("event", "").startswith("batch")
    }
    assert logged[f"{ids}-log"]["records"] == 14
    assert logged[f"{ids}-log-bad"]["event"] == "batch invalid"
    assert logged[f"{ids}-log-bad"]["reason"].startswith("Invalid JSON: invalid JSON")


# --- the same verdicts as single POSTs; never a 5xx: through the TestClient -------------


@pytest.fixture(scope="module")
def apps(store_target):
    """Two applications in this process, each on its own store: one for batches, one
    for single POSTs."""
    with (
        TestClient(build_app(store_target("batch"))) as batches,
        TestClient(build_app(store_target("single"))) as singles,
    ):
        yield batches, singles


texts = st.one_of(st.sampled_from(["", " ", "T1", "T2", "C1", "x"]), st.text(max_size=5))
values = st.one_of(
    texts, st.integers(), st.none(), st.booleans(), st.lists(st.integers(), max_size=2)
)
records_ = st.fixed_dictionaries(
    {},
    optional={
        name: st.one_of(texts, values)
        for name in ("test_id", "patient_id", "clinic_id", "test_type", "result")
    },
)
elements = st.one_of(records_, records_, values)


@settings(
    max_examples=examples(60),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(elements, max_size=12), st.booleans())
def test_each_verdict_is_the_single_posts_answer(apps, elements, as_array):
    """A batch's verdict for each record is what a single POST of it gets, in order, on
    a store holding the same records before (repeated test_ids included)."""
    batches, singles = apps
    prefix = uuid.uuid4().hex[:8]

    def own(element):
        if isinstance(element, dict) and isinstance(element.get("test_id"), str):
            return {**element, "test_id": prefix + element["test_id"]}
        return element

    elements = [own(element) for element in elements]
    if as_array:
        response = batches.post("/tests/batch", json=elements)
    else:
        body = "".join(json.dumps(element) + "\n" for element in elements)
        response = batches.post("/tests/batch", content=body, headers=NDJSON)
    if not elements and not as_array:  # no line at all: not NDJSON
        assert (response.status_code, response.json()) == (400, {"error": "Invalid JSON"})
        return
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == len(elements)
    for element, result in zip(elements, results, strict=True):
        single = singles.post("/tests", json=element)
        assert result["status"] == single.status_code
        if single.status_code == 200:
            assert "error" not in result
            assert result["test_id"] == element["test_id"]
        else:
            assert result["error"] == single.json()["error"]
            test_id = element.get("test_id") if isinstance(element, dict) else None
            assert result["test_id"] == (test_id if isinstance(test_id, str) else None)
    counts = response.json()
    assert counts["created"] + counts["duplicates"] + counts["invalid"] == len(results)


@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.lists(
            st.one_of(
                st.binary(max_size=40),
                st.sampled_from(
                    [
                        json.dumps(record()).encode(),
                        b"[",
                        b"]",
                        b"{",
                        b",",
                        b"\xff",
                        b'"\\ud800"',
                        b"9" * 5000,
                        b"[" * 200,
                        b"\n",
                        b"\r\n",
                        b"\xef\xbb\xbf",
                    ]
                ),
            ),
            max_size=12,
        ).map(b"".join),
    ),
    st.sampled_from([None, "application/x-ndjson", "application/json", "text/plain"]),
)
def test_no_body_gets_a_5xx(apps, body, kind):
    batches, _ = apps
    headers = {"content-type": kind} if kind else {}
    response = batches.post("/tests/batch", content=body, headers=headers)
    assert response.status_code in (200, 400), response.text
    answer_ = response.json()
    if response.status_code == 400:
        assert answer_ == {"error": "Invalid JSON"}
    else:
        results = answer_["results"]
        assert answer_["created"] + answer_["duplicates"] + answer_["invalid"] == len(results)
        for result in results:
            assert result["status"] in (200, 400, 409)
            assert ("error" in result) == (result["status"] != 200)
