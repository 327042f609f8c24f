"""The caller's identity, read from the mTLS peer certificate."""

from __future__ import annotations

from typing import Any

from grpc import aio

from releasecontrol_server.pki import principal_from_certificate

ANONYMOUS = "anonymous"


def principal_of(context: aio.ServicerContext[Any, Any]) -> str:
    """The caller's principal: its certificate's SPIFFE ID, else its CN, else 'anonymous'."""
    auth = context.auth_context()
    for pem in auth.get("x509_pem_cert", []):
        try:
            return principal_from_certificate(pem)
        except ValueError:
            break
    for cn in auth.get("x509_common_name", []):
        return bytes(cn).decode(errors="replace")
    return ANONYMOUS
