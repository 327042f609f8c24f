"""`rpc-token` auth: `authorization: Bearer <token>` metadata, checked against a token store.

The store is a JSON file the server only reads; `create_token` (behind
`releasectl token create`) and `revoke_tokens` write it:

    {"version": 1,
     "tokens": [{"principal": "ci-release-bot", "roles": ["releaser"],
                 "scopes": ["feature-pay*"], "token_sha256": "<hex>",
                 "created_at": "2030-01-01T00:00:00Z"}]}

Only the SHA-256 of each token is kept, so a copy of the store lets nobody
call the server; a presented token is hashed and compared with every entry in
constant time. Tokens are `rc_` + 32 random bytes (URL-safe base64): the
prefix makes a leaked one easy to spot in logs and by secret scanners. The
file is replaced atomically with mode 0600 under a lock, and the server
re-reads it when it changes, so a new or revoked token counts without a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from releasecontrol.errors import ConfigError, Unauthenticated, Unavailable
from releasecontrol.files import atomic_write, file_stamp
from releasecontrol_server.auth.principal import (
    AuthContext,
    Metadata,
    Principal,
    Role,
    parse_roles,
    parse_scopes,
    validate_principal_name,
)

log = logging.getLogger(__name__)

TOKEN_PREFIX = "rc_"
STORE_VERSION = 1
_ENTRY_KEYS = frozenset({"principal", "roles", "scopes", "token_sha256", "created_at"})
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class TokenEntry:
    """One issued token: who it authenticates, with which roles, and the token's hash."""

    principal: Principal
    token_sha256: str
    created_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "principal": self.principal.name,
            "roles": sorted(self.principal.roles),
            "scopes": list(self.principal.scopes),
            "token_sha256": self.token_sha256,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class TokenStore:
    """The parsed token store; `authenticate` maps a presented token to its principal."""

    path: Path
    entries: tuple[TokenEntry, ...]

    @classmethod
    def load(cls, path: Path) -> TokenStore:
        """Read and check the store at `path`.

        Raises ConfigError naming the file, the problem and the fix when it is
        missing, writable by group or others, or malformed.
        """
        try:
            st = path.stat()
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(
                f"token store {path} does not exist (token_store_path): create a token with "
                "`releasectl token create --principal P --role R`, which makes the file"
            ) from None
        except OSError as exc:
            raise ConfigError(f"token store {path} cannot be read: {exc.strerror}") from exc
        if st.st_mode & 0o022:
            raise ConfigError(
                f"token store {path} is writable by group or others (mode "
                f"{st.st_mode & 0o777:o}), so anyone could add a token: chmod 600 {path}"
            )
        try:
            return cls(path, _parse(json.loads(raw)))
        except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
            raise ConfigError(f"token store {path} is not valid: {exc}") from exc

    def authenticate(self, token: str) -> Principal:
        """The principal of `token`; raise Unauthenticated when no entry has its hash.

        Every entry is compared, with `hmac.compare_digest`, so the time taken
        says nothing about which entry (if any) was close.
        """
        digest = token_sha256(token)
        found: TokenEntry | None = None
        for entry in self.entries:
            if hmac.compare_digest(entry.token_sha256, digest):
                found = entry
        if found is None:
            raise Unauthenticated(
                "the bearer token is not known to this server (mistyped, revoked, or made for "
                "another server); ask an operator for a new one (`releasectl token create`)"
            )
        return found.principal

    def to_json(self) -> dict[str, Any]:
        return {"version": STORE_VERSION, "tokens": [e.to_json() for e in self.entries]}


def token_sha256(token: str) -> str:
    """The lowercase hex SHA-256 of a token's UTF-8 bytes: what the store keeps."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def create_token(
    store_path: Path,
    principal: str,
    roles: Iterable[Role | str],
    scopes: Iterable[str] | None = None,
    *,
    now: datetime | None = None,
) -> str:
    """Add a new token for `principal` to the store (made if missing); return the token.

    The token is returned once and never stored: only its SHA-256 is. The file
    is rewritten atomically, mode 0600, under an exclusive lock so concurrent
    calls do not lose each other's entries. Raises ValueError for a bad
    principal, role or scope, ConfigError when the existing store is invalid.
    """
    entry_principal = Principal(
        validate_principal_name(principal), parse_roles(list(roles)), parse_scopes(scopes)
    )
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    created = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with _locked(store_path):
        store = TokenStore.load(store_path) if store_path.exists() else None
        entries = store.entries if store is not None else ()
        entry = TokenEntry(entry_principal, token_sha256(token), created)
        _write_store(TokenStore(store_path, (*entries, entry)))
    log.info(
        "token created principal=%s roles=%s scopes=%s store=%s",
        principal,
        ",".join(sorted(entry_principal.roles)),
        ",".join(entry_principal.scopes),
        store_path,
    )
    return token


def revoke_tokens(store_path: Path, principal: str) -> int:
    """Remove every token of `principal` from the store; return how many were removed.

    Raises ConfigError when the store is missing or invalid.
    """
    with _locked(store_path):
        store = TokenStore.load(store_path)
        kept = tuple(e for e in store.entries if e.principal.name != principal)
        removed = len(store.entries) - len(kept)
        if removed:
            _write_store(TokenStore(store_path, kept))
    log.info("tokens revoked principal=%s count=%d store=%s", principal, removed, store_path)
    return removed


def bearer_token(metadata: Metadata, *, how_to_get_one: str) -> str:
    """The token of the call's one `authorization: Bearer <token>` entry.

    Raises Unauthenticated when there is none (the message ends with
    `how_to_get_one`), more than one, or it is not a Bearer credential. The
    token itself never appears in a message.
    """
    values = [value for key, value in metadata if key.lower() == "authorization"]
    if not values:
        raise Unauthenticated(
            f"no credentials: send 'authorization: Bearer <token>' metadata; {how_to_get_one}"
        )
    if len(values) > 1:
        raise Unauthenticated(
            f"the call carries {len(values)} authorization metadata entries; send exactly one"
        )
    value = values[0]
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    scheme, _, token = text.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated(
            "the authorization metadata is not 'Bearer <token>'; send the token with the "
            "Bearer scheme"
        )
    return token


class TokenAuthenticator:
    """The `rpc-token` Authenticator: a Bearer token from the store at `store_path`."""

    mode = "rpc-token"

    def __init__(self, store_path: Path) -> None:
        """Load the store once; raises ConfigError when it is missing or invalid."""
        self._path = store_path
        # The stamp is taken before the load, so a change in between is seen next time.
        self._stamp = file_stamp(store_path)
        self._store = TokenStore.load(store_path)

    def describe(self) -> str:
        return f"rpc-token (bearer tokens from {self._path}, {len(self._store.entries)} tokens)"

    def authenticate(self, metadata: Metadata, auth_context: AuthContext) -> Principal:
        """The principal of the call's bearer token; raises Unauthenticated, or Unavailable
        when the store changed into something unreadable (every token is refused then)."""
        token = bearer_token(
            metadata,
            how_to_get_one="ask an operator for a token (`releasectl token create`)",
        )
        return self._current().authenticate(token)

    def _current(self) -> TokenStore:
        """The store, re-read when its file changed since the last call."""
        stamp = file_stamp(self._path)
        if stamp != self._stamp:
            try:
                store = TokenStore.load(self._path)
            except ConfigError as exc:
                # Fail closed: a store that cannot be read might be one that
                # revoked a token; keep refusing until it is fixed.
                log.error("token store unusable, refusing every token: %s", exc.message)
                raise Unavailable(
                    "the server cannot read its token store right now; the operator has been "
                    "told in the server log, try again later"
                ) from exc
            log.info("token store reloaded path=%s tokens=%d", self._path, len(store.entries))
            self._store, self._stamp = store, stamp
        return self._store


# -- the file --------------------------------------------------------------------------------


def _parse(data: object) -> tuple[TokenEntry, ...]:
    if not isinstance(data, dict):
        raise ValueError("the top level must be a JSON object with 'version' and 'tokens'")
    if data.get("version") != STORE_VERSION:
        raise ValueError(
            f"version is {data.get('version')!r}; this server reads version {STORE_VERSION}"
        )
    unknown = sorted(set(data) - {"version", "tokens"})
    if unknown:
        raise ValueError(f"unknown top-level keys {unknown}")
    tokens = data.get("tokens")
    if not isinstance(tokens, list):
        raise ValueError("'tokens' must be a list")
    entries = []
    for index, item in enumerate(tokens):
        where = f"tokens[{index}]"
        if not isinstance(item, dict) or set(item) != _ENTRY_KEYS:
            raise ValueError(f"{where} must have exactly the keys {sorted(_ENTRY_KEYS)}")
        if not isinstance(item["token_sha256"], str) or not _SHA256_HEX.match(item["token_sha256"]):
            raise ValueError(f"{where}.token_sha256 must be 64 lowercase hex digits")
        if not isinstance(item["created_at"], str):
            raise ValueError(f"{where}.created_at must be an RFC 3339 string")
        try:
            principal = Principal(
                validate_principal_name(item["principal"]),
                parse_roles(item["roles"]),
                parse_scopes(item["scopes"]),
            )
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        entries.append(TokenEntry(principal, item["token_sha256"], item["created_at"]))
    return tuple(entries)


def _write_store(store: TokenStore) -> None:
    """Replace the store file atomically, mode 0600."""
    path = store.path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = (json.dumps(store.to_json(), indent=2, sort_keys=True) + "\n").encode()
    atomic_write(path, data, mode=0o600)


@contextlib.contextmanager
def _locked(store_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<store>.lock` (the store itself is replaced, not locked)."""
    store_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(store_path.with_name(store_path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
