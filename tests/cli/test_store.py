"""`patientkit store info`, `--version`, and `--db` in a folder that does not exist."""

import json
import sqlite3

import pytest

from patientkit.samples.inputs import generate_readings, generate_records
from tests.helpers import run_cli

DEVICE = "063c5957-8905-45f9-bfe3-960713788919"


def test_info_says_what_the_store_holds(tmp_path):
    db = tmp_path / "s.db"
    generate_readings(tmp_path / "r.ndjson", 3000, devices=30, duplicates=0.1)
    generate_records(tmp_path / "t.csv", 800, clinics=7, duplicates=0.05)
    run_cli("readings", "replay", str(tmp_path / "r.ndjson"), "--db", str(db))
    run_cli("records", "submit", str(tmp_path / "t.csv"), "--db", str(db))
    result = run_cli("store", "info", "--db", str(db))
    wal = tmp_path / "s.db-wal"
    size = db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    expected = {
        "backend": "sqlite",
        "schema_version": 3,
        "readings": 2700,
        "devices": 30,
        "records": 760,
        "clinics": 7,
        "bytes": size,
    }
    assert (result.code, result.out, result.err) == (0, json.dumps(expected) + "\n", "")


def test_info_of_a_store_that_does_not_exist_creates_nothing(tmp_path):
    db = tmp_path / "none.db"
    result = run_cli("store", "info", "--db", str(db))
    assert (result.code, result.out, result.err) == (2, "", f"error: {db}: no such store\n")
    assert list(tmp_path.iterdir()) == []
    default = run_cli("store", "info", cwd=tmp_path)  # patientkit.db in the working folder
    assert (default.code, default.err) == (2, "error: patientkit.db: no such store\n")
    assert list(tmp_path.iterdir()) == []


def test_info_neither_migrates_nor_changes_a_store(tmp_path):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE unrelated (x)")
    before = db.read_bytes()
    result = run_cli("store", "info", "--db", str(db))
    assert result.code == 0, result.err
    assert {k: v for k, v in json.loads(result.out).items() if k != "bytes"} == {
        "backend": "sqlite",
        "schema_version": 0,
        "readings": 0,
        "devices": 0,
        "records": 0,
        "clinics": 0,
    }
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.db"]


def test_info_of_a_file_that_is_not_a_store(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a database, but long enough to have a header " * 5)
    result = run_cli("store", "info", "--db", str(text))
    assert (result.code, result.out, result.err) == (
        2,
        "",
        f"error: cannot open the store {text}: file is not a database\n",
    )
    folder = run_cli("store", "info", "--db", str(tmp_path))
    assert (folder.code, folder.err) == (2, f"error: {tmp_path}: is a folder, not a store\n")


@pytest.mark.parametrize(
    "command",
    [
        ["store", "info"],
        ["readings", "replay", "IN"],
        ["readings", "latest", DEVICE],
        ["readings", "total", DEVICE],
        ["records", "submit", "IN"],
        ["records", "list", "--clinic", "C001"],
        ["serve", "--port", "0"],
    ],
)
def test_a_db_in_a_folder_that_does_not_exist_is_one_line(tmp_path, command):
    source = tmp_path / "in.ndjson"
    source.write_text("")
    args = [str(source) if arg == "IN" else arg for arg in command]
    db = tmp_path / "missing" / "s.db"
    result = run_cli(*args, "--db", str(db))
    line = f"error: --db {db}: the folder {tmp_path / 'missing'} does not exist\n"
    assert (result.code, result.out, result.err) == (2, "", line)
    assert not (tmp_path / "missing").exists()
    from_env = run_cli(*args, env={"PATIENTKIT_DB": str(source / "s.db")})
    line = f"error: PATIENTKIT_DB {source / 's.db'}: the folder {source} is not a folder\n"
    assert (from_env.code, from_env.out, from_env.err) == (2, "", line)


def test_version_opens_no_store(tmp_path):
    db = tmp_path / "v.db"
    result = run_cli("--version", env={"PATIENTKIT_DB": str(db)})
    assert result.code == 0 and result.out.endswith(", store schema 3)\n")
    assert not db.exists()
