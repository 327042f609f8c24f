"""Every `releasectl` line in README.md's shell blocks is a command the CLI accepts.

Each line is parsed by the real click commands (commands, options, choices and
their checks), without running anything, so a renamed option, a removed
command or a value a choice no longer takes fails here (a file the line names
need not exist on this machine). tests/integration/test_readme_tour.py runs the
tour itself (issue 13, item 14).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest

from releasectl import main

README = Path(__file__).resolve().parents[2] / "README.md"


def shell_blocks(text: str) -> list[str]:
    """The bodies of the ```sh blocks of a Markdown text, in order."""
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def command_lines(block: str) -> list[str]:
    """The `releasectl …` lines of a block, without their comments and redirections."""
    lines = []
    for line in block.splitlines():
        if not line.startswith("releasectl "):
            continue
        words = shlex.split(line, comments=True)
        if ">" in words:
            words = words[: words.index(">")]
        lines.append(shlex.join(words))
    return lines


def readme_commands(path: Path = README) -> list[str]:
    return [line for block in shell_blocks(path.read_text()) for line in command_lines(block)]


def parse(line: str) -> click.Command:
    """Parse `line` as click would before running it; the command it names. Raises click's
    UsageError (or BadParameter) for an unknown command or option or a bad value."""
    args = shlex.split(line)[1:]
    command: click.Command = main
    ctx = main.make_context("releasectl", args)
    while isinstance(command, click.Group):
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            break
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None and name is not None, line
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub
    return command


def test_the_readme_has_the_tour() -> None:
    """The extraction finds the tour and the other blocks (a guard for the parser)."""
    lines = readme_commands()
    assert len(lines) >= 20
    assert any(line.startswith("releasectl publish") for line in lines)


@pytest.mark.parametrize("line", readme_commands())
def test_every_readme_command_parses(
    line: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The command exists and takes every option the README gives it, with those values."""
    for name in list(os.environ):
        if name.startswith(("RELEASECONTROL_", "FEATURE_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    convert = click.Path.convert

    def without_existence(self: click.Path, value: Any, *args: Any) -> Any:
        # The files a line names are of another machine (/media/offline/root-a.pem).
        monkeypatch.setattr(self, "exists", False)
        return convert(self, value, *args)

    monkeypatch.setattr(click.Path, "convert", without_existence)
    command = parse(line)
    assert not isinstance(command, click.Group) or line.endswith(command.name or ""), line
