"""`releasectl webhook test`: send a test event to the control plane's webhooks."""

from __future__ import annotations

import click

from releasectl._common import OneLineError, echo_json, open_client, output_option

__all__ = ["webhook"]


@click.group()
def webhook() -> None:
    """The webhooks the control plane tells every change, approval request and verdict.

    They are configured on the server (`[[webhooks]]` in its config file, or
    RELEASECONTROL_WEBHOOKS); docs/webhooks.md says how a receiver checks them.
    """


@webhook.command("test")
@click.option("--name", default="", help="Only this webhook; default: every configured one.")
@output_option
@click.pass_context
def test(ctx: click.Context, name: str, output: str) -> None:
    """POST a signed test event to each webhook now and show how it answered (admin role).

    Exits 1 when a receiver did not answer 2xx.

    \b
    Example:
      releasectl webhook test
      releasectl webhook test --name ops
    """
    with open_client(ctx) as client:
        results = list(client.test_webhooks(name).results)
    if output == "json":
        echo_json(
            [
                {
                    "name": r.name,
                    "url": r.url,
                    "status": r.status or None,
                    "seconds": round(r.seconds, 3),
                    "error": r.error or None,
                }
                for r in results
            ]
        )
    elif not results:
        click.echo("no webhook is configured: add [[webhooks]] to the server's config")
    for r in results if output != "json" else ():
        if r.error:
            click.echo(f"{r.name}: {r.url}: {r.error}")
        else:
            click.echo(f"{r.name}: {r.url}: delivered (HTTP {r.status}, {r.seconds * 1000:.0f} ms)")
    failed = [r.name for r in results if r.error]
    if failed:
        raise OneLineError(f"not delivered to {', '.join(failed)}")
