"""`releasectl token`: create and revoke bearer tokens of the `rpc-token` auth mode.

The token store is a file the server reads (and re-reads when it changes), so
these commands work on the file directly, on the machine that holds it: no
server call, no running server needed.
"""

from __future__ import annotations

from pathlib import Path

import click

from releasectl._common import OneLineError, echo_json, one_line, output_option
from releasectl.doctor import config_option, tool_config

_ROLES = ("viewer", "releaser", "approver", "admin")

store_option = click.option(
    "--store",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    metavar="PATH",
    help="The token store; default: the config's token_store_path "
    "($RELEASECONTROL_HOME/auth/tokens.json).",
)


def _store_path(ctx: click.Context, store: Path | None, config_path: Path | None) -> Path:
    if store is not None:
        return store.absolute()
    return tool_config(ctx, config_path).token_store_path


@click.group()
def token() -> None:
    """Bearer tokens for the rpc-token auth mode: create and revoke.

    \b
    Example:
      releasectl token create --principal ci-release-bot --role releaser
    """


@token.command("create")
@click.option("--principal", required=True, metavar="NAME", help="Who the token authenticates.")
@click.option(
    "--role",
    "roles",
    required=True,
    multiple=True,
    metavar="ROLE",
    help=f"A role ({', '.join(_ROLES)}); repeat for several.",
)
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    metavar="PATTERN",
    help="Limit the roles to features matching PATTERN (e.g. 'feature-pay*'); repeat for "
    "several; default: every feature.",
)
@store_option
@config_option
@output_option
@click.pass_context
def create(
    ctx: click.Context,
    principal: str,
    roles: tuple[str, ...],
    scopes: tuple[str, ...],
    store: Path | None,
    config_path: Path | None,
    output: str,
) -> None:
    """Create a token and print it once; only its SHA-256 is stored.

    The server picks the new token up without a restart.

    \b
    Example:
      releasectl token create --principal ci-release-bot --role releaser --scope 'feature-pay*'
    """
    from releasecontrol_server.auth.tokens import create_token

    path = _store_path(ctx, store, config_path)
    try:
        secret = create_token(path, principal, roles, scopes or None)
    except ValueError as exc:
        raise OneLineError(one_line(str(exc))) from None
    if output == "json":
        echo_json(
            {
                "principal": principal,
                "roles": sorted(set(roles)),
                "scopes": list(scopes),
                "store": str(path),
                "token": secret,
            }
        )
    else:
        click.echo(secret)
    click.echo(
        f"note: this token for {principal!r} is shown only once; {path} keeps only its hash. "
        "Hand it over through a secret store.",
        err=True,
    )


@token.command("revoke")
@click.option(
    "--principal", required=True, metavar="NAME", help="Whose tokens to revoke (all of them)."
)
@store_option
@config_option
@output_option
@click.pass_context
def revoke(
    ctx: click.Context,
    principal: str,
    store: Path | None,
    config_path: Path | None,
    output: str,
) -> None:
    """Revoke every token of a principal; the server refuses them from its next call on.

    \b
    Example:
      releasectl token revoke --principal ci-release-bot
    """
    from releasecontrol_server.auth.tokens import revoke_tokens

    path = _store_path(ctx, store, config_path)
    removed = revoke_tokens(path, principal)
    if removed == 0:
        raise OneLineError(f"no token of principal {principal!r} in {path}; nothing was revoked")
    if output == "json":
        echo_json({"principal": principal, "revoked": removed, "store": str(path)})
    else:
        click.echo(f"revoked {removed} token(s) of {principal!r} in {path}")
