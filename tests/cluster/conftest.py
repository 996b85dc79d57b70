"""A real Dask cluster for the cluster tests: a Dask scheduler on 127.0.0.1 and `dask
worker --no-nanny` processes, started once per module; and a bulk export big enough that
a download takes a moment to count (a worker can be killed in the middle).

The scheduler is distributed's own `Scheduler`, the one `dask scheduler` runs, served over
TCP from this process (`scheduler_here`): the CLI and the workers reach it at its
tcp:// address as they would a `dask scheduler` process, without a second interpreter
importing distributed (half a CPU-second to start). The workers stay processes: they are
killed. Each costs about 2.3 CPU-seconds to start (importing distributed): the module
starts two, and a test needing another version of patientkit on a worker gives one of
them a dist-info first on its path for a run rather than starting a third."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Server, cli_env

if importlib.util.find_spec("distributed") is None:  # imported where used: seconds of import
    pytest.skip("could not import 'distributed' (the dask extra)", allow_module_level=True)

WORKER = [sys.executable, "-m", "distributed.cli.dask_worker"]

# Dask's own instruments, sampling at rest: the statistical profiler (every 10 ms), the
# event loop's tick monitor (20 ms), the system monitor (500 ms) and the worker's memory
# monitor (100 ms) kept an idle worker at 3% of a core and the scheduler at 1.6%. Nothing
# the tests check reads them: the profiler is off, the rest sample once a second or less.
QUIET = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.monitor-interval": "1s",
}
QUIET_ENV = {
    "DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(value)
    for key, value in QUIET.items()
}


@contextlib.contextmanager
def scheduler_here() -> Iterator[str]:
    """A Dask scheduler in this process (distributed's `Scheduler` on its own event loop
    thread, no workers, no dashboard, QUIET as it starts) on a free loopback TCP port, its
    few HTTP routes on another (not on 8787: two run at once); yields its address."""
    import distributed

    import dask

    with dask.config.set(QUIET):  # read as it starts
        local = distributed.LocalCluster(
            n_workers=0,
            processes=False,
            protocol="tcp",
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # its HTTP routes: any port
        )
    with local:
        yield local.scheduler_address


def start_worker(folder: Path, address: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A single-threaded `dask worker --no-nanny` (SIGKILL ends it for good), QUIET."""
    name = uuid.uuid4().hex[:6]
    return subprocess.Popen(
        [
            *WORKER,
            address,
            "--no-nanny",
            "--nthreads",
            "1",
            "--host",
            "127.0.0.1",
            "--no-dashboard",
            "--local-directory",
            str(folder / f"worker-{name}"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=(folder / f"worker-{name}.log").open("wb"),
        cwd=folder,
        env={**cli_env(), **QUIET_ENV, **(env or {})},
    )


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Cluster:
    """A scheduler and its workers; `client` is the tests' own view of it."""

    def __init__(self, folder: Path, workers: int) -> None:
        self.folder = folder
        self.size = workers
        self.stack = contextlib.ExitStack()
        self.address = self.stack.enter_context(scheduler_here())
        self.workers = [start_worker(folder, self.address) for _ in range(workers)]
        import distributed

        self.client = distributed.Client(self.address, set_as_default=False, timeout=30)
        self.wait_for(workers)

    def wait_for(self, n: int, timeout: float = 60) -> None:
        """Until exactly n workers are known to the scheduler."""
        deadline = time.monotonic() + timeout
        while len(self.worker_addresses()) != n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not reach {n} workers")
            time.sleep(0.1)

    def worker_addresses(self) -> list[str]:
        """The workers the scheduler knows, asked of it now. (Not `client.scheduler_info()`:
        it returns the client's cached identity, which the client's own periodic update
        rewrites without workers every 2 s; caught between its fetch and its return, under
        load, it said the cluster had none.)"""
        return sorted(self.client.nthreads())

    def add_worker(self) -> None:
        self.workers.append(start_worker(self.folder, self.address))

    def refill(self) -> None:
        """Back to `size` workers: the ended ones reaped, as many new ones started, until
        the scheduler knows exactly that many (at once when none ended)."""
        self.workers = [worker for worker in self.workers if worker.poll() is None]
        for _ in range(self.size - len(self.workers)):
            self.add_worker()
        self.wait_for(self.size)

    def close(self) -> None:
        self.client.close()
        for worker in self.workers:
            stop(worker)
        self.stack.close()


@pytest.fixture(scope="module")
def running_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster(tmp_path_factory.mktemp("dask"), workers=2)
    yield running
    running.close()


@pytest.fixture
def cluster(running_cluster: Cluster) -> Cluster:
    """Two single-threaded worker processes and their scheduler, for the module; a test
    that kills a worker leaves it to the next test that uses the cluster to start
    another (none when it was the last)."""
    running_cluster.refill()
    return running_cluster


BULK_DOWNLOADS = 4  # two a worker: enough to re-run one elsewhere and to see progress
BULK_PATIENTS = ("B001", "B002", "B003", "B004", "B005")
BULK_EVENTS = ("heart_rate", "spo2", "bp_sys")


def write_bulk(root: Path, name: str, downloads: int, rows: int) -> Path:
    """`root/NAME/`: `downloads` CSV downloads of about `rows` rows each (5 patients, 3
    event types, different counts per download), written in well under a second, each
    with its metadata (`.meta.json`, as `export generate` writes: else the server scans
    every row of each to answer it)."""
    folder = root / name
    folder.mkdir(parents=True)
    block = "".join(
        f"{patient},2025-08-26T00:00:{i % 60:02d}.000000Z,{event},{60 + i % 40}\n"
        for i, (patient, event) in enumerate((p, e) for e in BULK_EVENTS for p in BULK_PATIENTS)
    )
    for n in range(downloads):
        download = uuid.UUID(int=n + 1)
        extra = "".join(f"B00{1 + n % 5},2025-08-26T01:00:00Z,spo2,9{n}\n" for _ in range(n))
        text = "patient_id,event_time,event_type,value\n" + block * (rows // 15) + extra
        (folder / f"{download}.csv").write_text(text)
        meta = {
            "id": str(download),
            "rows": 15 * (rows // 15) + n,
            "event_types": sorted(BULK_EVENTS),
            "patients": list(BULK_PATIENTS),
            "start_time": "2025-08-26T00:00:00.000000Z",
            "end_time": "2025-08-26T01:00:00Z" if n else "2025-08-26T00:00:14.000000Z",
        }
        (folder / f"{download}.meta.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def bulk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`bulk` (BULK_DOWNLOADS downloads of 200,000 rows, 8 MB each: a download takes a
    moment to count) and `many` (8 of 10,000 rows)."""
    root = tmp_path_factory.mktemp("bulk")
    write_bulk(root, "bulk", downloads=BULK_DOWNLOADS, rows=200_000)
    write_bulk(root, "many", downloads=8, rows=10_000)
    server = Server(tmp_path_factory.mktemp("logs") / "bulk-serve.log", "--exports", str(root))
    server.root = root  # type: ignore[attr-defined]
    yield server
    server.stop()
