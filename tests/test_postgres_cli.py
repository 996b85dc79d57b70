"""Every command on a PostgreSQL store (`--db postgresql://…`, PATIENTKIT_DB) gives the
answers it gives on SQLite: `store info`, `readings replay|latest|total`, `records
submit|list`, and `serve` under chaos; four replays at once, and a replay killed and run
again, end equal to one clean run. Real processes, a real PostgreSQL server (a store, a
schema, of each test's own: tests/pg.py), skipped with the reason without PATIENTKIT_TEST_POSTGRES.
Without the `postgres` extra, each command says how to install it (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from patientkit.samples.inputs import generate_readings, generate_records
from patientkit.stores import open_store
from tests.cli.test_readings import start_replay as start_replay_from_a_pipe
from tests.helpers import cli_env, run_cli, run_forked_at_once, stop_fed
from tests.pg import needs_pg, new_database, new_store, readings_dump

pytestmark = pytest.mark.slow  # long waits: scheduled first (tests/conftest.py)

DEVICE = "063c5957-8905-45f9-bfe3-960713788919"


@pytest.fixture
def pg() -> Iterator[str]:
    with new_store() as url:
        yield url


def summary(result) -> dict:
    """A command's JSON summary without its timing."""
    return {k: v for k, v in json.loads(result.out).items() if k != "seconds"}


def records_dump(target: str | Path) -> list[tuple]:
    """Every stored record's five fields (of clinics C000…C019, the samples'), sorted."""
    with open_store(target) as store:
        assert store.record_count() > 0
        rows = [r for n in range(20) for r in store.records_for_clinic(f"C{n:03d}")]
        assert len(rows) == store.record_count()
    return sorted(tuple(v for k, v in r.items() if k != "created_at") for r in rows)


# --- without the extra ---------------------------------------------------------------------

HIDE = "import sys; sys.modules['psycopg'] = None; "
NO_EXTRA = (
    "error: postgresql://u:***@127.0.0.1:1/x: a PostgreSQL store needs the postgres extra "
    "(psycopg is missing): pip install 'patientkit[postgres]'\n"
)


COMMANDS = [
    ["readings", "replay", "IN"],
    ["readings", "latest", DEVICE],
    ["readings", "total", DEVICE],
    ["records", "submit", "IN"],
    ["records", "list", "--clinic", "C1"],
    ["store", "info"],
    ["serve", "--port", "0"],
]
EACH = """
import io, json
from patientkit.cli import app, output
answers = []
for args in json.loads(sys.argv[1]):
    sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
    output.set_quiet(False)
    code = app.run(args)
    answers.append((code, sys.stdout.getvalue(), sys.stderr.getvalue()))
sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
print(json.dumps(answers))
"""


@pytest.fixture(scope="module")
def without_psycopg(tmp_path_factory) -> dict[str, tuple[int, str, str]]:
    """Each command's exit code, stdout and stderr with `--db URL`, one after the other in
    one process of their own in which psycopg cannot be imported: as strict as a process
    each (a module a command starts with that needs psycopg fails it, or an earlier one),
    without starting seven."""
    source = tmp_path_factory.mktemp("no-extra") / "in.ndjson"
    source.write_text("")
    url = "postgresql://u:secret@127.0.0.1:1/x"
    argvs = [[str(source) if a == "IN" else a for a in args] + ["--db", url] for args in COMMANDS]
    done = subprocess.run(
        [sys.executable, "-c", HIDE + EACH, json.dumps(argvs)],
        capture_output=True, text=True, env=cli_env(), timeout=60,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    answers = json.loads(done.stdout)
    return {" ".join(args): tuple(answer) for args, answer in zip(COMMANDS, answers, strict=True)}


@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: " ".join(args[:2]))
@pytest.mark.parametrize("how", ["--db", "PATIENTKIT_DB"])
def test_without_the_extra_each_command_says_how_to_install_it(
    tmp_path, monkeypatch, without_psycopg, args, how
):
    """With --db, in a process in which psycopg cannot be imported (nothing that starts
    every command may need it: `without_psycopg`); with PATIENTKIT_DB, in this process
    with psycopg hidden the same way (and patientkit.postgres, so that it is imported
    again)."""
    if how == "--db":
        assert without_psycopg[" ".join(args)] == (2, "", NO_EXTRA)
        return
    source = tmp_path / "in.ndjson"
    source.write_text("")
    args = [str(source) if arg == "IN" else arg for arg in args]
    url = "postgresql://u:secret@127.0.0.1:1/x"
    for name in ("psycopg", "psycopg_pool"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "patientkit.postgres", raising=False)
    result = run_cli(*args, env={"PATIENTKIT_DB": url})
    assert (result.code, result.out, result.err) == (2, "", NO_EXTRA)


# --- the same answers as SQLite ---------------------------------------------------------------


@needs_pg
def test_every_command_answers_as_on_sqlite(pg, tmp_path):
    readings, records = tmp_path / "r.ndjson", tmp_path / "t.csv"
    generate_readings(readings, 500, devices=30, duplicates=0.1, invalid=0.02)
    generate_records(records, 200, clinics=7, duplicates=0.05, invalid=0.02)
    sqlite = str(tmp_path / "s.db")
    answers = {}
    for name, db in (("sqlite", sqlite), ("postgresql", pg)):
        replayed = run_cli("readings", "replay", str(readings), "--db", db)
        submitted = run_cli("records", "submit", str(records), env={"PATIENTKIT_DB": db})
        assert (replayed.code, submitted.code) == (1, 1), (replayed.err, submitted.err)
        info = json.loads(run_cli("store", "info", "--db", db).out)
        info.pop("bytes")
        listed = [  # every clinic (and one without records), the formats in turn
            run_cli("records", "list", "--clinic", f"C{n:03d}", "--db", db, "--format", form)
            for n, form in zip(range(8), ("ndjson", "csv") * 4, strict=True)
        ]
        devices = sorted({row[0] for row in readings_dump(db)[0]})[:3]
        per_device = [
            (run_cli("readings", "latest", d, "--db", db).out,
             run_cli("readings", "total", d, env={"PATIENTKIT_DB": db}).out)
            for d in devices
        ]  # fmt: skip
        answers[name] = {
            "replay": (summary(replayed), replayed.err.replace(db, "DB")),
            "submit": (summary(submitted), submitted.err.replace(db, "DB")),
            "info": info,
            "list": [(r.code, _no_created_at(r.out)) for r in listed],
            "devices": per_device,
            "readings": readings_dump(db),
            "records": records_dump(db),
        }
    assert answers["postgresql"]["info"] == {
        **answers["sqlite"]["info"],
        "backend": "postgresql",
        "schema_version": 1,
    }
    for key in ("replay", "submit", "list", "devices", "readings", "records"):
        assert answers["postgresql"][key] == answers["sqlite"][key], key
    assert any(lines for _, lines in answers["sqlite"]["list"])


def _no_created_at(out: str) -> list[str]:
    """A listing's lines without their created_at (ndjson: the key; csv: the column)."""
    lines = []
    for line in out.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            record.pop("created_at")
            lines.append(json.dumps(record))
        else:
            lines.append(",".join(line.split(",")[:5]))
    return lines


@needs_pg
def test_store_info_of_a_new_database_creates_nothing():
    with new_database() as url:
        result = run_cli("store", "info", "--db", url)
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert document == {
        "backend": "postgresql",
        "schema_version": 0,
        "readings": 0,
        "devices": 0,
        "records": 0,
        "clinics": 0,
        "bytes": 0,
    }


# --- many writers, a killed writer ------------------------------------------------------------


CLI = "from patientkit.cli.app import main\nmain()"  # python -m patientkit's
REPLAY_MODULES = ("patientkit.cli.app", "patientkit.workflows.replay", "patientkit.postgres")


@needs_pg
def test_four_replays_of_one_file_at_once_equal_one_clean_run(tmp_path):
    """Four `readings replay` processes of one file into one store, forked once imported
    (tests.helpers.run_forked_at_once): all four start their 40 batches together,
    whatever the machine's speed (PostgreSQL's log: a few to a dozen keys a run that a
    concurrent writer stored meanwhile)."""
    source = tmp_path / "r.ndjson"
    generate_readings(source, 2_000, devices=200, duplicates=0.02)
    with new_store() as clean, new_store() as shared:
        alone = run_cli("readings", "replay", str(source), "--db", clean)
        assert alone.code == 0, alone.err
        replay = ["readings", "replay", str(source), "--db", shared, "--batch-size", "50"]
        outcomes = run_forked_at_once(CLI, [replay] * 4, imports=REPLAY_MODULES, env=cli_env())
        assert [code for code, _, _ in outcomes] == [0] * 4, [err for *_, err in outcomes]
        runs = [json.loads(out) for _, out, _ in outcomes]
        new = summary(alone)["delivered"] - summary(alone)["duplicates"]
        assert sum(run["delivered"] - run["duplicates"] for run in runs) == new  # none twice
        assert all(run["read"] == summary(alone)["read"] for run in runs)
        assert readings_dump(shared) == readings_dump(clean)


@needs_pg
def test_killed_mid_replay_then_run_again_equals_one_clean_run(tmp_path):
    source = tmp_path / "r.ndjson"
    generate_readings(source, 4_000, devices=100, duplicates=0.02)
    with new_store() as clean, new_store() as killed:
        assert run_cli("readings", "replay", str(source), "--db", clean).code == 0
        # from a pipe that holds back the last 2,000: mid-way whatever the machine's speed
        process, feeder = start_replay_from_a_pipe(source, killed, subprocess.DEVNULL, 2_000)
        try:
            deadline = time.monotonic() + 60
            with open_store(killed) as store:
                while (stored := store.reading_totals()[1]) < 1_000:
                    assert process.poll() is None and time.monotonic() < deadline
                    time.sleep(0.02)
        finally:
            stop_fed(process, feeder)  # SIGKILL mid-replay
        assert 0 < stored < 4_000
        again = run_cli("readings", "replay", str(source), "--db", killed)
        assert again.code == 0, again.err
        assert summary(again)["duplicates"] >= stored
        assert readings_dump(killed) == readings_dump(clean)


# --- serve on PostgreSQL, through chaos --------------------------------------------------------


@needs_pg
def test_serve_under_chaos_gives_exact_results(serve, tmp_path):
    readings, records = tmp_path / "r.ndjson", tmp_path / "t.ndjson"
    generate_readings(readings, 500, devices=40, duplicates=0.05)  # 25 batches: some fail
    generate_records(records, 300, clinics=5, duplicates=0.05, invalid=0.02)
    with new_store() as clean, new_store() as chaos:
        clean_replay = run_cli("readings", "replay", str(readings), "--db", clean)
        clean_submit = run_cli("records", "submit", str(records), "--db", clean)
        server = serve("--db", chaos, "--chaos", "0.3", "--chaos-seed", "7", "--workers", "2")
        replayed = run_cli(
            "readings", "replay", str(readings), "--to", server.url,
            "--batch-size", "20", "--flush-interval", "0.05",
        )  # fmt: skip
        submitted = run_cli(
            "records", "submit", str(records), "--to", server.url,
            "--attempts", "30", "--batch-size", "25",
        )  # fmt: skip
        assert replayed.code == 0, replayed.err
        assert json.loads(replayed.out)["retries"] > 0
        assert json.loads(submitted.out)["retries"] > 0
        assert submitted.code == clean_submit.code == 1  # the invalid records
        keys = ("read", "created", "duplicates", "invalid")
        assert [summary(submitted)[k] for k in keys] == [summary(clean_submit)[k] for k in keys]
        assert summary(replayed)["delivered"] == summary(clean_replay)["delivered"]
        assert readings_dump(chaos) == readings_dump(clean)
        assert records_dump(chaos) == records_dump(clean)
    assert "secret" not in server.log.read_text()


@needs_pg
def test_many_threads_of_one_server_share_its_pool(serve, pg):
    """Concurrent POSTs to one server on PostgreSQL, each sent twice: every reading and
    record stored once, every second record a 409 (the server's threads share one store,
    a pool of connections)."""
    import httpx

    server = serve("--db", pg)
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    client = httpx.Client(base_url=server.url, timeout=60, limits=limits)  # one: no TLS set-up each

    def post(n: int) -> tuple[int, int]:
        m = n % 24
        device = f"{m % 8:08x}-84bd-4bf2-bd00-3fc3a49785ea"
        reading = {"count": m + 1, "timestamp": f"2021-09-29T16:{m // 8:02d}:00+01:00"}
        one = client.post("/api/device-readings/create", json={"id": device, "readings": [reading]})
        record = {"test_id": f"T{m}", "patient_id": "P", "clinic_id": "C001",
                  "test_type": "x", "result": "r"}  # fmt: skip
        two = client.post("/tests", json=record)
        return one.status_code, two.status_code

    with client, ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(post, range(48)))  # 32 threads, a pool of 8 connections
    assert sorted(answers) == [(201, 200)] * 24 + [(201, 409)] * 24
    with open_store(pg) as store:
        assert store.record_count() == 24
        assert store.reading_totals() == (8, 24, sum(range(1, 25)))


@needs_pg
def test_a_value_postgresql_cannot_hold_is_refused_for_good_not_retried(pg):
    """The store child classifies PostgreSQL's data errors as SQLite's: refused
    (StoreRefused: dead-lettered, never retried), the store still usable after."""
    from patientkit.core.model import Reading
    from patientkit.workflows.store_process import StoreProcess, StoreRefused

    big = Reading(DEVICE, 2**63, "2021-09-29T16:09:15+0100", 1632928155)
    nul = {"test_id": "T\x00", "patient_id": "P", "clinic_id": "C", "test_type": "x",
           "result": "r"}  # fmt: skip
    with StoreProcess(pg) as writer:
        with pytest.raises(StoreRefused, match=r"NumericValueOutOfRange: value .* bigint"):
            writer.call("add_readings", [big._replace(count=1), big])
        with pytest.raises(StoreRefused, match="cannot contain NUL"):
            writer.call("add_records", [nul])
        assert writer.call("add_readings", [big._replace(count=1)]) == 1
    with open_store(pg) as store:
        assert (store.reading_totals(), store.record_count()) == ((1, 1, 1), 0)
