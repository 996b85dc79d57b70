"""SPEC.md "The server", Metrics: GET /metrics in Prometheus text format counts a known
sequence of requests exactly — by method, route template (never a raw path) and status;
durations by route; readings stored and duplicates ignored; records created and
duplicates refused; export bytes and rows served — behind the same authentication."""

from __future__ import annotations

import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from patientkit.server.app import build_app
from tests.helpers import default_tls, web

DEVICE = str(uuid.UUID(int=21, version=4))
TOKEN = "metrics-token-1"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def record(test_id):
    return {
        "test_id": test_id,
        "patient_id": "P",
        "clinic_id": "C-M",
        "test_type": "t",
        "result": "r",
    }


def reading(count, timestamp):
    return {"count": count, "timestamp": timestamp}


def samples(text):
    """{(sample name, sorted labels): value} of an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def scrape(url, headers=AUTH):
    answer = web.get(f"{url}/metrics", headers=headers)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    return samples(answer.text)


def requests_by_label(found):
    return {
        (labels[0][1], labels[1][1], labels[2][1]): value
        for (name, labels), value in found.items()
        if name == "patientkit_http_requests_total"
    }


def test_metrics_count_a_known_sequence_exactly(serve, tmp_path, exports_dir):
    server = serve(
        "--db",
        str(tmp_path / "m.db"),
        "--exports",
        str(exports_dir),
        env={"PATIENTKIT_TOKEN": TOKEN},
    )
    with httpx.Client(verify=default_tls(), base_url=server.url, headers=AUTH) as http:
        create = "/api/device-readings/create"
        first = [reading(2, "2021-09-29T16:09:15+01:00"), reading(3, "2021-09-29T17:00:00+01:00")]
        assert http.post(create, json={"id": DEVICE, "readings": first}).status_code == 201
        again = [reading(9, "2021-09-29T15:09:15+00:00"), reading(5, "2021-09-30T10:00:00+00:00")]
        assert http.post(create, json={"id": DEVICE, "readings": again}).status_code == 201  # 1 dup
        assert http.post(create, json={"id": "nope"}).status_code == 400
        for _ in range(2):
            assert http.get(f"/api/device-readings/{DEVICE}/cumulative-count").json() == {
                "cumulative_count": 10
            }
        assert http.post("/tests", json=record("M1")).status_code == 200
        assert http.post("/tests", json=record("M1")).status_code == 409
        batch = [record("M2"), record("M1"), record("M3"), {"test_id": "M4"}]
        answer = http.post("/tests/batch", json=batch).json()
        assert (answer["created"], answer["duplicates"], answer["invalid"]) == (2, 1, 1)
        download = http.get("/api/export/demo").json()["data"]["download_ids"][0]
        meta = http.get(f"/api/export/demo/{download}").json()["data"]
        data = http.get(f"/api/export/demo/{download}/data")
        assert data.status_code == 200
        assert http.get(f"/api/export/demo/{uuid.uuid4()}").status_code == 404
        assert http.get("/no/such/thing").status_code == 404
        assert http.delete("/tests").status_code == 405
    assert web.post(f"{server.url}/tests", json=record("M9")).status_code == 401

    found = scrape(server.url)
    assert requests_by_label(found) == {
        ("GET", "/api/ping", "200"): 1,  # the fixture's, on start
        ("POST", "/api/device-readings/create", "201"): 2,
        ("POST", "/api/device-readings/create", "400"): 1,
        ("GET", "/api/device-readings/{device_id}/cumulative-count", "200"): 2,
        ("POST", "/tests", "200"): 1,
        ("POST", "/tests", "409"): 1,
        ("POST", "/tests", "401"): 1,
        ("POST", "/tests/batch", "200"): 1,
        ("GET", "/api/export/{export_id}", "200"): 1,
        ("GET", "/api/export/{export_id}/{download_id}", "200"): 1,
        ("GET", "/api/export/{export_id}/{download_id}", "404"): 1,
        ("GET", "/api/export/{export_id}/{download_id}/data", "200"): 1,
        ("GET", "unmatched", "404"): 1,
        ("DELETE", "/tests", "405"): 1,
    }
    assert found[("patientkit_readings_stored_total", ())] == 3
    assert found[("patientkit_readings_duplicates_ignored_total", ())] == 1
    assert found[("patientkit_records_created_total", ())] == 3
    assert found[("patientkit_records_duplicates_refused_total", ())] == 2
    assert found[("patientkit_export_bytes_served_total", ())] == len(data.content)
    assert found[("patientkit_export_rows_served_total", ())] == meta["rows"]
    counts = {
        labels: value
        for (name, labels), value in found.items()
        if name == "patientkit_http_request_duration_seconds_count"
    }
    assert counts[(("method", "POST"), ("route", "/tests"))] == 3
    assert (
        counts[(("method", "GET"), ("route", "/api/device-readings/{device_id}/cumulative-count"))]
        == 2
    )
    text = web.get(f"{server.url}/metrics", headers=AUTH).text
    assert DEVICE not in text and download not in text  # templates, never raw paths
    assert "requests_created" not in text and "seconds_created" not in text

    again = scrape(server.url)  # the first scrape is counted too
    assert requests_by_label(again)[("GET", "/metrics", "200")] == 2


def test_metrics_need_the_token(tmp_path):
    """The application in this process (what answers is the app's BearerAuth; serve's
    reading of PATIENTKIT_TOKEN is tests/server/test_auth's)."""
    with TestClient(build_app(tmp_path / "m.db", tokens=[TOKEN])) as client:
        answer = client.get("/metrics")
        assert (answer.status_code, answer.json()) == (401, {"detail": "Not authenticated"})
        assert answer.headers["www-authenticate"] == "Bearer"
        assert client.get("/metrics", headers=AUTH).status_code == 200
