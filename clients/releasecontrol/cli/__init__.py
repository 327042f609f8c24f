"""`releasectl`: the command line of ReleaseControl, one module per command group."""

from __future__ import annotations

from pathlib import Path

import click

from releasecontrol.cli._common import CliState, ReleaseCtlGroup
from releasecontrol.cli.channel import channel
from releasecontrol.cli.dev import dev
from releasecontrol.cli.dev_host import dev_host
from releasecontrol.cli.doctor import doctor
from releasecontrol.cli.interactive import interactive
from releasecontrol.cli.lint import lint, validate
from releasecontrol.cli.mock_cdn import mock_cdn
from releasecontrol.cli.publish import publish
from releasecontrol.cli.release import release
from releasecontrol.cli.token import token
from releasecontrol.cli.verify import verify

__all__ = ["main"]


@click.group(cls=ReleaseCtlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--server",
    envvar="RELEASECONTROL_ADDR",
    metavar="ADDR",
    default=None,
    help="Control plane gRPC address (host:port); default: the running dev server, "
    "else 127.0.0.1:50051. [env: RELEASECONTROL_ADDR]",
)
@click.option(
    "--home",
    envvar="RELEASECONTROL_HOME",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="State directory (PKI, keys, database); default: ./.releasecontrol. "
    "[env: RELEASECONTROL_HOME]",
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


main.add_command(dev)
main.add_command(publish)
main.add_command(release)
main.add_command(channel)
main.add_command(mock_cdn)
main.add_command(dev_host)
main.add_command(interactive)
main.add_command(verify)
main.add_command(token)
main.add_command(doctor)
main.add_command(lint)
main.add_command(validate)
