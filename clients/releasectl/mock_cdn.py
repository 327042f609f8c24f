"""`releasectl mock-cdn`: serve an origin folder over HTTP the way a CDN would see it."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

import click

from releasectl._common import OneLineError, echo_json, output_option, state_dir

DEFAULT_LISTEN = "127.0.0.1:4100"


@click.command("mock-cdn")
@click.option(
    "--dir",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="The origin folder to serve; default: $RELEASECONTROL_HOME/origin.",
)
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    help="Where to listen; port 0 picks a free port.",
)
@output_option
@click.pass_context
def mock_cdn(ctx: click.Context, folder: Path | None, listen: str, output: str) -> None:
    """Serve a CDN origin folder on a local port until Ctrl-C.

    Sends what a real CDN pulling from the origin gets: `Cache-Control:
    no-cache` for index files and manifests (revalidated by ETag, answered
    304 when unchanged) and `immutable` for the content-addressed artifacts.
    Prints the URL (as JSON with --output json) once it serves.

    \b
    Example:
      releasectl mock-cdn --dir ./.releasecontrol/origin --listen 127.0.0.1:4100
    """
    # Imported here: --help must work without the server's dependencies loaded.
    from releasecontrol_server.config import split_listen_address
    from releasecontrol_server.origin.http import OriginHttpServer

    try:
        host, port = split_listen_address(listen)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param_hint="'--listen'") from None
    root = folder if folder is not None else state_dir(ctx) / "origin"
    if not root.is_dir():
        raise OneLineError(
            f"no origin folder at {root}: publish with `releasectl dev` running first, "
            "or pass --dir"
        )
    server = OriginHttpServer(root, host, port)
    try:
        server.start()
    except OSError as exc:
        raise OneLineError(
            f"cannot listen on {listen}: {exc.strerror or exc}; free the port or pass --listen"
        ) from None
    try:
        if output == "json":
            echo_json({"url": server.url, "dir": str(root.resolve())})
        else:
            click.echo(f"serving {root} at {server.url}")
            click.echo(f"  remote index  {server.url}remote-index.json")
            click.echo("Stop with Ctrl-C.")
        wait_for_stop_signal()
    finally:
        server.stop()


def wait_for_stop_signal() -> None:
    """Block until Ctrl-C (SIGINT) or SIGTERM; either ends the wait quietly."""
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # A timeout keeps the main thread waking up, so signals are handled promptly.
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
