"""Shared fixtures: real `patientkit serve` processes on free ports, real CLI runs."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from patientkit.samples.exports import generate_export

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


def run_cli(
    *args: str,
    input: bytes | str | None = None,
    env: dict | None = None,
    timeout: float = 120,
    cwd: Path | None = None,
) -> Result:
    """Run `python -m patientkit ARGS` as users do; return exit code, stdout, stderr. The
    working folder is `cwd`, else the session's (never the repository: see
    outside_the_repository)."""
    full_env = {**cli_env(), "COLUMNS": "200", **(env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "patientkit", *args],
        input=input.encode() if isinstance(input, str) else input,
        capture_output=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd,
    )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


class Server:
    """A `patientkit serve` child process on a free port, its log in a file. With `env`,
    it runs in cli_env() plus `env` (else in this process's environment); `verify` is how
    the start-up ping checks TLS (a CA bundle's path for a server of a test's own)."""

    def __init__(
        self, log: Path, *args: str, env: dict | None = None, verify: str | bool = True
    ) -> None:
        self.log = log
        self.verify = (
            ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
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
            time.sleep(0.05)
        raise RuntimeError(f"serve did not start:\n{self.log.read_text()}")

    def log_lines(self) -> list[dict]:
        return [
            json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")
        ]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.stream.close()


def _repository_files() -> set[str]:
    """Every file under the repository that git does not track, ignored ones too, but
    the caches that tools keep there (bytecode, pytest's, hypothesis's, ruff's)."""
    done = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "--ignored"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    caches = (
        "__pycache__/",
        ".pytest_cache/",
        ".hypothesis/",
        ".ruff_cache/",
        ".mypy_cache/",
        ".egg-info/",
    )
    return {
        line[3:]
        for line in done.stdout.splitlines()
        if line[:2] in ("??", "!!") and not any(cache in line for cache in caches)
    }


@pytest.fixture(scope="session", autouse=True)
def outside_the_repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test runs in a folder of its own session, never in the repository: a CLI
    run without --db (`patientkit.db` in the working folder), a rejects file named
    relatively, a server's files all land there, in this process and in every child it
    starts. After the session, the repository must hold no new file: a test that wrote
    one fails the run here."""
    before = _repository_files()
    here = Path.cwd()
    set_hypothesis_home_dir(str(ROOT / ".hypothesis"))  # failing examples kept between runs
    folder = tmp_path_factory.mktemp("cwd")
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(here)
    new = sorted(_repository_files() - before)
    assert not new, f"tests wrote into the repository: {', '.join(new)}"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    """Start servers with the given arguments; all are stopped after the test."""
    servers: list[Server] = []

    def start(*args: str, **options: object) -> Server:
        server = Server(tmp_path / f"serve-{len(servers)}.log", *args, **options)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def exports_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo export, generated once with the default seed."""
    root = tmp_path_factory.mktemp("exports")
    generate_export("demo", root, seed=0, workers=1)
    return root


@pytest.fixture(scope="session")
def demo_server(exports_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(
        tmp_path_factory.mktemp("logs") / "demo-serve.log", "--exports", str(exports_dir)
    )
    yield server
    server.stop()
