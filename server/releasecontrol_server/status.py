"""The one place where a domain error becomes a gRPC status.

The code comes from `releasecontrol.errors.STATUS_CODE_NAMES` (the table the
client maps back with); the message is the error's; and a
`google.rpc.ErrorInfo` (domain `releasecontrol.v1`) in the status details
carries what a program needs beyond the message (`field`, `seconds_left`, the
reason of an OriginPending), so the client raises the same class with the same
attributes and can tell the server's own UNAVAILABLE from an unreachable server.
The servicer and the auth interceptor both end calls through `abort_with`.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]  # no stubs

from releasecontrol.errors import (
    ERROR_DOMAIN,
    Internal,
    ReleaseControlError,
    error_details,
    status_code_name,
)

__all__ = ["abort_unexpected", "abort_with", "status_details"]

log = logging.getLogger(__name__)


async def abort_with(error: ReleaseControlError, context: Any) -> None:
    """End the call with the status code of `error`, its message and its ErrorInfo."""
    code = getattr(grpc.StatusCode, status_code_name(error))
    log.info("refused code=%s error=%s message=%r", code.name, type(error).__name__, error.message)
    await context.abort(code, error.message, trailing_metadata=status_details(code, error))


async def abort_unexpected(what: str, context: Any) -> None:
    """End the call as INTERNAL after a bug (called in an `except`): the exception and its
    traceback go to the server log, never its text to the caller."""
    log.exception("%s failed", what)
    await abort_with(
        Internal(f"the server failed ({what}); the operator has been told in the server log"),
        context,
    )


def status_details(code: grpc.StatusCode, error: ReleaseControlError) -> tuple[tuple[str, bytes]]:
    """`grpc-status-details-bin`: a google.rpc.Status holding the error's ErrorInfo."""
    reason, metadata = error_details(error)
    status = status_pb2.Status(code=code.value[0], message=error.message)
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)
    )
    return (("grpc-status-details-bin", status.SerializeToString()),)
