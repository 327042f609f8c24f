"""The admin UI's session: a signed cookie holding the principal and a CSRF token.

The cookie is `itsdangerous`-signed (HMAC-SHA1 over a key only this server
has, `admin_session_secret_path`) and timestamped, so it cannot be forged or
kept past its lifetime; it is not encrypted, so it holds nothing secret: the
principal's name, roles and scopes, when the sign-in ends, the CSRF token of
the session, and for `rpc-token` the SHA-256 of the token (which the token
store keeps anyway, and which cannot be turned back into the token).

Every visitor gets a session, signed in or not, so the sign-in form itself
carries a CSRF token. Signing in or out replaces the CSRF token.

A signed-in session also carries a random session id, and counts only while
that id is open in the server's `SessionRegistry` (in memory, one process).
Signing out closes the id, so a copy of the cookie taken before is worth
nothing afterwards; a restart closes every session (everyone signs in again),
which fails closed. The registry holds at most `MAX_OPEN_SESSIONS`; past that
the oldest sign-in is closed first.

The cookie is HttpOnly, SameSite=Strict, scoped to `/_admin`, and Secure when
the page was served over https.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from releasecontrol.errors import ConfigError
from releasecontrol.files import atomic_create
from releasecontrol_server.auth.principal import Principal, parse_roles, parse_scopes

log = logging.getLogger(__name__)

COOKIE_NAME = "rc_admin_session"
COOKIE_PATH = "/_admin"
CSRF_FIELD = "csrf_token"
_SALT = "releasecontrol-admin-session"
_SECRET_BYTES = 32
MAX_OPEN_SESSIONS = 10_000


@dataclass(frozen=True)
class Session:
    """One browser's session: its CSRF token and, once signed in, who it is."""

    csrf: str
    principal: Principal | None = None
    expires_at: float = 0.0
    """Epoch seconds when the session (and a sign-in) ends."""
    token_sha256: str = ""
    """`rpc-token`: the signed-in token's hash, re-checked against the store on every request."""
    auth_mode: str = ""
    """The auth mode the sign-in was checked under; a sign-in counts only under the same one."""
    sid: str = ""
    """A signed-in session's id: it counts only while the SessionRegistry holds it open."""
    changed: bool = field(default=False, compare=False)
    """True when the cookie must be (re)sent with the response."""

    @classmethod
    def new(cls, lifetime_seconds: int, *, now: float | None = None) -> Session:
        """An anonymous session with a fresh CSRF token."""
        start = time.time() if now is None else now
        return cls(secrets.token_urlsafe(32), None, start + lifetime_seconds, changed=True)

    def signed_in(
        self,
        principal: Principal,
        expires_at: float,
        *,
        auth_mode: str,
        sid: str,
        token_sha256: str = "",
    ) -> Session:
        """The session after a sign-in: the principal, its server-side id, a new CSRF token."""
        return Session(
            secrets.token_urlsafe(32), principal, expires_at, token_sha256, auth_mode, sid, True
        )

    def csrf_ok(self, presented: str) -> bool:
        """True when `presented` is this session's CSRF token (compared in constant time)."""
        return bool(presented) and hmac.compare_digest(presented.encode(), self.csrf.encode())

    def without_principal(self) -> Session:
        return replace(self, principal=None, token_sha256="", auth_mode="", sid="", changed=True)


class SessionRegistry:
    """The signed-in sessions this server opened and has not closed (in memory).

    A signed cookie proves the server issued it, not that its session is still
    on: the registry says that, so signing out ends the session on the server,
    not only in the browser that signed out.
    """

    def __init__(
        self, *, max_sessions: int = MAX_OPEN_SESSIONS, clock: Callable[[], float] = time.time
    ) -> None:
        self._open: dict[str, float] = {}  # session id -> expires_at, oldest sign-in first
        self._max = max_sessions
        self._clock = clock

    def __len__(self) -> int:
        return len(self._open)

    def open(self, expires_at: float) -> str:
        """A new session id, open until `expires_at` or until closed."""
        now = self._clock()
        for sid in [sid for sid, ends in self._open.items() if ends <= now]:
            del self._open[sid]
        while len(self._open) >= self._max:
            oldest = next(iter(self._open))
            del self._open[oldest]
            log.warning(
                "admin sessions full (%d open): the oldest sign-in was signed out", self._max
            )
        sid = secrets.token_urlsafe(18)
        self._open[sid] = expires_at
        return sid

    def is_open(self, sid: str) -> bool:
        """True when `sid` was opened here, is not closed and has not expired."""
        ends = self._open.get(sid) if sid else None
        if ends is None:
            return False
        if ends <= self._clock():
            del self._open[sid]
            return False
        return True

    def close(self, sid: str) -> bool:
        """End the session `sid` (a sign-out); True when it was open."""
        return self._open.pop(sid, None) is not None


class SessionCodec:
    """Reads and writes the session cookie with the server's signing key."""

    def __init__(self, secret: bytes, lifetime_seconds: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt=_SALT)
        self.lifetime_seconds = lifetime_seconds

    def load(self, request: Request) -> Session:
        """The request's session; a new anonymous one when the cookie is absent, forged or old."""
        raw = request.cookies.get(COOKIE_NAME)
        if raw:
            try:
                data = self._serializer.loads(raw, max_age=self.lifetime_seconds)
                return _from_json(data)
            except (BadSignature, KeyError, TypeError, ValueError):
                log.info("admin session cookie refused (bad signature, expired or malformed)")
        return Session.new(self.lifetime_seconds)

    def save(self, response: Response, session: Session, *, secure: bool) -> None:
        """Send the session cookie with `response` when the session changed."""
        if not session.changed:
            return
        max_age = max(0, int(session.expires_at - time.time()))
        response.set_cookie(
            COOKIE_NAME,
            str(self._serializer.dumps(_to_json(session))),
            max_age=max_age,
            path=COOKIE_PATH,
            secure=secure,
            httponly=True,
            samesite="strict",
        )


def _to_json(session: Session) -> dict[str, Any]:
    data: dict[str, Any] = {"c": session.csrf, "e": session.expires_at}
    if session.principal is not None:
        p = session.principal
        data["p"] = {"n": p.name, "r": sorted(p.roles), "s": list(p.scopes)}
        data["m"] = session.auth_mode
        data["i"] = session.sid
    if session.token_sha256:
        data["t"] = session.token_sha256
    return data


def _from_json(data: Any) -> Session:
    if not isinstance(data, dict):
        raise ValueError("session is not an object")
    expires_at = float(data["e"])
    if expires_at <= time.time():
        raise ValueError("session expired")
    principal = None
    if "p" in data:
        p = data["p"]
        principal = Principal(str(p["n"]), parse_roles(p["r"]), parse_scopes(p["s"]))
    return Session(
        str(data["c"]),
        principal,
        expires_at,
        str(data.get("t", "")),
        str(data.get("m", "")),
        str(data.get("i", "")),
    )


def load_or_create_secret(path: Path) -> bytes:
    """The session signing key at `path`, made (32 random bytes, mode 0600) on first use.

    Raises ConfigError when the file cannot be read or written, when others may
    read or write it (they could forge sessions), or when it is too short.
    """
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = (secrets.token_hex(_SECRET_BYTES) + "\n").encode("ascii")
            # Whole or not at all, and never over a key another process made first.
            if atomic_create(path, key, mode=0o600):
                log.info("admin session key created path=%s", path)
        mode = path.stat().st_mode & 0o777
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"the admin session key {path} cannot be read or created "
            f"(admin_session_secret_path): {exc}"
        ) from exc
    if mode & 0o077:
        raise ConfigError(
            f"the admin session key {path} is readable or writable by others (mode {mode:o}), "
            f"so they could forge admin sign-ins: chmod 600 {path}"
        )
    if len(text) < 2 * _SECRET_BYTES:
        raise ConfigError(
            f"the admin session key {path} is shorter than {_SECRET_BYTES} bytes of hex; "
            "delete it and restart to make a new one (everyone is signed out)"
        )
    return text.encode("ascii")
