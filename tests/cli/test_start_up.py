"""What keeps a command's start-up short changes nothing it prints: the root built with
the one command a run names (`cli.app._root_for`), and lines written without rich where it
would write them plain (`output._plain`)."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from patientkit.cli import app as cli_app
from patientkit.cli import output
from tests.helpers import cli_env, examples, whole_root_built_once

# argv a run may start with: global flags, then a command (or not), then anything
GLOBALS = st.lists(st.sampled_from(["-q", "--quiet", "--debug"]), max_size=2)
COMMANDS = st.sampled_from([*cli_app.COMMANDS, "recordz", "--help", "-h", "--version", ""])
REST = st.lists(
    st.sampled_from(
        [
            *("submit", "list", "generate", "info", "replay", "latest", "count", "aggregate"),
            *("--help", "-h", "--bogus", "nope.db", "x"),
        ]
    ),
    max_size=4,
)


@settings(max_examples=examples(100), deadline=None)
@given(flags=GLOBALS, command=COMMANDS, rest=REST)
def test_the_root_with_one_command_answers_as_the_whole_root(flags, command, rest):
    """Help, usage errors and their exit codes are the same from the root that
    `_root_for` builds for the arguments as from the root with every command. (No
    command runs: each argv ends with --help, or holds an unknown option.)"""
    args = [*flags, *([command] if command else []), *rest]
    if "--bogus" not in args:
        args.append("--help")
    runner = CliRunner()
    with whole_root_built_once():
        whole = runner.invoke(cli_app.app, args, env={"COLUMNS": "120"})
        chosen = runner.invoke(cli_app._root_for(args), args, env={"COLUMNS": "120"})
    assert (chosen.exit_code, chosen.output) == (whole.exit_code, whole.output), args


def test_a_run_of_one_command_builds_and_imports_that_command_alone():
    root = cli_app._root_for(["-q", "records", "submit", "x"])
    assert [group.name for group in root.registered_groups] == ["records"]
    assert root.registered_commands == []
    assert cli_app._root_for(["serve", "--help"]).registered_commands[0].name == "serve"
    for whole in (["--help", "records"], ["recordz"], [], ["--version"]):
        assert cli_app._root_for(whole) is cli_app.app
    code = (
        "import sys; from patientkit.cli.app import run; run(['records', 'submit', '--help']);"
        "print(sorted(m for m in sys.modules if m.startswith('patientkit.cli.') or m == 'rich'));"
        "import patientkit.client.records, httpx;"
        "print(sorted(m for m in ('httpx._main', 'click') if sys.modules.get(m)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env()
    )
    *_, loaded, clients = done.stdout.strip().splitlines()
    for other in ("patientkit.cli.export", "patientkit.cli.serve", "patientkit.cli.store"):
        assert other not in loaded, loaded
    # httpx's own command line (and the click it needs) is not loaded with our clients
    assert clients == "[]", clients


def test_shell_completion_gets_the_whole_root(monkeypatch):
    monkeypatch.setenv("_PATIENTKIT_COMPLETE", "bash_complete")
    assert cli_app._root_for(["records"]) is cli_app.app


def rich_writes(message: str, style: str | None = None, **console: object) -> str:
    """What `output.info` (no style), `output.warn` (yellow) and `output.error` (bold red)
    write through rich: its console's settings, on a file."""
    file = io.StringIO()
    Console(file=file, highlight=False, soft_wrap=True, emoji=False, **console).print(
        message, style=style, markup=False
    )
    return file.getvalue()


@settings(max_examples=examples(500), deadline=None)
@given(message=st.text(max_size=300) | st.text(alphabet=st.characters(max_codepoint=127)))
def test_an_unstyled_line_written_plain_is_what_rich_writes(message):
    """Whatever the text: `_plain` either declines (rich writes it) or writes exactly what
    rich would, on a file that is not a terminal, in every style the CLI asks for."""
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("FORCE_COLOR", raising=False)
        patch.delenv("TTY_COMPATIBLE", raising=False)
        patch.setattr(sys, "stderr", stderr)
        written = output._plain(message)
    if written:
        assert stderr.getvalue() == rich_writes(message)
        assert stderr.getvalue() == rich_writes(message, force_terminal=True)  # colours on
        for style in ("yellow", "bold red"):  # a warning's, an error's: colours on terminals
            assert stderr.getvalue() == rich_writes(message, style)
    else:
        assert stderr.getvalue() == ""
        assert not (message.isascii() and message.isprintable())


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("case", ["terminal", "force-color", "console made"])
def test_rich_writes_when_it_may_differ(monkeypatch, case):
    stderr = Terminal() if case == "terminal" else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    if case == "force-color":
        monkeypatch.setenv("FORCE_COLOR", "1")
    if case == "console made":
        output.err_console()
    assert not output._plain("submitted 1 records: 1 created, 0 duplicates in 0.01s")
    assert stderr.getvalue() == ""


def test_a_replay_into_the_store_imports_no_http_client(tmp_path):
    """httpx (and, through it, its own command line's imports) is some 90 ms of a
    replay's start-up: imported for --to alone."""
    code = (
        "import sys; from patientkit.cli.app import run;"
        "code = run(['readings', 'replay', '-', '--db', sys.argv[1]]);"
        "print(code, 'httpx' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "s.db")],
        input="",
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert done.stdout.strip().splitlines()[-1] == "0 False", done.stdout + done.stderr


def test_a_supervisor_of_workers_imports_no_app(tmp_path):
    """`serve --workers N`: the process that starts the workers (each builds its own app,
    server/worker.py) imports neither the app's modules nor Starlette's application nor
    prometheus-client (some 0.06 CPU-s of its start-up). The supervisor's run is replaced
    here by a look at what is imported by then."""
    code = (
        "import sys; from uvicorn.supervisors import Multiprocess;"
        "Multiprocess.run = lambda self: print(sorted(m for m in ("
        "'patientkit.server.app', 'patientkit.server.metrics', 'starlette.applications',"
        "'prometheus_client') if m in sys.modules), flush=True);"
        "from patientkit.cli.app import run;"
        "print(run(['serve', '--port', '0', '--workers', '2', '--db', sys.argv[1]]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "s.db")],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
    )
    assert done.stdout.splitlines() == ["[]", "0"], done.stdout + done.stderr
