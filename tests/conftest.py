"""Shared fixtures: the working folder, real `patientkit serve` processes on free ports, the
demo export. What is not a fixture (run_cli, Server, cli_env) is in tests/helpers.py."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from patientkit.samples.exports import generate_export
from tests.helpers import ROOT, Server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files marked `slow` first, each file's tests in their order: with the suite
    spread over processes a file at a time (pyproject's addopts), a long file started
    last would keep the run going after the others are done."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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
    for server in servers:  # all asked at once: each takes a moment to stop
        server.terminate()
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
