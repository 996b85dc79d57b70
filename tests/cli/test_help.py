"""Every command has help text with a working example, and exits 0 on --help."""

import typer
from typer.testing import CliRunner

from patientkit.cli.app import app


def all_commands(group: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [(*prefix, c.name or c.callback.__name__) for c in group.registered_commands]
    for sub in group.registered_groups:
        found += all_commands(sub.typer_instance, (*prefix, sub.name))
    return found


def test_every_command_shows_an_example():
    commands = all_commands(app)
    assert ("export", "aggregate") in commands and ("serve",) in commands
    runner = CliRunner()
    for command in commands:
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, command
        assert "Example" in result.output, command
        assert "patientkit " + " ".join(command) in result.output, command
