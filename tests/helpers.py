"""What the tests share that is not a fixture: running the CLI, a `patientkit serve`
process, a valid test record, a wait for a process to read its input.

Two ways to run the CLI, both through `patientkit.cli.app.run`, the function `main` exits
with:

- `run_cli` runs it in this process, with its own stdin, stdout, stderr, environment and
  working folder for the call: the same parsing, engines, stores, child processes and
  HTTP as a user's run, without the 0.3-0.5 s of starting an interpreter and importing
  typer, rich and httpx again. The default.
- `run_cli_process` runs `python -m patientkit` as users do. For what only a process
  shows: a signal or a kill, the exit itself (exit handlers, `| head`), a terminal, the
  start-up (the imports, `python -m`), several runs at once.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


def cli_env() -> dict[str, str]:
    """The environment for a CLI run: this one without the PATIENTKIT_* settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PATIENTKIT_")}


def _run_env(env: dict | None) -> dict[str, str]:
    return {**cli_env(), "COLUMNS": "200", **(env or {})}


def run_cli_process(
    *args: str,
    input: bytes | str | None = None,
    env: dict | None = None,
    timeout: float = 120,
    cwd: Path | None = None,
) -> Result:
    """Run `python -m patientkit ARGS` as users do; return exit code, stdout, stderr. The
    working folder is `cwd`, else the session's (never the repository: see
    outside_the_repository)."""
    done = subprocess.run(
        [sys.executable, "-m", "patientkit", *args],
        input=input.encode() if isinstance(input, str) else input,
        capture_output=True,
        env=_run_env(env),
        timeout=timeout,
        cwd=cwd,
    )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


class _Kept(io.BytesIO):
    """A stream's bytes, kept when the command closes the stream."""

    def close(self) -> None:
        pass


def run_cli(
    *args: str,
    input: bytes | str | None = None,
    env: dict | None = None,
    cwd: Path | None = None,
    terminal: int | None = None,
) -> Result:
    """Run `patientkit ARGS` in this process (see the module's docstring); return exit
    code, stdout, stderr as `run_cli_process` does. For the call: stdin holds `input`
    (else nothing), stdout and stderr are captured (not a terminal), the environment is
    `run_cli_process`'s, the working folder `cwd` if given; SIGINT's and SIGTERM's
    handlers, all of these and the environment are put back after. Main thread only.
    With `terminal` (a pty's descriptor, drained by the caller meanwhile) stderr is
    written there instead, a terminal (the Result's err is then empty)."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers: main only
        assert terminal is None, "run_cli(terminal=...) runs in the main thread alone"
        return run_cli_process(*args, input=input, env=env, cwd=cwd)
    from patientkit.cli import app, output

    data = input.encode() if isinstance(input, str) else input or b""
    raw_in, raw_out, raw_err = _Kept(data), _Kept(), _Kept()
    streams = (sys.stdin, sys.stdout, sys.stderr)
    environment = dict(os.environ)
    here = Path.cwd()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    new_env = _run_env(env)
    try:
        os.environ.clear()
        os.environ.update(new_env)
        if cwd is not None:
            os.chdir(cwd)
        # as a process's: text over a buffered binary stream (`.buffer` can peek)
        sys.stdin = io.TextIOWrapper(
            io.BufferedReader(raw_in), encoding="utf-8", errors="surrogateescape"
        )
        sys.stdout = io.TextIOWrapper(
            io.BufferedWriter(raw_out), encoding="utf-8", errors="surrogateescape"
        )
        sys.stderr = (
            io.TextIOWrapper(
                io.BufferedWriter(raw_err), encoding="utf-8", errors="backslashreplace"
            )
            if terminal is None
            else open(  # noqa: SIM115 - closed below, after the command
                terminal, "w", encoding="utf-8", errors="backslashreplace", closefd=False
            )
        )
        output.set_quiet(False)
        code = app.run(list(args))
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(ValueError):  # closed by the command: written through
                stream.flush()
    finally:
        if terminal is not None:
            with contextlib.suppress(ValueError, OSError):
                sys.stderr.close()
        sys.stdin, sys.stdout, sys.stderr = streams
        os.chdir(here)
        os.environ.clear()
        os.environ.update(environment)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return Result(code, raw_out.getvalue().decode(), raw_err.getvalue().decode())


def serve_refused(*args: str) -> Result:
    """`patientkit serve ARGS` in this process (run_cli), for a start-up that must be refused before
    it binds (no process needed to see an exit code and a line). Should it serve instead,
    a Ctrl-C after 30 s stops it, and the test's checks then fail."""
    stop = threading.Timer(30, os.kill, (os.getpid(), signal.SIGINT))
    stop.start()
    try:
        return run_cli("serve", *args)
    finally:
        stop.cancel()


def default_tls() -> ssl.SSLContext:
    """httpx's default TLS verification (certifi's CAs), the one the CLI's clients share
    in this process (patientkit.client.http.default_tls): an httpx client or `httpx.get`
    builds it anew each time otherwise (some 35 ms of CPU, even for http://)."""
    from patientkit.client.http import default_tls as shared

    return shared(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


class _LazyWeb:
    """`web.get(url)` and the rest as `httpx.get(url)` does them (a new connection a
    request, httpx's default TLS verification and timeout), without the ~35 ms of CPU of
    the client and TLS context that `httpx.get` builds on every call: one client, made on
    first use."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_one_web(), name)


@functools.cache
def _one_web() -> httpx.Client:
    return httpx.Client(verify=default_tls(), limits=httpx.Limits(max_keepalive_connections=0))


web = _LazyWeb()


class Server:
    """A `patientkit serve` child process on a free port, its log in a file. With `env`,
    it runs in cli_env() plus `env` (else in this process's environment); `verify` is how
    the start-up ping checks TLS (a CA bundle's path for a server of a test's own)."""

    def __init__(
        self, log: Path, *args: str, env: dict | None = None, verify: str | bool = True
    ) -> None:
        self.log = log
        self.verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=verify)
            if isinstance(verify, str)
            else default_tls()
            if verify
            else verify
        )
        self.stream = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "patientkit", "serve", "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=self.stream,
            env=None if env is None else {**cli_env(), **env},
        )
        self.url = self._wait_for_url()

    def _wait_for_url(self, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if line.startswith("{") and json.loads(line).get("event") == "serving":
                    url = json.loads(line)["url"]
                    if httpx.get(f"{url}/api/ping", verify=self.verify).status_code == 200:
                        return url
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited early:\n{self.log.read_text()}")
            time.sleep(0.02)
        raise RuntimeError(f"serve did not start:\n{self.log.read_text()}")

    def log_lines(self) -> list[dict]:
        return [
            json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")
        ]

    def answered(self) -> list[dict]:
        """Its log's JSON lines up to a ping of the caller's own (`mark`, waited for first):
        every request answered before this call is among them. (The server logs a request
        after it has sent the answer: a log read as soon as a client has its last answer
        may lack that request.)"""
        end = self.mark()
        return self.log_lines()[:end]

    def mark(self, timeout: float = 20) -> int:
        """How many JSON lines its log holds up to a ping of the caller's own (waited for):
        `log_lines()[mark:]` is what it logged after, for a test that shares the server
        with others that ran before it. Every request answered before the ping is logged
        before it: a server of one process logs a request as it answers it, in its one
        event loop, before it reads the next. (Not for `--workers N` nor -q.)"""
        request_id = f"mark-{uuid.uuid4()}"
        answer = httpx.get(
            f"{self.url}/api/ping", headers={"x-request-id": request_id}, verify=self.verify
        )
        assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.log_lines()
            for n, line in enumerate(lines):
                if line.get("request_id") == request_id:
                    return n + 1
            time.sleep(0.01)
        raise AssertionError(f"the ping {request_id} was not logged:\n{self.log.read_text()}")

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM); `stop` waits for it."""
        if self.process.poll() is None:
            self.process.terminate()

    def stop(self) -> None:
        self.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.stream.close()


def record(test_id="T1", clinic="C1", **changes):
    """A valid test record (its patient and result marked secret, for the log checks)."""
    value = {
        "test_id": test_id,
        "patient_id": "PATIENT-SECRET-7",
        "clinic_id": clinic,
        "test_type": "hiv-antibody",
        "result": "RESULT-SECRET-42",
    }
    value.update(changes)
    return value


AT_ONCE = """
import gc, importlib, json, os, sys
script, folder = sys.argv[1], sys.argv[2]
argvs, modules = json.loads(sys.argv[3]), json.loads(sys.argv[4])
for module in modules:  # imported once, before the fork: the children start past them
    importlib.import_module(module)
code = compile(script, "<script>", "exec")
gc.freeze()  # out of the children's collections: their exits do not copy every page
gate, opening = os.pipe()
children = []
for n, argv in enumerate(argvs):
    pid = os.fork()
    if pid == 0:
        os.close(opening)
        for fd, name in ((1, "out"), (2, "err")):  # its own stdout and stderr, as a process
            os.dup2(os.open(f"{folder}/{n}.{name}", os.O_WRONLY | os.O_CREAT, 0o600), fd)
        os.read(gate, 1)  # until every child is forked: they all go at once
        sys.argv = ["-c", *argv]
        script_globals = {"__name__": "__main__"}  # kept to the exit, as __main__'s are
        exec(code, script_globals)  # an exception ends it as python -c's: exit 1
        sys.exit(0)  # the interpreter's own exit: its exit handlers run, as a process's
    children.append(pid)
os.close(opening)  # end of file on the gate: all go
print(json.dumps([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]))
"""


def run_forked_at_once(
    script: str,
    argvs: list[list[str]],
    imports: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> list[tuple[int, bytes, bytes]]:
    """`python -c script *argv` for each argv, all running at once as separate
    processes; each one's exit code, stdout and stderr, in the order given. The
    processes are forked from one python that imported `imports` first (the script's own
    imports find them loaded: one start-up, not one each), and all start the script
    together once all are forked. Their environment is `env`, else this one."""
    with tempfile.TemporaryDirectory() as folder:
        runner = subprocess.Popen(
            [sys.executable, "-c", AT_ONCE, script, folder, json.dumps(argvs), json.dumps(imports)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # a group of its own, its children in it
        )
        try:
            out, err = runner.communicate(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(runner.pid, signal.SIGKILL)  # a child left hanging
            runner.wait()
        assert (runner.returncode, err) == (0, b""), err.decode()
        codes = json.loads(out)
        return [
            (code, Path(folder, f"{n}.out").read_bytes(), Path(folder, f"{n}.err").read_bytes())
            for n, code in enumerate(codes)
        ]


def feed(pipe: IO[bytes], data: bytes) -> None:
    """Write `data` to a child's stdin and keep it open; a child gone early is no error."""
    try:
        pipe.write(data)
        pipe.flush()
    except (BrokenPipeError, ValueError):
        pass


def start_holding_back(
    source: Path,
    held_back: int,
    *args: str,
    output: int = subprocess.PIPE,
    env: dict | None = None,
) -> tuple[subprocess.Popen[bytes], threading.Thread]:
    """`python -m patientkit ARGS` reading `source` from stdin, a pipe that gets all of it
    but the last `held_back` lines and stays open: the job is mid-way (reading, or
    waiting for the rest) whenever it is interrupted or killed, however fast this machine
    is. (A fixed wait, or a file read whole, was a guess: on an idle machine the job was
    done first.) Stdout and stderr go to `output`; the environment is cli_env() plus
    `env`. The caller joins the feeding thread (`stop_fed` kills and does)."""
    data = source.read_bytes()
    cut = len(data)
    for _ in range(held_back):
        cut = data.rindex(b"\n", 0, cut - 1) + 1
    process = subprocess.Popen(
        [sys.executable, "-m", "patientkit", *args],
        stdin=subprocess.PIPE,
        stdout=output,
        stderr=output,
        env={**cli_env(), **(env or {})},
    )
    assert process.stdin is not None
    feeder = threading.Thread(target=feed, args=(process.stdin, data[:cut]))
    feeder.start()
    return process, feeder


def stop_fed(process: subprocess.Popen[bytes], feeder: threading.Thread) -> None:
    """Kill a `start_holding_back` process (if it still runs), join its feeder, close
    its stdin."""
    process.kill()
    process.wait()
    feeder.join()
    assert process.stdin is not None
    process.stdin.close()


@functools.cache
def whole_root_command() -> Any:
    """The click command of patientkit's whole root (`cli.app.app`), built once."""
    import typer.main

    from patientkit.cli import app

    return typer.main.get_command(app.app)


@contextlib.contextmanager
def whole_root_built_once() -> Iterator[None]:
    """Within: typer's CliRunner runs the whole root as `whole_root_command()` instead of
    building it again on every invoke (every command's parameters from their signatures:
    most of a `--help`'s cost); any other typer app it builds as before."""
    import typer.main
    import typer.testing

    from patientkit.cli import app

    build = typer.testing._get_command

    def command(typer_app: Any) -> Any:
        return whole_root_command() if typer_app is app.app else build(typer_app)

    typer.testing._get_command = command  # type: ignore[assignment]
    try:
        yield
    finally:
        typer.testing._get_command = build


# /proc/PID/syscall's numbers of read(2), and of select(2) and pselect6(2) (glibc's select)
_READ = {"x86_64": 0, "aarch64": 63}
_SELECT = {"x86_64": (23, 270), "aarch64": (72,)}


def wait_until_reading(pid: int, fd: int = 0, timeout: float = 30) -> None:
    """Until a thread of process `pid` waits for input on `fd` (Linux /proc): in read(2)
    on it, or in select(2) on it alone (its first argument, nfds, is fd + 1: how
    core/interrupts.Waiting waits for input on a pipe, FIFO or terminal). The program got
    past its start-up to reading its input, and read all there was. Raises AssertionError
    after `timeout` seconds or when the process is gone."""
    machine = os.uname().machine
    waiting = tuple(
        [f"{_READ[machine]} {fd:#x} "] + [f"{call} {fd + 1:#x} " for call in _SELECT[machine]]
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            calls = [task.read_text() for task in Path(f"/proc/{pid}/task").glob("*/syscall")]
        except OSError:
            calls = []
        if any(call.startswith(waiting) for call in calls):
            return
        assert Path(f"/proc/{pid}").exists(), f"process {pid} ended before it read fd {fd}"
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not read fd {fd} within {timeout} s")


EXAMPLES = float(os.environ.get("PATIENTKIT_TEST_EXAMPLES", "0.3"))


def examples(n: int) -> int:
    """Hypothesis examples for a property test written for `n`: a share of them in an
    ordinary run (PATIENTKIT_TEST_EXAMPLES, 0.3 unless set; at least 20), all of them with
    PATIENTKIT_TEST_EXAMPLES=1, more with a larger factor. Failing examples found before
    are replayed first whatever the count (the example database in .hypothesis/)."""
    return max(20, round(n * EXAMPLES))


class QuietHandler(BaseHTTPRequestHandler):
    """A stand-in server's request handler that logs nothing."""

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def stand_in_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A server of the test's own that answers as `handler` says (what patientkit's server
    never does: nonsense, for ever 503, a false encoding), on a free port in a thread;
    yields its URL and stops it after."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
