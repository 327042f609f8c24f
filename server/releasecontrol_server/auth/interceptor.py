"""The one gRPC interceptor: authenticate every ReleaseControl call, then check the role.

    AuthInterceptor(authenticator)       add to `grpc.aio.server(interceptors=[...])`
    make_authenticator(mode, ...)        the Authenticator for RELEASECONTROL_AUTH_MODE

Per call, before the servicer reads the request:

1. the `Authenticator` of the configured mode turns the call's metadata and
   TLS peer certificate into a `Principal` (or refuses: UNAUTHENTICATED);
2. `authorize(principal, action)` checks that one of its roles grants the
   method's action (`RPC_ACTIONS`; PERMISSION_DENIED otherwise), so a viewer's
   publish stream is refused before a byte of it is read;
3. the principal becomes the current caller (`authorize.acting_as`) while the
   servicer runs, which calls `require(action, feature_id)` once the request
   names its feature: that is where scopes (`feature-pay*`) are checked.

A refusal ends the call with the code and a message that says how to fix it,
logs one structured line (code, method, principal, the certificate's identity,
peer, reason; never a credential), and the servicer never runs. The standard
health and reflection services are served without authentication
(load-balancer probes); any other service needs `admin`.

Without an auth mode, `MtlsOnlyAuthenticator` keeps the behaviour from before
the auth modes: whoever presents a client certificate from the server's client
CA is `admin` under its certificate identity. A warning at start says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from releasecontrol_server.config import Config

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from pathlib import Path
from typing import Any, NoReturn, Protocol

import grpc
from grpc import aio

from releasecontrol.errors import (
    ConfigError,
    PermissionDenied,
    ReleaseControlError,
    Unauthenticated,
    status_code_name,
)
from releasecontrol_server.auth.authorize import Action, acting_as, action_for_method, authorize
from releasecontrol_server.auth.cluster import ClusterAuthenticator, peer_certificate
from releasecontrol_server.auth.dfs import (
    DEFAULT_LEEWAY_SECONDS,
    DEFAULT_MAX_TTL_SECONDS,
    DfsAuthenticator,
)
from releasecontrol_server.auth.principal import AuthContext, Metadata, Principal, Role
from releasecontrol_server.auth.tokens import TokenAuthenticator
from releasecontrol_server.pki import principal_from_certificate
from releasecontrol_server.status import abort_unexpected, abort_with

log = logging.getLogger(__name__)

UNAUTHENTICATED_SERVICES: frozenset[str] = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
"""Services any TLS peer may call without credentials: probes and API discovery."""

ANONYMOUS = "anonymous"

# Guarded handlers kept (one per method; unknown method names are bounded too).
_GUARDED_METHODS = 1024


class Authenticator(Protocol):
    """Turns a call's metadata and TLS auth context into the caller's Principal."""

    @property
    def mode(self) -> str:
        """The auth mode's name, as RELEASECONTROL_AUTH_MODE spells it."""
        ...

    def describe(self) -> str:
        """One line for the start-up log: the mode and where its material comes from."""
        ...

    def authenticate(self, metadata: Metadata, auth_context: AuthContext) -> Principal:
        """The caller; raises Unauthenticated (or PermissionDenied, Unavailable) otherwise."""
        ...


class MtlsOnlyAuthenticator:
    """No auth mode: the client certificate's identity (SPIFFE ID, else CN) is admin.

    The behaviour from before the auth modes, for development. With
    `allow_anonymous` (a dev server that does not require client
    certificates), a caller without one is the admin `anonymous`.
    """

    mode = "mtls-only"

    def __init__(self, *, allow_anonymous: bool = False) -> None:
        self._allow_anonymous = allow_anonymous

    def describe(self) -> str:
        anonymous = "; callers without one too, as 'anonymous'" if self._allow_anonymous else ""
        return (
            "no auth mode set (RELEASECONTROL_AUTH_MODE): every caller with a client "
            f"certificate from the client CA is admin{anonymous}"
        )

    def authenticate(self, metadata: Metadata, auth_context: AuthContext) -> Principal:
        pem = peer_certificate(auth_context)
        if pem is None:
            if self._allow_anonymous:
                return Principal(ANONYMOUS, frozenset({Role.ADMIN}))
            raise Unauthenticated(
                "no client certificate: connect with a certificate from the server's client CA "
                "(`releasectl dev` writes one to $RELEASECONTROL_HOME/pki/client.pem)"
            )
        try:
            return Principal(principal_from_certificate(pem), frozenset({Role.ADMIN}))
        except ValueError as exc:
            raise Unauthenticated(
                f"the client certificate names no usable identity: {exc}"
            ) from None


def authenticator_for(config: Config) -> Authenticator:
    """The Authenticator the config's auth_mode names, with that mode's settings."""
    return make_authenticator(
        config.auth_mode,
        token_store_path=config.token_store_path,
        cluster_ca_path=config.cluster_ca_path or config.tls_client_ca_path,
        cluster_allowlist_path=config.cluster_allowlist_path,
        dfs_issuer=config.dfs_issuer,
        dfs_audience=config.dfs_audience,
        dfs_public_key=config.dfs_public_key,
        dfs_public_key_path=config.dfs_public_key_path,
        dfs_leeway_seconds=config.dfs_leeway_seconds,
        dfs_max_token_ttl_seconds=config.dfs_max_token_ttl_seconds,
        allow_anonymous=not config.require_client_cert,
    )


def make_authenticator(
    mode: str | None,
    *,
    token_store_path: Path | None = None,
    cluster_ca_path: Path | None = None,
    cluster_allowlist_path: Path | None = None,
    dfs_issuer: str = "",
    dfs_audience: str = "",
    dfs_public_key: str | None = None,
    dfs_public_key_path: Path | None = None,
    dfs_leeway_seconds: int = DEFAULT_LEEWAY_SECONDS,
    dfs_max_token_ttl_seconds: int = DEFAULT_MAX_TTL_SECONDS,
    allow_anonymous: bool = False,
) -> Authenticator:
    """The Authenticator for `mode` (`rpc-token`, `trusted-cluster`, `dfs`, or None).

    Loads the mode's material now, so a missing or invalid file stops the
    server at start. Raises ConfigError naming the setting to fix.
    `allow_anonymous` only applies without a mode.
    """
    if mode is None or mode == "":
        return MtlsOnlyAuthenticator(allow_anonymous=allow_anonymous)
    if mode == "rpc-token":
        if token_store_path is None:
            raise ConfigError("auth_mode rpc-token needs token_store_path: the token store file")
        return TokenAuthenticator(token_store_path)
    if mode == "trusted-cluster":
        if cluster_ca_path is None or cluster_allowlist_path is None:
            raise ConfigError(
                "auth_mode trusted-cluster needs cluster_ca_path (the CA of workload "
                "certificates) and cluster_allowlist_path (SPIFFE IDs and their roles)"
            )
        return ClusterAuthenticator(cluster_ca_path, cluster_allowlist_path)
    if mode == "dfs":
        return DfsAuthenticator(
            issuer=dfs_issuer,
            audience=dfs_audience,
            public_key=dfs_public_key,
            public_key_path=dfs_public_key_path,
            leeway_seconds=dfs_leeway_seconds,
            max_ttl_seconds=dfs_max_token_ttl_seconds,
        )
    raise ConfigError(
        f"auth_mode {mode!r} is not known: use rpc-token, trusted-cluster or dfs "
        "(RELEASECONTROL_AUTH_MODE)"
    )


class AuthInterceptor(aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no types
    """Authenticates every call (except `public_services`) and checks the method's role."""

    def __init__(
        self,
        authenticator: Authenticator,
        *,
        public_services: Collection[str] = UNAUTHENTICATED_SERVICES,
    ) -> None:
        self._authenticator = authenticator
        self._public = frozenset(public_services)
        # method -> (the servicer's handler, that handler guarded)
        self._guarded: dict[str, tuple[Any, Any]] = {}
        if isinstance(authenticator, MtlsOnlyAuthenticator):
            log.warning("auth mode=%s: %s", authenticator.mode, authenticator.describe())
        else:
            log.info("auth mode=%s: %s", authenticator.mode, authenticator.describe())

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None:
            return handler
        # The servicer's handler is the same object on every call of a method, and
        # so is what guards it: built once per method rather than once per call.
        known = self._guarded.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        guarded = handler if _service_of(method) in self._public else None
        if guarded is None:
            guarded = self._guard(handler, method, action_for_method(method))
        if len(self._guarded) >= _GUARDED_METHODS:
            self._guarded.clear()
        self._guarded[method] = (handler, guarded)
        return guarded

    def _guard(self, handler: Any, method: str, action: Action) -> Any:
        """`handler` with its behaviour run only for an admitted caller, as that caller."""
        admit = self._admit
        options = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.response_streaming:
            inner = handler.stream_stream if handler.request_streaming else handler.unary_stream

            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                principal = await admit(context, method, action)
                with acting_as(principal, method):
                    result = inner(request, context)
                    if hasattr(result, "__aiter__"):
                        async for response in result:
                            yield response
                    elif inspect.isawaitable(result):
                        await result  # a handler that writes with context.write()
                    else:
                        for response in result:
                            yield response

            if handler.request_streaming:
                return grpc.stream_stream_rpc_method_handler(streaming, **options)
            return grpc.unary_stream_rpc_method_handler(streaming, **options)

        inner = handler.stream_unary if handler.request_streaming else handler.unary_unary

        async def unary(request: Any, context: Any) -> Any:
            principal = await admit(context, method, action)
            with acting_as(principal, method):
                result = inner(request, context)
                return await result if inspect.isawaitable(result) else result

        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(unary, **options)
        return grpc.unary_unary_rpc_method_handler(unary, **options)

    async def _admit(self, context: Any, method: str, action: Action) -> Principal:
        """The authenticated caller, when its roles grant `action`; otherwise the call ends."""
        auth_context: AuthContext = context.auth_context()
        try:
            principal = self._authenticator.authenticate(
                tuple(context.invocation_metadata() or ()), auth_context
            )
        except ReleaseControlError as error:
            log.warning(
                "auth refused code=%s method=%s principal=- cert=%s peer=%s reason=%r",
                status_code_name(error),
                method,
                _certificate_identity(auth_context),
                context.peer(),
                error.message,
            )
            await _abort(context, error)
        except Exception:
            await abort_unexpected(f"checking credentials for {method}", context)
            raise AssertionError("unreachable") from None
        with acting_as(principal, method):
            try:
                authorize(principal, action)  # logs its own refusal line
            except PermissionDenied as error:
                await _abort(context, error)
        return principal


async def _abort(context: Any, error: ReleaseControlError) -> NoReturn:
    await abort_with(error, context)
    raise AssertionError("unreachable")  # context.abort raises


def _service_of(method: str) -> str:
    return method.lstrip("/").rpartition("/")[0]


def _certificate_identity(auth_context: AuthContext) -> str:
    """Who the peer certificate names, for log lines about refused calls; '-' without one."""
    pem = peer_certificate(auth_context)
    if pem is None:
        return "-"
    try:
        return principal_from_certificate(pem)
    except ValueError:
        return "-"
