"""ReleaseControlClient: the one place that speaks gRPC to the control plane.

It owns the whole gRPC layer for callers (the CLI, the admin UI, scripts): how
the server is found, the mTLS channel, credentials, one typed method per RPC,
and the translation of gRPC status codes back into `releasecontrol.errors`.

    with ReleaseControlClient.from_environment() as client:
        status = client.get_status()

Retries: gRPC's own retry is off; one loop in the client (`_retrying`) retries every
unary call and PublishVersion, for `retry_seconds` (5 s by default: a server restart
takes 1.3-2.6 s) from the first failure, backing off from 0.1 s to 1 s, each attempt
within what is left of the call's timeout. It retries only an UNAVAILABLE that says
nothing reached the server (no `releasecontrol.v1` ErrorInfo: connection refused or
reset, the process gone) or that is the server's own "retry" (ErrorInfo reason
UNAVAILABLE: shutting down, starting, origin unreadable and nothing committed). It
never retries OriginPending (the change committed; the server retries the origin write
itself) nor any other code. That is safe because reads change nothing and every change
carries a request_id, one per logical call and the same on every attempt, that the
server uses to apply it once. WatchReleases is not retried.

Errors: an UNAVAILABLE the server sent keeps the server's message (OriginPending says
the change committed and as which sequence); only one that never reached the server
reads "cannot reach the ReleaseControl server at ...: is the server running?".
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import grpc
from google.protobuf.message import Message

from releasecontrol.errors import (
    ERROR_DOMAIN,
    ConfigError,
    InvalidArgument,
    ReleaseControlError,
    from_grpc_code,
)
from releasecontrol.manifest import SourceFeature
from releasecontrol.v1 import release_control_pb2 as pb
from releasecontrol.v1 import release_control_pb2_grpc as pb_grpc

__all__ = [
    "DEFAULT_RETRY_SECONDS",
    "DEFAULT_TARGET",
    "ConnectionSettings",
    "FoundHome",
    "ReleaseControlClient",
    "WatchStream",
    "find_home",
    "process_alive",
    "resolve_connection",
    "running_dev_record",
    "state_home",
]

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_CHUNK_SIZE = 256 * 1024
# gRPC refuses messages above 4 MiB by default; a chunk plus framing must fit.
MAX_CHUNK_SIZE = 3 * 1024 * 1024

# The largest answer the client accepts (see the channel options).
MAX_RECEIVE_BYTES = 64 * 1024 * 1024

# A change between two pages of get_status: read them all again, this many times at most.
_STATUS_TRIES = 3
_START_HINT = "is the server running? start it with `releasectl dev`"
_TLS_FAILURE = "handshake failed"  # how gRPC says it, in the details of UNAVAILABLE

# The retry loop (`ReleaseControlClient._retrying`): how long it keeps trying after the
# first retryable failure (covers a server restart, 1.3-2.6 s), and its backoff.
DEFAULT_RETRY_SECONDS = 5.0
_POLL_TICK_SECONDS = 0.25
"""grpc's connectivity poller's tick (0.2 s), and a margin."""
_FIRST_BACKOFF_SECONDS = 0.1
_MAX_BACKOFF_SECONDS = 1.0
# The channel reconnects to a server that went away at most this far apart (gRPC's
# default grows to 120 s: a server back after 2.6 s would be seen only after ~5 s).
_RECONNECT_BACKOFF_MS = (100, 1000)  # initial, max

_M = TypeVar("_M", bound=Message)
_T = TypeVar("_T")

ChannelName = Literal["stable", "canary"]
_CHANNELS: dict[str, pb.Channel.ValueType] = {
    "stable": pb.CHANNEL_STABLE,
    "canary": pb.CHANNEL_CANARY,
}


@dataclass(frozen=True)
class ConnectionSettings:
    """Where the control plane is and how to prove who we are to it."""

    target: str
    """gRPC target, e.g. "127.0.0.1:50051"."""
    ca_pem: bytes
    """PEM of the CA that issued the server's certificate."""
    cert_pem: bytes | None
    """PEM client certificate chain for mTLS; None to connect without one."""
    key_pem: bytes | None
    """PEM private key of `cert_pem`."""
    server_name: str | None = None
    """Name to check the server certificate against, when it differs from the target host."""
    token: str | None = None
    """Bearer token sent as `authorization` metadata (rpc-token and dfs auth modes)."""
    target_source: str = ""
    """Where `target` came from, for messages: e.g. "from /srv/rc/run/endpoints.json"."""
    tls_source: str = ""
    """Which CA and client certificate files are used, for messages."""

    def __repr__(self) -> str:
        # Never print key material or the token (tracebacks, logs, debuggers).
        return (
            f"ConnectionSettings(target={self.target!r}, server_name={self.server_name!r}, "
            f"client_cert={self.cert_pem is not None}, token={self.token is not None})"
        )


def state_home(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path:
    """The state directory: RELEASECONTROL_HOME, else `.releasecontrol` in `cwd`.

    A relative RELEASECONTROL_HOME is taken relative to `cwd`.
    """
    env = os.environ if environ is None else environ
    base = Path.cwd() if cwd is None else cwd
    value = env.get("RELEASECONTROL_HOME", "").strip()
    return base / value if value else base / ".releasecontrol"


HOME_DIR_NAME = ".releasecontrol"
RUNNING_DEV_FILE = "dev-servers.json"
"""The per-user record of running `releasectl dev` servers, in `running_dev_record()`'s folder."""


@dataclass(frozen=True)
class FoundHome:
    """The state directory a command uses, and how it was found (for messages)."""

    path: Path
    how: str
    """e.g. "RELEASECONTROL_HOME", "found above /a/b", "the running `releasectl dev` (pid 7)"."""
    found: bool
    """False when nothing was found and `path` is only the default, `./.releasecontrol`."""
    looked: str = ""
    """Where the search looked, in a phrase (set when nothing was found)."""


def running_dev_record(environ: Mapping[str, str] | None = None) -> Path | None:
    """The per-user file where `releasectl dev` records the servers it runs:
    `$XDG_RUNTIME_DIR/releasecontrol/dev-servers.json`, else
    `$HOME/.cache/releasecontrol/dev-servers.json`; None when neither variable is set."""
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR", "").strip()
    if runtime:
        return Path(runtime) / "releasecontrol" / RUNNING_DEV_FILE
    user_home = env.get("HOME", "").strip()
    if user_home:
        return Path(user_home) / ".cache" / "releasecontrol" / RUNNING_DEV_FILE
    return None


def process_alive(pid: int) -> bool:
    """Whether a process `pid` exists (one of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def read_running_devs(path: Path) -> list[dict[str, Any]]:
    """The entries (`home`, `pid`, `started_at`) of a running-dev record; [] if unreadable."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return []
    servers = data.get("servers") if isinstance(data, dict) else None
    if not isinstance(servers, list):
        return []
    return [
        s
        for s in servers
        if isinstance(s, dict) and isinstance(s.get("home"), str) and isinstance(s.get("pid"), int)
    ]


def find_home(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> FoundHome:
    """The state directory, found the way git finds its repository.

    In order: RELEASECONTROL_HOME (relative to `cwd`); else a `.releasecontrol/` folder in
    `cwd` or the nearest folder above it; else the newest `releasectl dev` still running
    that recorded itself in `running_dev_record()`; else `./.releasecontrol`, not found
    (`looked` then says where the search looked).
    """
    env = os.environ if environ is None else environ
    base = Path.cwd() if cwd is None else cwd
    value = env.get("RELEASECONTROL_HOME", "").strip()
    if value:
        return FoundHome(base / value, "RELEASECONTROL_HOME", True)
    start = base.absolute()
    for folder in (start, *start.parents):
        candidate = folder / HOME_DIR_NAME
        if candidate.is_dir():
            how = "found in the current folder" if folder == start else f"found above {start}"
            return FoundHome(candidate, how, True)
    record = running_dev_record(env)
    if record is not None:
        for entry in reversed(read_running_devs(record)):
            if process_alive(entry["pid"]) and Path(entry["home"]).is_dir():
                how = f"the running `releasectl dev` (pid {entry['pid']}) recorded in {record}"
                return FoundHome(Path(entry["home"]), how, True)
    looked = (
        f"RELEASECONTROL_HOME (not set), a {HOME_DIR_NAME}/ folder in {start} and every "
        "folder above it, and a running `releasectl dev` in "
        f"{record if record is not None else '$XDG_RUNTIME_DIR or ~/.cache (neither is set)'}"
    )
    return FoundHome(start / HOME_DIR_NAME, "the default", False, looked)


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path} (from {setting}): {exc.strerror or exc}; fix the path in {setting}"
        ) from exc


def _target_from_endpoints(home: Path) -> str | None:
    endpoints = home / "run" / "endpoints.json"
    if not endpoints.is_file():
        return None
    try:
        target = json.loads(endpoints.read_bytes()).get("grpc")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"{endpoints} is unreadable or not a JSON object ({exc}); delete it and restart "
            "`releasectl dev`, or pass --server"
        ) from exc
    if not isinstance(target, str) or not target.strip():
        raise ConfigError(
            f'{endpoints} has no "grpc" address; delete it and restart `releasectl dev`, '
            "or pass --server"
        )
    return target.strip()


def resolve_connection(
    *,
    server: str | None = None,
    home: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> ConnectionSettings:
    """Find the server and the TLS files and credentials to reach it.

    Home: `home`, else `find_home()` (RELEASECONTROL_HOME, a `.releasecontrol/` here or
    above, the running `releasectl dev`).
    Target: `server`, else RELEASECONTROL_ADDR, else "grpc" in
    `<home>/run/endpoints.json` (written by a running server), else 127.0.0.1:50051.
    TLS: RELEASECONTROL_TLS_CA / _CERT / _KEY, else `<home>/pki/ca.pem`,
    `client.pem`, `client-key.pem` (the client pair is optional in the home
    directory; a path set in the environment must exist).
    RELEASECONTROL_TLS_SERVER_NAME overrides the name checked on the server's
    certificate. Token: RELEASECONTROL_TOKEN, else the contents of
    RELEASECONTROL_TOKEN_FILE.

    Raises ConfigError naming the missing or unreadable setting and the fix.
    """
    env = os.environ if environ is None else environ
    found = FoundHome(home, "--home", True) if home is not None else find_home(env)
    home = found.path

    target = (server or "").strip()
    target_source = "from --server"
    if not target:
        target = env.get("RELEASECONTROL_ADDR", "").strip()
        target_source = "from RELEASECONTROL_ADDR"
    if not target:
        recorded = _target_from_endpoints(home)
        endpoints = home / "run" / "endpoints.json"
        if recorded:
            target, target_source = recorded, f"from {endpoints}"
        else:
            target = DEFAULT_TARGET
            target_source = f"the default: no running server recorded in {endpoints}"

    ca_env = env.get("RELEASECONTROL_TLS_CA", "").strip()
    ca_path = Path(ca_env) if ca_env else home / "pki" / "ca.pem"
    if not ca_path.is_file():
        if not ca_env and not found.found:
            raise ConfigError(
                f"no ReleaseControl state directory found: looked for {found.looked}; "
                "start `releasectl dev`, or set RELEASECONTROL_HOME (or pass --home)"
            )
        source = "RELEASECONTROL_TLS_CA" if ca_env else f"the state directory, {found.how}"
        raise ConfigError(
            f"no CA certificate at {ca_path} (from {source}) to verify the server with: "
            "start `releasectl dev` first, or set RELEASECONTROL_TLS_CA"
        )
    ca_pem = _read(ca_path, "RELEASECONTROL_TLS_CA")

    cert_env = env.get("RELEASECONTROL_TLS_CERT", "").strip()
    key_env = env.get("RELEASECONTROL_TLS_KEY", "").strip()
    if bool(cert_env) != bool(key_env):
        given, missing = (
            ("RELEASECONTROL_TLS_CERT", "RELEASECONTROL_TLS_KEY")
            if cert_env
            else ("RELEASECONTROL_TLS_KEY", "RELEASECONTROL_TLS_CERT")
        )
        raise ConfigError(f"{given} is set but {missing} is not: set both, or neither")
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    if cert_env:
        cert_pem = _read(Path(cert_env), "RELEASECONTROL_TLS_CERT")
        key_pem = _read(Path(key_env), "RELEASECONTROL_TLS_KEY")
    else:
        cert_path, key_path = home / "pki" / "client.pem", home / "pki" / "client-key.pem"
        if cert_path.is_file() and key_path.is_file():
            cert_pem = _read(cert_path, "RELEASECONTROL_TLS_CERT")
            key_pem = _read(key_path, "RELEASECONTROL_TLS_KEY")

    token = env.get("RELEASECONTROL_TOKEN", "").strip() or None
    token_file = env.get("RELEASECONTROL_TOKEN_FILE", "").strip()
    if token is None and token_file:
        token = _read(Path(token_file), "RELEASECONTROL_TOKEN_FILE").decode().strip() or None
        if token is None:
            raise ConfigError(
                f"{token_file} (from RELEASECONTROL_TOKEN_FILE) is empty; put the token in it"
            )

    server_name = env.get("RELEASECONTROL_TLS_SERVER_NAME", "").strip() or None
    client_cert = cert_env or (str(home / "pki" / "client.pem") if cert_pem is not None else "none")
    tls_source = f"CA {ca_path}, client certificate {client_cert}"
    return ConnectionSettings(
        target=target,
        ca_pem=ca_pem,
        cert_pem=cert_pem,
        key_pem=key_pem,
        server_name=server_name,
        token=token,
        target_source=target_source,
        tls_source=tls_source,
    )


def _context(
    *,
    actor: str,
    reason: str,
    ticket: str,
    expected_sequence: int | None,
    request_id: str,
) -> pb.ChangeContext:
    # A fresh id per logical call when none is given. The message is built once, before
    # `_retrying`, so every attempt sends this same id and the server applies it once.
    return pb.ChangeContext(
        actor=actor,
        reason=reason,
        ticket=ticket,
        expected_sequence=expected_sequence,
        request_id=request_id or _new_request_id(),
    )


def _error_info(err: grpc.RpcError) -> tuple[str, dict[str, str]] | None:
    """The reason and metadata of the `releasecontrol.v1` ErrorInfo in a failed call's status
    details; None when there is none (the failure did not come from the server's code)."""
    # Imported here, not at the top: only a failed call needs them (CLI start time).
    # googleapis-common-protos and grpcio-status ship no type information.
    from google.rpc import error_details_pb2  # type: ignore[import-untyped]
    from grpc_status import rpc_status  # type: ignore[import-untyped]

    try:
        status = rpc_status.from_call(err)
    except (ValueError, AttributeError):  # details that do not match the call's status
        return None
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
            return info.reason, dict(info.metadata)
    return None


def _code_name(err: grpc.RpcError) -> str:
    code = err.code() if callable(getattr(err, "code", None)) else None
    return code.name if code is not None else "UNKNOWN"


def _retryable(err: grpc.RpcError) -> bool:
    """Whether `_retrying` may send the call again: UNAVAILABLE that never reached the
    server's code (no releasecontrol ErrorInfo) or that the server sent as "retry"
    (reason UNAVAILABLE). Not OriginPending (reason ORIGIN_PENDING: the change committed),
    not any other code."""
    if _code_name(err) != "UNAVAILABLE":
        return False
    info = _error_info(err)
    if info is None:  # a TLS handshake that failed fails the same way again
        details = (err.details() if callable(getattr(err, "details", None)) else None) or ""
        return _TLS_FAILURE not in details.lower()
    return info[0] == "UNAVAILABLE"


def _new_request_id() -> str:
    import uuid  # here, not at the top: it costs reads a few ms of start (CLI benchmark)

    return str(uuid.uuid4())


def _channel(value: str) -> pb.Channel.ValueType:
    try:
        return _CHANNELS[value]
    except KeyError:
        raise InvalidArgument(
            f"channel {value!r} is not known: use 'stable' or 'canary'", field="channel"
        ) from None


class ReleaseControlClient:
    """A synchronous client of `releasecontrol.v1.ReleaseControl` over (m)TLS.

    Every method returns the proto response and raises a
    `releasecontrol.errors.ReleaseControlError` subclass on failure, never a
    `grpc.RpcError`.
    """

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        timeout_seconds: float = 30.0,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> None:
        """`timeout_seconds` bounds each call, retries included; `retry_seconds` is how long
        after its first retryable failure a call is tried again (0: never)."""
        if retry_seconds < 0:
            raise InvalidArgument(
                f"retry_seconds {retry_seconds} is negative: use 0 (no retry) or more",
                field="retry_seconds",
            )
        self.settings = settings
        self.timeout_seconds = timeout_seconds
        self.retry_seconds = retry_seconds
        credentials = grpc.ssl_channel_credentials(
            root_certificates=settings.ca_pem,
            private_key=settings.key_pem,
            certificate_chain=settings.cert_pem,
        )
        options: list[tuple[str, Any]] = [
            # One retry loop, ours (`_retrying`): gRPC's own would retry on top of it.
            ("grpc.enable_retries", 0),
            ("grpc.initial_reconnect_backoff_ms", _RECONNECT_BACKOFF_MS[0]),
            ("grpc.max_reconnect_backoff_ms", _RECONNECT_BACKOFF_MS[1]),
            # GetReleaseIndex of remote-index.json names every feature: ~150 bytes
            # each, 15 MB at 100,000 features, over gRPC's 4 MiB default.
            ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ]
        if settings.server_name:
            options.append(("grpc.ssl_target_name_override", settings.server_name))
        self.channel: Any = grpc.secure_channel(settings.target, credentials, options=options)
        """The underlying `grpc.Channel`, for the standard services (health, reflection)."""
        self._stub = pb_grpc.ReleaseControlStub(self.channel)
        self._unsubscribed_at = -math.inf
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {settings.token}"),) if settings.token else ()
        )

    @classmethod
    def from_environment(
        cls,
        *,
        server: str | None = None,
        home: Path | None = None,
        environ: Mapping[str, str] | None = None,
        timeout_seconds: float = 30.0,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> ReleaseControlClient:
        """A client for the server `resolve_connection` finds; raises ConfigError."""
        settings = resolve_connection(server=server, home=home, environ=environ)
        return cls(settings, timeout_seconds=timeout_seconds, retry_seconds=retry_seconds)

    def close(self) -> None:
        # grpc's connectivity poller (started by `subscribe` in `_pause`) looks whether it is
        # still wanted every 0.2 s; closing the channel before it did makes it raise "Channel
        # closed!" on its thread. So a close right after a pause waits that tick out.
        left = self._unsubscribed_at + _POLL_TICK_SECONDS - time.monotonic()
        if left > 0:
            time.sleep(left)
        self.channel.close()

    def __enter__(self) -> ReleaseControlClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the gRPC layer -------------------------------------------------------

    def _translate(self, err: grpc.RpcError) -> ReleaseControlError:
        """The domain error for a failed call: the only place gRPC errors are mapped.

        An UNAVAILABLE the server sent (it carries our ErrorInfo: OriginPending, shutting
        down, ...) keeps the server's message; only one that never reached the server's
        code says the server cannot be reached.
        """
        name = _code_name(err)
        details = (err.details() if callable(getattr(err, "details", None)) else None) or ""
        target = self.settings.target
        info = _error_info(err)
        source = f"; {self.settings.target_source}" if self.settings.target_source else ""
        if name == "UNAVAILABLE" and info is None and _TLS_FAILURE in details.lower():
            details = (
                f"the TLS handshake with {target} failed ({self.settings.tls_source}{source}): "
                "the server's certificate is not one this CA signed for that address, or the "
                "server refused this client certificate; use the state directory (--home, "
                "RELEASECONTROL_HOME) or RELEASECONTROL_TLS_* files of that server's PKI"
            )
        elif name == "UNAVAILABLE" and info is None:
            details = (
                f"cannot reach the ReleaseControl server at {target} ({details}{source}): "
                f"{_START_HINT}"
            )
        elif name == "DEADLINE_EXCEEDED":
            details = (
                f"the ReleaseControl server at {target} did not answer in time ({details}): "
                f"{_START_HINT}"
            )
        reason, metadata = info or ("", {})
        return from_grpc_code(name, details, reason, metadata)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except grpc.RpcError as err:
            raise self._translate(err) from None

    def _retrying(self, attempt: Callable[[float | None], _T], timeout: float | None) -> _T:
        """`attempt(timeout_left)` until it succeeds, fails for good, or time is up.

        The one retry loop of the client (gRPC's own is off). Only what `_retryable`
        allows is tried again: an UNAVAILABLE that never reached the server's code, or the
        server's own "retry" UNAVAILABLE; never OriginPending, never another code. Sending
        a call again is safe: reads change nothing, and every change carries a request_id
        (one per logical call, in the message each attempt resends) that the server uses
        to apply it once, answering a repeat with the first answer.

        Tries again for `retry_seconds` after the first retryable failure (long enough
        for a server restart), backing off 0.1 s, 0.2 s, ... up to 1 s (jittered; a pause
        after a failure to reach the server ends early when the channel reconnects), so a
        server that is not running fails in about `retry_seconds`. `timeout` (None: no
        deadline) bounds the whole call: each attempt gets what is left of it.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        give_up_at: float | None = None
        backoff = _FIRST_BACKOFF_SECONDS
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                return attempt(left)
            except grpc.RpcError as err:
                if not _retryable(err):
                    raise self._translate(err) from None
                now = time.monotonic()
                if give_up_at is None:
                    give_up_at = now + self.retry_seconds
                pause = min(backoff * random.uniform(0.8, 1.2), give_up_at - now)
                if pause <= 0 or (deadline is not None and now + pause >= deadline):
                    raise self._translate(err) from None
                self._pause(pause, reconnecting=_error_info(err) is None)
                backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)

    def _pause(self, seconds: float, *, reconnecting: bool) -> None:
        """Wait `seconds` before the next attempt.

        After a failure that never reached the server's code (`reconnecting`), stop as soon
        as the channel connects again: a server back from a restart is used at once rather
        than up to a whole backoff later. A channel that is connected already when the
        pause starts (the failure came from the other end) waits the whole pause.
        """
        if not reconnecting:
            time.sleep(seconds)
            return
        states: list[grpc.ChannelConnectivity] = []
        changed = threading.Condition()

        def on_change(state: grpc.ChannelConnectivity) -> None:
            with changed:
                states.append(state)
                changed.notify_all()

        def reconnected() -> bool:
            ready = grpc.ChannelConnectivity.READY
            return bool(states) and states[0] is not ready and states[-1] is ready

        # The first state delivered is the channel's state now; then each change.
        self.channel.subscribe(on_change, try_to_connect=True)
        try:
            with changed:
                changed.wait_for(reconnected, timeout=seconds)
        finally:
            self.channel.unsubscribe(on_change)
            self._unsubscribed_at = time.monotonic()

    def _call(
        self,
        rpc: Any,
        requests: Callable[[], Any],
        response_type: type[_M],
        *,
        timeout: float | None,
    ) -> _M:
        """`rpc` through `_retrying`; `requests()` gives each attempt its request (unary) or a
        new request iterator (client streaming) from the same source."""
        response = self._retrying(
            lambda left: rpc(requests(), timeout=left, metadata=self._metadata), timeout
        )
        if not isinstance(response, response_type):  # the generated stubs guarantee it
            raise TypeError(f"expected {response_type.__name__}, got {type(response).__name__}")
        return response

    def _unary(self, rpc: Any, request: Message, response_type: type[_M]) -> _M:
        return self._call(rpc, lambda: request, response_type, timeout=self.timeout_seconds)

    # -- reads ----------------------------------------------------------------

    def list_features(self, page_size: int = 0, page_token: str = "") -> pb.ListFeaturesResponse:
        """One page of features, ordered by id; pass `next_page_token` for the next."""
        request = pb.ListFeaturesRequest(page_size=page_size, page_token=page_token)
        return self._unary(self._stub.ListFeatures, request, pb.ListFeaturesResponse)

    def get_feature(self, feature_id: str) -> pb.GetFeatureResponse:
        """One feature with every published version; NotFound when unknown."""
        request = pb.GetFeatureRequest(feature_id=feature_id)
        return self._unary(self._stub.GetFeature, request, pb.GetFeatureResponse)

    def get_status(
        self, feature_ids: Iterable[str] = (), *, page_size: int = 0
    ) -> pb.GetStatusResponse:
        """The state of these features (all when empty) and the server's clock.

        Reads every page (`page_size` features each; 0: the server's default)
        into one response. When a change commits between two pages it reads
        them again from the first, so the features reflect one global_sequence;
        after three such tries it returns the last, whose features may span
        changes (global_sequence is then the last page's).
        """
        ids = list(feature_ids)
        pages: list[pb.GetStatusResponse] = []
        for _ in range(_STATUS_TRIES):
            pages = [self.get_status_page(ids, page_size=page_size)]
            while pages[-1].next_page_token:
                pages.append(
                    self.get_status_page(
                        ids, page_size=page_size, page_token=pages[-1].next_page_token
                    )
                )
            if all(p.global_sequence == pages[0].global_sequence for p in pages):
                break
        out = pb.GetStatusResponse()
        out.CopyFrom(pages[-1])
        del out.features[:]
        for page in pages:
            out.features.extend(page.features)
        return out

    def get_status_page(
        self, feature_ids: Iterable[str] = (), *, page_size: int = 0, page_token: str = ""
    ) -> pb.GetStatusResponse:
        """One page of `get_status`, in feature id order; pass `next_page_token` for the next."""
        request = pb.GetStatusRequest(
            feature_ids=list(feature_ids), page_size=page_size, page_token=page_token
        )
        return self._unary(self._stub.GetStatus, request, pb.GetStatusResponse)

    def get_release_index(self, feature_id: str = "") -> pb.GetReleaseIndexResponse:
        """The signed bytes of a feature's releases.json, or remote-index.json when empty."""
        request = pb.GetReleaseIndexRequest(feature_id=feature_id)
        return self._unary(self._stub.GetReleaseIndex, request, pb.GetReleaseIndexResponse)

    def list_transitions(
        self, feature_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> pb.ListTransitionsResponse:
        """One page of the audit history, newest first (one feature's, or all)."""
        request = pb.ListTransitionsRequest(
            feature_id=feature_id, page_size=page_size, page_token=page_token
        )
        return self._unary(self._stub.ListTransitions, request, pb.ListTransitionsResponse)

    def refresh_manifests(self, feature_ids: Iterable[str] = ()) -> pb.RefreshManifestsResponse:
        """Make the server re-read and re-verify manifests from the origin."""
        request = pb.RefreshManifestsRequest(feature_ids=list(feature_ids))
        return self._unary(self._stub.RefreshManifests, request, pb.RefreshManifestsResponse)

    def rebuild_origin(self, *, force: bool = False) -> Iterator[pb.RebuildOriginResponse]:
        """Have the server write everything hosts read back to the CDN origin (admin only),
        yielding its progress as it goes; the last message is the summary. No deadline (a
        large origin takes long) and not retried: run it again to pick up where it stopped."""
        request = pb.RebuildOriginRequest(force=force)
        with self._errors():
            call = self._stub.RebuildOrigin(request, metadata=self._metadata)
            yield from call

    def watch(self, feature_ids: Iterable[str] = ()) -> WatchStream:
        """Snapshots, then SYNCED, then every change, as they commit; no deadline.

        The call starts at once. `cancel()` (or leaving a `with` block) ends it
        and iteration stops quietly; a failure while iterating raises a
        ReleaseControlError.
        """
        request = pb.WatchReleasesRequest(feature_ids=list(feature_ids))
        with self._errors():
            call = self._stub.WatchReleases(request, metadata=self._metadata)
        return WatchStream(call, self._errors)

    # -- changes --------------------------------------------------------------

    def deploy_canary(
        self,
        feature_id: str,
        version: str,
        *,
        soak_seconds: int | None = None,
        weight: int = 0,
        steps: Sequence[int] = (),
        step_seconds: int = 0,
        min_loads: int = 0,
        actor: str = "",
        reason: str = "",
        ticket: str = "",
        expected_sequence: int | None = None,
        request_id: str = "",
    ) -> pb.DeployCanaryResponse:
        """Deploy a published version as canary; `soak_seconds` None means the server default.

        `weight` (out of 10,000) serves it to that share of bucketed users; `steps` (weights,
        increasing) each held `step_seconds` make a plan the server advances (then the soak is
        the whole plan)."""
        request = pb.DeployCanaryRequest(
            feature_id=feature_id,
            version=version,
            soak_seconds=soak_seconds,
            weight=weight,
            steps=list(steps),
            step_seconds=step_seconds,
            min_loads=min_loads,
            context=_context(
                actor=actor,
                reason=reason,
                ticket=ticket,
                expected_sequence=expected_sequence,
                request_id=request_id,
            ),
        )
        return self._unary(self._stub.DeployCanary, request, pb.DeployCanaryResponse)

    def set_canary_weight(
        self,
        feature_id: str,
        weight: int,
        *,
        actor: str = "",
        reason: str = "",
        ticket: str = "",
        expected_sequence: int | None = None,
        request_id: str = "",
    ) -> pb.SetCanaryWeightResponse:
        """Serve the running canary to `weight` (out of 10,000) of bucketed users; stops a step
        plan."""
        request = pb.SetCanaryWeightRequest(
            feature_id=feature_id,
            weight=weight,
            context=_context(
                actor=actor,
                reason=reason,
                ticket=ticket,
                expected_sequence=expected_sequence,
                request_id=request_id,
            ),
        )
        return self._unary(self._stub.SetCanaryWeight, request, pb.SetCanaryWeightResponse)

    def list_approvals(
        self, feature_id: str = "", *, include_done: bool = False
    ) -> pb.ListApprovalsResponse:
        """Changes waiting for a second principal's approval (`include_done`: also those
        approved or expired lately)."""
        request = pb.ListApprovalsRequest(feature_id=feature_id, include_done=include_done)
        return self._unary(self._stub.ListApprovals, request, pb.ListApprovalsResponse)

    def get_analysis(self, feature_id: str) -> pb.GetAnalysisResponse:
        """The running canary's analysis verdict against stable, and each version's reach."""
        request = pb.GetAnalysisRequest(feature_id=feature_id)
        return self._unary(self._stub.GetAnalysis, request, pb.GetAnalysisResponse)

    def test_webhooks(self, name: str = "") -> pb.TestWebhooksResponse:
        """POST a test event to the configured webhooks (`name`, or all); each answer."""
        request = pb.TestWebhooksRequest(name=name)
        return self._unary(self._stub.TestWebhooks, request, pb.TestWebhooksResponse)

    def approve(self, approval_id: int) -> pb.ApproveResponse:
        """Apply waiting change `approval_id` as its requester asked it; the caller must be
        another principal with the approver role. Approving twice applies it once."""
        request = pb.ApproveRequest(approval_id=approval_id)
        return self._unary(self._stub.Approve, request, pb.ApproveResponse)

    def promote(
        self,
        feature_id: str,
        version: str,
        *,
        skip_soak: bool = False,
        actor: str = "",
        reason: str = "",
        ticket: str = "",
        expected_sequence: int | None = None,
        request_id: str = "",
    ) -> pb.PromoteResponse:
        """Canary to stable; FailedPrecondition while it soaks unless `skip_soak` with a reason."""
        request = pb.PromoteRequest(
            feature_id=feature_id,
            version=version,
            skip_soak=skip_soak,
            context=_context(
                actor=actor,
                reason=reason,
                ticket=ticket,
                expected_sequence=expected_sequence,
                request_id=request_id,
            ),
        )
        return self._unary(self._stub.Promote, request, pb.PromoteResponse)

    def rollback(
        self,
        feature_id: str,
        version: str,
        *,
        actor: str = "",
        reason: str = "",
        ticket: str = "",
        expected_sequence: int | None = None,
        request_id: str = "",
    ) -> pb.RollbackResponse:
        """Stable back to a version that was stable before; clears the canary."""
        request = pb.RollbackRequest(
            feature_id=feature_id,
            version=version,
            context=_context(
                actor=actor,
                reason=reason,
                ticket=ticket,
                expected_sequence=expected_sequence,
                request_id=request_id,
            ),
        )
        return self._unary(self._stub.Rollback, request, pb.RollbackResponse)

    def set_channel(
        self,
        feature_id: str,
        version: str,
        channel: ChannelName,
        *,
        actor: str = "",
        reason: str = "",
        ticket: str = "",
        expected_sequence: int | None = None,
        request_id: str = "",
    ) -> pb.SetChannelResponse:
        """Operator fallback: point `channel` ("stable" or "canary") at any published version."""
        request = pb.SetChannelRequest(
            feature_id=feature_id,
            version=version,
            channel=_channel(channel),
            context=_context(
                actor=actor,
                reason=reason,
                ticket=ticket,
                expected_sequence=expected_sequence,
                request_id=request_id,
            ),
        )
        return self._unary(self._stub.SetChannel, request, pb.SetChannelResponse)

    def publish(
        self,
        source: SourceFeature,
        *,
        channel: ChannelName = "stable",
        soak_seconds: int | None = None,
        actor: str = "",
        reason: str = "",
        ticket: str = "",
        expected_sequence: int | None = None,
        request_id: str = "",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        on_progress: Callable[[int, int], None] | None = None,
        timeout_seconds: float | None = None,
    ) -> pb.PublishVersionResponse:
        """Stream a loaded feature folder to PublishVersion: the header, then every asset.

        The header carries the JSON of `source.manifest` (sizes and hashes filled
        in). Assets follow in manifest order, each as consecutive chunks of at
        most `chunk_size` bytes (an empty file sends none). `on_progress(sent,
        total)` is called after each chunk, from gRPC's sending thread (a retried
        upload starts again from 0). No deadline unless `timeout_seconds` is given:
        an upload may take long, and a lost connection still fails the call. A
        stream that fails as `_retrying` allows is sent again from the start, with
        the same header and so the same request_id. Raises InvalidArgument when a
        file cannot be read, and a ReleaseControlError for what the server refuses.
        """
        _check_chunk_size(chunk_size)
        # The files each attempt could not read, one list per attempt: only the last
        # attempt's count (an earlier stream's sending thread may still be winding down).
        attempts: list[list[ReleaseControlError]] = []

        def chunks() -> Iterator[pb.ArtifactChunk]:
            failures: list[ReleaseControlError] = []
            attempts.append(failures)
            return read(failures)

        def read(failures: list[ReleaseControlError]) -> Iterator[pb.ArtifactChunk]:
            for asset in source.manifest["assets"]:
                path = str(asset["path"])
                file = source.files[path]
                try:
                    with file.open("rb") as fh:
                        while data := fh.read(chunk_size):
                            yield pb.ArtifactChunk(path=path, data=data)
                except OSError as exc:
                    # Raising here would make gRPC log a traceback and cancel; end the
                    # stream short instead (the server refuses it) and report this.
                    failures.append(
                        InvalidArgument(
                            f"cannot read asset {path!r} at {file}: {exc.strerror or exc}",
                            field="manifest.assets",
                        )
                    )
                    return

        header = pb.PublishHeader(
            feature_id=source.feature_id,
            manifest_json=json.dumps(source.manifest).encode(),
            channel=_channel(channel),
            soak_seconds=soak_seconds,
            context=_context(
                actor=actor,
                reason=reason,
                ticket=ticket,
                expected_sequence=expected_sequence,
                request_id=request_id,
            ),
        )
        try:
            response = self._publish(
                header, chunks, source.total_bytes, on_progress, timeout_seconds
            )
        except ReleaseControlError:
            if attempts and attempts[-1]:
                raise attempts[-1][0] from None
            raise
        if attempts and attempts[-1]:
            raise attempts[-1][0]
        return response

    def publish_raw(
        self,
        feature_id: str,
        manifest_json: bytes,
        files: Mapping[str, bytes],
        *,
        channel: ChannelName = "stable",
        soak_seconds: int | None = None,
        actor: str = "",
        reason: str = "",
        ticket: str = "",
        expected_sequence: int | None = None,
        request_id: str = "",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        timeout_seconds: float | None = None,
    ) -> pb.PublishVersionResponse:
        """PublishVersion with manifest bytes and file contents (path -> bytes) sent as given.

        Nothing is checked or filled in on this side: for tools that build the
        manifest themselves, and for testing what the server refuses.
        """
        _check_chunk_size(chunk_size)

        def chunks() -> Iterator[pb.ArtifactChunk]:
            for path, data in files.items():
                for start in range(0, len(data), chunk_size):
                    yield pb.ArtifactChunk(path=path, data=data[start : start + chunk_size])

        header = pb.PublishHeader(
            feature_id=feature_id,
            manifest_json=manifest_json,
            channel=_channel(channel),
            soak_seconds=soak_seconds,
            context=_context(
                actor=actor,
                reason=reason,
                ticket=ticket,
                expected_sequence=expected_sequence,
                request_id=request_id,
            ),
        )
        total = sum(len(data) for data in files.values())
        return self._publish(header, chunks, total, None, timeout_seconds)

    def _publish(
        self,
        header: pb.PublishHeader,
        chunks: Callable[[], Iterator[pb.ArtifactChunk]],
        total: int,
        on_progress: Callable[[int, int], None] | None,
        timeout_seconds: float | None,
    ) -> pb.PublishVersionResponse:
        """PublishVersion of `header` then `chunks()`; each attempt of `_retrying` gets a new
        stream from the start, with this same header (and so the same request_id)."""

        def stream(body: Iterator[pb.ArtifactChunk]) -> Iterator[pb.PublishVersionRequest]:
            yield pb.PublishVersionRequest(header=header)
            sent = 0
            for chunk in body:
                yield pb.PublishVersionRequest(chunk=chunk)
                sent += len(chunk.data)
                if on_progress is not None:
                    on_progress(sent, total)

        def requests() -> Iterator[pb.PublishVersionRequest]:
            return stream(chunks())  # `chunks()` now, as the attempt starts

        return self._call(
            self._stub.PublishVersion,
            requests,
            pb.PublishVersionResponse,
            timeout=timeout_seconds,
        )


def _check_chunk_size(chunk_size: int) -> None:
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidArgument(
            f"chunk_size {chunk_size} is out of range: use 1 to {MAX_CHUNK_SIZE} bytes",
            field="chunk_size",
        )


class WatchStream(Iterator[pb.WatchReleasesResponse]):
    """The events of one WatchReleases call; iterate it, and cancel it when done."""

    def __init__(self, call: Any, errors: Callable[[], AbstractContextManager[None]]) -> None:
        self._call = call
        self._errors = errors
        self._cancelled = False

    def __iter__(self) -> WatchStream:
        return self

    def __next__(self) -> pb.WatchReleasesResponse:
        if self._cancelled:
            raise StopIteration
        try:
            with self._errors():
                event = next(self._call)
        except ReleaseControlError:
            if self._cancelled:
                raise StopIteration from None
            raise
        if not isinstance(event, pb.WatchReleasesResponse):  # pragma: no cover
            raise TypeError(f"expected WatchReleasesResponse, got {type(event).__name__}")
        return event

    def cancel(self) -> None:
        """End the call; iteration then stops. Safe to call more than once, from any thread."""
        self._cancelled = True
        self._call.cancel()

    close = cancel

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()
