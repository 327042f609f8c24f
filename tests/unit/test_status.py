"""One place maps errors to gRPC statuses: a bug ends the call INTERNAL, its text logged."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from grpc import aio

from releasecontrol.errors import NotFound
from releasecontrol_server.service import maps_errors


class Context:
    """What `context.abort` was called with (it raises, as grpc's does)."""

    code: grpc.StatusCode | None = None
    message = ""

    async def abort(self, code: grpc.StatusCode, message: str, **_: Any) -> None:
        self.code, self.message = code, message
        raise aio.AbortError()


@maps_errors
async def refuses(self: Any, request: Any, context: Any) -> None:
    raise NotFound("feature 'x' does not exist")


@maps_errors
async def breaks(self: Any, request: Any, context: Any) -> None:
    raise ValueError("secret detail /var/lib/x")


async def test_a_domain_error_ends_the_call_with_its_code_and_message() -> None:
    context = Context()
    with pytest.raises(aio.AbortError):
        await refuses(None, None, context)
    assert (context.code, context.message) == (
        grpc.StatusCode.NOT_FOUND,
        "feature 'x' does not exist",
    )


async def test_a_bug_ends_the_call_internal_without_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unexpected exception is INTERNAL with a message of ours; its text is in the log."""
    caplog.set_level(logging.ERROR)
    context = Context()
    with pytest.raises(aio.AbortError):
        await breaks(None, None, context)
    assert context.code is grpc.StatusCode.INTERNAL
    assert "secret" not in context.message and "server log" in context.message
    assert "secret detail" in caplog.text
