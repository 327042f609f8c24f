"""What every `releasectl` command shares: options, the client, errors, and output.

Errors: a `ReleaseControlError` anywhere in a command becomes one line on
stderr, `error: <message>`, and the exit code of its class (`EXIT_CODES`, the
one place that maps them; `releasectl --help` lists them). Bad usage is one line
too, `error: <what> (see `<command> --help`)`, exit 2. Text that came from
elsewhere (the server, an actor, a reason, a CDN) is printed through
`printable`, so a control character or a bidirectional override cannot rewrite
the terminal or disguise a table.
"""

from __future__ import annotations

import enum
import functools
import json
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click
from google.protobuf.timestamp_pb2 import Timestamp

from releasecontrol.client import ReleaseControlClient, find_home
from releasecontrol.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OriginPending,
    PermissionDenied,
    ReleaseControlError,
    SoakNotOver,
    StaleSequence,
    Unauthenticated,
    Unavailable,
)
from releasecontrol.manifest import format_duration, parse_duration, validate_feature_id
from releasecontrol.manifest import validate_version as _validate_version
from releasecontrol.v1 import release_control_pb2 as pb
from releasecontrol.weights import format_weight

_F = TypeVar("_F", bound=Callable[..., Any])


# -- state and client ---------------------------------------------------------


@dataclass(frozen=True)
class CliState:
    """The group's global options, handed to every command through click's context."""

    server: str | None = None
    """--server / RELEASECONTROL_ADDR."""
    home: Path | None = None
    """--home / RELEASECONTROL_HOME."""


def open_client(ctx: click.Context) -> ReleaseControlClient:
    """A client for the server the global options (or the state directory) point at."""
    state = ctx.find_object(CliState) or CliState()
    return ReleaseControlClient.from_environment(server=state.server, home=state.home)


def state_dir(ctx: click.Context) -> Path:
    """The state directory: --home / RELEASECONTROL_HOME, else the one `find_home` finds
    (a `.releasecontrol/` here or above, the running `releasectl dev`), else
    `./.releasecontrol`."""
    state = ctx.find_object(CliState) or CliState()
    return state.home if state.home is not None else find_home().path


# -- exit codes ---------------------------------------------------------------


class ExitCode(enum.IntEnum):
    """What `releasectl` exits with; scripts can branch on it. Listed in `--help`."""

    OK = 0
    FAILED = 1
    USAGE = 2
    NOT_FOUND = 3
    CONFLICT = 4
    REFUSED = 5
    NOT_PERMITTED = 6
    UNAVAILABLE = 7
    ORIGIN_PENDING = 8


EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "done",
    ExitCode.FAILED: "failed: a check, a file or a setting (the message says which)",
    ExitCode.USAGE: "usage: a bad option or argument, or input the server called invalid",
    ExitCode.NOT_FOUND: "not found: no such feature or version",
    ExitCode.CONFLICT: "conflict: changed since --expected-sequence, or already exists or runs",
    ExitCode.REFUSED: "refused by a release rule, e.g. the soak is not over",
    ExitCode.NOT_PERMITTED: "not permitted: no valid credentials, or not your role",
    ExitCode.UNAVAILABLE: "unavailable: the server could not be reached or did not answer",
    ExitCode.ORIGIN_PENDING: "committed, but the CDN origin is not written yet; do not resend",
}

# The one place a ReleaseControlError class becomes an exit code; the nearest listed
# base class wins (SoakNotOver is a FailedPrecondition, OriginPending an Unavailable).
EXIT_CODES: dict[type[ReleaseControlError], ExitCode] = {
    InvalidArgument: ExitCode.USAGE,
    NotFound: ExitCode.NOT_FOUND,
    AlreadyExists: ExitCode.CONFLICT,
    StaleSequence: ExitCode.CONFLICT,
    FailedPrecondition: ExitCode.REFUSED,
    Unauthenticated: ExitCode.NOT_PERMITTED,
    PermissionDenied: ExitCode.NOT_PERMITTED,
    OriginPending: ExitCode.ORIGIN_PENDING,
    Unavailable: ExitCode.UNAVAILABLE,
}


def exit_code_for(error: ReleaseControlError) -> ExitCode:
    """The exit code of `error`: its class's in EXIT_CODES (or a base's), else FAILED."""
    for cls in type(error).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return ExitCode.FAILED


def exit_codes_help() -> str:
    """The exit codes for `releasectl --help`, one a line (click keeps a `\\b` block as written)."""
    lines = [f"  {int(code)}  {meaning}" for code, meaning in EXIT_CODE_MEANINGS.items()]
    return "\b\nExit codes:\n" + "\n".join(lines)


# -- errors -------------------------------------------------------------------


class OneLineError(click.ClickException):
    """An expected failure, printed as `error: <message>` on one line; exit code 1 unless
    `exit_code` says otherwise (an ExitCode)."""

    exit_code = int(ExitCode.FAILED)

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            # click declares exit_code a ClassVar; an instance's own code shadows it.
            self.exit_code = int(exit_code)  # type: ignore[misc]

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {printable(one_line(self.format_message()))}", err=True)


class OneLineUsageError(click.UsageError):
    """click's usage error in one line: `error: <what> (see `<command> --help`)`, exit 2."""

    def show(self, file: IO[Any] | None = None) -> None:
        message = printable(one_line(self.format_message())).rstrip(".")
        if message[:1].isupper() and message[1:2].islower():
            message = message[0].lower() + message[1:]
        command = self.ctx.command_path if self.ctx is not None else "releasectl"
        click.echo(f"error: {message} (see `{command} --help`)", err=True)


def one_line(message: str) -> str:
    """`message` with line breaks folded, so an error is always exactly one line."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def _one_line_usage(exc: click.UsageError) -> OneLineUsageError:
    return OneLineUsageError(exc.format_message(), exc.ctx)


class ReleaseCtlGroup(click.Group):
    """The top-level group: every ReleaseControlError becomes one line on stderr with its
    exit code, and every usage error one line (not click's four) with exit 2."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `releasectl` alone prints the help
        except click.UsageError as exc:
            raise _one_line_usage(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise  # a group without its command prints its help
        except OneLineUsageError:
            raise
        except click.UsageError as exc:
            raise _one_line_usage(exc) from None
        except ReleaseControlError as exc:
            raise OneLineError(one_line(exc.message + _hint(exc)), exit_code_for(exc)) from None


def _hint(error: ReleaseControlError) -> str:
    """This CLI's words for what the server's message says to do (the server names no
    interface's flags): the options that do it."""
    if isinstance(error, SoakNotOver):
        return ' (releasectl: --skip-soak --reason "why it cannot wait")'
    if isinstance(error, InvalidArgument) and error.field == "reason":
        return " (releasectl: --reason)"
    return ""


# -- text from elsewhere ------------------------------------------------------

# Control (Cc), format (Cf: bidirectional overrides, zero-width characters), surrogate,
# private-use and unassigned characters, and the line and paragraph separators.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def printable(text: str) -> str:
    """`text` safe to print on a terminal: every control, format (bidirectional override,
    zero-width), private-use or unassigned character and line separator written as its
    escape (`\\x1b`, `\\u202e`), so it can neither drive the terminal nor reorder or
    hide what follows. Everything else, other scripts included, is kept."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if unicodedata.category(char) in _ESCAPED_CATEGORIES:
            code = ord(char)
            if code < 0x100:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """ "1 feature", "2 features" (`plural_noun` when adding an s is wrong)."""
    return f"{count} {noun if count == 1 else plural_noun or noun + 's'}"


# -- options ------------------------------------------------------------------


def validate_feature_option(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is None:  # an optional --feature left out
        return None
    try:
        if isinstance(value, tuple):
            return tuple(validate_feature_id(v, field="--feature") for v in value)
        return validate_feature_id(value, field="--feature")
    except InvalidArgument as exc:
        raise click.BadParameter(exc.message, ctx, param) from None


def _version(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return _validate_version(value, field="--version")
    except InvalidArgument as exc:
        raise click.BadParameter(exc.message, ctx, param) from None


# click's ParamType is generic only in recent releases; subscript it for mypy alone.
if TYPE_CHECKING:
    _IntParamType = click.ParamType[int]
else:
    _IntParamType = click.ParamType


class DurationType(_IntParamType):
    """A duration such as 90s, 30m, 1h30m or 2d, converted to whole seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_duration(str(value))
        except InvalidArgument as exc:
            self.fail(exc.message, param, ctx)


DURATION = DurationType()

feature_option = click.option(
    "--feature",
    "-f",
    required=True,
    metavar="FEATURE",
    callback=validate_feature_option,
    help="Feature id, e.g. checkout.",
)
version_option = click.option(
    "--version",
    required=True,
    metavar="VERSION",
    callback=_version,
    help="SemVer version, e.g. 1.3.0.",
)
soak_option = click.option(
    "--soak",
    type=DURATION,
    default=None,
    help="How long the canary soaks before it may be promoted (e.g. 30m, 1h30m); "
    "default: the server's.",
)
output_option = click.option(
    "--output",
    "-o",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table for people, json for scripts.",
)


@dataclass(frozen=True)
class Change:
    """Who, why and how safely: the options every change command takes."""

    actor: str = ""
    reason: str = ""
    ticket: str = ""
    expected_sequence: int | None = None
    request_id: str = ""

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of every client change method."""
        return {
            "actor": self.actor,
            "reason": self.reason,
            "ticket": self.ticket,
            "expected_sequence": self.expected_sequence,
            "request_id": self.request_id,
        }


_CHANGE_OPTIONS = (
    click.option("--actor", default="", help="Who makes the change; default: your identity."),
    click.option("--reason", default="", help="Why, recorded in the audit history."),
    click.option("--ticket", default="", help="Change ticket or incident reference."),
    click.option(
        "--expected-sequence",
        type=click.IntRange(min=0),
        default=None,
        metavar="N",
        help="Fail (changing nothing) unless the feature is still at sequence N.",
    ),
    click.option(
        "--request-id",
        default="",
        metavar="ID",
        help="Idempotency key: a retry with the same id is applied once. Default: a new one.",
    ),
)


def change_options(command: _F) -> _F:
    """Add --actor, --reason, --ticket, --expected-sequence and --request-id as `change`."""

    @functools.wraps(command)
    def wrapper(
        *args: Any,
        actor: str,
        reason: str,
        ticket: str,
        expected_sequence: int | None,
        request_id: str,
        **kwargs: Any,
    ) -> Any:
        change = Change(actor, reason, ticket, expected_sequence, request_id)
        return command(*args, change=change, **kwargs)

    decorated: Callable[..., Any] = wrapper
    for option in reversed(_CHANGE_OPTIONS):
        decorated = option(decorated)
    return decorated  # type: ignore[return-value]


# -- output -------------------------------------------------------------------


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart; every cell `printable`."""
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *rows)
    ]
    return "\n".join(lines)


def _datetime(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def rfc3339(ts: Timestamp, *, present: bool = True) -> str | None:
    """An RFC 3339 UTC time ("2026-01-02T03:04:05Z"), or None when the field is unset."""
    return ts.ToJsonString() if present else None


def short_time(ts: Timestamp, *, present: bool = True) -> str:
    return _datetime(ts).strftime("%Y-%m-%dT%H:%M:%SZ") if present else "-"


def soak_seconds_left(canary: pb.CanaryState, now: datetime) -> int:
    """Whole seconds until the soak ends (rounded up), 0 once over."""
    if not canary.HasField("soak_ends_at"):
        return 0
    left = (_datetime(canary.soak_ends_at) - now).total_seconds()
    return max(0, int(-(-left // 1)))


def server_now(status: pb.GetStatusResponse) -> datetime:
    """The server's clock when it answered, else ours: soak times are the server's."""
    if status.HasField("server_time"):
        return _datetime(status.server_time)
    return datetime.now(UTC)


def feature_json(feature: pb.Feature, now: datetime) -> dict[str, Any]:
    """A feature for `--output json`: channels, versions and who changed it last."""
    canary: dict[str, Any] | None = None
    if feature.HasField("canary") and feature.canary.version:
        c = feature.canary
        canary = {
            "version": c.version,
            "soak_started_at": rfc3339(c.soak_started_at, present=c.HasField("soak_started_at")),
            "soak_ends_at": rfc3339(c.soak_ends_at, present=c.HasField("soak_ends_at")),
            "soak_seconds_left": soak_seconds_left(c, now),
            "weight_percent": c.weight / 100,
            "steps_percent": [step / 100 for step in c.steps],
            "step_seconds": c.step_seconds or None,
            "next_step_at": rfc3339(c.next_step_at, present=c.HasField("next_step_at")),
            "min_loads": c.min_loads,
        }
    return {
        "feature_id": feature.feature_id,
        "sequence": feature.sequence,
        "stable": feature.stable_version or None,
        "canary": canary,
        "versions": [
            {
                "version": v.version,
                "manifest_sha256": v.manifest_sha256,
                "published_at": rfc3339(v.published_at, present=v.HasField("published_at")),
                "was_stable": v.was_stable,
            }
            for v in feature.versions
        ],
        "updated_at": rfc3339(feature.updated_at, present=feature.HasField("updated_at")),
        "updated_by": feature.updated_by or None,
        "updated_by_principal": feature.updated_by_principal or None,
    }


STATUS_HEADERS = ("FEATURE", "STABLE", "CANARY", "SOAK LEFT", "SEQ", "UPDATED", "BY")


def status_row(feature: pb.Feature, now: datetime) -> list[str]:
    running = feature.HasField("canary") and bool(feature.canary.version)
    return [
        feature.feature_id,
        feature.stable_version or "-",
        canary_cell(feature.canary) if running else "-",
        format_duration(soak_seconds_left(feature.canary, now)) if running else "-",
        str(feature.sequence),
        short_time(feature.updated_at, present=feature.HasField("updated_at")),
        _who(feature.updated_by, feature.updated_by_principal) or "-",
    ]


def canary_cell(canary: pb.CanaryState) -> str:
    """'1.3.0' (hosts that opt in only), '1.3.0 5%', or '1.3.0 25% (step 2/4)'."""
    if not canary.weight:
        return canary.version
    text = f"{canary.version} {format_weight(canary.weight)}"
    if canary.steps and canary.weight in canary.steps:
        text += f" (step {list(canary.steps).index(canary.weight) + 1}/{len(canary.steps)})"
    return text


def _who(actor: str, principal: str) -> str:
    """The actor a change was recorded for, and the authenticated caller when that was
    someone else: "alice (by spiffe://…/ci-bot)"."""
    if principal and principal != actor:
        return f"{actor} (by {principal})"
    return actor


_ACTIONS = {
    pb.TRANSITION_ACTION_PUBLISH: "publish",
    pb.TRANSITION_ACTION_DEPLOY_CANARY: "deploy_canary",
    pb.TRANSITION_ACTION_PROMOTE: "promote",
    pb.TRANSITION_ACTION_ROLLBACK: "rollback",
    pb.TRANSITION_ACTION_SET_CHANNEL: "set_channel",
    pb.TRANSITION_ACTION_SET_WEIGHT: "set_weight",
    pb.TRANSITION_ACTION_ADVANCE_STEP: "advance_step",
    pb.TRANSITION_ACTION_RESIGN: "resign",
    pb.TRANSITION_ACTION_RECONCILE: "reconcile",
}


HISTORY_HEADERS = ("WHEN", "FEATURE", "SEQ", "CHANGE", "STABLE", "CANARY", "ACTOR", "REASON")


def history_row(t: pb.Transition) -> list[str]:
    """One audit record as a row of `releasectl release history`."""
    actor = _who(t.actor, t.principal)
    reason = t.reason + (f" [{t.ticket}]" if t.ticket else "")
    return [
        short_time(t.at, present=t.HasField("at")),
        t.feature_id,
        str(t.sequence),
        f"{_ACTIONS.get(t.action, 'change')} {t.version}",
        _move(t.from_stable, t.to_stable),
        _move(t.from_canary, t.to_canary),
        actor,
        reason or "-",
    ]


def _move(before: str, after: str) -> str:
    if before == after:
        return after or "-"
    return f"{before or 'none'} -> {after or 'none'}"


def transition_json(t: pb.Transition) -> dict[str, Any]:
    """An audit record for `--output json`; a channel that held nothing is null."""
    return {
        "id": t.id,
        "feature_id": t.feature_id,
        "sequence": t.sequence,
        "global_sequence": t.global_sequence,
        "action": _ACTIONS.get(t.action, "unspecified"),
        "version": t.version,
        "from_stable": t.from_stable or None,
        "to_stable": t.to_stable or None,
        "from_canary": t.from_canary or None,
        "to_canary": t.to_canary or None,
        "actor": t.actor,
        "principal": t.principal or None,
        "reason": t.reason,
        "ticket": t.ticket,
        "at": rfc3339(t.at, present=t.HasField("at")),
        "detail": t.detail,
        "request_id": t.request_id,
    }


def _soak_text(feature: pb.Feature) -> str:
    return f"soak {format_duration(feature.canary.soak_seconds)}"


def _target_channel(t: pb.Transition) -> str:
    return "canary" if t.to_canary == t.version and t.to_stable != t.version else "stable"


def describe_transition(t: pb.Transition, feature: pb.Feature) -> str:
    """One line for people, e.g. "checkout: canary 1.3.0 deployed, soak 30m (sequence 4)"."""
    fid, version = t.feature_id or feature.feature_id, t.version
    if t.action == pb.TRANSITION_ACTION_PUBLISH:
        channel = _target_channel(t)
        line = f"published {fid} {version} as {channel}"
        if channel == "canary":
            line += f", {_soak_text(feature)}"
    elif t.action == pb.TRANSITION_ACTION_DEPLOY_CANARY:
        line = f"{fid}: canary {version} deployed, {t.detail or _soak_text(feature)}"
    elif t.action == pb.TRANSITION_ACTION_PROMOTE:
        line = f"{fid}: {version} promoted to stable"
        if t.from_stable:
            line += f" (was {t.from_stable})"
        if t.detail:
            line += f", {t.detail}"
    elif t.action == pb.TRANSITION_ACTION_ROLLBACK:
        line = f"{fid}: stable is now {version}, {t.detail or f'rolled back from {t.from_stable}'}"
    elif t.action in (pb.TRANSITION_ACTION_SET_WEIGHT, pb.TRANSITION_ACTION_ADVANCE_STEP):
        line = f"{fid}: {t.detail}"  # "canary 1.3.0 weight 5% -> 25%"
    elif t.action == pb.TRANSITION_ACTION_SET_CHANNEL:
        if t.detail:  # the server's own sentence: "stable set to 1.1.0 by operator fallback"
            line = f"{fid}: {t.detail}"
        else:
            channel = _target_channel(t)
            before = t.from_canary if channel == "canary" else t.from_stable
            line = f"{fid}: {channel} set to {version} (was {before or 'none'})"
    else:
        line = f"{fid}: {_ACTIONS.get(t.action, 'change')} {version}"
        if t.detail:
            line += f", {t.detail}"
    return f"{line} (sequence {t.sequence})"


def print_transition(t: pb.Transition, feature: pb.Feature, output: str) -> None:
    """The result of a change command: one human line, or the transition as JSON."""
    if output == "json":
        echo_json(transition_json(t))
    else:
        click.echo(printable(describe_transition(t, feature)))
