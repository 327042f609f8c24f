"""The admin UI's release changes: a form becomes the same domain command the RPCs build.

    ChangeRequest.from_form(...)   the form's fields -> one change (InvalidArgument names a field)
    form_field(kind, error)        the form input an InvalidArgument is about, to show it there
    preview(state, request, now)   what it would change, from the pure state machine (no write)
    apply(controller, request)     the change itself, through `ReleaseController.change`
    canary_text, plan_text, ...    how every page words a canary: its weight and step plan

Percentages and step ramps are read by the CLI's own helpers (releasecontrol.weights),
so a form refuses exactly what `release canary --percent/--steps/--step-soak` and
`release set-weight` refuse; the one-line messages name the form's fields, not flags.
Min loads (a soak by exposure) is read by the rule of `--min-loads`: a whole number
from 0 to 1,000,000,000, refused in the CLI's words.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from releasecontrol.errors import InvalidArgument, ReleaseControlError, status_code_name
from releasecontrol.limits import check_change_context
from releasecontrol.manifest import format_duration, parse_duration, validate_version
from releasecontrol.v1 import release_control_pb2 as pb
from releasecontrol.weights import (
    WEIGHT_SCALE,
    format_steps,
    format_weight,
    parse_percent,
    parse_steps,
)
from releasecontrol_server import releases
from releasecontrol_server.auth.authorize import RPC_ACTIONS
from releasecontrol_server.auth.authorize import Action as AuthAction
from releasecontrol_server.control import ReleaseController
from releasecontrol_server.releases import (
    MAX_MIN_LOADS,
    Canary,
    ChangeMeta,
    Channel,
    FeatureState,
)
from releasecontrol_server.service import change_answer


class Kind(enum.StrEnum):
    """The changes the admin UI offers (the CLI's canary, set-weight, promote, rollback,
    fallback)."""

    CANARY = "canary"
    SET_WEIGHT = "set_weight"
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
    Kind.SET_WEIGHT: _Rpc("SetCanaryWeight", pb.SetCanaryWeightResponse),
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
    """The version the change is about; "" for SET_WEIGHT (it changes the running canary)."""
    actor: str
    reason: str = ""
    ticket: str = ""
    soak_seconds: int = 0
    skip_soak: bool = False
    channel: Channel = Channel.STABLE
    weight: int = 0
    """CANARY and SET_WEIGHT: the share of users served, out of WEIGHT_SCALE (0: hosts that
    opt into the canary channel only)."""
    steps: tuple[int, ...] = ()
    """CANARY: a step ramp (weights, increasing); the soak is then the whole ramp."""
    step_seconds: int = 0
    """CANARY: how long each step of `steps` holds."""
    min_loads: int = 0
    """CANARY: soak by exposure, the canary loads hosts must report before a promote."""
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
        server's default (none with a step ramp), as with the CLI.
        """
        try:
            kind = Kind(form.get("action", ""))
        except ValueError:
            raise InvalidArgument(
                "the form names no known change; use canary, set_weight, promote, rollback "
                "or fallback",
                field="action",
            ) from None
        version = ""
        if kind is not Kind.SET_WEIGHT:
            version = form.get("version", "").strip()
            if not version:
                raise InvalidArgument("choose a version", field="version")
            validate_version(version)
        soak, weight, step_seconds, min_loads = default_soak_seconds, 0, 0, 0
        steps: tuple[int, ...] = ()
        if kind is Kind.CANARY:
            soak, weight, steps, step_seconds = _canary_fields(form, default_soak_seconds)
            min_loads = _min_loads_field(form)
        elif kind is Kind.SET_WEIGHT:
            weight = _weight_field(form)
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
            soak_seconds=soak,
            skip_soak=kind is Kind.PROMOTE and form.get("skip_soak", "") in ("1", "on", "true"),
            channel=Channel(channel_text),
            weight=weight,
            steps=steps,
            step_seconds=step_seconds,
            min_loads=min_loads,
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
            return releases.DeployCanary(
                self.version,
                self.soak_seconds,
                weight=self.weight,
                steps=self.steps,
                step_seconds=self.step_seconds,
                min_loads=self.min_loads,
            )
        if self.kind is Kind.SET_WEIGHT:
            return releases.SetWeight(self.weight)
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
            if self.steps:  # the soak of a ramp is the ramp: sending one would be refused
                fields.append(("steps", _percents(self.steps)))
                fields.append(("step_soak", str(self.step_seconds)))
            else:
                fields.append(("soak", str(self.soak_seconds)))
                if self.weight:
                    fields.append(("percent", _percents([self.weight])))
            if self.min_loads:
                fields.append(("min_loads", str(self.min_loads)))
        if self.kind is Kind.SET_WEIGHT:
            fields.append(("percent", _percents([self.weight])))
        if self.skip_soak:
            fields.append(("skip_soak", "1"))
        if self.kind is Kind.FALLBACK:
            fields.append(("channel", self.channel.value))
        return fields


def _canary_fields(
    form: Mapping[str, str], default_soak_seconds: int
) -> tuple[int, int, tuple[int, ...], int]:
    """(soak_seconds, weight, steps, step_seconds) of the canary form, by the CLI's rules.

    Each field is read as `release canary` reads its option (a bad one is refused
    first, naming it), then the combinations are checked as the CLI checks them.
    """
    soak = _duration(form, "soak")
    percent_text = form.get("percent", "").strip()
    weight = parse_percent(percent_text, "percent") if percent_text else None
    steps_text = form.get("steps", "").strip()
    steps = parse_steps(steps_text, "steps") if steps_text else ()
    step_seconds = _duration(form, "step_soak")
    if steps and (soak is not None or weight is not None):
        raise InvalidArgument(
            "steps set both the weight (their first step) and the soak (the whole ramp); "
            "leave the percent and the soak empty",
            field="percent" if weight is not None else "soak",
        )
    if bool(steps) != (step_seconds is not None):
        raise InvalidArgument(
            "steps and a step soak go together: e.g. steps 5,25,50,100 with a step soak of 10m",
            field="step_soak" if steps else "steps",
        )
    if steps:
        return 0, 0, steps, step_seconds or 0
    return (default_soak_seconds if soak is None else soak), weight or 0, (), 0


def _min_loads_field(form: Mapping[str, str]) -> int:
    """Min loads, by the rule and in the words of `release canary --min-loads` (a click
    IntRange of 0 to MAX_MIN_LOADS): empty is 0, time alone."""
    text = form.get("min_loads", "").strip()
    if not text:
        return 0
    try:
        loads = int(text)  # what click's integer types accept, no more
    except ValueError:
        raise InvalidArgument(
            f"min_loads {_shown(text)!r} is not a valid integer range; give a whole number "
            f"of canary loads from 0 to {MAX_MIN_LOADS:,}, without separators (e.g. 5000)",
            field="min_loads",
        ) from None
    if not 0 <= loads <= MAX_MIN_LOADS:
        raise InvalidArgument(
            f"min_loads {loads} is not in the range 0<=x<={MAX_MIN_LOADS}; give a whole number "
            f"of canary loads from 0 to {MAX_MIN_LOADS:,}",
            field="min_loads",
        )
    return loads


def _shown(text: str) -> str:
    """Typed text as a message quotes it: at most 40 characters."""
    return text if len(text) <= 40 else text[:40] + "…"


def _weight_field(form: Mapping[str, str]) -> int:
    text = form.get("percent", "").strip()
    if not text:
        raise InvalidArgument(
            "give the percentage of users the canary serves, 0 to 100 (0: only hosts that "
            "opt into the canary channel)",
            field="percent",
        )
    return parse_percent(text, "percent")


def _duration(form: Mapping[str, str], name: str) -> int | None:
    """The duration typed into field `name`, None when it is empty; a bad one names `name`."""
    text = form.get(name, "").strip()
    if not text:
        return None
    try:
        return parse_duration(text)
    except InvalidArgument as error:
        raise InvalidArgument(error.message, field=name) from None


def _percents(weights: Sequence[int]) -> str:
    """(500, 2500) -> '5,25': what parse_percent / parse_steps read back as the same weights."""
    return ",".join(format_weight(weight).removesuffix("%") for weight in weights)


_COMMON_INPUTS = frozenset({"actor", "reason", "ticket"})
_INPUTS: Mapping[Kind, frozenset[str]] = {
    Kind.CANARY: frozenset({"version", "soak", "percent", "steps", "step_soak", "min_loads"}),
    Kind.SET_WEIGHT: frozenset({"percent"}),
    Kind.PROMOTE: frozenset({"version", "skip_soak"}),
    Kind.ROLLBACK: frozenset({"version"}),
    Kind.FALLBACK: frozenset({"version", "channel"}),
}
# The state machine names the command's fields; the form names its inputs.
_DOMAIN_FIELDS = {"weight": "percent", "soak_seconds": "soak", "step_seconds": "step_soak"}


def form_field(kind_text: str, error: ReleaseControlError) -> str | None:
    """The input of the `kind_text` form that `error` is about, if it is about one of them:
    the page shows the message next to it."""
    if not isinstance(error, InvalidArgument):
        return None
    try:
        kind = Kind(kind_text)
    except ValueError:
        return None
    name = _DOMAIN_FIELDS.get(error.field, error.field)
    return name if name in _INPUTS[kind] | _COMMON_INPUTS else None


# -- how a canary is worded on every page ----------------------------------------------


def weight_text(weight: int) -> str:
    """'25% of users', or 'opted-in hosts only' at 0 (only hosts on the canary channel)."""
    return f"{format_weight(weight)} of users" if weight else "opted-in hosts only"


def canary_text(canary: Canary) -> str:
    """'1.3.0 — 25% of users', '1.3.0 — opted-in hosts only'."""
    return f"{canary.version} — {weight_text(canary.weight)}"


def plan_text(canary: Canary) -> str | None:
    """'step 2 of 4 of 5,25,50,100 % (each 10m)'; None when no step plan runs."""
    if not canary.steps or canary.weight not in canary.steps:
        return None
    return (
        f"step {canary.steps.index(canary.weight) + 1} of {len(canary.steps)} of "
        f"{format_steps(canary.steps)} (each {format_duration(canary.step_seconds)})"
    )


def next_step_text(canary: Canary, *, protected: bool = False) -> str | None:
    """What happens when the current step has held: 'next 50% of users', 'promotes to
    stable' (after a last step of 100 %), 'last step: holds at 50% until promoted';
    None when no step plan runs. `protected`: the feature is under four eyes, where a plan
    never promotes by itself."""
    if not canary.steps:
        return None
    after = canary.next_step
    if after is not None:
        return f"next {weight_text(after)}"
    if canary.weight == WEIGHT_SCALE and not protected:
        return "promotes to stable"
    held = f"last step: holds at {format_weight(canary.weight)} until promoted"
    return f"{held} and a second approver approves" if protected else held


@dataclass(frozen=True)
class Preview:
    """What a change would do, in words and as before/after rows."""

    headline: str
    rows: list[tuple[str, str, str]]
    detail: str
    changes: bool = True
    """False when the state machine answers that nothing would change (then no Confirm)."""


def preview(
    state: FeatureState, request: ChangeRequest, now: datetime, *, canary_loads: int = 0
) -> Preview:
    """What `request` would change on `state` at `now`, decided by the state machine.

    `canary_loads`: the running canary's loads reported so far, which a soak by exposure
    counts (as the controller passes them). Nothing is written. Raises the state
    machine's errors (the same classes and messages the CLI gets) when the change would
    be refused now.
    """
    outcome = releases.apply(
        state,
        request.feature_id,
        request.command(),
        request.meta(),
        now,
        canary_loads=canary_loads,
    )
    if isinstance(outcome, releases.Unchanged):  # a weight the canary already serves
        return Preview(f"Nothing to change: {outcome.why}", [], "", changes=False)
    return Preview(
        _headline(state, request, now), compare(state, outcome.state), outcome.record.detail
    )


def compare(state: FeatureState, after: FeatureState) -> list[tuple[str, str, str]]:
    """The rows of a confirmation table: stable, canary, step plan (when either side has
    one) and sequence, before and after."""
    rows = [
        ("Stable", state.stable or "none", after.stable or "none"),
        ("Canary", _canary(state), _canary(after)),
    ]
    plans = (_plan(state), _plan(after))
    if plans != ("none", "none"):
        rows.append(("Step plan", *plans))
    rows.append(("Sequence", str(state.sequence), str(after.sequence)))
    return rows


def _canary(state: FeatureState) -> str:
    if state.canary is None:
        return "none"
    return f"{canary_text(state.canary)} (soak {soak_text(state.canary)})"


def soak_text(canary: Canary) -> str:
    """'30m', or '30m and 5,000 loads' with a soak by exposure."""
    text = format_duration(canary.soak_seconds)
    return f"{text} and {canary.min_loads:,} loads" if canary.min_loads else text


def _plan(state: FeatureState) -> str:
    return (plan_text(state.canary) if state.canary else None) or "none"


def _headline(state: FeatureState, request: ChangeRequest, now: datetime) -> str:
    fid, version = request.feature_id, request.version
    stable = state.stable or "none"
    canary = canary_text(state.canary) if state.canary else "none"
    if request.kind is Kind.CANARY:
        now_text = f"(canary now {canary}, stable stays {stable})"
        if request.steps:
            then = ", then promoted" if request.steps[-1] == WEIGHT_SCALE else ""
            if request.min_loads:  # a promote waits for the loads too
                loads = f"once hosts reported {request.min_loads:,} canary loads"
                then = f"{then} {loads}" if then else f", promotable {loads}"
            return (
                f"Deploy {fid} {version} as canary in steps of {format_steps(request.steps)}, "
                f"each held {format_duration(request.step_seconds)}{then} {now_text}"
            )
        soak = format_duration(request.soak_seconds)
        if request.min_loads:
            soak += f" and {request.min_loads:,} loads"
        return (
            f"Deploy {fid} {version} as canary to {weight_text(request.weight)} "
            f"with a {soak} soak {now_text}"
        )
    if request.kind is Kind.SET_WEIGHT:
        if state.canary is None:  # pragma: no cover - the state machine refuses it first
            return f"Set the canary weight of {fid}"
        text = (
            f"Serve canary {state.canary.version} of {fid} to {weight_text(request.weight)} "
            f"(now {weight_text(state.canary.weight)})"
        )
        if state.canary.steps:
            text += f", stopping its step plan {format_steps(state.canary.steps)}"
        return text
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
