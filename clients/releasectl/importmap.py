"""`releasectl importmap`: a verified import map with `integrity` for every script."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import click

from releasecontrol.files import atomic_write
from releasectl._common import OneLineError, state_dir

__all__ = ["importmap"]


@click.command("importmap")
@click.option(
    "--channel",
    type=click.Choice(["stable", "canary"]),
    required=True,
    help="Which channel's versions the map points to (canary: a running canary, else stable).",
)
@click.option(
    "--index-url",
    metavar="URL",
    default=None,
    help="The remote-index.json to verify; default: FEATURE_REMOTE_INDEX_URL, else the "
    "running dev server's origin.",
)
@click.option(
    "--feature",
    "features",
    multiple=True,
    metavar="FEATURE",
    help="Only these features (repeat); default: every published one.",
)
@click.option(
    "--allow-dev-keys",
    is_flag=True,
    help="Count signatures by dev keys (local development only).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the map to this file instead of printing it.",
)
@click.pass_context
def importmap(
    ctx: click.Context,
    channel: str,
    index_url: str | None,
    features: tuple[str, ...],
    allow_dev_keys: bool,
    out: Path | None,
) -> None:
    """Print an import map of the verified entry of every feature, with `integrity`.

    Verifies the remote index as a host does (trust file from
    FEATURE_TRUST_PUBLIC_KEYS_PATH or _JSON, else the dev trust.json, whose dev
    key is then allowed) and fails with the reason when anything is refused, so
    a build never inlines a map of files that were not signed. Inline the result
    in a page as <script type="importmap">: the browser then refuses any script
    whose bytes differ from the signed manifest.

    \b
    Example:
      releasectl importmap --channel stable > importmap.json
      releasectl importmap --channel canary --index-url https://cdn.example.com/remote-index.json
    """
    from releasecontrol.host import FeatureHost
    from releasecontrol.importmap import build_import_map
    from releasectl.dev_host import ENV_INDEX_URL, host_environment

    environ = dict(os.environ)
    if index_url is not None:
        environ[ENV_INDEX_URL] = index_url
    environ, _ = host_environment(environ, state_dir(ctx))
    extra = {"allow_insecure_dev_keys": True} if allow_dev_keys else {}
    logging.getLogger("releasecontrol").addHandler(logging.NullHandler())
    with tempfile.TemporaryDirectory(prefix="releasectl-importmap-") as tmp:
        host = FeatureHost.from_environment(
            environ,
            state_dir=Path(tmp),
            channel=channel,
            features=list(features) or None,
            **extra,
        )
        report = host.refresh()
    if report.refusals:
        reasons = "; ".join(f"{k}: {r.message}" for k, r in sorted(report.refusals.items()))
        raise OneLineError(f"not every feature verified, no import map written: {reasons}")
    mapping = build_import_map(
        host.index_url, {fid: f.manifest for fid, f in host.features.items()}
    )
    text = json.dumps(mapping, indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
    else:
        atomic_write(out, text.encode("utf-8"), mode=0o644)
        click.echo(f"import map of {len(mapping['imports'])} feature(s) written to {out}", err=True)
