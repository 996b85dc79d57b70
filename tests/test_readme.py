"""The README runs as written: its ```bash blocks, in order, in one shell, in an empty folder.

The set-up block runs without its `pip install` (the package is installed: `patientkit`
comes from this interpreter's folder, first on PATH) and without `python -m pytest -q`
(this suite); every other block runs whole, in one `bash -euo pipefail` session, so a
command that exits otherwise than the README says fails the test. The README's server
(`--port 8000`, `http://127.0.0.1:8000`, and the default `PATIENTKIT_SERVER`) is moved to
a free port, and the whole process group is killed at the end whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, cli_env

pytestmark = pytest.mark.slow  # long waits: scheduled first (tests/conftest.py)

README = ROOT / "README.md"
SETUP_INSTALL = "pip install -e '.[test,dask,postgres]' && "
SETUP_FIRST = "patientkit export generate demo exports && patientkit export count exports/demo"
SETUP_TESTS = "python -m pytest -q"
DONE = "README tour: every block ran"
# Under a bash ERR trap, name the command that failed, its line and its exit code.
PROLOGUE = "trap 'echo \"README tour failed: line $LINENO: $BASH_COMMAND (exit $?)\" >&2' ERR\n"


def bash_blocks(markdown: str) -> list[str]:
    """The bodies of the ```bash fenced blocks of `markdown`, in order."""
    return re.findall(r"^```bash\n(.*?)^```\s*$", markdown, flags=re.S | re.M)


def tour_script(blocks: list[str], port: int) -> str:
    """One bash script of `blocks` (the README's, the set-up first) with the set-up's
    install and test run left out and the server on `port`. Raises AssertionError when
    the set-up block is not the two commands CI and newcomers run, or when a block still
    names port 8000 after the rewrite."""
    assert blocks, "the README has no ```bash block"
    setup = blocks[0].splitlines()
    assert setup == [SETUP_INSTALL + SETUP_FIRST, SETUP_TESTS], (
        f"the README's first bash block must be the two set-up commands, not {setup!r}"
    )
    parts = [SETUP_FIRST + "\n", *blocks[1:]]
    body = "".join(parts)
    body = body.replace("http://127.0.0.1:8000", f"http://127.0.0.1:{port}")
    body = body.replace("--port 8000", f"--port {port}")
    left = re.search(r"(?<![\w-])8000(?![\w-])", body)  # not inside a UUID
    assert left is None, "a README block names port 8000 in a way the test cannot move"
    return PROLOGUE + body + f"echo '{DONE}'\n"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_tour(
    script: str, folder: Path, port: int, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run `script` with `bash -euo pipefail` in `folder`, `patientkit` from this
    interpreter, PATIENTKIT_SERVER on `port`; return the finished process (text output).
    The shell leads a process group of its own, killed when it ends or times out, so a
    server it started in the background never outlives the test (its output goes to
    files, not pipes, which such a process would hold open). Raises
    subprocess.TimeoutExpired after `timeout` seconds."""
    env = cli_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PATIENTKIT_SERVER"] = f"http://127.0.0.1:{port}"
    env["COLUMNS"] = "120"
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            text=True,
            start_new_session=True,
        )
        try:
            process.wait(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(process.args, process.returncode, out.read(), err.read())


def _failure(done: subprocess.CompletedProcess) -> str:
    return (
        f"exit {done.returncode}\n--- stdout (end)\n{done.stdout[-3000:]}"
        f"\n--- stderr (end)\n{done.stderr[-5000:]}"
    )


def _alive(pid: int, within: float = 2.0) -> bool:
    """Whether process `pid` still runs `within` seconds from now (a zombie waiting to be
    reaped does not): a SIGKILL just sent takes a moment to land on a busy machine."""
    deadline = time.monotonic() + within
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        if stat.rsplit(")", 1)[1].split()[0] == "Z" or time.monotonic() > deadline:
            return stat.rsplit(")", 1)[1].split()[0] != "Z"
        time.sleep(0.05)


def test_every_readme_block_runs_as_written(tmp_path: Path) -> None:
    port = free_port()
    script = tour_script(bash_blocks(README.read_text(encoding="utf-8")), port)
    done = run_tour(script, tmp_path, port)
    assert done.returncode == 0, _failure(done)
    assert done.stdout.rstrip().endswith(DONE), _failure(done)
    assert "Traceback" not in done.stderr, _failure(done)
    # What the tour says it makes, it made: the files it names and the server's clean stop.
    for name in ("demo.json", "demo.csv.gz", "bad.ndjson", "rejects.ndjson", "c001.ndjson"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert len((tmp_path / "bad.ndjson").read_text().splitlines()) == 10
    assert len((tmp_path / "rejects.ndjson").read_text().splitlines()) == 10
    assert '"event": "stopped"' in (tmp_path / "serve.log").read_text().splitlines()[-1]


def test_the_tour_fails_when_a_block_fails(tmp_path: Path) -> None:
    """The runner is strict: a command failing mid-block, a pipeline failing on its left,
    and a command meant to exit 1 that exits 2 each stop the tour; a background process
    the tour started is gone after it."""
    port = free_port()
    for broken in (
        "true\nfalse\ntrue\n",
        "false | cat\n",
        "(exit 2) || [ $? -eq 1 ]\n",
        "patientkit readings total 00000000-0000-4000-8000-000000000000 --db nope/x.db\n",
    ):
        script = tour_script([f"{SETUP_INSTALL}{SETUP_FIRST}\n{SETUP_TESTS}\n", broken], port)
        done = run_tour(script.replace(SETUP_FIRST + "\n", ""), tmp_path, port)
        assert done.returncode != 0, broken
        assert DONE not in done.stdout, broken
        assert "README tour failed: line" in done.stderr, broken
    allowed = tour_script(
        [f"{SETUP_INSTALL}{SETUP_FIRST}\n{SETUP_TESTS}\n", "(exit 1) || [ $? -eq 1 ]\n"], port
    )
    assert run_tour(allowed.replace(SETUP_FIRST + "\n", ""), tmp_path, port).returncode == 0
    started = "sleep 300 &\necho $! > sleeper.pid\nfalse\n"
    done = run_tour(PROLOGUE + started, tmp_path, port)
    assert done.returncode == 1
    assert not _alive(int((tmp_path / "sleeper.pid").read_text()))


def test_the_setup_block_is_the_two_commands() -> None:
    with pytest.raises(AssertionError, match="two set-up commands"):
        tour_script(["pip install -e .\n"], free_port())
    with pytest.raises(AssertionError, match="port 8000"):
        tour_script([f"{SETUP_INSTALL}{SETUP_FIRST}\n{SETUP_TESTS}\n", "curl localhost:8000\n"], 1)


def test_readme_links_stay_inside_the_repository() -> None:
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links, "the README links to nothing"
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target = (ROOT / link.split("#")[0]).resolve()
        assert target.is_relative_to(ROOT) and target.exists(), link
    assert "../" not in text and "SPEC.md" not in text
