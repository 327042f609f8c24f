"""Who a caller is once authenticated: a name, its roles, and the features they apply to.

Every auth mode ends in a `Principal`; `authorize.py` decides what it may do.
The roles are the contract's: `viewer` (read, watch), `releaser` (publish,
canary), `approver` (promote, rollback, fallback), `admin` (everything).
Scopes are glob patterns over feature ids (`feature-pay*`); the principal's
roles apply only to the features they match, and `("*",)` means every feature.

`parse_roles`, `parse_scopes` and `validate_principal_name` read the same
fields from token stores, allow-lists and token claims, so every mode accepts
and refuses the same spellings, with the same messages.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase

from releasecontrol.limits import TEXT_LIMITS

Metadata = Sequence[tuple[str, str | bytes]]
"""A call's invocation metadata as gRPC hands it over: (key, value) pairs, keys lowercase."""

AuthContext = Mapping[str, Sequence[bytes]]
"""A call's transport auth context (`ServicerContext.auth_context()`), e.g. `x509_pem_cert`."""

ALL_FEATURES: tuple[str, ...] = ("*",)
MAX_PRINCIPAL_NAME_LENGTH = TEXT_LIMITS["actor"]  # a principal is the default actor

# Feature ids are lowercase DNS labels; a scope is one with `*` / `?` wildcards.
# Brackets are left out on purpose: `[!...]` classes surprise more than they help.
_SCOPE = re.compile(r"^[a-z0-9*?-]{1,63}\Z")
# A principal name lands in audit records and log lines: printable, no spaces.
_NAME = re.compile(r"^[\x21-\x7e]+\Z")


class Role(StrEnum):
    """A named bundle of actions (see `authorize.ROLE_ACTIONS`)."""

    VIEWER = "viewer"
    RELEASER = "releaser"
    APPROVER = "approver"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its name, its roles and the features they apply to."""

    name: str
    """Who: a token's principal, a SPIFFE ID, a signed token's `sub`; the default audit actor."""

    roles: frozenset[Role]
    """What it may do (the union of the roles' actions)."""

    scopes: tuple[str, ...] = ALL_FEATURES
    """Feature-id glob patterns the roles apply to, e.g. `feature-pay*`; `*` is every feature."""

    def __post_init__(self) -> None:
        validate_principal_name(self.name)
        if not all(isinstance(role, Role) for role in self.roles):
            raise ValueError(f"roles of {self.name!r} must be Role values, got {self.roles!r}")
        parse_scopes(self.scopes)

    def covers(self, feature_id: str) -> bool:
        """True when `feature_id` matches one of the principal's scopes."""
        if self.scopes == ALL_FEATURES:
            return True  # the common case, without a pattern match per feature
        return any(fnmatchcase(feature_id, scope) for scope in self.scopes)

    def describe(self) -> str:
        """`name (roles: a, b; features: x*)` for messages and log lines."""
        roles = ", ".join(sorted(self.roles)) or "none"
        return f"{self.name} (roles: {roles}; features: {', '.join(self.scopes)})"


def validate_principal_name(name: object) -> str:
    """Return `name` when it is a usable principal name; raise ValueError saying why not."""
    if not isinstance(name, str) or not name:
        raise ValueError("a principal name must be a non-empty string")
    if len(name) > MAX_PRINCIPAL_NAME_LENGTH:
        raise ValueError(
            f"principal name is {len(name)} characters long; at most "
            f"{MAX_PRINCIPAL_NAME_LENGTH} are allowed"
        )
    if not _NAME.match(name):
        raise ValueError(
            f"principal name {name!r} has spaces or control characters; use printable ASCII "
            "without spaces, e.g. 'ci-release-bot' or 'spiffe://example.org/ns/ci'"
        )
    return name


def parse_roles(values: object) -> frozenset[Role]:
    """Role names (a non-empty list of strings) as Roles; raise ValueError naming a bad one."""
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise ValueError(f"roles must be a list of role names ({_role_names()}), got {values!r}")
    roles: set[Role] = set()
    for value in values:
        try:
            roles.add(Role(value))
        except ValueError:
            raise ValueError(f"unknown role {value!r}: use one of {_role_names()}") from None
    if not roles:
        raise ValueError(f"roles is empty: give at least one of {_role_names()}")
    return frozenset(roles)


def parse_scopes(values: object) -> tuple[str, ...]:
    """Feature-id glob patterns as a tuple; None means every feature. Raises ValueError."""
    if values is None:
        return ALL_FEATURES
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise ValueError(f"scopes must be a list of feature-id patterns, got {values!r}")
    scopes = tuple(values)
    if not scopes:
        raise ValueError(
            "scopes is empty, which would allow no feature: leave it out for every feature, "
            "or list patterns such as 'feature-pay*'"
        )
    for scope in scopes:
        if not isinstance(scope, str) or not _SCOPE.match(scope):
            raise ValueError(
                f"scope {scope!r} is not a feature-id pattern: use lowercase letters, digits, "
                "'-' and the wildcards '*' and '?', e.g. 'feature-pay*' or '*'"
            )
    return scopes


def _role_names() -> str:
    return ", ".join(role.value for role in Role)
