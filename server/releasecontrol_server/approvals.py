"""Four eyes: which changes need a second principal's approval, and the rules of approving.

A policy names feature id patterns (`require_approval = ["feature-pay*"]`). On
such a feature, promoting to stable (`release promote`, with or without
`--skip-soak`), publishing straight to stable and setting stable by operator
fallback (`channel fallback --to stable`) are not applied when asked:
the control plane keeps the request (who asked, the command, its reason) and
answers ApprovalRequired with the request's id. Another principal with the
approver role runs `release approve --id N`; the change is then applied as the
requester asked it, its audit record naming the approver. The requester cannot
approve their own request, a request expires after `approval_ttl_seconds`, and
it is applied at most once (its change carries the request id
`approval-<N>`). A step plan never promotes a protected feature by itself: it
holds at its last step until a person asks and another approves.

Pure: the store keeps requests (`Store.add_approval`), the controller
calls `gate` before queuing a change and `check_approver` before applying one.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from releasecontrol.errors import ApprovalRequired, FailedPrecondition, NotFound, PermissionDenied
from releasecontrol.manifest import format_duration
from releasecontrol_server.releases import (
    AdvanceStep,
    ChangeMeta,
    Channel,
    Command,
    FeatureState,
    Promote,
    Publish,
    SetChannel,
)


@dataclass(frozen=True)
class ApprovalPolicy:
    patterns: tuple[str, ...] = ()
    ttl_seconds: int = 86_400

    def protects(self, feature_id: str) -> bool:
        return any(fnmatch.fnmatchcase(feature_id, pattern) for pattern in self.patterns)

    def gate(self, feature_id: str, command: Command, state: FeatureState | None) -> str:
        """What `command` does that needs approval on `feature_id` ("" when nothing does)."""
        if not self.protects(feature_id):
            return ""
        match command:
            case Promote(skip_soak=True):
                return f"promoting {command.version} to stable before its soak is over"
            case Promote():
                return f"promoting {command.version} to stable"
            case Publish(channel=Channel.STABLE):
                return f"publishing {command.version} straight to stable"
            case SetChannel(channel=Channel.STABLE):
                return f"setting stable to {command.version} by operator fallback"
            case AdvanceStep() if (
                state is not None and state.canary is not None and (state.canary.next_step is None)
            ):
                return f"promoting {state.canary.version} to stable at the end of its step plan"
        return ""


@dataclass(frozen=True)
class ApprovalRequest:
    """A change kept until a second principal approves it."""

    id: int
    feature_id: str
    rpc: str
    command: Command
    meta: ChangeMeta
    """As the requester asked: its `principal` is the requester."""
    what: str
    """What needs approval, in words ("promoting 1.3.0 to stable")."""
    requested_at: datetime
    expires_at: datetime
    manifest: bytes | None = None
    approved_by: str = ""
    approved_at: datetime | None = None
    transition_id: int | None = None

    def state(self, now: datetime) -> str:
        """`pending`, `approved` or `expired`."""
        if self.approved_at is not None:
            return "approved"
        return "expired" if now >= self.expires_at else "pending"


def required(request: ApprovalRequest, now: datetime) -> ApprovalRequired:
    """The error a requester gets while `request` waits."""
    left = max(1, int((request.expires_at - now).total_seconds()))
    return ApprovalRequired(
        f"{request.what} of feature {request.feature_id!r} needs a second approver: request "
        f"{request.id} waits (expires in {format_duration(left)}); another principal with the "
        f"approver role runs `releasectl release approve --id {request.id}`",
        request.id,
    )


def check_approver(
    request: ApprovalRequest | None, approval_id: int, approver: str, now: datetime
) -> ApprovalRequest:
    """`request` if `approver` may approve it now; else the error that says why not."""
    if request is None:
        raise NotFound(
            f"there is no approval request {approval_id}; list them with "
            "`releasectl release approvals`"
        )
    state = request.state(now)
    if state == "approved":
        raise FailedPrecondition(
            f"approval request {request.id} was already approved by {request.approved_by}"
        )
    if state == "expired":
        raise FailedPrecondition(
            f"approval request {request.id} expired at "
            f"{request.expires_at.strftime('%Y-%m-%dT%H:%M:%SZ')}; the requester asks again"
        )
    if approver == request.meta.principal:
        raise PermissionDenied(
            f"{approver} asked for request {request.id} and cannot approve it too: four eyes "
            "means another principal with the approver role approves"
        )
    return request


def expires(now: datetime, policy: ApprovalPolicy) -> datetime:
    return now + timedelta(seconds=policy.ttl_seconds)


# -- kept in the store as JSON ------------------------------------------------------------------


def command_json(command: Command) -> str:
    """A command that can need approval, as the store keeps it."""
    match command:
        case Promote():
            body: dict[str, Any] = {
                "kind": "promote",
                "version": command.version,
                "skip_soak": command.skip_soak,
            }
        case Publish():
            body = {
                "kind": "publish",
                "version": command.version,
                "manifest_sha256": command.manifest_sha256,
                "channel": command.channel.value,
                "soak_seconds": command.soak_seconds,
            }
        case SetChannel():
            body = {
                "kind": "set_channel",
                "version": command.version,
                "channel": command.channel.value,
                "soak_seconds": command.soak_seconds,
            }
        case _:
            raise ValueError(f"{type(command).__name__} never needs approval")
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def command_from_json(text: str) -> Command:
    body = json.loads(text)
    kind = body["kind"]
    if kind == "promote":
        return Promote(str(body["version"]), skip_soak=bool(body["skip_soak"]))
    if kind == "publish":
        return Publish(
            str(body["version"]),
            str(body["manifest_sha256"]),
            channel=Channel(body["channel"]),
            soak_seconds=int(body["soak_seconds"]),
        )
    if kind == "set_channel":
        return SetChannel(
            str(body["version"]), Channel(body["channel"]), soak_seconds=int(body["soak_seconds"])
        )
    raise ValueError(f"unknown command kind {kind!r} in an approval request")


def pending_first(requests: Sequence[ApprovalRequest], now: datetime) -> list[ApprovalRequest]:
    """Pending requests first (oldest first), then the rest (newest first)."""
    waiting = [r for r in requests if r.state(now) == "pending"]
    done = [r for r in requests if r.state(now) != "pending"]
    return sorted(waiting, key=lambda r: r.id) + sorted(done, key=lambda r: -r.id)
