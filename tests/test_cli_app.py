import json
import os
import platform
import subprocess
import sys
import threading

import pytest

from patientkit import __version__
from patientkit.cli.output import write_atomic
from patientkit.core.storage import SCHEMA_VERSION
from tests.helpers import cli_env, run_cli


def test_version_and_unknown_flag():
    """`python -m patientkit --version` as users run it; an unknown flag in this process
    (what it prints and its code are run()'s, not the process's)."""
    ok = subprocess.run(
        [sys.executable, "-m", "patientkit", "--version"], capture_output=True, text=True
    )
    assert (ok.returncode, ok.stderr) == (0, "")
    python = platform.python_version()
    assert (
        ok.stdout == f"patientkit {__version__} (Python {python}, store schema {SCHEMA_VERSION})\n"
    )
    bad = run_cli("--bogus")
    assert bad.code == 2
    assert "No such option: --bogus" in bad.err
    assert "Traceback" not in bad.err


# --- the CLI's edges: exit codes with --debug, -o files, rejects files, stdout closed -------

DEVICE = "063c5957-8905-45f9-bfe3-960713788919"
GOOD = json.dumps({"id": DEVICE, "count": 1, "timestamp": "2021-09-29T16:09:15+01:00"}) + "\n"
BAD = '{"id": "nope", "count": 1, "timestamp": "2021-09-29T16:09:15+01:00"}\n'


@pytest.mark.parametrize(
    ("args", "code", "line"),
    [
        (["readings", "total", "not-a-uuid"], 2, "error: Device ID must be valid UUID string."),
        (
            ["readings", "replay", "/nonexistent.ndjson"],
            2,
            "error: /nonexistent.ndjson: no such file",
        ),
        (["records", "list", "--clinic", "C1", "--db", "/nonexistent.db"], 2, None),
    ],
)
def test_debug_shows_a_traceback_and_never_changes_the_exit_code(args, code, line):
    plain = run_cli(*args)
    debug = run_cli("--debug", *args)
    assert plain.code == debug.code == code
    assert len(plain.err.splitlines()) == 1 and "Traceback" not in plain.err
    assert "Traceback" in debug.err
    assert debug.err.splitlines()[-1] == plain.err.splitlines()[0]
    if line is not None:
        assert plain.err.splitlines() == [line]


def test_write_atomic_leaves_no_partial_file_and_runs_never_mix(tmp_path):
    target = tmp_path / "out.json"
    texts = [json.dumps({"run": n, "pad": "x" * 200_000}) for n in range(8)]
    threads = [threading.Thread(target=write_atomic, args=(target, text)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert target.read_text() in texts  # one run's whole text, never a mix
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary left
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    with pytest.raises(Exception, match="cannot write"):
        write_atomic(tmp_path / "missing" / "out.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_count_o_file_is_written_whole(tmp_path):
    csv = tmp_path / "a.csv"
    csv.write_text("patient_id,event_time,event_type,value\nP1,2025-01-01T00:00:00Z,hr,60\n")
    out = tmp_path / "counts.json"
    result = run_cli("export", "count", str(csv), "-o", str(out))
    assert result.code == 0, result.err
    assert json.loads(out.read_text()) == json.loads(result.out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "counts.json"]


@pytest.mark.parametrize(
    ("command", "flag"), [("readings replay", "--dead-letter"), ("records submit", "--rejects")]
)
def test_the_rejects_file_is_written_afresh_unless_append(tmp_path, command, flag):
    source = tmp_path / "in.ndjson"
    if command == "readings replay":
        source.write_text(GOOD + BAD)
    else:
        source.write_text('{"test_id": ""}\n')
    rejects = tmp_path / "rejects.ndjson"
    rejects.write_text('{"old": "line"}\n')
    args = [*command.split(), str(source), "--db", str(tmp_path / "s.db"), flag, str(rejects)]
    first = run_cli(*args)
    assert first.code == 1, first.err
    lines = rejects.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["line"] in (1, 2)  # the old line is gone
    second = run_cli(*args, "--append")
    assert second.code == 1
    assert rejects.read_text().splitlines() == lines * 2
    same = run_cli(
        *command.split(), str(rejects), "--db", str(tmp_path / "s.db"), flag, str(rejects)
    )
    assert same.code == 2
    assert same.err.splitlines() == [
        f"error: {rejects} is both an input and the rejects file: name another file"
    ]
    assert rejects.read_text().splitlines() == lines * 2  # untouched


def test_stdout_closed_early_ends_quietly(tmp_path):
    """`records list … | head -1`: exit 141 (as SIGPIPE would), nothing on stderr."""
    db = tmp_path / "s.db"
    source = tmp_path / "t.ndjson"
    source.write_text(
        "".join(
            json.dumps(
                {
                    "test_id": f"T{n}",
                    "patient_id": "P1",
                    "clinic_id": "C1",
                    "test_type": "glucose",
                    "result": "5.1",
                }
            )
            + "\n"
            for n in range(4_000)  # 560 kB listed: many times a pipe's 64 kB, never all written
        )
    )
    assert run_cli("records", "submit", str(source), "--db", str(db)).code == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "patientkit", "records", "list", "--clinic", "C1", "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    assert process.stdout is not None
    assert process.stdout.readline().startswith(b"{")
    process.stdout.close()
    err = process.stderr.read() if process.stderr else b""
    assert process.wait(timeout=30) == 141
    assert err == b""


def test_serve_keeps_sigpipe_ignored_so_it_outlives_its_clients():
    """The CLI never gives SIGPIPE its default action (it would kill `serve`)."""
    code = (
        "import signal, patientkit.cli.app as a; "
        "assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout == "ok\n", done.stderr
