"""`releasectl completion`: the shell completion script, click's, for bash, zsh or fish."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

COMPLETE_VAR = "_RELEASECTL_COMPLETE"
"""The variable the script sets when it asks `releasectl` for completions (click's name)."""

SHELLS = ("bash", "fish", "zsh")


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL: commands, options and their choices.

    \b
    Example:
      eval "$(releasectl completion bash)"        # in ~/.bashrc
      eval "$(releasectl completion zsh)"         # in ~/.zshrc
      releasectl completion fish | source         # in ~/.config/fish/config.fish
    """
    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - click ships all three
        raise click.UsageError(f"no completion for {shell}", ctx)
    # The script runs `releasectl` with COMPLETE_VAR set, whatever this process is called.
    script = cls(ctx.find_root().command, {}, "releasectl", COMPLETE_VAR).source()
    click.echo(script, nl=not script.endswith("\n"))
