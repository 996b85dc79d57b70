"""`export aggregate --scheduler`: the same answers as local aggregation, from a real Dask
scheduler and two `dask worker --no-nanny` processes, the export from a real
`patientkit serve` (SPEC.md Scale-out); failures injected by `serve --chaos` and by
SIGKILLing a worker mid-run; the cluster's errors as one line each, exit 2."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from functools import cache
from pathlib import Path

import pytest

from tests.cli.test_progress import ROWS, frames, read_for
from tests.cluster.conftest import BULK_DOWNLOADS, scheduler_here
from tests.helpers import ROOT, Result, cli_env, run_cli

pytestmark = pytest.mark.slow  # long waits: scheduled first (tests/conftest.py)


def on_cluster(scheduler: str, server_url: str, *args: str, **kwargs):
    """`export aggregate ARGS --server SERVER_URL --scheduler SCHEDULER` (an address)."""
    return run_cli(
        "export", "aggregate", *args, "--server", server_url, "--scheduler", scheduler, **kwargs
    )  # fmt: skip


@cache
def local_count(folder: Path) -> dict:
    """`export count FOLDER`: the local answer (once a folder: its files do not change)."""
    done = run_cli("export", "count", str(folder), "--workers", "1")
    assert done.code == 0, done.err
    return done.json()  # type: ignore[return-value]


def data_requests(server) -> int:
    return sum(
        1
        for line in server.answered()
        if line.get("event") == "request" and str(line.get("route", "")).endswith("/data")
    )


def test_demo_equals_the_local_count_in_every_format(cluster, demo_server, exports_dir, tmp_path):
    done = on_cluster(cluster.address, demo_server.url, "demo", "-o", str(tmp_path / "demo.json"))
    assert done.code == 0, done.err
    assert done.json() == local_count(exports_dir / "demo")
    assert json.loads((tmp_path / "demo.json").read_text()) == done.json()
    assert "counted 13,698 rows" in done.err
    local = run_cli("export", "aggregate", "demo", "--server", demo_server.url, "--format", "csv")
    remote = run_cli(  # the scheduler from the environment
        "export", "aggregate", "demo", "--server", demo_server.url, "--format", "csv",
        env={"PATIENTKIT_SCHEDULER": cluster.address},
    )  # fmt: skip
    assert (remote.code, remote.out) == (0, local.out)
    assert local.out.startswith("patient_id,event_type,count\n")


def test_under_chaos_equals_a_clean_run(cluster, serve, bulk_server):
    """`serve --chaos 0.3`: 503s and downloads cut short, on the workers' requests too;
    each failed attempt is retried from the start and the totals are exact. The seed fixes
    which requests fail, in the order they arrive (a random draw each): with seed 6, of the
    client's requests for the metadata the 4th gets a 503 and the 10th is cut, then the
    2nd, 5th and 9th data requests are cut, get a 503, are cut: both kinds on both sides,
    and never the long backoff of one download failing five times in a row (seconds)."""
    server = serve("--exports", str(bulk_server.root), "--chaos", "0.3", "--chaos-seed", "6")
    done = on_cluster(cluster.address, server.url, "many", "--attempts", "20")
    assert done.code == 0, done.err
    assert done.json() == local_count(bulk_server.root / "many")
    hit = [
        line["chaos"]
        for line in server.log_lines()
        if line.get("event") == "request" and line["chaos"] and line["route"].endswith("/data")
    ]
    assert hit, "chaos failed no download"
    assert "on worker tcp://127.0.0.1:" in done.err  # the retries, with where they failed


def test_bulk_equals_the_local_count_and_its_progress_reaches_the_terminal(cluster, bulk_server):
    """The bulk export on the cluster, its progress on a terminal (stderr: a pty's, in
    this process, drained by a thread meanwhile; not a process of its own, which imported
    distributed again, 0.5 CPU-s) and its JSON on stdout: the local count's, and rows
    shown as they came in."""
    main, child = pty.openpty()
    screen = bytearray()
    done_reading = threading.Event()

    def drain() -> None:
        while not done_reading.is_set():
            screen.extend(read_for(main, 0.1))
        screen.extend(read_for(main, 0.2))

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        done = run_cli(
            "export", "aggregate", "bulk", "--server", bulk_server.url,
            "--scheduler", cluster.address, terminal=child,
        )  # fmt: skip
    finally:
        done_reading.set()
        reader.join(timeout=30)
        os.close(child)
        os.close(main)
    assert done.code == 0
    expected = local_count(bulk_server.root / "bulk")
    assert json.loads(done.out) == expected
    assert sum(expected["totals"].values()) == BULK_DOWNLOADS * 199_995 + sum(range(BULK_DOWNLOADS))
    total = sum(json.loads(done.out)["totals"].values())
    found = [m for f in frames(bytes(screen)) if (m := ROWS.search(f))]
    shown = [int(m.group(1).replace(",", "")) for m in found]
    assert any(0 < rows < total for rows in shown), shown  # rows came in while counting
    assert max(shown) <= total  # never more than there are
    assert {m.group(2) for m in found} == {f"{total:,}"}  # out of the rows expected


def test_ctrl_c_cancels_the_tasks_and_exits_130(cluster, bulk_server):
    """A SIGINT to the process running the command (this one: run_cli, whose handlers the
    command sets; not a process of its own, which imported distributed again, 0.5 CPU-s)
    once its tasks are on the cluster. A SIGINT that came after the command ended is
    swallowed here, not pytest's KeyboardInterrupt: the command then exited 0 and the test
    fails."""
    sent: list[bool] = []

    def interrupt_once_processing() -> None:
        deadline = time.monotonic() + 60
        while not any(cluster.client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)
        sent.append(True)

    late: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: late.append(signum))
    try:
        watcher = threading.Thread(target=interrupt_once_processing, daemon=True)
        watcher.start()
        done = on_cluster(cluster.address, bulk_server.url, "bulk")
        watcher.join(timeout=60)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sent and not late, "the Ctrl-C came after the command ended"
    assert done.code == 130, done.err
    assert done.out == ""
    assert done.err.strip().splitlines()[-1] == "error: interrupted: nothing was counted"
    deadline = time.monotonic() + 10
    while any(cluster.client.processing().values()):  # cancelled: none left on the cluster
        assert time.monotonic() < deadline, cluster.client.processing()
        time.sleep(0.1)


def test_workers_that_cannot_reach_the_export_server(cluster, demo_server):
    """A URL only the client can reach: this port takes one connection (the client's
    metadata requests, kept alive) and then listens no more."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    target = demo_server.url.removeprefix("http://").split(":")

    def relay_once() -> None:
        inside, _ = listener.accept()
        listener.close()
        outside = socket.create_connection((target[0], int(target[1])))

        def pipe(a: socket.socket, b: socket.socket) -> None:
            with contextlib.suppress(OSError):  # the other direction closed `a` first
                while data := a.recv(65536):
                    b.sendall(data)
            b.close()

        threading.Thread(target=pipe, args=(outside, inside), daemon=True).start()
        pipe(inside, outside)

    threading.Thread(target=relay_once, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    done = on_cluster(cluster.address, url, "demo", "--attempts", "2")
    assert done.code == 2, done.err
    assert done.out == ""
    [line] = [line for line in done.err.splitlines() if line.startswith("error:")]
    assert line.startswith("error: worker tcp://127.0.0.1:")
    assert line.endswith(
        f"cannot reach the export server {url} (Connection refused, 2 attempts): --server "
        "must be a URL that the Dask workers can reach"
    )


def test_no_scheduler_is_one_line(demo_server):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{free.getsockname()[1]}"
    started = time.monotonic()
    done = on_cluster(address, demo_server.url, "demo", "--scheduler-timeout", "30")
    assert time.monotonic() - started < 10  # at once: not after the timeout
    assert (done.code, done.out) == (2, "")
    assert done.err == (
        f"error: cannot connect to the Dask scheduler {address} (connection refused): is it "
        "running? Start one with `dask scheduler`\n"
    )


def test_not_a_scheduler_address(demo_server):
    done = on_cluster("http://127.0.0.1:8786", demo_server.url, "demo")
    assert (done.code, done.out) == (2, "")
    assert done.err == (
        "error: --scheduler 'http://127.0.0.1:8786' is not a Dask scheduler address "
        "(expected tcp://HOST:PORT, as `dask scheduler` prints)\n"
    )


def test_no_workers_then_a_worker_of_another_version(cluster, demo_server, tmp_path):
    """A scheduler alone: the bounded wait, then one line. Then a worker whose patientkit
    says another version (a dist-info ahead of ours on its path): one line. (That worker
    is one of the module's, the dist-info put first on its sys.path for this run and
    taken off after: no third worker process to start.)"""
    with scheduler_here() as address:
        done = on_cluster(address, demo_server.url, "demo", "--scheduler-timeout", "0.2")
        assert (done.code, done.out) == (2, "")
        assert done.err == (
            f"error: the Dask scheduler {address} has no workers (waited 0.2s): start some with "
            f"`dask worker {address}`\n"
        )
    fake = tmp_path / "fake" / "patientkit-9.9.9.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: patientkit\nVersion: 9.9.9\n")
    address = cluster.address
    [other, *_] = cluster.worker_addresses()
    path = str(fake.parent)
    cluster.client.run(exec, f"import sys; sys.path.insert(0, {path!r})", workers=[other])
    try:
        done = on_cluster(address, demo_server.url, "demo", "--scheduler-timeout", "60")
        assert (done.code, done.out) == (2, ""), done.err
        [line] = done.err.splitlines()
        assert line.startswith(
            f"error: version mismatch on the Dask cluster {address}: worker {other} has "
        )
        assert line.endswith(
            " has patientkit 9.9.9 (here 0.1.0); install the same versions on every worker "
            "(pip install 'patientkit[dask]==0.1.0')"
        )
    finally:
        cluster.client.run(exec, f"import sys; sys.path.remove({path!r})", workers=[other])


def test_without_the_dask_extra(demo_server):
    """distributed not importable (None in sys.modules: any import of it raises
    ImportError): the install line, exit 2; and it is never imported without --scheduler.
    Both commands run in one child process of their own (`run_cli` there), not in this
    one, whose Dask scheduler and client threads import parts of distributed as they go."""
    with_scheduler = ["--scheduler", "tcp://127.0.0.1:8786"]
    local = ["--concurrency", "1"]
    code = (
        f"import sys, json; sys.modules['distributed'] = None; sys.path.insert(0, {str(ROOT)!r}); "
        "from tests.helpers import run_cli; "
        f"runs = [run_cli('export', 'aggregate', 'demo', '--server', {demo_server.url!r}, *a) "
        f"for a in ({with_scheduler!r}, {local!r})]; "
        "print(json.dumps([vars(r) for r in runs]))"
    )
    child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=60
    )
    assert child.returncode == 0, child.stderr
    done, local_run = (Result(**r) for r in json.loads(child.stdout.splitlines()[-1]))
    assert (done.code, done.out) == (2, "")
    assert done.err == (
        "error: --scheduler needs Dask's distributed, which is not installed: "
        "pip install 'patientkit[dask]'\n"
    )
    assert local_run.code == 0, local_run.err


def test_bad_downloads_fail_as_they_do_locally(cluster, bulk_server):
    """A download shorter than its metadata (retried, then exit 1) and one with a
    malformed row (exit 1 at once, file and line): the same last line as local, no
    output. (Exports of this test's own, `short` and `bad`, added to the bulk server's.)"""
    short, bad = str(uuid.uuid4()), str(uuid.uuid4())
    root = bulk_server.root
    (root / "short").mkdir()
    (root / "short" / f"{short}.csv").write_text("patient_id,event_type\nP1,a\nP2,b\n")
    meta = {"id": short, "rows": 3, "event_types": ["a", "b"], "patients": ["P1", "P2"],
            "start_time": None, "end_time": None}  # fmt: skip
    (root / "short" / f"{short}.meta.json").write_text(json.dumps(meta))
    (root / "bad").mkdir()
    (root / "bad" / f"{bad}.csv").write_text("patient_id,event_type\nP1,a\nP2\n")
    server = bulk_server
    for export_id, last in [
        (
            "short",
            f"error: download {short}: short download: counted 2 of 3 rows (after 2 attempts)",
        ),
        ("bad", f"error: bad/{bad}:3: expected 2 fields, found 1"),
    ]:
        local = run_cli("export", "aggregate", export_id, "--server", server.url, "--attempts", "2")
        remote = on_cluster(cluster.address, server.url, export_id, "--attempts", "2")
        for done in (local, remote):
            assert (done.code, done.out) == (1, ""), done.err
            assert done.err.splitlines()[-1] == last


class HoldingRelay:
    """A TCP relay to a server at `url`, for the CLI's and the workers' requests: the
    answer to the first download request that passes it (`GET .../DOWNLOAD_ID/data`) is
    forwarded up to `hold_after` bytes and then held until `release()`, the connection
    closed then; every other connection is relayed whole. `holding` is set once that
    download is held, `held` is its id. A download stopped mid-way for as long as a test
    needs: its worker is still counting it however loaded the machine is."""

    def __init__(self, url: str, hold_after: int) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.hold_after = hold_after
        self.held = ""
        self.holding = threading.Event()
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed
            while True:
                inside, _ = self.listener.accept()
                outside = socket.create_connection(self.target)
                claimed = threading.Event()  # this connection carries the held download
                args = (inside, outside, claimed)
                threading.Thread(target=self._requests, args=args, daemon=True).start()
                threading.Thread(target=self._answers, args=args, daemon=True).start()

    def _requests(self, inside: socket.socket, outside: socket.socket, claimed) -> None:
        with contextlib.suppress(OSError):
            while data := inside.recv(65536):
                if b"/data " in data and not claimed.is_set():
                    with self.lock:
                        if not self.held:  # the first download request: hold its answer
                            path = data.split(b" ", 2)[1].decode()
                            self.held = path.split("/")[-2]
                            claimed.set()
                outside.sendall(data)
        with contextlib.suppress(OSError):
            outside.shutdown(socket.SHUT_WR)

    def _answers(self, inside: socket.socket, outside: socket.socket, claimed) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := outside.recv(65536):
                if claimed.is_set():
                    if sent + len(data) >= self.hold_after:
                        inside.sendall(data[: self.hold_after - sent])
                        self.holding.set()
                        self.released.wait(60)
                        break
                    sent += len(data)
                inside.sendall(data)
        for end in (inside, outside):
            end.close()

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.release()
        self.listener.close()


def test_a_worker_killed_mid_run_is_counted_once(cluster, bulk_server):
    """SIGKILL the worker counting a download, mid-download: Dask re-runs its task on the
    other worker; the totals are still exact. (The command runs in this process, its
    requests through a relay that holds the first download after 6 MB of its 8.7: a
    thread waits for that download's progress on the cluster and kills its worker, then
    lets the relay go on. Last in the module: no test after it waits for a new worker.)"""
    before = data_requests(bulk_server)
    old_topics = set(cluster.client.get_events())  # of earlier runs
    relay = HoldingRelay(bulk_server.url, hold_after=6 << 20)  # past a progress event (4 MB)
    victims: list[str] = []

    def kill_the_worker_of_the_held_download() -> None:
        deadline = time.monotonic() + 60
        relay.holding.wait(60)
        while relay.holding.is_set() and not victims and time.monotonic() < deadline:
            for topic, events in cluster.client.get_events().items():
                if topic.startswith("patientkit-progress-") and topic not in old_topics:
                    mine = [event[1][4] for event in events if event[1][0] == relay.held]
                    if mine:
                        victims.append(mine[0])  # the worker of the held download
                        break
            else:
                time.sleep(0.02)
        if victims:
            pids = cluster.client.run(os.getpid, workers=victims[:1])
            os.kill(pids[victims[0]], signal.SIGKILL)
        relay.release()

    killer = threading.Thread(target=kill_the_worker_of_the_held_download, daemon=True)
    killer.start()
    try:
        done = on_cluster(cluster.address, relay.url, "bulk")
        killer.join(timeout=60)
        assert victims, "no download started"
        assert done.code == 0, done.err
        assert done.json() == local_count(bulk_server.root / "bulk")
        # each download once, and the killed one again
        assert data_requests(bulk_server) - before == BULK_DOWNLOADS + 1
    finally:
        relay.close()
        killer.join(timeout=60)  # the next test of the cluster starts another worker
