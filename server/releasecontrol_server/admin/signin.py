"""Who may use the admin UI: sign-in with the credentials the RPCs take, by auth mode.

| auth mode        | sign-in                                                                |
| ---------------- | ---------------------------------------------------------------------- |
| `rpc-token`      | a bearer token from the token store; revoking it ends the session      |
| `dfs`            | a delegated signed token; the session ends when the token expires      |
| `trusted-cluster`| none: the identity is a workload's client certificate, not a browser's |
| none (dev)       | none: the RPCs trust the client certificate, which a browser lacks     |

A token is checked by the very Authenticator the gRPC interceptor uses, so the
admin UI accepts and refuses exactly what the RPCs do, with the same messages.

Failed sign-ins are limited (`SignInThrottle`, in memory, one process): at most
10 failures per client address and 20 per principal within 15 minutes; past
that, sign-ins from that address (or naming that principal) are answered 429
with `Retry-After` (the seconds until the oldest failure leaves the window),
without checking the token, and logged. The principal of a failed attempt is
known only for `dfs` (the token's `sub`, read without trusting it); an
`rpc-token` names nobody until it matches, so there the address limit applies.
A successful sign-in clears the failures of its address and principal.
With `ALLOW_UNAUTHENTICATED_ADMIN` (refused in production), whoever reaches the
UI without signing in acts as the admin principal `unauthenticated-admin`.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jwt

from releasecontrol.errors import ConfigError, Unauthenticated
from releasecontrol.files import file_stamp
from releasecontrol_server.auth.interceptor import Authenticator
from releasecontrol_server.auth.principal import Principal, Role
from releasecontrol_server.auth.tokens import TokenStore, token_sha256

log = logging.getLogger(__name__)

UNAUTHENTICATED_PRINCIPAL = Principal("unauthenticated-admin", frozenset({Role.ADMIN}))
"""Who acts when ALLOW_UNAUTHENTICATED_ADMIN lets a visitor in without signing in."""

TOKEN_MODES = ("rpc-token", "dfs")

FAILED_SIGNINS_PER_ADDRESS = 10
"""Failed sign-ins one client address may make within `FAILED_SIGNIN_WINDOW_SECONDS`."""
FAILED_SIGNINS_PER_PRINCIPAL = 20
"""Failed sign-ins naming one principal (any address) within the window."""
FAILED_SIGNIN_WINDOW_SECONDS = 900
"""The sliding window the failures are counted in: 15 minutes."""
_MAX_TRACKED_KEYS = 10_000
_MAX_KEY_CHARS = 256


@dataclass(frozen=True)
class SignedIn:
    """A successful sign-in: the principal, when it ends, and (rpc-token) the token's hash."""

    principal: Principal
    expires_at: float
    token_sha256: str = ""


class SignIn:
    """Verifies sign-ins and keeps checking signed-in sessions, for one auth mode."""

    def __init__(
        self,
        *,
        auth_mode: str | None,
        authenticator: Authenticator,
        allow_unauthenticated: bool,
        session_seconds: int,
        token_store_path: Path | None = None,
    ) -> None:
        self.auth_mode = auth_mode
        self._authenticator = authenticator
        self.allow_unauthenticated = allow_unauthenticated
        self._session_seconds = session_seconds
        self._store_path = token_store_path
        self._store: TokenStore | None = None
        self._store_stamp: tuple[int, int, int] | None = None

    @property
    def accepts_tokens(self) -> bool:
        """True when the sign-in form (a token field) is offered."""
        return self.auth_mode in TOKEN_MODES

    def explain(self) -> str:
        """One or two sentences for the sign-in page: what to present, or why nothing works."""
        if self.auth_mode == "rpc-token":
            return (
                "Sign in with the bearer token you use for the API (RELEASECONTROL_TOKEN). "
                "An operator makes one with `releasectl token create --principal NAME --role ROLE`."
            )
        if self.auth_mode == "dfs":
            return (
                "Sign in with a delegated token (a signed JWS) from your identity provider, the "
                "same one the API takes; the session ends when the token expires."
            )
        if self.auth_mode == "trusted-cluster":
            why = (
                "This server identifies callers by their workload client certificate "
                "(trusted-cluster), which a browser does not present to the admin UI, so there is "
                "no way to sign in here. Run the control plane with RELEASECONTROL_AUTH_MODE "
                "rpc-token or dfs to use the admin UI"
            )
        else:
            why = (
                "This server runs without an auth mode: API callers are trusted by their client "
                "certificate, which a browser does not present to the admin UI, so there is no "
                "way to sign in here. Set RELEASECONTROL_AUTH_MODE=rpc-token (or dfs) and sign "
                "in with a token"
            )
        return why + (
            "."
            if self.allow_unauthenticated
            else ", or, in development only, set "
            "ALLOW_UNAUTHENTICATED_ADMIN=1 to use the UI without signing in."
        )

    def anonymous(self) -> Principal | None:
        """Who acts without a sign-in: the unauthenticated admin when allowed, else nobody."""
        return UNAUTHENTICATED_PRINCIPAL if self.allow_unauthenticated else None

    def verify(self, token: str) -> SignedIn:
        """Check `token` as the RPCs would; raise Unauthenticated (or Unavailable) saying why."""
        if not self.accepts_tokens:
            raise Unauthenticated(self.explain())
        token = token.strip()
        if not token:
            raise Unauthenticated("enter a token to sign in")
        principal = self._authenticator.authenticate([("authorization", f"Bearer {token}")], {})
        expires_at = time.time() + self._session_seconds
        if self.auth_mode == "dfs":
            return SignedIn(principal, min(expires_at, _token_expiry(token)))
        return SignedIn(principal, expires_at, token_sha256(token))

    def current(self, principal: Principal, token_hash: str) -> Principal | None:
        """The signed-in principal as it stands now, or None when its sign-in no longer counts.

        For `rpc-token` the token must still be in the store (revoking it ends
        every session it opened at once), and its roles and scopes are the
        store's current ones. A store that cannot be read counts as no token:
        fail closed, as the RPCs do.
        """
        if self.auth_mode != "rpc-token":
            return principal
        if not token_hash:
            return None
        store = self._token_store()
        if store is None:
            return None
        found = None
        for entry in store.entries:
            if hmac.compare_digest(entry.token_sha256, token_hash):
                found = entry.principal
        return found

    def _token_store(self) -> TokenStore | None:
        if self._store_path is None:
            return None
        stamp = file_stamp(self._store_path)
        if self._store is None or stamp != self._store_stamp:
            try:
                self._store = TokenStore.load(self._store_path)
                self._store_stamp = stamp
            except ConfigError as exc:
                log.error("admin sign-ins refused: token store unusable: %s", exc.message)
                self._store = None
                return None
        return self._store


@dataclass(frozen=True)
class Throttled:
    """A sign-in refused before its token was checked: too many recent failures."""

    key: str
    """What is limited: `address=<ip>` or `principal=<name>`."""
    retry_after: int
    """Seconds until one more attempt is allowed."""

    def message(self) -> str:
        what, _, _ = self.key.partition("=")
        whose = "from this address" if what == "address" else "for this principal"
        return (
            f"too many failed sign-ins {whose}; try again in {self.retry_after} s with a "
            "valid token (an operator can make one with `releasectl token create`)"
        )


class SignInThrottle:
    """Counts failed sign-ins per client address and per principal in a sliding window."""

    def __init__(
        self,
        *,
        per_address: int = FAILED_SIGNINS_PER_ADDRESS,
        per_principal: int = FAILED_SIGNINS_PER_PRINCIPAL,
        window_seconds: float = FAILED_SIGNIN_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = _MAX_TRACKED_KEYS,
    ) -> None:
        self._limits = {"address": per_address, "principal": per_principal}
        self._window = window_seconds
        self._clock = clock
        self._max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, address: str, principal: str | None) -> Throttled | None:
        """Why an attempt from `address` (naming `principal`) must wait; None when it may go."""
        now = self._clock()
        worst: Throttled | None = None
        for key in _keys(address, principal):
            times = self._recent(key, now)
            limit = self._limits[key.partition("=")[0]]
            if times is not None and len(times) >= limit:
                wait = max(1, math.ceil(times[0] + self._window - now))
                if worst is None or wait > worst.retry_after:
                    worst = Throttled(key, wait)
        return worst

    def failed(self, address: str, principal: str | None) -> None:
        """Count one failed sign-in against the address and the principal."""
        now = self._clock()
        for key in _keys(address, principal):
            times = self._recent(key, now)
            if times is None:
                while len(self._failures) >= self._max_keys:
                    self._failures.popitem(last=False)  # the key idle longest
                times = self._failures[key] = deque()
            times.append(now)
            self._failures.move_to_end(key)
            limit = self._limits[key.partition("=")[0]]
            while len(times) > limit:
                times.popleft()
            if len(times) == limit:
                log.warning(
                    "admin sign-in limited %s failures=%d window_seconds=%d",
                    key,
                    limit,
                    self._window,
                )

    def succeeded(self, address: str, principal: str | None) -> None:
        """A good sign-in: forget the failures of its address and principal."""
        for key in _keys(address, principal):
            self._failures.pop(key, None)

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self._window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times


def _keys(address: str, principal: str | None) -> list[str]:
    keys = [f"address={address[:_MAX_KEY_CHARS]}"]
    if principal:
        keys.append(f"principal={principal[:_MAX_KEY_CHARS]}")
    return keys


def claimed_principal(auth_mode: str | None, token: str) -> str | None:
    """Who a sign-in attempt claims to be, for limiting failures; None when it names nobody.

    `dfs`: the token's `sub`, read without checking the signature (only ever
    used as a counter's key). An `rpc-token` names nobody until it matches.
    """
    if auth_mode != "dfs":
        return None
    try:
        sub = jwt.decode(token.strip(), options={"verify_signature": False}).get("sub")
    except (jwt.PyJWTError, AttributeError, ValueError, TypeError):
        return None
    return sub if isinstance(sub, str) and sub.isprintable() and sub else None


def _token_expiry(token: str) -> float:
    """The `exp` of a token whose signature and claims the authenticator already verified."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return float(claims["exp"])
