"""The errors of ReleaseControl, shared by the server, the client and the host.

    ReleaseControlError
    ├── InvalidArgument          bad input; names the field and the fix
    ├── NotFound                 unknown feature or version
    ├── AlreadyExists            same version, different manifest
    ├── FailedPrecondition       a release rule is broken
    │   └── SoakNotOver          promote before the canary soaked
    ├── StaleSequence            expected_sequence is not current
    ├── Unauthenticated          no or bad credentials
    ├── PermissionDenied         credentials lack the role
    ├── Unavailable              the server cannot be reached
    │   └── OriginPending        the change committed; the CDN origin does not have it yet
    ├── Internal                 the server failed; nothing the caller can fix
    ├── VerificationError        a signed index or file failed verification
    └── ConfigError              a setting is invalid; names the setting and the fix

The server maps each class to a gRPC status code in one table
(`releasecontrol_server.service`); the client maps codes back in one function
(`from_grpc_code`). The message always says what was wrong and how to fix it.
What a program needs beyond the message (`InvalidArgument.field`,
`SoakNotOver.seconds_left`) travels as a `google.rpc.ErrorInfo` in the
status details (`error_details`), so the client raises the same class with
the same attributes.
"""

from __future__ import annotations


class ReleaseControlError(Exception):
    """Base of every error ReleaseControl raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ReleaseControlError):
    """A request field is malformed; `field` names it."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class NotFound(ReleaseControlError):
    """The feature or version does not exist."""


class AlreadyExists(ReleaseControlError):
    """The version exists with different content."""


class FailedPrecondition(ReleaseControlError):
    """The request is well formed but a release rule forbids it now."""


class SoakNotOver(FailedPrecondition):
    """The canary has not soaked long enough to be promoted."""

    def __init__(self, message: str, seconds_left: int) -> None:
        super().__init__(message)
        self.seconds_left = seconds_left


class ApprovalRequired(FailedPrecondition):
    """The change needs a second principal's approval; request `approval_id` waits for it."""

    def __init__(self, message: str, approval_id: int) -> None:
        super().__init__(message)
        self.approval_id = approval_id


class StaleSequence(ReleaseControlError):
    """The caller's expected_sequence is not the feature's current sequence."""


class Unauthenticated(ReleaseControlError):
    """The caller presented no valid credentials."""


class PermissionDenied(ReleaseControlError):
    """The caller is known but not allowed to do this."""


class Unavailable(ReleaseControlError):
    """The server could not be reached or is shutting down."""


class OriginPending(Unavailable):
    """The change committed (it stands, with its sequence), but writing it to the CDN origin
    failed; the server keeps retrying. Not a reason to send the change again."""


class Internal(ReleaseControlError):
    """The server failed in a way the caller cannot fix."""


class VerificationError(ReleaseControlError):
    """A signed index, manifest or artifact failed verification."""


class ConfigError(ReleaseControlError):
    """A setting (config file, environment, trust file) is invalid; names it and the fix."""


# The canonical gRPC status code names, by class. Kept here, beside the classes,
# so that the server's table and the client's reverse mapping cannot drift.
STATUS_CODE_NAMES: dict[type[ReleaseControlError], str] = {
    InvalidArgument: "INVALID_ARGUMENT",
    NotFound: "NOT_FOUND",
    AlreadyExists: "ALREADY_EXISTS",
    FailedPrecondition: "FAILED_PRECONDITION",
    StaleSequence: "ABORTED",
    Unauthenticated: "UNAUTHENTICATED",
    PermissionDenied: "PERMISSION_DENIED",
    Unavailable: "UNAVAILABLE",
    Internal: "INTERNAL",
    VerificationError: "DATA_LOSS",
}


def status_code_name(error: ReleaseControlError) -> str:
    """The gRPC status code name for `error` (the nearest listed base class)."""
    for cls in type(error).__mro__:
        if cls in STATUS_CODE_NAMES:
            return STATUS_CODE_NAMES[cls]
    return "INTERNAL"


ERROR_DOMAIN = "releasecontrol.v1"
"""`google.rpc.ErrorInfo.domain` of the errors this service sends."""

SOAK_NOT_OVER = "SOAK_NOT_OVER"
"""`ErrorInfo.reason` of SoakNotOver; its metadata holds `seconds_left`."""

APPROVAL_REQUIRED = "APPROVAL_REQUIRED"
"""`ErrorInfo.reason` of ApprovalRequired; its metadata holds `approval_id`."""

ORIGIN_PENDING = "ORIGIN_PENDING"
"""`ErrorInfo.reason` of OriginPending (an UNAVAILABLE that is the server's own word)."""


def error_details(error: ReleaseControlError) -> tuple[str, dict[str, str]]:
    """The `ErrorInfo` reason and metadata that let a client raise `error` again as it was.

    The reason is the gRPC code's name except for SoakNotOver, ApprovalRequired and
    OriginPending; metadata holds `field` (InvalidArgument), `seconds_left` (SoakNotOver) or
    `approval_id` (ApprovalRequired) when set.
    """
    if isinstance(error, SoakNotOver):
        return SOAK_NOT_OVER, {"seconds_left": str(error.seconds_left)}
    if isinstance(error, ApprovalRequired):
        return APPROVAL_REQUIRED, {"approval_id": str(error.approval_id)}
    if isinstance(error, OriginPending):
        return ORIGIN_PENDING, {}
    metadata = {"field": error.field} if isinstance(error, InvalidArgument) and error.field else {}
    return status_code_name(error), metadata


def from_grpc_code(
    code_name: str, message: str, reason: str = "", metadata: dict[str, str] | None = None
) -> ReleaseControlError:
    """The error class for a gRPC status code name, carrying the server's message and,
    from the status details' ErrorInfo (`reason`, `metadata`), its attributes."""
    metadata = metadata or {}
    if code_name == "FAILED_PRECONDITION" and reason == SOAK_NOT_OVER:
        seconds = metadata.get("seconds_left", "")
        return SoakNotOver(message, int(seconds) if seconds.isdigit() else 0)
    if code_name == "FAILED_PRECONDITION" and reason == APPROVAL_REQUIRED:
        approval = metadata.get("approval_id", "")
        return ApprovalRequired(message, int(approval) if approval.isdigit() else 0)
    if code_name == "UNAVAILABLE" and reason == ORIGIN_PENDING:
        return OriginPending(message)
    if code_name == "INVALID_ARGUMENT":
        return InvalidArgument(message, field=metadata.get("field", ""))
    for cls, name in STATUS_CODE_NAMES.items():
        if name == code_name and cls is not VerificationError:
            return cls(message)
    if code_name in ("DEADLINE_EXCEEDED", "CANCELLED"):
        return Unavailable(message)
    return Internal(f"{code_name}: {message}")
