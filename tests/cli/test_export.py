"""`patientkit export …` end to end: real server, real files, exact outcomes."""

import gzip
import json
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from patientkit.generate import plan_export
from tests.conftest import ROOT, run_cli


def demo_report(exports_dir: Path) -> dict:
    result = run_cli("export", "count", str(exports_dir / "demo"))
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_list_mirrors_the_api(demo_server):
    result = run_cli("export", "list", "--server", demo_server.url)
    assert result.code == 0
    assert json.loads(result.out) == {"export_ids": ["demo"]}


def test_aggregate_equals_local_count_and_writes_the_file(demo_server, exports_dir, tmp_path):
    out = tmp_path / "demo.json"
    result = run_cli("export", "aggregate", "demo", "--server", demo_server.url, "-o", str(out))
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report == demo_report(exports_dir)
    assert json.loads(out.read_text()) == report
    assert sum(report["totals"].values()) == sum(p.rows for p in plan_export("demo", 0))
    for event, total in report["totals"].items():
        assert total == sum(counts.get(event, 0) for counts in report["patients"].values())


def test_server_comes_from_the_environment(demo_server):
    result = run_cli("export", "list", env={"PATIENTKIT_SERVER": demo_server.url})
    assert result.code == 0 and json.loads(result.out) == {"export_ids": ["demo"]}


def test_aggregate_under_chaos_equals_a_clean_run(serve, exports_dir):
    server = serve("--exports", str(exports_dir), "--chaos", "0.3", "--chaos-seed", "5")
    clean = demo_report(exports_dir)
    for _ in range(4):
        result = run_cli("export", "aggregate", "demo", "--server", server.url, "--attempts", "12")
        assert result.code == 0, result.err
        assert json.loads(result.out) == clean
    chaos = [line for line in server.log_lines() if line["event"] == "request" and line["chaos"]]
    assert {line["chaos"] for line in chaos} == {"503", "cut"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_is_one_line_and_exit_2():
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli("export", "aggregate", "demo", "--server", url, "--attempts", "2")
    assert result.code == 2
    assert result.out == ""
    assert result.err.splitlines()[-1] == (
        f"error: cannot get GET {url}/api/export/demo: "
        "connection refused or unreachable (after 2 attempts)"
    )
    assert "Traceback" not in result.err


def test_unknown_export_is_exit_2(demo_server):
    result = run_cli("export", "aggregate", "nope", "--server", demo_server.url)
    assert result.code == 2
    assert result.out == ""
    assert result.err.strip() == f"error: export 'nope' not found on {demo_server.url} (404)"


@pytest.fixture
def nonsense_server():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"{this is not json"
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_malformed_json_is_exit_2(nonsense_server):
    result = run_cli("export", "aggregate", "demo", "--server", nonsense_server)
    assert result.code == 2
    assert result.err.strip() == (
        f"error: GET {nonsense_server}/api/export/demo: the server answered malformed JSON"
    )


def one_download(root: Path, export_id: str, text: str) -> str:
    """Write an export of one download under root; return the download's id."""
    folder = root / export_id
    folder.mkdir()
    download_id = str(uuid.uuid4())
    (folder / f"{download_id}.csv").write_text(text)
    return download_id


def test_a_download_shorter_than_its_metadata_fails_after_retries(serve, tmp_path):
    download_id = one_download(tmp_path, "short", "patient_id,event_type\nP1,a\nP2,b\n")
    meta = {
        "id": download_id,
        "rows": 3,
        "event_types": ["a", "b"],
        "patients": ["P1", "P2"],
        "start_time": None,
        "end_time": None,
    }
    (tmp_path / "short" / f"{download_id}.meta.json").write_text(json.dumps(meta))
    server = serve("--exports", str(tmp_path))
    result = run_cli("export", "aggregate", "short", "--server", server.url, "--attempts", "2")
    assert result.code == 1
    assert result.out == ""  # partial totals are never printed
    assert result.err.splitlines()[-1] == (
        f"error: download {download_id}: short download: counted 2 of 3 rows (after 2 attempts)"
    )


def test_a_malformed_download_fails_naming_download_and_line(serve, tmp_path):
    download_id = one_download(tmp_path, "bad", "patient_id,event_type\nP1,a\nP2\n")
    server = serve("--exports", str(tmp_path))
    result = run_cli("export", "aggregate", "bad", "--server", server.url)
    assert result.code == 1
    assert result.err.strip() == f"error: bad/{download_id}:3: expected 2 fields, found 1"


def test_count_files_folders_gzip_and_stdin(exports_dir, tmp_path):
    report = demo_report(exports_dir)
    files = sorted((exports_dir / "demo").glob("*.csv"))
    zipped = tmp_path / "one.csv.gz"
    zipped.write_bytes(gzip.compress(files[0].read_bytes()))
    mixed = run_cli("export", "count", str(zipped), "-", input=files[1].read_bytes())
    assert mixed.code == 0, mixed.err
    assert json.loads(mixed.out) == report
    piped = run_cli("export", "count", "-", input=gzip.compress(files[0].read_bytes()))
    assert json.loads(piped.out) == json.loads(run_cli("export", "count", str(files[0])).out)


def test_count_reports_bad_rows_and_missing_files(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,event_type\nP1,a\nP2,b,c\n")
    result = run_cli("export", "count", str(bad))
    assert (result.code, result.out) == (1, "")
    assert result.err.strip() == f"error: {bad}:3: expected 2 fields, found 3"
    missing = run_cli("export", "count", str(tmp_path / "none.csv"))
    assert missing.code == 2
    assert missing.err.strip() == f"error: {tmp_path / 'none.csv'}: no such file or folder"


def test_generate_is_deterministic_and_refuses_foreign_files(tmp_path):
    first = run_cli("export", "generate", "demo", str(tmp_path / "a"), "--seed", "3")
    assert first.code == 0, first.err
    assert json.loads(first.out)["downloads"] == 2
    run_cli("export", "generate", "demo", str(tmp_path / "b"), "--seed", "3")
    files_a = sorted((tmp_path / "a" / "demo").iterdir())
    files_b = sorted((tmp_path / "b" / "demo").iterdir())
    assert [f.name for f in files_a] == [f.name for f in files_b]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(files_a, files_b, strict=True))
    other = run_cli("export", "generate", "demo", str(tmp_path / "a"), "--seed", "4")
    assert other.code == 2
    assert "already holds 2 downloads that seed 4 does not make" in other.err


def test_generated_rows_look_real(exports_dir):
    plans = plan_export("demo", 0)
    assert {p for plan in plans for p in plan.patients} == {"P001", "P002", "P003", "P004"}
    for plan in plans:
        assert 5_000 <= plan.rows <= 10_000
        lines = (exports_dir / "demo" / f"{plan.download_id}.csv").read_text().splitlines()
        assert lines[0] == "patient_id,event_time,event_type,value"
        patient, when, event, value = lines[1].split(",")
        assert patient in plan.patients and event in ("bp_sys", "bp_dia")
        assert len(when) == len("2025-08-26T00:00:02.760570Z") and when.endswith("Z")
        assert 58 <= int(value) <= 165
        times = [line.split(",")[1] for line in lines[1:]]
        assert times == sorted(times)


def test_outputs_demo_json_is_current(exports_dir):
    assert json.loads((ROOT / "outputs" / "demo.json").read_text()) == demo_report(exports_dir)
