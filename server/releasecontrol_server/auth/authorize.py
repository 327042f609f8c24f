"""The one authorization decision: may this principal do this action on this feature?

Every entry point asks here: the gRPC interceptor (role check before the
request is read), the servicer (`require`, once the request names its
feature), and the admin UI (`authorize`). Nothing else decides.

    decide(principal, action, feature_id)  -> Decision (reports, never raises)
    authorize(principal, action, feature_id)  raises PermissionDenied with its reason
    require(action, feature_id)            the same for the caller of the current RPC

The caller of the current RPC lives in a context variable that the interceptor
sets (`acting_as`) around each ReleaseControl call; gRPC runs every call in its
own task, so callers never see each other. `feature_id=None` means the request
names no single feature (lists, the remote index, an unfiltered watch): only
the role is checked, and whoever answers drops the features the principal does
not cover (`permits`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from releasecontrol.errors import PermissionDenied, Unauthenticated
from releasecontrol_server.auth.principal import Principal, Role

log = logging.getLogger(__name__)


class Action(StrEnum):
    """What a caller asks to do; each RPC maps to one (`RPC_ACTIONS`)."""

    READ = "read"
    WATCH = "watch"
    PUBLISH = "publish"
    DEPLOY_CANARY = "deploy_canary"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    SET_CHANNEL = "set_channel"
    APPROVE = "approve"
    REFRESH_MANIFESTS = "refresh_manifests"
    ADMIN = "admin"


_VIEWER = frozenset({Action.READ, Action.WATCH})

ROLE_ACTIONS: Mapping[Role, frozenset[Action]] = MappingProxyType(
    {
        Role.VIEWER: _VIEWER,
        Role.RELEASER: _VIEWER | {Action.PUBLISH, Action.DEPLOY_CANARY},
        Role.APPROVER: _VIEWER
        | {Action.PROMOTE, Action.ROLLBACK, Action.SET_CHANNEL, Action.APPROVE},
        Role.ADMIN: frozenset(Action),
    }
)
"""The contract's roles: viewer (read, watch), releaser (publish, canary),
approver (promote, rollback, fallback, approve another's change), admin (everything)."""

SERVICE = "releasecontrol.v1.ReleaseControl"

RPC_ACTIONS: Mapping[str, Action] = MappingProxyType(
    {
        "ListFeatures": Action.READ,
        "GetFeature": Action.READ,
        "GetReleaseIndex": Action.READ,
        "GetStatus": Action.READ,
        "ListTransitions": Action.READ,
        "WatchReleases": Action.WATCH,
        "PublishVersion": Action.PUBLISH,
        "DeployCanary": Action.DEPLOY_CANARY,
        "SetCanaryWeight": Action.DEPLOY_CANARY,
        "Promote": Action.PROMOTE,
        "Rollback": Action.ROLLBACK,
        "SetChannel": Action.SET_CHANNEL,
        "ListApprovals": Action.READ,
        "GetAnalysis": Action.READ,
        "TestWebhooks": Action.ADMIN,
        "Approve": Action.APPROVE,
        "RefreshManifests": Action.REFRESH_MANIFESTS,
        "RebuildOrigin": Action.ADMIN,
    }
)
"""Each RPC of releasecontrol.v1.ReleaseControl (method name) -> the action it performs."""


def action_for_method(method: str) -> Action:
    """The action of a gRPC method path (`/releasecontrol.v1.ReleaseControl/Promote`).

    A method not in `RPC_ACTIONS` (another service, or an RPC added without a
    rule) needs `admin`: a forgotten entry fails closed.
    """
    service, _, name = method.lstrip("/").rpartition("/")
    if service == SERVICE and name in RPC_ACTIONS:
        return RPC_ACTIONS[name]
    return Action.ADMIN


def roles_granting(action: Action) -> tuple[Role, ...]:
    """The roles whose actions include `action`, in the contract's order."""
    return tuple(role for role in Role if action in ROLE_ACTIONS[role])


@dataclass(frozen=True)
class Decision:
    """The outcome of one authorization check and the sentence that explains it."""

    allowed: bool
    reason: str


def decide(principal: Principal, action: Action, feature_id: str | None = None) -> Decision:
    """Whether `principal` may do `action` on `feature_id` (None: no single feature).

    Allowed when one of its roles grants the action and, for a feature, one of
    its scopes matches the feature id. Never raises.
    """
    target = f"feature {feature_id!r}" if feature_id is not None else "features"
    if not _role_grants(principal, action):
        return Decision(
            False,
            f"{principal.describe()} may not {action.value} {target}: that needs "
            f"{_needed(action)}; ask an operator to grant it",
        )
    if feature_id is not None and not principal.covers(feature_id):
        return Decision(
            False,
            f"{principal.describe()} may not {action.value} feature {feature_id!r}: its roles "
            f"apply only to features matching {', '.join(principal.scopes)}, and "
            f"{action.value} needs {_needed(action)} for {feature_id!r}; ask an operator to "
            "widen its scopes",
        )
    return Decision(True, f"{principal.name} may {action.value} {target}")


def _role_grants(principal: Principal, action: Action) -> bool:
    return any(action in ROLE_ACTIONS[role] for role in principal.roles)


def _needed(action: Action) -> str:
    """`the releaser or admin role`, or `a role (viewer is enough)` when every role grants it."""
    roles = roles_granting(action)
    if len(roles) == len(Role):
        return f"a role ({roles[0].value} is enough)"
    return f"the {' or '.join(role.value for role in roles)} role"


def permits(principal: Principal, action: Action, feature_id: str | None = None) -> bool:
    """True when `decide` allows it; for filtering what a list or a watch returns.

    The same rule as `decide` without building its sentence: a status or a
    watch asks once per feature (reads benchmark).
    """
    return _role_grants(principal, action) and (feature_id is None or principal.covers(feature_id))


def authorize(principal: Principal, action: Action, feature_id: str | None = None) -> None:
    """Return when `principal` may do `action` on `feature_id`; raise PermissionDenied otherwise.

    The message names the principal, its roles and scopes, the action, the
    feature and the role needed. The refusal is logged as one structured line.
    """
    if permits(principal, action, feature_id):
        return  # every allowed call: no sentence to build
    decision = decide(principal, action, feature_id)
    if decision.allowed:
        return
    caller = _CALLER.get()
    log.warning(
        "auth refused code=PERMISSION_DENIED method=%s principal=%s action=%s feature=%s reason=%r",
        caller.method if caller is not None else "-",
        principal.name,
        action.value,
        feature_id if feature_id is not None else "-",
        decision.reason,
    )
    raise PermissionDenied(decision.reason)


# -- the caller of the current RPC ---------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """The authenticated principal of the RPC being served, and that RPC's method path."""

    principal: Principal
    method: str


_CALLER: ContextVar[Caller | None] = ContextVar("releasecontrol_caller", default=None)


@contextmanager
def acting_as(principal: Principal, method: str = "-") -> Iterator[Principal]:
    """Make `principal` the current caller inside the block (the interceptor does this per RPC).

    Also for tests and for entry points that authenticate on their own.
    """
    token = _CALLER.set(Caller(principal, method))
    try:
        yield principal
    finally:
        # A streaming handler finalised from another context raises ValueError: that
        # context ends with its task anyway, so there is nothing left to restore.
        with suppress(ValueError):
            _CALLER.reset(token)


def current_caller() -> Caller | None:
    """The current RPC's caller, or None outside an authenticated call."""
    return _CALLER.get()


def current_principal() -> Principal:
    """The authenticated principal of the current RPC.

    Raises Unauthenticated outside an authenticated call, so a handler wired
    without the interceptor refuses instead of running unchecked.
    """
    caller = _CALLER.get()
    if caller is None:
        log.error("auth refused code=UNAUTHENTICATED reason='no authenticated caller in context'")
        raise Unauthenticated(
            "this call was not authenticated (the server's auth interceptor did not run); "
            "this is a server wiring fault, report it to the operator"
        )
    return caller.principal


def require(action: Action, feature_id: str | None = None) -> Principal:
    """Authorize the current caller for `action` on `feature_id`; return its principal.

    Raises Unauthenticated outside an authenticated call and PermissionDenied
    when the caller may not (see `authorize`).
    """
    principal = current_principal()
    authorize(principal, action, feature_id)
    return principal


def require_each(action: Action, feature_ids: Iterable[str]) -> Principal:
    """`require` for every feature in `feature_ids` (or the role only when there is none)."""
    principal = current_principal()
    ids = list(feature_ids)
    for feature_id in ids:
        authorize(principal, action, feature_id)
    if not ids:
        authorize(principal, action)
    return principal
