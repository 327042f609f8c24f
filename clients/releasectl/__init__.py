"""`releasectl`: the command line of ReleaseControl, one module per command group."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

# gRPC's C core logs each failed TLS handshake on stderr, a line per retry, before our
# one-line error: quiet unless the user asked for its logs (GRPC_VERBOSITY set).
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import click

from releasectl._common import CliState, ReleaseCtlGroup, exit_codes_help

__all__ = ["main"]

# Each command's module is imported only when that command runs (or help lists
# it), so `releasectl release status` does not pay for the host library, the
# dev server or the linters: startup time is most of a quick command's time.
_COMMANDS: dict[str, tuple[str, str]] = {
    "backup": ("releasectl.backup", "backup"),
    "channel": ("releasectl.channel", "channel"),
    "completion": ("releasectl.completion", "completion"),
    "dev": ("releasectl.dev", "dev"),
    "dev-host": ("releasectl.dev_host", "dev_host"),
    "doctor": ("releasectl.doctor", "doctor"),
    "importmap": ("releasectl.importmap", "importmap"),
    "interactive": ("releasectl.interactive", "interactive"),
    "keys": ("releasectl.keys", "keys"),
    "lint": ("releasectl.lint", "lint"),
    "mock-cdn": ("releasectl.mock_cdn", "mock_cdn"),
    "origin": ("releasectl.origin", "origin"),
    "publish": ("releasectl.publish", "publish"),
    "release": ("releasectl.release", "release"),
    "restore": ("releasectl.backup", "restore"),
    "token": ("releasectl.token", "token"),
    "validate": ("releasectl.lint", "validate"),
    "verify": ("releasectl.verify", "verify"),
    "webhook": ("releasectl.webhook", "webhook"),
}


class _LazyGroup(ReleaseCtlGroup):
    """The top-level group, importing a command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in _COMMANDS:
            module, attr = _COMMANDS[cmd_name]
            command = getattr(importlib.import_module(module), attr)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=exit_codes_help(),
)
@click.option(
    "--server",
    envvar="RELEASECONTROL_ADDR",
    metavar="ADDR",
    default=None,
    help="Control plane gRPC address (host:port); default: the address the server "
    "recorded in the state directory (run/endpoints.json), else 127.0.0.1:50051. "
    "[env: RELEASECONTROL_ADDR]",
)
@click.option(
    "--home",
    envvar="RELEASECONTROL_HOME",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="State directory (PKI, keys, database); default: a .releasecontrol folder here "
    "or in the nearest folder above, else the running `releasectl dev`'s, else "
    "./.releasecontrol. [env: RELEASECONTROL_HOME]",
)
@click.version_option(package_name="releasecontrol", prog_name="releasectl")
@click.pass_context
def main(ctx: click.Context, server: str | None, home: Path | None) -> None:
    """Release control for front-end features: publish, canary, promote, rollback.

    \b
    Example:
      releasectl release status
    """
    ctx.obj = CliState(server=server, home=home)
