"""The export API: against the demo export's real `patientkit serve` (shared with the CLI's
export tests), its logs and chaos on real servers, and exports of one test through
Starlette's TestClient on the application (build_app) in this process."""

import gzip
import json
import uuid

import httpx
from starlette.testclient import TestClient

from patientkit.samples.exports import plan_export
from patientkit.server.app import build_app
from tests.helpers import default_tls, web


def test_lists_exports_and_downloads(demo_server, exports_dir):
    assert web.get(f"{demo_server.url}/api/export").json() == {"data": {"export_ids": ["demo"]}}
    answer = web.get(f"{demo_server.url}/api/export/demo").json()
    expected = sorted(p.download_id for p in plan_export("demo", 0))
    assert answer == {"data": {"id": "demo", "download_ids": expected}}


def test_download_metadata_and_streamed_data(demo_server, exports_dir):
    plan = plan_export("demo", 0)[0]
    meta = web.get(f"{demo_server.url}/api/export/demo/{plan.download_id}").json()["data"]
    assert meta["id"] == plan.download_id
    assert meta["rows"] == plan.rows
    assert meta["event_types"] == ["bp_dia", "bp_sys"]
    assert set(meta) == {"id", "rows", "event_types", "patients", "start_time", "end_time"}
    response = web.get(f"{demo_server.url}/api/export/demo/{plan.download_id}/data")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.content == (exports_dir / "demo" / f"{plan.download_id}.csv").read_bytes()
    assert response.content.count(b"\n") == plan.rows + 1


def test_unknown_exports_and_downloads_are_404(demo_server):
    base = f"{demo_server.url}/api/export"
    missing = str(uuid.uuid4())
    for path, detail in [
        ("/nope", "Export not found"),
        ("/%2e%2e", "Export not found"),
        (f"/demo/{missing}", "Download not found"),
        (f"/demo/{missing}/data", "Download not found"),
        ("/demo/not-a-uuid", "Download not found"),
    ]:
        response = web.get(base + path)
        assert response.status_code == 404, path
        assert response.json() == {"detail": detail}


def test_gzip_files_are_served_decompressed_and_metadata_is_scanned(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    download_id = str(uuid.uuid4())
    text = (
        b"patient_id,event_time,event_type,value\n"
        b"A1,2025-01-02T00:00:00Z,spo2,97\nA2,2025-01-01T00:00:00Z,spo2,95\n"
    )
    with gzip.open(folder / f"{download_id}.csv.gz", "wb") as out:
        out.write(text)
    (folder / "README.csv").write_bytes(text)  # not a UUID: not a download
    server = TestClient(build_app(tmp_path / "patientkit.db", tmp_path))
    assert server.get("/api/export/mine").json()["data"]["download_ids"] == [download_id]
    assert server.get(f"/api/export/mine/{download_id}/data").content == text
    meta = server.get(f"/api/export/mine/{download_id}").json()["data"]
    assert meta == {
        "id": download_id,
        "rows": 2,
        "event_types": ["spo2"],
        "patients": ["A1", "A2"],
        "start_time": "2025-01-01T00:00:00Z",
        "end_time": "2025-01-02T00:00:00Z",
    }


def test_every_request_is_logged_as_json_with_a_correlation_id(demo_server):
    response = web.get(f"{demo_server.url}/api/export", headers={"X-Request-ID": "trace-me-42"})
    assert response.headers["x-request-id"] == "trace-me-42"
    generated = web.get(f"{demo_server.url}/api/export").headers["x-request-id"]
    assert str(uuid.UUID(generated)) == generated
    lines = [line for line in demo_server.answered() if line.get("request_id") == "trace-me-42"]
    assert len(lines) == 1
    assert lines[0]["route"] == "/api/export" and lines[0]["status"] == 200


def test_chaos_fails_the_given_share_half_503_half_cut(serve, exports_dir):
    server = serve("--exports", str(exports_dir), "--chaos", "0.5", "--chaos-seed", "1")
    plan = plan_export("demo", 0)[0]
    outcomes = {"ok": 0, "503": 0, "cut": 0}
    client = httpx.Client(verify=default_tls())
    for _ in range(200):
        try:
            response = client.get(f"{server.url}/api/export/demo/{plan.download_id}/data")
        except httpx.TransportError:
            outcomes["cut"] += 1
            continue
        if response.status_code == 503:
            assert response.json() == {"detail": "Service unavailable (chaos)"}
            outcomes["503"] += 1
        else:
            assert response.content.count(b"\n") == plan.rows + 1
            outcomes["ok"] += 1
    assert 60 <= outcomes["ok"] <= 140, outcomes
    assert 25 <= outcomes["503"] <= 75 and 25 <= outcomes["cut"] <= 75, outcomes
    assert web.get(f"{server.url}/api/ping").json() == {"status": "ok"}  # never chaotic
    cut = [line for line in server.log_lines() if line.get("chaos") == "cut"]
    assert len(cut) == outcomes["cut"]
    assert not any("Traceback" in json.dumps(line) for line in server.log_lines())


def test_serve_refuses_a_missing_exports_folder(tmp_path):
    from tests.helpers import run_cli

    result = run_cli("serve", "--exports", str(tmp_path / "nope"), "--port", "0")
    assert result.code == 2
    assert result.err.strip() == f"error: --exports {tmp_path / 'nope'}: no such folder"


def test_metadata_rows_follow_what_a_row_is_and_an_unreadable_file_is_said(tmp_path):
    folder = tmp_path / "rows"
    folder.mkdir()
    cases = {  # rows as the counter counts them: any line end, blank lines skipped
        b"\r\npatient_id,event_time,event_type,value\rA1,t1,spo2,1\r\rA2,t2,spo2,2\r": 2,
        b'patient_id,event_type\r\n\r\nA1,x\r\n\nA2,"y\r\nz"\r\n\r': 2,
        b"patient_id,event_type\nA1,x": 1,
        b"patient_id,event_type\n\n\n": 0,
    }
    ids = {}
    for data, rows in cases.items():
        download_id = str(uuid.uuid4())
        (folder / f"{download_id}.csv").write_bytes(data)
        ids[download_id] = rows
    half = str(uuid.uuid4())
    whole = gzip.compress(b"patient_id,event_type\n" + b"A1,x\n" * 100_000)
    (folder / f"{half}.csv.gz").write_bytes(whole[: len(whole) // 2])
    server = TestClient(build_app(tmp_path / "patientkit.db", tmp_path))
    for download_id, rows in ids.items():
        meta = server.get(f"/api/export/rows/{download_id}").json()["data"]
        assert meta["rows"] == rows, download_id
    response = server.get(f"/api/export/rows/{half}")
    assert response.status_code == 500
    assert response.json() == {
        "detail": f"Download cannot be read: {half}.csv.gz: cannot read it to the end: "
        "truncated or corrupt compressed data (Compressed file ended before the "
        "end-of-stream marker was reached)"
    }
    assert server.get("/api/ping").status_code == 200  # still up
