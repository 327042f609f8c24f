"""The admin UI's release changes: a form becomes the same domain command the RPCs build.

    ChangeRequest.from_form(...)   the form's fields -> one change (InvalidArgument names a field)
    preview(state, request, now)   what it would change, from the pure state machine (no write)
    apply(controller, request)     the change itself, through `ReleaseController.change`

No rule is decided here: `releases.apply` decides the preview, and the
controller decides (again, on the state at that moment) when the change is
applied. A preview carries the feature's sequence, which the confirmed change
sends as `expected_sequence`: if someone else changed the feature in between,
the change is refused (ABORTED) instead of doing something the operator did not
see. The request id sent with the confirmation makes a double submit apply once.
"""

from __future__ import annotations

import dataclasses
import enum
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from releasecontrol.errors import InvalidArgument, ReleaseControlError, status_code_name
from releasecontrol.limits import check_change_context
from releasecontrol.manifest import format_duration, parse_duration, validate_version
from releasecontrol.v1 import release_control_pb2 as pb
from releasecontrol_server import releases
from releasecontrol_server.auth.authorize import RPC_ACTIONS
from releasecontrol_server.auth.authorize import Action as AuthAction
from releasecontrol_server.control import ReleaseController
from releasecontrol_server.releases import ChangeMeta, Channel, FeatureState
from releasecontrol_server.service import change_answer


class Kind(enum.StrEnum):
    """The four changes the admin UI offers (the CLI's canary, promote, rollback, fallback)."""

    CANARY = "canary"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    FALLBACK = "fallback"


@dataclass(frozen=True)
class _Rpc:
    name: str
    response: Any

    @property
    def action(self) -> AuthAction:
        """What the RPC needs, from the one RPC-to-action table the API uses."""
        return RPC_ACTIONS[self.name]


# The RPC each change is recorded as (request ids are shared with the API).
_RPCS: Mapping[Kind, _Rpc] = {
    Kind.CANARY: _Rpc("DeployCanary", pb.DeployCanaryResponse),
    Kind.PROMOTE: _Rpc("Promote", pb.PromoteResponse),
    Kind.ROLLBACK: _Rpc("Rollback", pb.RollbackResponse),
    Kind.FALLBACK: _Rpc("SetChannel", pb.SetChannelResponse),
}

HTTP_STATUS: Mapping[str, int] = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "ABORTED": 409,
    "UNAVAILABLE": 503,
}
"""gRPC status code name -> the HTTP status of the page that shows the refusal."""


def http_status(error: ReleaseControlError) -> int:
    """The HTTP status for a refusal: the error's gRPC code, translated; 500 otherwise."""
    return HTTP_STATUS.get(status_code_name(error), 500)


def auth_action(kind: Kind) -> AuthAction:
    """The authorization action a change of `kind` needs."""
    return _RPCS[kind].action


@dataclass(frozen=True)
class ChangeRequest:
    """One change an operator asked for in a form, with who, why and how safely."""

    kind: Kind
    feature_id: str
    version: str
    actor: str
    reason: str = ""
    ticket: str = ""
    soak_seconds: int = 0
    skip_soak: bool = False
    channel: Channel = Channel.STABLE
    expected_sequence: int | None = None
    request_id: str = ""
    principal: str = ""
    """Who is signed in: recorded beside `actor`, which the form may set to anyone."""

    @classmethod
    def from_form(
        cls,
        feature_id: str,
        form: Mapping[str, str],
        *,
        principal_name: str,
        default_soak_seconds: int,
    ) -> ChangeRequest:
        """Read the fields of a change form; raises InvalidArgument naming a bad field.

        `actor` defaults to the signed-in principal, an empty soak to the
        server's default, as with the CLI.
        """
        try:
            kind = Kind(form.get("action", ""))
        except ValueError:
            raise InvalidArgument(
                "the form names no known change; use canary, promote, rollback or fallback",
                field="action",
            ) from None
        version = form.get("version", "").strip()
        if not version:
            raise InvalidArgument("choose a version", field="version")
        validate_version(version)
        soak_text = form.get("soak", "").strip()
        soak = parse_duration(soak_text) if soak_text else default_soak_seconds
        channel_text = form.get("channel", "stable")
        if channel_text not in (Channel.STABLE, Channel.CANARY):
            raise InvalidArgument("channel must be stable or canary", field="channel")
        expected_text = form.get("expected_sequence", "").strip()
        if expected_text and not expected_text.isdigit():
            raise InvalidArgument(
                "expected_sequence must be a whole number", field="expected_sequence"
            )
        actor = form.get("actor", "").strip()
        reason = form.get("reason", "").strip()
        ticket = form.get("ticket", "").strip()
        request_id = form.get("request_id", "").strip()
        # The API's limits, named by the form's fields (limits.py).
        check_change_context(actor=actor, reason=reason, ticket=ticket, request_id=request_id)
        return cls(
            kind=kind,
            feature_id=feature_id,
            version=version,
            actor=actor or principal_name,
            reason=reason,
            ticket=ticket,
            soak_seconds=soak if kind is Kind.CANARY else default_soak_seconds,
            skip_soak=kind is Kind.PROMOTE and form.get("skip_soak", "") in ("1", "on", "true"),
            channel=Channel(channel_text),
            expected_sequence=int(expected_text) if expected_text else None,
            request_id=request_id,
            principal=principal_name,
        )

    @property
    def rpc(self) -> str:
        return _RPCS[self.kind].name

    @property
    def action(self) -> AuthAction:
        return _RPCS[self.kind].action

    def command(self) -> releases.Command:
        """The domain command, built as the servicer builds it for the matching RPC."""
        if self.kind is Kind.CANARY:
            return releases.DeployCanary(self.version, self.soak_seconds)
        if self.kind is Kind.PROMOTE:
            return releases.Promote(self.version, skip_soak=self.skip_soak)
        if self.kind is Kind.ROLLBACK:
            return releases.Rollback(self.version)
        return releases.SetChannel(self.version, self.channel, soak_seconds=self.soak_seconds)

    def meta(self) -> ChangeMeta:
        return ChangeMeta(
            actor=self.actor,
            reason=self.reason,
            ticket=self.ticket,
            expected_sequence=self.expected_sequence,
            principal=self.principal,
        )

    def confirmed(self, sequence: int) -> ChangeRequest:
        """This request pinned to the sequence the operator saw, with a fresh request id."""
        return dataclasses.replace(
            self, expected_sequence=sequence, request_id=secrets.token_hex(16)
        )

    def hidden_fields(self) -> list[tuple[str, str]]:
        """The fields the confirmation form sends back, to apply exactly this request."""
        fields = [
            ("action", self.kind.value),
            ("version", self.version),
            ("actor", self.actor),
            ("reason", self.reason),
            ("ticket", self.ticket),
            ("request_id", self.request_id),
        ]
        if self.expected_sequence is not None:
            fields.append(("expected_sequence", str(self.expected_sequence)))
        if self.kind is Kind.CANARY:
            fields.append(("soak", str(self.soak_seconds)))
        if self.skip_soak:
            fields.append(("skip_soak", "1"))
        if self.kind is Kind.FALLBACK:
            fields.append(("channel", self.channel.value))
        return fields


@dataclass(frozen=True)
class Preview:
    """What a change would do, in words and as before/after rows."""

    headline: str
    rows: list[tuple[str, str, str]]
    detail: str


def preview(state: FeatureState, request: ChangeRequest, now: datetime) -> Preview:
    """What `request` would change on `state` at `now`, decided by the state machine.

    Nothing is written. Raises the state machine's errors (the same classes and
    messages the CLI gets) when the change would be refused now.
    """
    outcome = releases.apply(state, request.feature_id, request.command(), request.meta(), now)
    if isinstance(outcome, releases.Unchanged):  # pragma: no cover - only a republish is
        return Preview(outcome.why, [], "")
    after = outcome.state
    rows = [
        ("Stable", state.stable or "none", after.stable or "none"),
        ("Canary", _canary(state), _canary(after)),
        ("Sequence", str(state.sequence), str(after.sequence)),
    ]
    return Preview(_headline(state, request, now), rows, outcome.record.detail)


def _canary(state: FeatureState) -> str:
    if state.canary is None:
        return "none"
    return f"{state.canary.version} (soak {format_duration(state.canary.soak_seconds)})"


def _headline(state: FeatureState, request: ChangeRequest, now: datetime) -> str:
    fid, version = request.feature_id, request.version
    stable = state.stable or "none"
    canary = state.canary.version if state.canary else "none"
    if request.kind is Kind.CANARY:
        soak = format_duration(request.soak_seconds)
        return (
            f"Deploy {fid} {version} as canary with a {soak} soak "
            f"(canary now {canary}, stable stays {stable})"
        )
    if request.kind is Kind.PROMOTE:
        text = f"Promote {fid} {version} to stable (stable now {stable})"
        left = state.canary.seconds_left(now) if state.canary else 0
        if request.skip_soak and left > 0:
            text += f", skipping the soak with {format_duration(left)} left"
        return text
    if request.kind is Kind.ROLLBACK:
        text = f"Roll back {fid} to {version} (stable now {stable})"
        if state.canary is not None:
            text += f" and clear canary {canary}"
        return text
    if request.channel is Channel.STABLE:
        return f"Set the stable channel of {fid} to {version} (stable now {stable})"
    soak = format_duration(request.soak_seconds)
    return f"Set the canary channel of {fid} to {version} with a {soak} soak (canary now {canary})"


async def apply(controller: ReleaseController, request: ChangeRequest) -> Any:
    """Apply `request` through the controller, as the matching RPC would; its response message.

    Raises the controller's and the state machine's errors; then nothing changed
    (or, for Unavailable, the change committed and the origin write is retried).
    """
    response = _RPCS[request.kind].response

    applied = await controller.change(
        request.feature_id,
        request.command(),
        request.meta(),
        rpc=request.rpc,
        request_id=request.request_id,
    )
    return response.FromString(change_answer(response, applied))
