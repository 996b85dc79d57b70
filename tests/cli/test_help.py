"""Every command has help text with a working example, and exits 0 on --help."""

import functools
import itertools
import re
from typing import Any

import typer
from typer.testing import CliRunner

from patientkit.cli.app import app
from tests.helpers import whole_root_built_once, whole_root_command


def invoke(runner: CliRunner, args: list[str], columns: int) -> Any:
    """`runner.invoke(app, ARGS)` at COLUMNS, on the whole root built once."""
    with whole_root_built_once():
        return runner.invoke(app, args, env={"COLUMNS": str(columns)})


@functools.cache
def wide_help(command: tuple[str, ...]) -> Any:
    """`patientkit COMMAND --help` at 250 columns (no option's help wraps), rendered once
    for the tests that read it whole."""
    return invoke(CliRunner(), [*command, "--help"], 250)


def all_commands(group: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [(*prefix, c.name or c.callback.__name__) for c in group.registered_commands]
    for sub in group.registered_groups:
        found += all_commands(sub.typer_instance, (*prefix, sub.name))
    return found


def test_every_command_shows_an_example():
    commands = all_commands(app)
    assert ("export", "aggregate") in commands and ("serve",) in commands
    for command in commands:
        result = wide_help(command)
        assert result.exit_code == 0, command
        assert "Example" in result.output, command
        assert "patientkit " + " ".join(command) in result.output, command


def every_help() -> list[tuple[str, ...]]:
    """The root, every group and every command."""
    commands = all_commands(app)
    groups = {command[:-1] for command in commands if len(command) > 1}
    return [(), *sorted(groups), *commands]


def ragged_lines(text: str, width: int) -> list[str]:
    """The lines of the prose at the top of a help page (before its first panel) that
    end although the next line's first word would have fitted on them: a paragraph
    broken where it was written, not where the terminal ends."""
    lines = text.splitlines()
    top = lines[: next(i for i, line in enumerate(lines) if line.startswith("╭"))]
    ragged = []
    for line, following in itertools.pairwise(top):
        prose = line.strip() and not line[1:2].isspace()  # examples are indented
        fits = following.strip() and len(line.rstrip()) + len(following.split()[0]) < width - 1
        if prose and fits:
            ragged.append(line.strip())
    return ragged


def test_help_prose_fills_a_narrow_terminal():
    """At 80 columns every paragraph of every help page (and each group's) wraps where
    the terminal ends, never a word or two alone on a line where the docstring broke."""
    runner = CliRunner()
    for command in every_help():
        result = invoke(runner, [*command, "--help"], 80)
        assert result.exit_code == 0, command
        assert ragged_lines(result.output, 80) == [], command


def test_help_shows_square_brackets_as_written():
    """Rich markup would swallow `[dask]` in `patientkit[dask]`: every option's help
    shows its bracketed text."""
    seen = 0
    for command in every_help():
        result = wide_help(command)
        group = whole_root_command()
        for name in command:
            group = group.commands[name]
        for param in group.params:
            for bracketed in re.findall(r"\S*\[[^\]\s]*\]\S*", getattr(param, "help", "") or ""):
                seen += 1
                assert bracketed.replace("\\[", "[") in result.output, (command, bracketed)
    assert seen >= 1
