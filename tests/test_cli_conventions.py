"""The command line's conventions, checked over every registered command so a new one cannot skip them:
`--help` shows examples, and every command that reports a result can print it as JSON for scripts."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from fusionrec.cli.main import cli

# Long-running processes print a banner, not a result: no --json.
NO_JSON = {"serve"}


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out = []
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        out.append((path, command))
        if isinstance(command, click.Group):
            out += _commands(command, path)
    return out


COMMANDS = _commands(cli)


def test_the_expected_commands_are_registered():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"run", "report", "data prepare", "evaluate", "models pull", "merge", "train", "compile", "serve",
            "recommend"} <= names


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_shows_examples(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"`fusionrec {' '.join(path)} --help` has no examples"


@pytest.mark.parametrize("path, command", [(p, c) for p, c in COMMANDS if not isinstance(c, click.Group)],
                         ids=[" ".join(p) for p, c in COMMANDS if not isinstance(c, click.Group)])
def test_result_commands_offer_json(path, command):
    if path[-1] in NO_JSON:
        pytest.skip("a long-running server")
    assert any("--json" in option.opts for option in command.params if isinstance(option, click.Option)), \
        f"`fusionrec {' '.join(path)}` has no --json"
