"""`releasectl channel`: the operator's override of one channel."""

from __future__ import annotations

import click

from releasectl._common import (
    Change,
    change_options,
    feature_option,
    open_client,
    output_option,
    print_transition,
    version_option,
)


@click.group()
def channel() -> None:
    """Operator override of one channel.

    \b
    Example:
      releasectl channel fallback --feature checkout --version 1.1.0 --to stable
    """


@channel.command("fallback")
@feature_option
@version_option
@click.option(
    "--to",
    "to",
    required=True,
    type=click.Choice(["stable", "canary"]),
    help="The channel to point at VERSION.",
)
@change_options
@output_option
@click.pass_context
def fallback(
    ctx: click.Context,
    feature: str,
    version: str,
    to: str,
    output: str,
    change: Change,
) -> None:
    """Point one channel at any published version (operator fallback).

    \b
    Example:
      releasectl channel fallback --feature checkout --version 1.1.0 --to stable --reason INC-7
    """
    with open_client(ctx) as client:
        response = client.set_channel(
            feature, version, "canary" if to == "canary" else "stable", **change.kwargs()
        )
    print_transition(response.transition, response.feature, output)
