"""`patientkit export …` end to end: real server, real files, exact outcomes."""

import contextlib
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from patientkit.samples.exports import plan_export
from tests.helpers import ROOT, QuietHandler, Server, cli_env, run_cli, stand_in_server

pytestmark = pytest.mark.slow  # long waits: scheduled first (tests/conftest.py)


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
    logged = server.answered()
    chaos = [line for line in logged if line["event"] == "request" and line["chaos"]]
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
    assert result.err == (
        f"error: cannot connect to {url} (connection refused): is the server running? "
        "Start one with `patientkit serve`\n"
    )
    assert "Traceback" not in result.err


def test_unknown_export_is_exit_2(demo_server):
    result = run_cli("export", "aggregate", "nope", "--server", demo_server.url)
    assert result.code == 2
    assert result.out == ""
    assert result.err.strip() == f"error: export 'nope' not found on {demo_server.url} (404)"


@pytest.fixture
def nonsense_server():
    class Handler(QuietHandler):
        def do_GET(self):
            body = b"{this is not json"
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with stand_in_server(Handler) as url:
        yield url


def test_malformed_json_is_exit_2(nonsense_server):
    result = run_cli("export", "aggregate", "demo", "--server", nonsense_server)
    assert result.code == 2
    assert result.err.strip() == (
        f"error: GET {nonsense_server}/api/export/demo: the server answered malformed JSON"
    )


@pytest.fixture(scope="module")
def exports_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An exports folder of this module's tests, each export under a name of one test's
    own (the server reads the folder afresh on each request)."""
    return tmp_path_factory.mktemp("own-exports")


@pytest.fixture(scope="module")
def exports_server(
    exports_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One `patientkit serve --exports exports_root` for the tests that only read their
    own exports from it (not one server each: its start-up is most of such a test)."""
    server = Server(
        tmp_path_factory.mktemp("logs") / "exports-serve.log", "--exports", str(exports_root)
    )
    yield server
    server.stop()


def one_download(root: Path, export_id: str, text: str) -> str:
    """Write an export of one download under root; return the download's id."""
    folder = root / export_id
    folder.mkdir()
    download_id = str(uuid.uuid4())
    (folder / f"{download_id}.csv").write_text(text)
    return download_id


def test_a_download_shorter_than_its_metadata_fails_after_retries(exports_server, exports_root):
    download_id = one_download(exports_root, "short", "patient_id,event_type\nP1,a\nP2,b\n")
    meta = {
        "id": download_id,
        "rows": 3,
        "event_types": ["a", "b"],
        "patients": ["P1", "P2"],
        "start_time": None,
        "end_time": None,
    }
    (exports_root / "short" / f"{download_id}.meta.json").write_text(json.dumps(meta))
    server = exports_server
    result = run_cli("export", "aggregate", "short", "--server", server.url, "--attempts", "2")
    assert result.code == 1
    assert result.out == ""  # partial totals are never printed
    assert result.err.splitlines()[-1] == (
        f"error: download {download_id}: short download: counted 2 of 3 rows (after 2 attempts)"
    )


def test_a_malformed_download_fails_naming_download_and_line(exports_server, exports_root):
    download_id = one_download(exports_root, "bad", "patient_id,event_type\nP1,a\nP2\n")
    server = exports_server
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


# -- what a row is: case 07, locally and over HTTP ----------------------------------------

CASES = ROOT / "tests" / "cases"
CR_CSV = (
    b"patient_id,event_time,event_type,value\rP001,2025-08-26T00:00:02Z,spo2,97\r"
    b"P001,2025-08-26T00:00:03Z,spo2,98\rP002,2025-08-26T00:00:03Z,bp_sys,120\r"
)
CR_REPORT = {
    "patients": {"P001": {"spo2": 2}, "P002": {"bp_sys": 1}},
    "totals": {"bp_sys": 1, "spo2": 2},
}


def test_cr_only_line_ends_count_the_same_locally_over_http_and_in_the_metadata(
    exports_server, exports_root
):
    case = CASES / "07-cr-only-line-ends" / "cr.csv"
    if case.is_file():
        assert case.read_bytes() == CR_CSV
    variants = {
        "cr": CR_CSV,
        "blank": b"\r\n" + CR_CSV.replace(b"\rP002", b"\r\r\n\nP002") + b"\n\r",
        "crlf": CR_CSV.replace(b"\r", b"\r\n"),
    }
    ids = {name: one_download(exports_root, name, "") for name in variants}
    for name, data in variants.items():
        path = exports_root / name / f"{ids[name]}.csv"
        path.write_bytes(data)
        local = run_cli("export", "count", str(path))
        assert (local.code, json.loads(local.out)) == (0, CR_REPORT), (name, local.err)
        piped = run_cli("export", "count", "-", input=gzip.compress(data))
        assert json.loads(piped.out) == CR_REPORT, name
    server = exports_server
    for name in variants:
        url = f"{server.url}/api/export/{name}/{ids[name]}"
        meta = httpx.get(url, verify=server.verify).json()["data"]  # (a bundle loaded once)
        assert meta["rows"] == 3, name
        remote = run_cli("export", "aggregate", name, "--server", server.url, "--attempts", "1")
        assert (remote.code, json.loads(remote.out)) == (0, CR_REPORT), (name, remote.err)


# -- truncated or corrupt input: case 08 ----------------------------------------------------


def truncated_gzip(tmp_path: Path) -> Path:
    case = CASES / "08-truncated-gzip" / "half_export.csv.gz"
    path = tmp_path / "half_export.csv.gz"
    if case.is_file():
        path.write_bytes(case.read_bytes())
    else:
        rows = b"".join(b"P1,t,spo2,%d\n" % i for i in range(200_000))
        whole = gzip.compress(b"patient_id,event_time,event_type,value\n" + rows)
        path.write_bytes(whole[: len(whole) // 2])
    return path


def test_a_truncated_gzip_is_one_line_no_counts_exit_1(tmp_path):
    path = truncated_gzip(tmp_path)
    reason = (
        "cannot read it to the end: truncated or corrupt compressed data "
        "(Compressed file ended before the end-of-stream marker was reached)"
    )
    for args, name in (([str(path)], str(path)), ([str(tmp_path)], str(path)), (["-"], "<stdin>")):
        result = run_cli("export", "count", *args, input=path.read_bytes())
        assert (result.code, result.out) == (1, ""), result.err
        assert result.err.splitlines() == [f"error: {name}: {reason}"]
        debug = run_cli("export", "count", *args, "--debug", input=path.read_bytes())
        assert (debug.code, debug.out) == (1, "")  # a traceback, the same exit code
        assert "Aborted" not in result.err + debug.err
    corrupt = tmp_path / "corrupt.csv.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"not deflate data at all")
    result = run_cli("export", "count", str(corrupt))
    assert (result.code, result.out) == (1, "")
    assert result.err.startswith(f"error: {corrupt}: cannot read it to the end: truncated or")
    assert len(result.err.splitlines()) == 1


def test_a_truncated_gzip_on_the_server_fails_aggregate_in_one_line(
    exports_server, exports_root, tmp_path
):
    download_id = one_download(exports_root, "half", "")
    folder = exports_root / "half"
    (folder / f"{download_id}.csv").unlink()
    truncated_gzip(tmp_path).rename(folder / f"{download_id}.csv.gz")
    server = exports_server
    result = run_cli("export", "aggregate", "half", "--server", server.url, "--attempts", "1")
    assert (result.code, result.out) == (2, "")
    assert result.err.splitlines()[-1].startswith(
        f"error: cannot get GET {server.url}/api/export/half/{download_id}: status 500: "
        f"Download cannot be read: {download_id}.csv.gz: cannot read it to the end: "
        "truncated or corrupt compressed data"
    )


@pytest.fixture
def corrupt_gzip_server():
    """An export server whose one download says it is gzip-encoded and is not."""
    download_id = str(uuid.uuid4())

    class Handler(QuietHandler):
        def do_GET(self):
            data: dict = {"export_ids": ["x"], "id": "x", "download_ids": [download_id]}
            if self.path.endswith(download_id):
                data = {"id": download_id, "rows": 2}
            body = json.dumps({"data": data}).encode()
            headers = {"content-type": "application/json"}
            if self.path.endswith("/data"):
                whole = gzip.compress(b"patient_id,event_type\nP1,a\nP2,b\n")
                body = whole[:10] + b"\xff" * 20  # a gzip header, then no deflate data
                headers = {"content-encoding": "gzip"}
            self.send_response(200)
            for name, value in {**headers, "content-length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    with stand_in_server(Handler) as url:
        yield url, download_id


def test_a_download_that_fails_to_decode_fails_aggregate_in_one_line(corrupt_gzip_server):
    url, download_id = corrupt_gzip_server
    result = run_cli("export", "aggregate", "x", "--server", url, "--attempts", "1")
    assert (result.code, result.out) == (1, ""), result.err
    assert result.err.splitlines()[-1].startswith(
        f"error: download {download_id}: cannot decode it, truncated or corrupt"
    )
    assert "Traceback" not in result.err and "internal error" not in result.err


# -- interrupts and reruns: case 10 ----------------------------------------------------------


def children(pid: int) -> list[int]:
    """The living child processes of pid, from /proc."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cpu_seconds(pid: int) -> float:
    """The CPU time process pid has used (user and system, /proc; 0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def interrupt(args: list[str], busy: float, twice: float | None = None) -> tuple:
    """Run the CLI in its own process group and press Ctrl-C there (SIGINT to the whole
    group, as a terminal does) once its worker processes appeared and one of them has
    used `busy` CPU seconds: 0 as the pool starts, more mid-task (a forked worker spends
    its CPU on its task, so this is the moment whatever the machine's speed or load,
    and no counting is paid for past it); again `twice` seconds later.
    Returns (exit code, stderr, seconds from the first Ctrl-C to the exit, workers seen)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "patientkit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**cli_env(), "COLUMNS": "200"},
        start_new_session=True,
    )
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 30
        while not seen or max(map(cpu_seconds, seen)) < busy:
            assert process.poll() is None, "the command ended before its Ctrl-C"
            assert time.monotonic() < deadline, "no pool started" if not seen else "stalled"
            seen.update(children(process.pid))
            time.sleep(0.005)
        seen.update(children(process.pid))
        assert process.poll() is None, "the command ended before its Ctrl-C"
        os.killpg(process.pid, signal.SIGINT)
        pressed = time.monotonic()
        if twice is not None:
            time.sleep(twice)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=20)
        took = time.monotonic() - pressed
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    time.sleep(0.1)
    return process.returncode, err.decode(), took, seen


def assert_interrupted(result: tuple, line: str) -> None:
    code, err, took, seen = result
    assert code == 130, err
    assert err.splitlines() == [f"error: interrupted: {line}"], err
    assert took < 3, took
    assert not [pid for pid in seen if alive(pid)], "worker processes left behind"


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 220 MB of export CSV (5.2 M rows, some 1.3 s to count on two idle cores, in
    2026; pieces of 13.75 MB, 16 of them): a Ctrl-C at PAST_A_PIECE still lands with
    most of the count to do."""
    folder = tmp_path_factory.mktemp("big") / "big"
    folder.mkdir()
    block = b"".join(
        b"P%03d,2025-08-26T00:00:00.000000Z,spo2,97\n" % (i % 7) for i in range(10_000)
    )
    for _ in range(4):
        with (folder / f"{uuid.uuid4()}.csv").open("wb") as out:
            out.write(b"patient_id,event_time,event_type,value\n")
            for _ in range(130):
                out.write(block)
    return folder


@pytest.fixture(scope="module")
def big_export(big_folder: Path, exports_root: Path) -> str:
    """The export `big` of exports_root: `big_folder`'s downloads (hard links) with the
    metadata the server would otherwise scan 5.2 M rows for (seconds of CPU, none of it
    what the Ctrl-C tests test). Returns its id."""
    folder = exports_root / "big"
    folder.mkdir()
    for path in big_folder.glob("*.csv"):
        os.link(path, folder / path.name)
        meta = {
            "id": path.stem,
            "rows": 130 * 10_000,
            "event_types": ["spo2"],
            "patients": [f"P{i:03d}" for i in range(7)],
            "start_time": "2025-08-26T00:00:00.000000Z",
            "end_time": "2025-08-26T00:00:00.000000Z",
        }
        (folder / f"{path.stem}.meta.json").write_text(json.dumps(meta))
    return folder.name


# The moments of a Ctrl-C, as CPU seconds a worker has used (interrupt's `busy`): 0, as the
# pool starts; MID_TASK, into its first task; later, for count PAST_A_PIECE (a piece's
# result back at the parent and the next piece counting: a piece of big_folder is some
# 0.16 CPU-s), for aggregate and generate INTO_A_DOWNLOAD (deeper into its first download,
# of some 1 s). Fixed delays after the start were these moments on an
# idle machine (pool, 0.3 and 0.6 s after it; generate: 1.0 s after the process began),
# with two cores working until then.
MID_TASK, PAST_A_PIECE, INTO_A_DOWNLOAD = 0.05, 0.25, 0.15


@pytest.mark.parametrize(
    ("busy", "twice"),
    # a second Ctrl-C well after the first (while the pool is stopped and the command
    # exits) is the aggregate's (MID_TASK, 0.2) and the generate's (INTO_A_DOWNLOAD, 0.5):
    # the same `interruptible` and WorkerPool
    [(0.0, None), (MID_TASK, 0.05), (PAST_A_PIECE, None)],
)
def test_ctrl_c_ends_export_count_at_once(big_folder, busy, twice):
    result = interrupt(["export", "count", str(big_folder), "--workers", "2"], busy, twice)
    assert_interrupted(result, "nothing was counted")
    assert result[3], "the test never saw the worker processes"


@pytest.mark.parametrize(("busy", "twice"), [(0.0, None), (MID_TASK, 0.2), (INTO_A_DOWNLOAD, None)])
def test_ctrl_c_ends_export_aggregate_at_once(exports_server, big_export, busy, twice):
    server = exports_server
    args = ["export", "aggregate", big_export, "--server", server.url, "--concurrency", "2"]
    assert_interrupted(interrupt(args, busy, twice), "nothing was counted")


@pytest.mark.parametrize(
    ("busy", "twice"),
    # each moment and each wait for a second Ctrl-C once: one Ctrl-C INTO_A_DOWNLOAD alone
    # is the aggregate's, and here the first of (INTO_A_DOWNLOAD, 0.5) (its second comes
    # as the command exits, or after it)
    [(0.0, None), (MID_TASK, 0.1), (INTO_A_DOWNLOAD, 0.5)],
)
def test_ctrl_c_ends_export_generate_and_leaves_a_folder_count_refuses(tmp_path, busy, twice):
    result = interrupt(["export", "generate", "small", str(tmp_path)], busy, twice)
    assert_interrupted(result, "run the same command again to finish the folder")
    folder = tmp_path / "small"
    assert not list(folder.glob(".*")), "temporary files left behind"
    metas = sorted(folder.glob("*.meta.json"))
    assert len(metas) == 10  # the folder says what it should hold
    missing = [m.name.replace(".meta.json", ".csv") for m in metas]
    missing = [name for name in missing if not (folder / name).exists()]
    assert missing
    count = run_cli("export", "count", str(folder))
    assert (count.code, count.out) == (1, "")
    assert count.err.startswith(f"error: {folder}: incomplete export, nothing counted: ")
    assert f"{missing[0]} (missing)" in count.err
    assert len(count.err.splitlines()) == 1


def test_a_rerun_completes_an_interrupted_folder_and_count_checks_every_file(tmp_path):
    first = run_cli("export", "generate", "demo", str(tmp_path), "--seed", "5")
    assert first.code == 0, first.err
    folder = tmp_path / "demo"
    whole = {p.name: p.read_bytes() for p in folder.iterdir()}
    one, two = sorted(p for p in whole if p.endswith(".csv"))
    # what an interrupted run leaves: one download never written, another half written
    (folder / one).unlink()
    (folder / f".{two}.tmp").write_bytes(whole[two][:1000])
    (folder / two).unlink()
    refused = run_cli("export", "count", str(folder))
    assert (refused.code, refused.out) == (1, "")
    assert refused.err.strip() == (
        f"error: {folder}: incomplete export, nothing counted: {one} (missing), {two} "
        f"(partial: .{two}.tmp was never finished) (run `export generate` or the download "
        "again)"
    )
    rerun = run_cli("export", "generate", "demo", str(tmp_path), "--seed", "5")
    assert rerun.code == 0, rerun.err  # our own temporary files are not foreign downloads
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == whole
    counted = run_cli("export", "count", str(folder))
    assert counted.code == 0, counted.err
    assert sum(json.loads(counted.out)["totals"].values()) == json.loads(first.out)["rows"]
    # a download cut short but renamed into place: its rows differ from its metadata
    (folder / two).write_bytes(whole[two][: len(whole[two]) // 2].rsplit(b"\n", 1)[0] + b"\n")
    rows = whole[two][: len(whole[two]) // 2].rsplit(b"\n", 1)[0].count(b"\n")
    meta = json.loads(whole[two.replace(".csv", ".meta.json")])
    for args in ([str(folder)], [str(folder / two)]):
        short = run_cli("export", "count", *args)
        assert (short.code, short.out) == (1, "")
        assert short.err.strip() == (
            "error: download does not match its metadata, nothing counted (partial or "
            f"changed?): {folder / two} (counted {rows:,} rows, its metadata says "
            f"{meta['rows']:,})"
        )


def test_a_ctrl_c_after_one_a_finalizer_swallowed_still_ends_the_export(capsys):
    """The first Ctrl-C of an export lands in a `__del__` (CPython swallows what it
    raises there): it is noted, not printed, and the next Ctrl-C ends the job (before,
    every later one was ignored and the export ran to its end with exit 0)."""
    import typer

    from patientkit.cli.export import interruptible
    from patientkit.core import interrupts

    class InterruptedWhileCollected:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGINT)  # the handler runs here, inside __del__

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with (
            interrupts.catching_lost(),
            pytest.raises(typer.Exit) as ended,
            interruptible("nothing was counted"),
        ):
            InterruptedWhileCollected()
            assert "Exception ignored" not in capsys.readouterr().err
            signal.raise_signal(signal.SIGINT)
            raise AssertionError("the second Ctrl-C was ignored")
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    assert ended.value.exit_code == 130
    assert capsys.readouterr().err == "error: interrupted: nothing was counted\n"
