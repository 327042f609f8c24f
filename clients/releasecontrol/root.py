"""The root of trust (host protocol v2): which keys sign roots, and which sign the index.

Hosts pin the root keys (the trust file: a threshold of keys kept offline, and
the root version they sign). A root, `roots/<N>.json` on the origin, lists every
key and two roles:

- `root`: the keys (and threshold) that must sign the next root version;
- `index`: the online keys (and threshold) that sign `remote-index.json`, its
  shards and every `releases.json`.

Root *N*+1 is accepted when the threshold of root *N*'s `root` role and the
threshold of its own `root` role both signed it, so a host that trusts an old
root follows the chain to the newest one, and online keys rotate without
touching hosts (docs/host-protocol.md, section 4).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from releasecontrol.errors import VerificationError
from releasecontrol.fields import (
    Fields,
    check_extra,
    check_period,
    describe,
    format_time,
    frozen,
    is_expired,
    utc_seconds,
)
from releasecontrol.index import SCHEMA_VERSION, Envelope, read_type, sign
from releasecontrol.trust import ALG_ED25519, SigningKey, TrustedKey, TrustStore, keyid_for

__all__ = [
    "ROLES",
    "ROLE_INDEX",
    "ROLE_ROOT",
    "TYPE_ROOT",
    "Role",
    "Root",
    "root_path",
]

TYPE_ROOT = "root"
ROLE_ROOT = "root"
ROLE_INDEX = "index"
ROLES = (ROLE_ROOT, ROLE_INDEX)

_ROOT_FIELDS = frozenset(
    {"schema_version", "type", "version", "issued_at", "expires_at", "keys", "roles"}
)
_KEY_FIELDS = frozenset({"alg", "public_key", "dev"})
_ROLE_FIELDS = frozenset({"keyids", "threshold"})


def root_path(version: int) -> str:
    """Where root `version` lives on the origin: "roots/<version>.json"."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"a root version is an integer of at least 1, not {version!r}")
    return f"roots/{version}.json"


@dataclass(frozen=True)
class Role:
    """The keyids that may sign for a role, and how many distinct ones must."""

    keyids: tuple[str, ...]
    threshold: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "keyids", tuple(self.keyids))
        if not self.keyids:
            raise ValueError("a role needs at least one keyid")
        if len(set(self.keyids)) != len(self.keyids):
            raise ValueError(f"a role lists a keyid twice: {list(self.keyids)}")
        if type(self.threshold) is not int or not 1 <= self.threshold <= len(self.keyids):
            raise ValueError(
                f"threshold {self.threshold!r} cannot be met by {len(self.keyids)} keyid(s)"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"keyids": list(self.keyids), "threshold": self.threshold}


@dataclass(frozen=True)
class Root:
    """The signed body of `roots/<version>.json`.

    Raises ValueError when a role names a key the root does not list, a
    threshold cannot be met, or expiry is not after issue.
    """

    version: int
    keys: Mapping[str, TrustedKey]
    roles: Mapping[str, Role]
    issued_at: datetime
    expires_at: datetime
    schema_version: int = SCHEMA_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if type(self.version) is not int or self.version < 1:
            raise ValueError(f"root version must be an integer of at least 1, not {self.version!r}")
        for keyid, key in self.keys.items():
            if keyid != key.keyid:
                raise ValueError(f"key {key.keyid!r} is filed under keyid {keyid!r}")
        for name in ROLES:
            if name not in self.roles:
                raise ValueError(f'a root needs the "{name}" role')
        for name, role in self.roles.items():
            missing = [k for k in role.keyids if k not in self.keys]
            if missing:
                raise ValueError(f'role "{name}" names keyid {missing[0]!r}, which "keys" lacks')
        object.__setattr__(self, "keys", frozen(self.keys))
        object.__setattr__(self, "roles", frozen(self.roles))
        object.__setattr__(self, "issued_at", utc_seconds(self.issued_at))
        object.__setattr__(self, "expires_at", utc_seconds(self.expires_at))
        check_period(self.issued_at, self.expires_at)
        object.__setattr__(self, "extra", frozen(self.extra))
        check_extra(self.extra, _ROOT_FIELDS)

    def role(self, name: str) -> TrustStore:
        """The keys and threshold of role `name` ("root" or "index"), as a trust store."""
        role = self.roles[name]
        return TrustStore.for_keys([self.keys[k] for k in role.keyids], threshold=role.threshold)

    def is_expired(self, now: datetime) -> bool:
        """True from `expires_at` on. Raises ValueError for a naive `now`."""
        return is_expired(self.expires_at, now)

    def to_dict(self) -> dict[str, Any]:
        """The `signed` body in the protocol's format, unknown fields included."""
        keys: dict[str, Any] = {}
        for keyid, key in self.keys.items():
            entry: dict[str, Any] = {"alg": key.alg, "public_key": key.public_key_b64}
            if key.dev:
                entry["dev"] = True
            keys[keyid] = entry
        return {
            **dict(self.extra),
            "schema_version": self.schema_version,
            "type": TYPE_ROOT,
            "version": self.version,
            "issued_at": format_time(self.issued_at),
            "expires_at": format_time(self.expires_at),
            "keys": keys,
            "roles": {name: role.to_dict() for name, role in self.roles.items()},
        }

    def sign(self, keys: Sequence[SigningKey]) -> Envelope:
        """This root signed by `keys` (root keys of this version and of the one before)."""
        return sign(self.to_dict(), keys)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Root:
        """The root in a `signed` body; raises VerificationError naming the bad field."""
        f = Fields("root", d)
        read_type(f, TYPE_ROOT)
        schema_version = f.integer("schema_version", 1)
        listed = f.nested("keys")
        keys = {keyid: _read_key(listed, keyid) for keyid in listed.obj}
        roles_field = f.nested("roles")
        roles = {}
        for name in roles_field.obj:
            r = roles_field.nested(name)
            keyids = r.array("keyids")
            for i, keyid in enumerate(keyids):
                if not isinstance(keyid, str):
                    raise VerificationError(
                        f'root: field "{r.full("keyids")}[{i}]" must be a keyid string, '
                        f"not {describe(keyid)}"
                    )
            try:
                roles[name] = Role(keyids=tuple(keyids), threshold=r.integer("threshold", 1))
            except ValueError as exc:
                raise VerificationError(f'root: role "{name}": {exc}') from None
        try:
            return cls(
                version=f.integer("version", 1),
                keys=keys,
                roles=roles,
                issued_at=f.time("issued_at"),
                expires_at=f.time("expires_at"),
                schema_version=schema_version,
                extra=f.extra(_ROOT_FIELDS),
            )
        except ValueError as exc:
            raise VerificationError(f"root: {exc}") from None

    @classmethod
    def create(
        cls,
        *,
        version: int,
        root_keys: Sequence[TrustedKey],
        index_keys: Sequence[TrustedKey],
        issued_at: datetime,
        expires_at: datetime,
        root_threshold: int = 1,
        index_threshold: int = 1,
    ) -> Root:
        """A root listing `root_keys` and `index_keys` under their roles."""
        keys = {k.keyid: k for k in [*root_keys, *index_keys]}
        return cls(
            version=version,
            keys=keys,
            roles={
                ROLE_ROOT: Role(tuple(dict.fromkeys(k.keyid for k in root_keys)), root_threshold),
                ROLE_INDEX: Role(
                    tuple(dict.fromkeys(k.keyid for k in index_keys)), index_threshold
                ),
            },
            issued_at=issued_at,
            expires_at=expires_at,
        )


def _read_key(listed: Fields, keyid: str) -> TrustedKey:
    entry = listed.nested(keyid)
    alg = entry.get("alg")
    if alg != ALG_ED25519:
        raise VerificationError(
            f'root: field "{entry.full("alg")}" must be "{ALG_ED25519}", not {describe(alg)}'
        )
    encoded = entry.text("public_key")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise entry.wrong("public_key", "the standard base64 of a raw 32-byte Ed25519 key")
    if keyid != keyid_for(raw):
        raise VerificationError(
            f'root: keyid "{keyid}" is not the SHA-256 of its public key ({keyid_for(raw)})'
        )
    dev = entry.obj.get("dev", False)
    if not isinstance(dev, bool):
        raise entry.wrong("dev", "true or false")
    return TrustedKey(keyid=keyid, public_key_raw=raw, dev=dev)
