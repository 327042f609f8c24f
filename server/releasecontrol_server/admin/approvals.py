"""The admin UI's side of four eyes: approval requests as rows, and what approving one does.

    approval_row(request, now)                    a request as the pages show it
    preview(state, request, approver, now, ...)   what approving it would change (no write)

The rules are `releasecontrol_server.approvals`' (who may approve, expiry) and the
state machine's (whether the change can be applied now); nothing is decided here.
A refusal at the preview is the one `ReleaseController.approve` would raise, so an
approver sees it before confirming, and the request still waits.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime
from typing import Any

from releasecontrol.manifest import format_duration
from releasecontrol_server import releases
from releasecontrol_server.admin.actions import Preview, compare
from releasecontrol_server.approvals import ApprovalRequest
from releasecontrol_server.releases import FeatureState


def approval_row(request: ApprovalRequest, now: datetime) -> dict[str, Any]:
    """`request` for a table row or the request's page: who asked what, and where it stands."""
    state = request.state(now)
    left = math.ceil((request.expires_at - now).total_seconds())
    return {
        "id": request.id,
        "feature_id": request.feature_id,
        "what": request.what,
        "version": request.command.version,
        "requested_by": requester(request),
        "actor": request.meta.actor,
        "reason": request.meta.reason,
        "ticket": request.meta.ticket,
        "state": state,
        "requested_at": request.requested_at,
        "expires_at": request.expires_at,
        "expires_left": f"in {format_duration(left)}" if left > 0 else "expired",
        "approved_by": request.approved_by,
        "approved_at": request.approved_at,
        "transition_id": request.transition_id,
    }


def requester(request: ApprovalRequest) -> str:
    """Who asked: the principal (its actor when none was recorded, as in tests without auth)."""
    return request.meta.principal or request.meta.actor


def preview(
    state: FeatureState | None,
    request: ApprovalRequest,
    approver: str,
    now: datetime,
    *,
    canary_loads: int = 0,
) -> Preview:
    """What approving `request` would change on `state` (None: never published) at `now`,
    as the controller would apply it: the requester's command and meta, `approver` named.

    Raises the state machine's error when the change cannot be applied now (then
    approving would fail the same way and the request would still wait).
    """
    meta = dataclasses.replace(request.meta, approved_by=approver)
    outcome = releases.apply(
        state, request.feature_id, request.command, meta, now, canary_loads=canary_loads
    )
    stable = (state.stable if state else None) or "none"
    headline = (
        f"Approve request {request.id} of {requester(request)}: {request.what} of "
        f"{request.feature_id} (stable now {stable})"
    )
    if isinstance(outcome, releases.Unchanged):  # the request is marked approved, nothing moves
        return Preview(headline, [], f"nothing changes: {outcome.why}")
    before = state or FeatureState(request.feature_id)
    return Preview(headline, compare(before, outcome.state), outcome.record.detail)
