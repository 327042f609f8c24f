"""`releasectl dev`: the whole system on one machine, in the foreground."""

from __future__ import annotations

import click

from releasectl._common import CliState


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def dev(ctx: click.Context, server_args: tuple[str, ...]) -> None:
    """Run the whole system locally, in the foreground.

    The control plane on SQLite, the CDN origin and the admin UI, with dev
    defaults.

    Generates the dev PKI and signing keys on first run under the state
    directory (--home), then prints the URLs. Extra arguments go to
    releasecontrol-server. Stop it with Ctrl-C.

    \b
    Example:
      releasectl --home ./.releasecontrol dev
    """
    # Imported here: the CLI must start (and --help work) without the server's
    # dependencies being loaded.
    from releasecontrol_server.main import main as server_main

    state = ctx.find_object(CliState) or CliState()
    argv = ["--dev"]
    if state.home is not None:
        argv += ["--home", str(state.home)]
    raise SystemExit(server_main([*argv, *server_args]))
