"""Who may use the admin UI: sign-in with the credentials the RPCs take, by auth mode.

| auth mode        | sign-in                                                                |
| ---------------- | ---------------------------------------------------------------------- |
| `rpc-token`      | a bearer token from the token store; revoking it ends the session      |
| `dfs`            | a delegated signed token; the session ends when the token expires      |
| `trusted-cluster`| none: the identity is a workload's client certificate, not a browser's |
| none (dev)       | none: the RPCs trust the client certificate, which a browser lacks     |

A token is checked by the very Authenticator the gRPC interceptor uses, so the
admin UI accepts and refuses exactly what the RPCs do, with the same messages.
With `ALLOW_UNAUTHENTICATED_ADMIN` (refused in production), whoever reaches the
UI without signing in acts as the admin principal `unauthenticated-admin`.
"""

from __future__ import annotations

import hmac
import logging
import time
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


def _token_expiry(token: str) -> float:
    """The `exp` of a token whose signature and claims the authenticator already verified."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return float(claims["exp"])
