"""Serve the admin app over HTTP with uvicorn, on the event loop the gRPC server runs on.

The socket is bound here, before uvicorn starts, so a busy port stops the
server with a ConfigError naming `admin_listen` (as a busy gRPC port does), and
port 0 yields the port actually bound. uvicorn's own signal handling is turned
off: `main.serve` owns SIGINT/SIGTERM and stops this server with the rest.

Besides the admin app, the listener serves a few exact paths with apps of their
own (`routes`), outside the admin UI's sign-in: `/metrics` (`metrics.py`), which
checks its own bearer token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine, Generator, Mapping
from typing import Any

import uvicorn

from releasecontrol.errors import ConfigError
from releasecontrol_server.config import split_listen_address

log = logging.getLogger(__name__)

ASGIApp = Callable[[Any, Any, Any], Coroutine[Any, Any, None]]

_START_TIMEOUT_SECONDS = 10.0


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The control plane's loop handles the signals and calls AdminServer.stop().
        yield


class AdminServer:
    """The admin UI's HTTP listener; `start()` then `stop()`, both on the running loop."""

    def __init__(
        self,
        app: ASGIApp,
        listen: str,
        *,
        on_stop: Callable[[], None] | None = None,
        graceful_seconds: int = 2,
        trusted_proxies: str = "",
        routes: Mapping[str, ASGIApp] | None = None,
        what: str = "the admin UI",
        setting: str = "admin_listen",
        path: str = "/_admin",
    ) -> None:
        """`routes`: exact paths (`/metrics`) answered by their own app instead of `app`.
        `what`, `setting` and `path` name the listener in errors and logs, and where `url`
        points (the beacon listener reuses this class)."""
        self._what, self._setting, self._path = what, setting, path
        self._app = _with_routes(app, dict(routes or {}))
        # Behind a TLS-terminating proxy the browser's origin is https://…; trusting the
        # proxy's X-Forwarded-Proto/For makes the same-origin check and Secure cookies right.
        self._trusted_proxies = trusted_proxies
        self._listen = listen
        self._on_stop = on_stop
        self._graceful_seconds = graceful_seconds
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.url = ""
        """`http://host:port/_admin` once started."""
        self.base_url = ""
        """`http://host:port` once started: where `routes` are served."""

    async def start(self) -> str:
        """Bind `listen`, start serving, and return the admin UI's URL.

        Raises ConfigError when the address cannot be bound.
        """
        host, port = split_listen_address(self._listen)
        try:
            sock = _bind(host, port)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve {self._what} on {self._listen} ({self._setting}): "
                f"{exc.strerror}; free the port or set RELEASECONTROL_{self._setting.upper()}"
            ) from exc
        bound_port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            ws="none",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=bool(self._trusted_proxies),
            forwarded_allow_ips=self._trusted_proxies or None,
            timeout_graceful_shutdown=self._graceful_seconds,
        )
        self._server = _Server(config)
        self._task = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[sock]), name=self._setting
        )
        async with asyncio.timeout(_START_TIMEOUT_SECONDS):
            while not self._server.started:
                if self._task.done():
                    self._task.result()  # raises what stopped it
                    raise ConfigError(f"{self._what} on {self._listen} stopped while starting")
                await asyncio.sleep(0.01)
        shown = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{shown}:{bound_port}"
        self.url = f"{self.base_url}{self._path}"
        log.info("%s serving url=%s", self._what, self.url)
        return self.url

    async def stop(self) -> None:
        """Stop accepting, end live-update streams, let requests finish, then return."""
        if self._on_stop is not None:
            self._on_stop()
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self._graceful_seconds + 3)
        except TimeoutError:
            log.warning("%s did not stop in time; cancelling it", self._what)
            self._task.cancel()
        except Exception:  # pragma: no cover - logged, shutdown goes on
            log.exception("%s stopped with an error", self._what)


def _with_routes(app: ASGIApp, routes: dict[str, ASGIApp]) -> ASGIApp:
    """`app`, except for HTTP requests to exactly one of `routes`' paths."""
    if not routes:
        return app

    async def dispatch(scope: Any, receive: Any, send: Any) -> None:
        other = routes.get(scope["path"]) if scope["type"] == "http" else None
        await (other or app)(scope, receive, send)

    return dispatch


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
