"""The dev host's web app: a browser host page, and what the server-side host verified.

`releasectl dev-host` runs it. It shows a person and a script what hosts would
serve, and serves nothing it has not verified:

    GET /                              the browser host: @releasecontrol/host, in the page,
                                       loads every feature straight from the CDN after
                                       verifying it (static/dev-host.js), and shows version,
                                       channel (with a percentage canary's weight and the
                                       browser's bucket), sequence, signing key, what ran
                                       and what was refused and why
    GET /static/<file>                 the built @releasecontrol/host bundle and dev-host.js,
                                       shipped in this package (no bundler step)
    GET /server                        the same for the Python FeatureHost on this server
    GET /status.json                   FeatureHost.snapshot()
    GET /features/<id>/<asset path>    the verified bytes of an asset of the loaded version

A background thread refreshes the Python host every `interval_seconds`; the
page's host refreshes itself as often. A failed refresh keeps the last good
state (both hosts promise it) and the pages say why. Everything shown comes from
the CDN, so every value is escaped (the browser page only ever sets text).
"""

from __future__ import annotations

import hashlib
import html
import importlib.resources
import json
import logging
import mimetypes
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePosixPath
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

from releasecontrol.errors import ReleaseControlError
from releasecontrol.host import LoadedFeature

__all__ = ["BrowserHost", "DevHostServer", "HostView", "render_browser_page", "render_page"]

log = logging.getLogger(__name__)

# Set explicitly: the system's mime.types varies, and browsers refuse module
# scripts served with the wrong type.
_CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".wasm": "application/wasm",
    ".txt": "text/plain; charset=utf-8",
}
_PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'"
_STATIC_FILES = ("releasecontrol-host.min.js", "dev-host.js")
_IDLE_TIMEOUT_SECONDS = 30.0


class HostView(Protocol):
    """What the app needs of a FeatureHost (the real one, or a stand-in in tests)."""

    @property
    def features(self) -> Mapping[str, LoadedFeature]: ...

    @property
    def refused(self) -> Mapping[str, str]: ...

    def snapshot(self) -> dict[str, Any]: ...

    def refresh(self) -> Any: ...


def _side_text(feature: LoadedFeature) -> str:
    """The side served ("stable"), and while a canary runs, its weight and the host's bucket:
    "stable (canary at 25%, bucket 4570)". The side is the canary iff the bucket is below the
    weight, or the host follows the canary channel (no bucket then)."""
    if feature.canary_weight is None:
        return feature.channel
    share = f"canary at {feature.canary_weight / 100:g}%"
    if feature.bucket is None:
        return f"{feature.channel} (opted in; {share})"
    return f"{feature.channel} ({share}, bucket {feature.bucket})"


def content_type(path: str) -> str:
    suffix = PurePosixPath(path).suffix.lower()
    if suffix in _CONTENT_TYPES:
        return _CONTENT_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(path, strict=False)
    return guessed or "application/octet-stream"


def verified_asset(host: HostView, feature_id: str, path: str) -> bytes | None:
    """The bytes of `path` in the loaded version of `feature_id`, hashed again as they are read.

    None when the feature is not loaded, the path is not one of its assets, or
    the cached bytes cannot be read or no longer match the manifest (never served).
    """
    loaded = host.features.get(feature_id)
    if loaded is None or path not in loaded.artifacts:
        return None
    try:
        return loaded.artifact_bytes(path)
    except (KeyError, ReleaseControlError) as exc:
        log.error("asset not served feature=%s path=%s reason=%s", feature_id, path, exc)
        return None


# -- the browser page ----------------------------------------------------------------------


@dataclass(frozen=True)
class BrowserHost:
    """What the browser page's host is configured with (the page embeds it as JSON)."""

    index_url: str
    trust_json: str
    """The trust file's JSON: the root keys the browser host pins."""
    allow_dev_keys: bool
    channel: str
    interval_seconds: float

    def cdn_origin(self) -> str:
        parts = urlsplit(self.index_url)
        return f"{parts.scheme}://{parts.netloc}"

    def csp(self) -> str:
        """Scripts from this page and the CDN only; fetches to the CDN only. Inline scripts are
        allowed for the import maps @releasecontrol/host adds (their integrity is the point)."""
        cdn = self.cdn_origin()
        return (
            f"default-src 'none'; script-src 'self' 'unsafe-inline' {cdn}; connect-src {cdn}; "
            "style-src 'unsafe-inline'"
        )


def render_browser_page(browser: BrowserHost) -> str:
    """The page whose features are loaded in the browser by @releasecontrol/host."""
    config = {
        "indexUrl": browser.index_url,
        "trust": json.loads(browser.trust_json),
        "allowDevKeys": browser.allow_dev_keys,
        "channel": browser.channel,
        "intervalMs": int(browser.interval_seconds * 1000),
    }
    # A data block, never run; "</" could end the element early, so it is escaped.
    data = json.dumps(config).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ReleaseControl dev host</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
.ran.failed, #refused li {{ color: #a00; }} code {{ background: #f4f4f4; }}
</style>
<script type="application/json" id="config">{data}</script>
<script type="module" src="/static/dev-host.js"></script>
</head><body>
<h1>ReleaseControl dev host</h1>
<p>Features loaded <strong>in this browser</strong> by @releasecontrol/host, straight from
<code>{_e(browser.index_url)}</code> (channel {_e(browser.channel)}), each only after its
signatures, sequence, expiry and hashes verified; the browser itself checks every script
against the signed manifest (Subresource Integrity).
<a href="/server">What the Python host on this server verified</a> ·
<a href="/status.json">status.json</a></p>
<p><button id="refresh" type="button">Refresh now</button> <span id="status">loading…</span></p>
<table><thead><tr><th>feature</th><th>version</th><th>channel</th><th>sequence</th>
<th>signed by</th><th>ran</th></tr></thead><tbody id="features"></tbody></table>
<h2>Refused</h2><p id="refused-none">nothing</p><ul id="refused"></ul>
<h2>Changes</h2><ul id="events"></ul>
</body></html>
"""


def static_file(name: str) -> bytes | None:
    """A file of this package's static/ folder that the page may load, else None."""
    if name not in _STATIC_FILES:
        return None
    return importlib.resources.files("releasecontrol").joinpath("static", name).read_bytes()


# -- the server-side page ------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _asset_link(feature_id: str, path: str) -> str:
    href = f"/features/{quote(feature_id, safe='')}/{quote(path, safe='/')}"
    return f'<a href="{_e(href)}">{_e(path)}</a>'


def render_page(
    host: HostView,
    *,
    index_url: str,
    channel: str,
    interval_seconds: float,
    last_refresh: str,
) -> str:
    """The HTML page: what is loaded (version, channel, sequence, assets) and what was refused."""
    rows = []
    for fid in sorted(host.features):
        f = host.features[fid]
        assets = ", ".join(_asset_link(fid, p) for p in sorted(f.artifacts))
        rows.append(
            "<tr>"
            f"<td>{_e(fid)}</td><td>{_e(f.version)}</td><td>{_e(_side_text(f))}</td>"
            f"<td>{_e(f.releases_sequence)}</td>"
            f'<td><code title="{_e(f.manifest_sha256)}">{_e(str(f.manifest_sha256)[:12])}…</code>'
            f"</td><td>{assets or '-'}</td>"
            "</tr>"
        )
    refused = [
        f"<tr><td>{_e(name)}</td><td>{_e(reason)}</td></tr>"
        for name, reason in sorted(host.refused.items())
    ]
    loaded_table = (
        "<table><tr><th>feature</th><th>version</th><th>channel</th><th>sequence</th>"
        "<th>manifest sha256</th><th>assets (verified)</th></tr>" + "".join(rows) + "</table>"
        if rows
        else "<p>Nothing loaded yet.</p>"
    )
    refused_table = (
        "<table><tr><th>feature or file</th><th>why</th></tr>" + "".join(refused) + "</table>"
        if refused
        else "<p>Nothing refused.</p>"
    )
    refresh = max(1, round(interval_seconds))
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh}">
<title>ReleaseControl dev host</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; }}
.refused td {{ background: #fff3f3; }}
</style>
</head>
<body>
<h1>ReleaseControl dev host</h1>
<p>Index <code>{_e(index_url)}</code>, channel <b>{_e(channel)}</b>,
refreshed every {_e(f"{interval_seconds:g}")}s; last refresh: {_e(last_refresh)}.
<a href="/status.json">status.json</a></p>
<h2>Loaded (every hash verified)</h2>
{loaded_table}
<h2>Refused</h2>
<div class="refused">{refused_table}</div>
</body>
</html>
"""


# -- the server ----------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ReleaseControlDevHost"
    sys_version = ""
    timeout = _IDLE_TIMEOUT_SECONDS
    app: DevHostServer  # set on the subclass made per server

    def do_GET(self) -> None:
        self._route(send_body=True)

    def do_HEAD(self) -> None:
        self._route(send_body=False)

    def _route(self, *, send_body: bool) -> None:
        raw = urlsplit(self.path).path
        try:
            path = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
            return
        host = self.app.host
        browser = self.app.browser
        if path == "/" and browser is not None:
            self._send(
                HTTPStatus.OK,
                render_browser_page(browser).encode(),
                "text/html; charset=utf-8",
                send_body=send_body,
                extra={"Content-Security-Policy": browser.csp()},
            )
        elif path.startswith("/static/") and (data := static_file(path[8:])) is not None:
            self._send(HTTPStatus.OK, data, content_type(path), send_body=send_body)
        elif path in ("/", "/server"):
            page = self.app.page().encode()
            self._send(
                HTTPStatus.OK,
                page,
                "text/html; charset=utf-8",
                send_body=send_body,
                extra={"Content-Security-Policy": _PAGE_CSP},
            )
        elif path == "/status.json":
            body = (json.dumps(host.snapshot(), indent=2, sort_keys=True) + "\n").encode()
            self._send(HTTPStatus.OK, body, "application/json", send_body=send_body)
        elif path.startswith("/features/"):
            feature_id, _, asset = path.removeprefix("/features/").partition("/")
            data = verified_asset(host, feature_id, asset) if asset else None
            if data is None:
                self._send(
                    HTTPStatus.NOT_FOUND,
                    b"not found: no verified asset at this path\n",
                    "text/plain; charset=utf-8",
                    send_body=send_body,
                )
                return
            self._send(
                HTTPStatus.OK,
                data,
                content_type(asset),
                send_body=send_body,
                extra={"ETag": f'"{hashlib.sha256(data).hexdigest()}"'},
            )
        else:
            self._send(
                HTTPStatus.NOT_FOUND,
                b"not found\n",
                "text/plain; charset=utf-8",
                send_body=send_body,
            )

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        ctype: str,
        *,
        send_body: bool = True,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        # What is loaded changes on every refresh: never cache it.
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def do_POST(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"only GET and HEAD\n", "text/plain")

    def log_message(self, format: str, *args: object) -> None:
        log.debug("dev host http %s " + format, self.address_string(), *args)


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class DevHostServer:
    """Serves a host's verified state on host:port and refreshes it every `interval_seconds`.

    `start()` binds (raises OSError when it cannot) and starts both threads;
    `stop()` ends them. `on_refresh(report)` is called after each background
    refresh (from the refresh thread).
    """

    def __init__(
        self,
        host: HostView,
        *,
        index_url: str,
        channel: str,
        listen_host: str = "127.0.0.1",
        port: int = 4200,
        interval_seconds: float = 5.0,
        on_refresh: Callable[[Any], None] | None = None,
        browser: BrowserHost | None = None,
    ) -> None:
        """`browser`: serve the browser host page at / (the server-side page moves to
        /server); without it, / is the server-side page."""
        if not interval_seconds > 0:
            raise ValueError(f"interval_seconds must be positive, not {interval_seconds!r}")
        self.host = host
        self.browser = browser
        self.index_url = index_url
        self.channel = channel
        self.listen_host = listen_host
        self.interval_seconds = interval_seconds
        self._requested_port = port
        self._on_refresh = on_refresh
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._refresh_lock = threading.Lock()
        self._last_refresh = "not yet"

    @property
    def port(self) -> int:
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"http://{host}:{self.port}/"

    def refresh(self) -> Any:
        """Refresh the host now (one at a time) and remember when and how it went."""
        with self._refresh_lock:
            try:
                report = self.host.refresh()
            except Exception as exc:  # the app must keep serving the last good state
                self._last_refresh = f"{_now()} failed: {exc}"
                log.exception("dev host refresh failed")
                return None
            ok = getattr(report, "ok", True)
            self._last_refresh = f"{_now()} {'ok' if ok else 'with refusals'}"
            return report

    def page(self) -> str:
        return render_page(
            self.host,
            index_url=self.index_url,
            channel=self.channel,
            interval_seconds=self.interval_seconds,
            last_refresh=self._last_refresh,
        )

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the dev host is already running")
        handler = type("DevHostHandler", (_Handler,), {"app": self})
        server_class = _IPv6Server if ":" in self.listen_host else ThreadingHTTPServer
        server = server_class((self.listen_host, self._requested_port), handler)
        server.daemon_threads = True
        self._server = server
        self._stop.clear()
        self._threads = [
            threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.1},
                name="dev-host-http",
                daemon=True,
            ),
            threading.Thread(target=self._refresh_loop, name="dev-host-refresh", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        log.info("dev host serving url=%s index=%s", self.url, self.index_url)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            started = time.monotonic()
            report = self.refresh()
            log.debug("dev host refreshed in %.3fs", time.monotonic() - started)
            if self._on_refresh is not None and report is not None:
                try:
                    self._on_refresh(report)
                except Exception:
                    log.exception("dev host on_refresh failed")

    def stop(self) -> None:
        """Stop serving and refreshing; safe to call twice."""
        server = self._server
        if server is None:
            return
        self._stop.set()
        server.shutdown()
        server.server_close()
        for thread in self._threads:
            thread.join()
        self._server = None
        self._threads = []

    def __enter__(self) -> DevHostServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
