"""`releasectl dev-host`: a reference host that loads features only after verifying them."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import click

from releasecontrol.errors import ConfigError
from releasecontrol.index import REMOTE_INDEX_PATH
from releasecontrol.trust import DEV_TRUST_FILE, ENV_ALLOW_DEV_KEYS, ENV_TRUST_JSON, ENV_TRUST_PATH
from releasectl import _common
from releasectl._common import DURATION, OneLineError, echo_json, output_option
from releasectl.mock_cdn import wait_for_stop_signal

if TYPE_CHECKING:
    from releasecontrol.host import FeatureHost

ENV_INDEX_URL = "FEATURE_REMOTE_INDEX_URL"
DEFAULT_LISTEN = "127.0.0.1:4200"


def is_production(environ: Mapping[str, str]) -> bool:
    """RELEASECONTROL_ENV=production, or NODE_ENV=production (the contract's alias), read as
    the host reads them: a typo or a disagreement raises ConfigError."""
    from releasecontrol.host import production_setting

    return production_setting(environ) is not None


def host_environment(environ: Mapping[str, str], home: Path) -> tuple[dict[str, str], list[str]]:
    """The environment a FeatureHost is built from, with the local-dev fallbacks filled in.

    In development, an unset FEATURE_REMOTE_INDEX_URL becomes the running dev
    server's `origin_url` + remote-index.json (from `<home>/run/endpoints.json`),
    and unset trust variables become `<home>/keys/trust.json`, whose dev key is
    then allowed: it is this machine's own. Returns the environment and one
    line per fallback used. Raises ConfigError when the index URL is unset and
    no dev server is running (or in production, where nothing is filled in).
    """
    env = dict(environ)
    notes: list[str] = []
    if is_production(env):
        return env, notes
    if not env.get(ENV_INDEX_URL, "").strip():
        endpoints = home / "run" / "endpoints.json"
        try:
            origin_url = json.loads(endpoints.read_bytes())["origin_url"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError(
                f"{ENV_INDEX_URL} is not set and no dev server is running (no usable "
                f"{endpoints}): set it to the URL of remote-index.json, or start `releasectl dev`"
            ) from None
        if not isinstance(origin_url, str) or not origin_url:
            raise ConfigError(f'{endpoints} has no "origin_url"; restart `releasectl dev`')
        base = origin_url if origin_url.endswith("/") else origin_url + "/"
        env[ENV_INDEX_URL] = base + REMOTE_INDEX_PATH
        notes.append(f"index: {env[ENV_INDEX_URL]} (the running dev server's origin)")
    if not (env.get(ENV_TRUST_JSON, "").strip() or env.get(ENV_TRUST_PATH, "").strip()):
        trust = home / "keys" / DEV_TRUST_FILE
        if trust.is_file():
            env[ENV_TRUST_PATH] = str(trust)
            env[ENV_ALLOW_DEV_KEYS] = "1"
            notes.append(
                f"trust: {trust}, allowing its insecure dev key (local development only; "
                f"set {ENV_TRUST_PATH} to trust production keys)"
            )
    return env, notes


@click.command("dev-host")
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    help="Where the host's page listens; port 0 picks a free port.",
)
@click.option(
    "--interval",
    type=DURATION,
    default="5s",
    show_default=True,
    help="How often to refresh from the CDN (e.g. 5s, 1m).",
)
@click.option(
    "--channel",
    type=click.Choice(["stable", "canary"]),
    default="stable",
    show_default=True,
    help="Which channel this host follows; canary hosts load a running canary.",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the host keeps the highest sequences it has seen and verified files; "
    "default: $RELEASECONTROL_HOME/dev-host/CHANNEL.",
)
@output_option
@click.pass_context
def dev_host(
    ctx: click.Context,
    listen: str,
    interval: int,
    channel: str,
    state_dir: Path | None,
    output: str,
) -> None:
    """Run a reference host that loads every feature from the CDN, verified, until Ctrl-C.

    Reads remote-index.json from FEATURE_REMOTE_INDEX_URL and trusts the keys
    in FEATURE_TRUST_PUBLIC_KEYS_PATH (or _JSON). In development, when they are
    unset, it uses the running dev server's origin and the state directory's
    trust.json, and then allows that file's dev key.

    Serves a page whose features are loaded in your browser by
    @releasecontrol/host straight from the CDN (verified there, every script
    checked by the browser with Subresource Integrity), showing per feature the
    version, channel, sequence and signing key, and what was refused and why.
    The Python host's view of the same CDN is at /server, /status.json, and
    /features/<id>/<asset> with the verified bytes of each asset.

    \b
    Example:
      releasectl dev-host --channel canary --interval 2s
      FEATURE_REMOTE_INDEX_URL=http://127.0.0.1:4100/remote-index.json releasectl dev-host
    """
    from releasecontrol.devhost import BrowserHost, DevHostServer
    from releasecontrol.host import FeatureHost

    if interval < 1:
        raise click.BadParameter("must be at least 1s", ctx, param_hint="'--interval'")
    try:
        listen_host, port = _split_listen(listen)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param_hint="'--listen'") from None
    home = _common.state_dir(ctx)
    environ, notes = host_environment(os.environ, home)
    host = FeatureHost.from_environment(
        environ,
        state_dir=state_dir or home / "dev-host" / channel,
        channel=channel,
    )
    index_url = environ[ENV_INDEX_URL]
    # What changed is printed below, once; the library would warn on every refresh.
    logging.getLogger("releasecontrol").addHandler(logging.NullHandler())
    shown: dict[str, str] = {}

    def print_changes(report: object) -> None:
        nonlocal shown
        now = _state_lines(host)
        for key, line in now.items():
            if shown.get(key) != line:
                click.echo(line)
        for key in sorted(shown.keys() - now.keys()):
            if key.startswith("refused "):
                click.echo(f"  no longer {key}")
            else:
                click.echo(f"  dropped  {key} (no longer in the remote index)")
        shown = now

    app = DevHostServer(
        host,
        index_url=index_url,
        channel=channel,
        listen_host=listen_host,
        port=port,
        interval_seconds=float(interval),
        on_refresh=None if output == "json" else print_changes,
        browser=BrowserHost(
            index_url=host.index_url,
            trust_json=host.trust.to_json(),
            allow_dev_keys=host.allow_dev_keys,
            channel=channel,
            interval_seconds=float(interval),
        ),
    )
    app.refresh()  # the first load, before the page is served
    try:
        app.start()
    except OSError as exc:
        raise OneLineError(
            f"cannot listen on {listen}: {exc.strerror or exc}; free the port or pass --listen"
        ) from None
    try:
        if output == "json":
            echo_json(
                {
                    "url": app.url,
                    "index_url": index_url,
                    "channel": channel,
                    "loaded": {fid: f.version for fid, f in host.features.items()},
                    "refused": dict(host.refused),
                    "notes": notes,
                }
            )
        else:
            for note in notes:
                click.echo(note)
            click.echo(
                f"dev host at {app.url} (open it in a browser: features load there, verified; "
                f"channel {channel}, refresh every {interval}s)"
            )
            print_changes(None)
            click.echo("Stop with Ctrl-C.")
        wait_for_stop_signal()
    finally:
        app.stop()


def _state_lines(host: FeatureHost) -> dict[str, str]:
    """One line per loaded or refused item, keyed by it, to print what changed."""
    lines = {
        fid: f"  loaded   {fid} {f.version} ({f.channel}, sequence {f.releases_sequence})"
        for fid, f in sorted(host.features.items())
    }
    for name, reason in sorted(host.refused.items()):
        lines[f"refused {name}"] = f"  refused  {name}: {reason}"
    return lines


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{listen!r} is not host:port (e.g. 127.0.0.1:4200)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)
