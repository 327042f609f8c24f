"""The admin UI (`/_admin`): server-rendered pages over the ReleaseController.

    GET  /_admin                          every feature (filter by name, 100 a page)
    GET  /_admin/features/<id>            versions, history, and the change forms
    POST /_admin/features/<id>/review     the confirmation page: exactly what would change
    POST /_admin/features/<id>/apply      the change, as the matching RPC would make it
                                          (on a protected feature: an approval request)
    GET  /_admin/approvals                approval requests: pending first, then the rest
    GET  /_admin/approvals/<n>            one request, with its Approve button
    POST /_admin/approvals/<n>/review     what approving it would change
    POST /_admin/approvals/<n>/apply      approve it: the change applied, as Approve would
    POST /_admin/refresh                  hot refresh: re-verify manifests, tell hosts
    GET  /_admin/events                   server-sent events: someone changed a release
    GET  /_admin/signin, POST /_admin/signin, POST /_admin/signout
    GET  /_admin/static/...               admin.css, admin.js

Every request goes through `AdminApp._run`: the Host check (when no sign-in is
needed), the signed session cookie, for a POST the Origin/Referer and CSRF
checks, then who the principal is (or the sign-in page): a signed-in cookie
counts only while its session id is open on this server (sign-out closes it),
and failed sign-ins are limited per client address and per principal (429
with Retry-After; see signin.py for the numbers). Each page and change
asks the one `authorize()` the RPCs use; refusals are shown with the domain
error's message, never a stack trace. A change that waits for a second approver
(four eyes) is not a refusal: the page names the request and links to it. Every
admin action is logged as one line: `admin action=... principal=... feature=...
result=...`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from releasecontrol.errors import (
    ApprovalRequired,
    NotFound,
    ReleaseControlError,
    StaleSequence,
    status_code_name,
)
from releasecontrol.manifest import format_duration, validate_feature_id
from releasecontrol.weights import format_steps, format_weight
from releasecontrol_server.admin.actions import (
    ChangeRequest,
    Kind,
    auth_action,
    canary_text,
    form_field,
    http_status,
    next_step_text,
    plan_text,
    preview,
    soak_text,
    weight_text,
)
from releasecontrol_server.admin.actions import apply as apply_change
from releasecontrol_server.admin.analysis import OFF as ANALYSIS_OFF
from releasecontrol_server.admin.analysis import Exposure, canary_loads, exposure
from releasecontrol_server.admin.analysis import panel as analysis_panel
from releasecontrol_server.admin.approvals import approval_row, requester
from releasecontrol_server.admin.approvals import preview as approval_preview
from releasecontrol_server.admin.events import event_stream
from releasecontrol_server.admin.session import (
    CSRF_FIELD,
    Session,
    SessionCodec,
    SessionRegistry,
)
from releasecontrol_server.admin.signin import SignIn, SignInThrottle, claimed_principal
from releasecontrol_server.analyzer import CanaryAnalyzer
from releasecontrol_server.approvals import ApprovalRequest, check_approver, pending_first
from releasecontrol_server.auth.authorize import Action, authorize, decide, permits
from releasecontrol_server.auth.interceptor import Authenticator
from releasecontrol_server.auth.principal import Principal
from releasecontrol_server.control import ReleaseController, utc_now
from releasecontrol_server.releases import Canary, FeatureState
from releasecontrol_server.repair import Refreshed
from releasecontrol_server.store import StoredTransition

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_MAX_QUERY_CHARS = 100
_SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "object-src 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


@dataclass(frozen=True, kw_only=True)
class AdminSettings:
    """What the admin app needs from the configuration."""

    auth_mode: str | None
    """The server's auth mode; decides how people sign in (see signin.py)."""
    allow_unauthenticated: bool
    """ALLOW_UNAUTHENTICATED_ADMIN: no sign-in needed (config refuses it in production)."""
    session_secret: bytes
    """The key that signs session cookies."""
    session_seconds: int = 3600
    """How long a sign-in lasts."""
    token_store_path: Path | None = None
    """`rpc-token`: the store a signed-in token is re-checked against."""
    listen_host: str = "127.0.0.1"
    """The host the UI listens on; without sign-in, the only Host (besides loopback) served."""
    page_size: int = 100
    """Features per page of the list."""
    history_page_size: int = 50
    """Changes per page of a feature's history."""


class _Refused(Exception):
    """A request refused before any handler ran (cross-site POST, bad form)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Ctx:
    """One request as the handlers see it."""

    def __init__(self, request: Request, session: Session, principal: Principal | None) -> None:
        self.request = request
        self.session = session
        self.principal = principal
        self.form: dict[str, str] = {}

    @property
    def who(self) -> Principal:
        assert self.principal is not None  # _run sends the anonymous to the sign-in page
        return self.principal

    @property
    def signed_in(self) -> bool:
        return self.session.principal is not None and self.principal is not None


Handler = Callable[[_Ctx], Awaitable[Response]]
Auth = Literal["none", "redirect", "401"]


class AdminApp:
    """The admin UI over one ReleaseController; `app` is the ASGI application."""

    def __init__(
        self,
        controller: ReleaseController,
        authenticator: Authenticator,
        settings: AdminSettings,
        *,
        clock: Callable[[], datetime] = utc_now,
        throttle: SignInThrottle | None = None,
        sessions: SessionRegistry | None = None,
        analyzer: CanaryAnalyzer | None = None,
    ) -> None:
        """`analyzer`: the server's canary analysis (None: the pages say there is none)."""
        self._controller = controller
        self._analyzer = analyzer
        self._settings = settings
        self._clock = clock
        self._signin = SignIn(
            auth_mode=settings.auth_mode,
            authenticator=authenticator,
            allow_unauthenticated=settings.allow_unauthenticated,
            session_seconds=settings.session_seconds,
            token_store_path=settings.token_store_path,
        )
        self._codec = SessionCodec(settings.session_secret, settings.session_seconds)
        self._sessions = sessions or SessionRegistry()
        self._throttle = throttle or SignInThrottle()
        self._allowed_hosts = _LOOPBACK_HOSTS | {_canonical_host(settings.listen_host)}
        self._closing: asyncio.Event | None = None  # made on the serving loop
        self._templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._templates.filters.update(
            when=_when,
            iso=_iso,
            duration=format_duration,
            short=lambda s: s[:12],
            capfirst=lambda s: s[:1].upper() + s[1:],  # not capitalize(): it lowercases the rest
            thousands=lambda n: f"{n:,}",
        )
        self.app = Starlette(
            routes=[
                Route("/", _to_admin),
                Route("/_admin/", _to_admin),
                Route("/_admin", self._endpoint(self._features)),
                Route("/_admin/signin", self._endpoint(self._signin_page, auth="none")),
                Route(
                    "/_admin/signin",
                    self._endpoint(self._signin_submit, post=True, auth="none"),
                    methods=["POST"],
                ),
                Route(
                    "/_admin/signout",
                    self._endpoint(self._signout, post=True, auth="none"),
                    methods=["POST"],
                ),
                Route("/_admin/events", self._endpoint(self._events, auth="401")),
                Route(
                    "/_admin/refresh",
                    self._endpoint(self._refresh, post=True),
                    methods=["POST"],
                ),
                Route("/_admin/features/{feature_id}", self._endpoint(self._feature)),
                Route(
                    "/_admin/features/{feature_id}/review",
                    self._endpoint(self._review, post=True),
                    methods=["POST"],
                ),
                Route(
                    "/_admin/features/{feature_id}/apply",
                    self._endpoint(self._apply, post=True),
                    methods=["POST"],
                ),
                Route("/_admin/approvals", self._endpoint(self._approvals)),
                Route("/_admin/approvals/{approval_id}", self._endpoint(self._approval)),
                Route(
                    "/_admin/approvals/{approval_id}/review",
                    self._endpoint(self._approval_review, post=True),
                    methods=["POST"],
                ),
                Route(
                    "/_admin/approvals/{approval_id}/apply",
                    self._endpoint(self._approval_apply, post=True),
                    methods=["POST"],
                ),
                Mount("/_admin/static", StaticFiles(directory=_HERE / "static"), name="static"),
            ]
        )

    def close(self) -> None:
        """End every live-update stream (the server is stopping)."""
        if self._closing is not None:
            self._closing.set()

    def _closing_event(self) -> asyncio.Event:
        if self._closing is None:
            self._closing = asyncio.Event()
        return self._closing

    # -- the request pipeline ---------------------------------------------------------

    def _endpoint(
        self, handler: Handler, *, post: bool = False, auth: Auth = "redirect"
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await self._run(request, handler, post=post, auth=auth)

        return endpoint

    async def _run(self, request: Request, handler: Handler, *, post: bool, auth: Auth) -> Response:
        host = request.headers.get("host", "")
        name = host_name(host)
        if host and name is None:
            return PlainTextResponse(
                "the Host header is not host[:port] (a name, an IPv4 address or a bracketed "
                "IPv6 address, then an optional port; no user info): send the admin UI's own "
                "address",
                status_code=400,
            )
        if not self._host_allowed(name):
            return PlainTextResponse(
                "this admin UI answers only to its own address (the Host header names another)",
                status_code=421,
            )
        session = self._codec.load(request)
        principal = self._signed_in_principal(session)
        if principal is None:
            if session.principal is not None:  # revoked, or signed in under another auth mode
                session = session.without_principal()
            principal = self._signin.anonymous()
        ctx = _Ctx(request, session, principal)
        try:
            if post:
                ctx.form = await self._checked_form(ctx)
            if auth != "none" and ctx.principal is None:
                response = self._unauthenticated(request, auth)
            else:
                response = await handler(ctx)
        except _Refused as refused:
            log.warning(
                "admin action=%s principal=%s result=refused status=%d reason=%r",
                _log_value(request.url.path),
                ctx.principal.name if ctx.principal else "-",
                refused.status,
                refused.message,
            )
            response = self._render(
                ctx, "error.html", {"title": "Refused", "message": refused.message}, refused.status
            )
        except ReleaseControlError as error:
            response = self._render(
                ctx,
                "error.html",
                {"title": "Refused", "message": error.message, "code": status_code_name(error)},
                http_status(error),
            )
        except Exception:
            log.exception("admin UI request failed path=%s", request.url.path)
            response = self._render(
                ctx,
                "error.html",
                {
                    "title": "Server error",
                    "message": "The server failed to answer this page; the details are in the "
                    "server log. Nothing was changed unless the history says so.",
                },
                500,
            )
        self._codec.save(response, ctx.session, secure=request.url.scheme == "https")
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def _host_allowed(self, name: str | None) -> bool:
        """Without sign-in, answer only to our own names: a page on another site whose name
        resolves to 127.0.0.1 (DNS rebinding) must not drive the unauthenticated UI."""
        if not self._signin.allow_unauthenticated:
            return True
        return name is not None and name in self._allowed_hosts

    def _signed_in_principal(self, session: Session) -> Principal | None:
        """The session's principal as it stands now; None when its sign-in no longer counts."""
        if session.principal is None or session.auth_mode != (self._signin.auth_mode or ""):
            return None
        if not self._sessions.is_open(session.sid):  # signed out (maybe from another copy)
            return None
        return self._signin.current(session.principal, session.token_sha256)

    async def _checked_form(self, ctx: _Ctx) -> dict[str, str]:
        """The POSTed form, once it is shown to come from these pages (Origin and CSRF)."""
        request = ctx.request
        if not _same_origin(request):
            raise _Refused(
                403,
                "this form was not sent from the admin UI's own pages (Origin/Referer check); "
                "open the admin UI and submit it from there",
            )
        async with request.form(max_files=0, max_fields=32) as form:
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if not ctx.session.csrf_ok(fields.get(CSRF_FIELD, "")):
            raise _Refused(
                403,
                "the form's security token is missing or out of date (the session may have "
                "expired or you signed in again); reload the page and submit it again",
            )
        return fields

    def _unauthenticated(self, request: Request, auth: Auth) -> Response:
        if auth == "401":
            return PlainTextResponse("sign in first", status_code=401)
        target = request.url.path
        if request.url.query:
            target += "?" + request.url.query
        if request.method != "GET":
            target = "/_admin"
        return RedirectResponse(f"/_admin/signin?next={quote(target, safe='')}", status_code=303)

    def _render(
        self, ctx: _Ctx, name: str, context: Mapping[str, Any], status: int = 200
    ) -> HTMLResponse:
        principal = ctx.principal
        base = {
            "principal": principal,
            "roles": ", ".join(sorted(principal.roles)) if principal else "",
            "signed_in": ctx.signed_in,
            "csrf": ctx.session.csrf,
            "csrf_field": CSRF_FIELD,
            "unauthenticated_mode": self._signin.allow_unauthenticated,
            "events_url": "",
            "poll_seconds": 0,
            "error": None,
            "error_code": "",
            "error_anchor": "",
        }
        html = self._templates.get_template(name).render({**base, **context})
        return HTMLResponse(html, status_code=status)

    def _log(
        self,
        ctx: _Ctx,
        action: str,
        feature: str,
        result: str,
        *,
        error: ReleaseControlError | None = None,
        **fields: object,
    ) -> None:
        """One structured line per admin action: who, what, on which feature, and how it went.

        Values typed into forms (action, actor) are quoted when they hold anything
        but plain characters, so they cannot forge or break log lines.
        """
        extra = "".join(f" {k}={_log_value(v)}" for k, v in fields.items())
        if error is not None:
            extra += f" code={status_code_name(error)} message={error.message!r}"
        log.info(
            "admin action=%s principal=%s feature=%s result=%s%s",
            _log_value(action),
            ctx.principal.name if ctx.principal else "-",
            _log_value(feature or "-"),
            result,
            extra,
        )

    # -- sign-in ------------------------------------------------------------------------

    async def _signin_page(
        self,
        ctx: _Ctx,
        *,
        error: ReleaseControlError | None = None,
        message: str | None = None,
        status: int = 200,
    ) -> Response:
        nxt = _safe_next(ctx.request.query_params.get("next", "") or ctx.form.get("next", ""))
        return self._render(
            ctx,
            "signin.html",
            {
                "title": "Sign in",
                "explain": self._signin.explain(),
                "accepts_tokens": self._signin.accepts_tokens,
                "auth_mode": self._signin.auth_mode or "none",
                "next": nxt,
                "error": error.message if error else message,
            },
            status,
        )

    async def _signin_submit(self, ctx: _Ctx) -> Response:
        token = ctx.form.get("token", "")
        address = ctx.request.client.host if ctx.request.client else "-"
        claimed = claimed_principal(self._signin.auth_mode, token)
        throttled = self._throttle.check(address, claimed)
        if throttled is not None:
            self._log(
                ctx,
                "signin",
                "",
                "throttled",
                limit=throttled.key,
                address=address,
                retry_after=throttled.retry_after,
            )
            page = await self._signin_page(ctx, message=throttled.message(), status=429)
            page.headers["retry-after"] = str(throttled.retry_after)
            return page
        try:
            signed = self._signin.verify(token)
        except ReleaseControlError as error:
            self._throttle.failed(address, claimed)
            self._log(ctx, "signin", "", "refused", error=error, address=address)
            return await self._signin_page(ctx, error=error, status=http_status(error))
        self._throttle.succeeded(address, claimed or signed.principal.name)
        self._sessions.close(ctx.session.sid)  # signing in again replaces the session
        ctx.session = ctx.session.signed_in(
            signed.principal,
            signed.expires_at,
            auth_mode=self._signin.auth_mode or "",
            sid=self._sessions.open(signed.expires_at),
            token_sha256=signed.token_sha256,
        )
        ctx.principal = signed.principal
        self._log(ctx, "signin", "", "ok", roles=",".join(sorted(signed.principal.roles)))
        return RedirectResponse(_safe_next(ctx.form.get("next", "")), status_code=303)

    async def _signout(self, ctx: _Ctx) -> Response:
        # Ends the session on the server: a copy of the cookie no longer signs anyone in.
        self._sessions.close(ctx.session.sid)
        self._log(ctx, "signout", "", "ok")
        ctx.session = Session.new(self._settings.session_seconds)
        ctx.principal = self._signin.anonymous()
        target = "/_admin" if self._signin.allow_unauthenticated else "/_admin/signin"
        return RedirectResponse(target, status_code=303)

    # -- pages --------------------------------------------------------------------------

    async def _features(self, ctx: _Ctx) -> Response:
        authorize(ctx.who, Action.READ)
        params = ctx.request.query_params
        query = params.get("q", "").strip().lower()[:_MAX_QUERY_CHARS]
        status = self._controller.status()
        visible = [s for s in status.features if permits(ctx.who, Action.READ, s.feature_id)]
        matching = [s for s in visible if query in s.feature_id] if query else visible
        size = self._settings.page_size
        pages = max(1, math.ceil(len(matching) / size))
        page = min(max(1, _int(params.get("page", ""), 1)), pages)
        now = status.server_time
        shown = matching[(page - 1) * size : page * size]
        # Concurrently: with a Prometheus source each count is a query to another server.
        exposures = await asyncio.gather(*(exposure(self._controller, s) for s in shown))
        policy = self._controller.approvals
        rows = [
            _row(s, now, loads, protected=policy.protects(s.feature_id))
            for s, loads in zip(shown, exposures, strict=True)
        ]
        return self._render(
            ctx,
            "features.html",
            {
                "title": "Features",
                "rows": rows,
                "query": query,
                "page": page,
                "pages": pages,
                "shown": len(rows),
                "matching": len(matching),
                "total": len(visible),
                "global_sequence": status.global_sequence,
                "pending_writes": status.pending_origin_writes,
                "now": now,
                "events_url": "/_admin/events",
                "may_refresh": permits(ctx.who, Action.REFRESH_MANIFESTS),
            },
        )

    async def _feature(self, ctx: _Ctx) -> Response:
        feature_id = validate_feature_id(ctx.request.path_params["feature_id"])
        return await self._feature_page(ctx, feature_id)

    async def _feature_page(
        self,
        ctx: _Ctx,
        feature_id: str,
        *,
        error: ReleaseControlError | None = None,
        status: int = 200,
        prefill: Mapping[str, str] | None = None,
    ) -> Response:
        authorize(ctx.who, Action.READ, feature_id)
        state = self._controller.feature(feature_id)
        now = self._clock()
        params = ctx.request.query_params
        analysis, soak_by_exposure, asked = await asyncio.gather(  # counts may be remote queries
            analysis_panel(self._controller, self._analyzer, state),
            exposure(self._controller, state),
            self._controller.approval_requests(feature_id),
        )
        approvals_now = self._controller.now()
        waiting = _int(params.get("waiting", ""), 0)
        protected = self._controller.approvals.protects(feature_id)
        size = self._settings.history_page_size
        before = _int(params.get("before", ""), 0)
        history = await self._controller.transitions(
            feature_id=feature_id, before_id=before, limit=size + 1
        )
        older = history[size - 1].id if len(history) > size else None
        history = history[:size]
        done = await self._done(feature_id, _int(params.get("done", ""), 0), history)
        versions = list(reversed(state.versions))
        may = {kind.value: decide(ctx.who, auth_action(kind), feature_id) for kind in Kind}
        refresh = decide(ctx.who, Action.REFRESH_MANIFESTS, feature_id)
        fill = dict(prefill or {})
        kind = fill.get("action", "")
        field = form_field(kind, error) if error is not None else None
        return self._render(
            ctx,
            "feature.html",
            {
                "title": feature_id,
                "feature": state,
                "row": _row(state, now, soak_by_exposure, protected=protected),
                "analysis": analysis,
                "analysis_off": ANALYSIS_OFF,
                "protected": protected,
                "pending_approvals": [
                    approval_row(r, approvals_now)
                    for r in pending_first(asked, approvals_now)
                    if r.state(approvals_now) == "pending"
                ],
                "waiting": await self._waiting(feature_id, waiting),
                "versions": [
                    {
                        "version": v.version,
                        "channel": _channel(state, v.version, v.was_stable),
                        "weight": weight_text(state.canary.weight)
                        if state.canary and state.canary.version == v.version
                        else "",
                        "published_at": v.published_at,
                        "manifest_sha256": v.manifest_sha256,
                    }
                    for v in versions
                ],
                "canary_options": [v.version for v in versions if v.version != state.stable],
                "promote_options": [state.canary.version] if state.canary else [],
                "rollback_options": [
                    v.version for v in versions if v.was_stable and v.version != state.stable
                ],
                "fallback_options": [v.version for v in versions],
                "default_soak": format_duration(self._controller.default_soak_seconds),
                "history": [_history_row(t) for t in history],
                "older": older,
                "newest": before > 0,
                "done": done,
                "may": {k: {"allowed": d.allowed, "reason": d.reason} for k, d in may.items()},
                "may_refresh": refresh.allowed,
                "prefill": fill,
                "prefill_kind": kind,
                "error": error.message if error else None,
                "error_code": status_code_name(error) if error else "",
                # A bad value is shown next to its input too, and the alert links there.
                "bad_field": {"kind": kind, "name": field, "message": error.message}
                if error is not None and field is not None
                else None,
                "error_anchor": f"{kind}-{field}" if field is not None else "",
                "events_url": f"/_admin/events?feature={quote(feature_id)}",
                # Beacons and approval requests arrive without a change event: re-read.
                "poll_seconds": 5 if analysis.enabled else 15 if protected else 0,
            },
            status,
        )

    async def _waiting(self, feature_id: str, approval_id: int) -> dict[str, Any] | None:
        """The approval request a change from this page just asked for (`?waiting=<id>`),
        as it stands now, if it is this feature's."""
        if approval_id <= 0:
            return None
        request = await self._controller.approval_request(approval_id)
        if request is None or request.feature_id != feature_id:
            return None
        return approval_row(request, self._controller.now())

    async def _done(
        self, feature_id: str, done_id: int, shown: list[StoredTransition]
    ) -> str | None:
        """The sentence for a change just applied (`?done=<id>`), if it is this feature's."""
        if done_id <= 0:
            return None
        found = [t for t in shown if t.id == done_id] or await self._controller.transitions(
            feature_id=feature_id, before_id=done_id + 1, limit=1
        )
        if not found or found[0].id != done_id:
            return None
        r = found[0].record
        words = r.action.value.replace("_", " ")
        sentence = f"{words} {r.version} applied as sequence {r.sequence}: {r.detail}"
        return sentence[:1].upper() + sentence[1:]  # not capitalize(): it lowercases the rest

    # -- changes ------------------------------------------------------------------------

    def _change_request(self, ctx: _Ctx, feature_id: str) -> ChangeRequest:
        request = ChangeRequest.from_form(
            feature_id,
            ctx.form,
            principal_name=ctx.who.name,
            default_soak_seconds=self._controller.default_soak_seconds,
        )
        authorize(ctx.who, request.action, feature_id)
        return request

    async def _review(self, ctx: _Ctx) -> Response:
        feature_id = validate_feature_id(ctx.request.path_params["feature_id"])
        action = ctx.form.get("action", "change")
        try:
            request = self._change_request(ctx, feature_id)
            state = self._controller.feature(feature_id)
            loads = await canary_loads(self._controller, state, request.command())
            shown = preview(state, request, self._clock(), canary_loads=loads)
        except ReleaseControlError as error:
            self._log(ctx, action, feature_id, "refused", error=error, step="review")
            return await self._feature_page(
                ctx, feature_id, error=error, status=http_status(error), prefill=ctx.form
            )
        confirmed = request.confirmed(state.sequence)
        needs_approval = self._controller.approvals.gate(feature_id, request.command(), state)
        if needs_approval:
            # The approver reviews the change against the feature as it is then; pinning the
            # sequence now would only make the kept request fail after any other change.
            confirmed = dataclasses.replace(confirmed, expected_sequence=None)
        page = self._url(feature_id)
        return self._render(
            ctx,
            "confirm.html",
            {
                "title": f"Confirm: {shown.headline}" if shown.changes else shown.headline,
                "feature_id": feature_id,
                "preview": shown,
                "meta": [
                    ("Actor", confirmed.actor),
                    ("Reason", confirmed.reason or "—"),
                    ("Ticket", confirmed.ticket or "—"),
                ],
                "needs_approval": needs_approval,
                "hint": f"If someone else changes {feature_id} before you confirm, nothing "
                "happens and you are told."
                if not needs_approval
                else "",
                "crumbs": [("/_admin", "Features"), (page, feature_id)],
                "apply_url": f"{page}/apply",
                "cancel_url": page,
                "hidden": confirmed.hidden_fields(),
                "events_url": f"/_admin/events?feature={quote(feature_id)}",
            },
        )

    async def _apply(self, ctx: _Ctx) -> Response:
        feature_id = validate_feature_id(ctx.request.path_params["feature_id"])
        action = ctx.form.get("action", "change")
        try:
            request = self._change_request(ctx, feature_id)
            response = await apply_change(self._controller, request)
        except ApprovalRequired as asked:  # kept until another principal approves it
            self._log(
                ctx,
                action,
                feature_id,
                "waits_for_approval",
                step="apply",
                approval=asked.approval_id,
                actor=ctx.form.get("actor", ""),
            )
            return RedirectResponse(
                f"{self._url(feature_id)}?waiting={asked.approval_id}", status_code=303
            )
        except ReleaseControlError as error:
            self._log(ctx, action, feature_id, "refused", error=error, step="apply")
            return await self._feature_page(
                ctx, feature_id, error=error, status=http_status(error), prefill=ctx.form
            )
        has_transition = response.HasField("transition")
        self._log(
            ctx,
            action,
            feature_id,
            "ok" if has_transition else "unchanged",
            step="apply",
            version=request.version or response.feature.canary.version or "-",
            sequence=response.feature.sequence,
            actor=request.actor,
            **_weight_fields(request),
        )
        target = self._url(feature_id)
        if has_transition:
            target += f"?done={response.transition.id}"
        return RedirectResponse(target, status_code=303)

    @staticmethod
    def _url(feature_id: str) -> str:
        return f"/_admin/features/{quote(feature_id)}"

    # -- approvals (four eyes) ----------------------------------------------------------

    async def _approvals(self, ctx: _Ctx) -> Response:
        """Every approval request the principal may read: pending ones first (oldest first),
        then the approved and expired ones (newest first)."""
        authorize(ctx.who, Action.READ)
        feature_id = ctx.request.query_params.get("feature", "").strip()
        if feature_id:
            validate_feature_id(feature_id)
            authorize(ctx.who, Action.READ, feature_id)
        now = self._controller.now()
        kept = await self._controller.approval_requests(feature_id)
        shown = [r for r in pending_first(kept, now) if permits(ctx.who, Action.READ, r.feature_id)]
        policy = self._controller.approvals
        return self._render(
            ctx,
            "approvals.html",
            {
                "title": "Approvals",
                "feature_id": feature_id,
                "rows": [self._approval_view(ctx, r, now) for r in shown],
                "pending": sum(r.state(now) == "pending" for r in shown),
                "patterns": policy.patterns,
                "ttl": format_duration(policy.ttl_seconds),
                "events_url": "/_admin/events",
                "poll_seconds": 10,  # a new request comes with no change event
            },
        )

    def _approval_view(self, ctx: _Ctx, request: ApprovalRequest, now: datetime) -> dict[str, Any]:
        """A request's row, with whether the signed-in principal may approve it and why not."""
        may = decide(ctx.who, Action.APPROVE, request.feature_id)
        own = request.meta.principal == ctx.who.name
        return {
            **approval_row(request, now),
            "may": may.allowed and not own,
            "note": "You asked for this: another principal with the approver role approves it."
            if own
            else ("" if may.allowed else may.reason),
        }

    async def _approval(
        self,
        ctx: _Ctx,
        *,
        error: ReleaseControlError | None = None,
        status: int = 200,
    ) -> Response:
        """One approval request: what waits, who asked, and its Approve button."""
        approval_id = _approval_id(ctx)
        request = await self._controller.approval_request(approval_id)
        if request is None:
            raise NotFound(
                f"there is no approval request {approval_id}; the Approvals page lists them"
            )
        if error is not None and not permits(ctx.who, Action.READ, request.feature_id):
            raise error  # a refusal of a principal who may not see the request: only its words
        authorize(ctx.who, Action.READ, request.feature_id)
        now = self._controller.now()
        return self._render(
            ctx,
            "approval.html",
            {
                "title": f"Approval request {approval_id}",
                "a": self._approval_view(ctx, request, now),
                "error": error.message if error else None,
                "error_code": status_code_name(error) if error else "",
                "events_url": f"/_admin/events?feature={quote(request.feature_id)}",
                "poll_seconds": 10 if request.state(now) == "pending" else 0,
            },
            status,
        )

    async def _approvable(self, ctx: _Ctx, approval_id: int) -> ApprovalRequest:
        """The request, once the principal is shown to be allowed to approve it now: the
        approver role (the one authorize(), as the Approve RPC asks it), not the requester,
        and the request neither approved nor expired."""
        authorize(ctx.who, Action.APPROVE)
        request = await self._controller.approval_request(approval_id)
        if request is not None:
            authorize(ctx.who, Action.APPROVE, request.feature_id)
        return check_approver(request, approval_id, ctx.who.name, self._controller.now())

    async def _approval_review(self, ctx: _Ctx) -> Response:
        approval_id = _approval_id(ctx)
        feature_id = "-"
        try:
            request = await self._approvable(ctx, approval_id)
            feature_id = request.feature_id
            state = self._controller.state_of(feature_id)
            shown = approval_preview(
                state,
                request,
                ctx.who.name,
                self._controller.now(),
                canary_loads=await canary_loads(self._controller, state, request.command),
            )
        except ReleaseControlError as error:
            self._log(
                ctx, "approve", feature_id, "refused", error=error, step="review",
                approval=approval_id,
            )  # fmt: skip
            return await self._approval(ctx, error=error, status=http_status(error))
        meta = request.meta
        return self._render(
            ctx,
            "confirm.html",
            {
                "title": f"Confirm: {shown.headline}",
                "feature_id": feature_id,
                "preview": shown,
                "meta": [
                    ("Asked by", requester(request)),
                    ("Actor", meta.actor),
                    ("Reason", meta.reason or "—"),
                    ("Ticket", meta.ticket or "—"),
                ],
                "needs_approval": "",
                "hint": f"Confirming applies the change as {requester(request)} asked it, its "
                "record "
                f"naming you as the approver. If {feature_id} changes before you confirm, nothing "
                "happens and you are told.",
                "crumbs": [
                    ("/_admin/approvals", "Approvals"),
                    (f"/_admin/approvals/{approval_id}", f"request {approval_id}"),
                ],
                "apply_url": f"/_admin/approvals/{approval_id}/apply",
                "cancel_url": f"/_admin/approvals/{approval_id}",
                "hidden": [("sequence", str(state.sequence if state else 0))],
                "events_url": f"/_admin/events?feature={quote(feature_id)}",
            },
        )

    async def _approval_apply(self, ctx: _Ctx) -> Response:
        approval_id = _approval_id(ctx)
        feature_id = "-"
        try:
            request = await self._approvable(ctx, approval_id)
            feature_id = request.feature_id
            state = self._controller.state_of(feature_id)
            seen, current = ctx.form.get("sequence", ""), state.sequence if state else 0
            # Approve takes no expected sequence: this check narrows the window in which the
            # feature could change between the review and the approval to nothing awaited.
            if seen.isdigit() and int(seen) != current:
                raise StaleSequence(
                    f"feature {feature_id!r} changed since you reviewed request {approval_id} "
                    f"(sequence {seen} then, {current} now); nothing was applied and the request "
                    "still waits: review it again"
                )
            done, applied = await self._controller.approve(approval_id, ctx.who.name)
        except ReleaseControlError as error:
            self._log(
                ctx, "approve", feature_id, "refused", error=error, step="apply",
                approval=approval_id,
            )  # fmt: skip
            return await self._approval(ctx, error=error, status=http_status(error))
        transition = applied.transition
        self._log(
            ctx,
            "approve",
            feature_id,
            "ok" if transition is not None else "unchanged",
            step="apply",
            approval=approval_id,
            requested_by=done.meta.principal,
            version=done.command.version,
            sequence=applied.state.sequence,
        )
        target = self._url(feature_id)
        if transition is not None:
            target += f"?done={transition.id}"
        return RedirectResponse(target, status_code=303)

    async def _refresh(self, ctx: _Ctx) -> Response:
        feature_id = ctx.form.get("feature", "").strip()
        if feature_id:
            validate_feature_id(feature_id)
        try:
            authorize(ctx.who, Action.REFRESH_MANIFESTS, feature_id or None)
            # "Every feature" means every feature the principal's scopes cover.
            ids = (
                [feature_id]
                if feature_id
                else [
                    s.feature_id
                    for s in self._controller.status().features
                    if permits(ctx.who, Action.REFRESH_MANIFESTS, s.feature_id)
                ]
            )
            refreshed = (
                await self._controller.refresh_manifests(ids) if ids else Refreshed([], [], 0)
            )
        except ReleaseControlError as error:
            self._log(ctx, "refresh_manifests", feature_id, "refused", error=error)
            raise
        checks, notified = refreshed.manifests, refreshed.notified
        restored = [c for c in checks if c.restored]
        self._log(
            ctx,
            "refresh_manifests",
            feature_id,
            "ok",
            checked=len(checks),
            restored=len(restored),
            index_restored=sum(c.restored for c in refreshed.index),
            watchers=notified,
        )
        return self._render(
            ctx,
            "refresh.html",
            {
                "title": "Hot refresh",
                "feature_id": feature_id,
                "checks": sorted(checks, key=lambda c: (not c.restored, c.feature_id, c.version)),
                "restored": len(restored),
                "checked": len(checks),
                "features": len({c.feature_id for c in checks}),
                "notified": notified,
                "index_checks": refreshed.index,
                "index_restored": sum(c.restored for c in refreshed.index),
            },
        )

    async def _events(self, ctx: _Ctx) -> Response:
        feature_id = ctx.request.query_params.get("feature", "")
        if feature_id:
            validate_feature_id(feature_id)
        authorize(ctx.who, Action.WATCH, feature_id or None)
        stream = event_stream(
            self._controller.hub,
            ctx.who,
            [feature_id] if feature_id else [],
            self._closing_event(),
        )
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )


def create_app(
    controller: ReleaseController,
    authenticator: Authenticator,
    settings: AdminSettings,
    *,
    analyzer: CanaryAnalyzer | None = None,
) -> AdminApp:
    """The admin UI over `controller`, showing `analyzer`'s verdicts and reach (None: the
    pages say there is no analysis); serve `.app`, and call `.close()` when stopping."""
    return AdminApp(controller, authenticator, settings, analyzer=analyzer)


# -- helpers ----------------------------------------------------------------------------


async def _to_admin(request: Request) -> Response:
    return RedirectResponse("/_admin", status_code=307)


_PORT = re.compile(r"[0-9]{1,5}")
_HOST_LABEL = re.compile(r"[a-z0-9_-]{1,63}")


def host_name(host: str) -> str | None:
    """The host of a Host header, lowercased (IPv6 without brackets, compressed); None if bad.

    The header must be `host[:port]` (RFC 9110 §7.2, RFC 3986 §3.2.2): a DNS name
    (labels of letters, digits, '-' and '_', joined by '.', maybe one trailing '.'),
    an IPv4 address, or an IPv6 address in brackets
    (no zone, no IPvFuture), then at most a ':' and a port of 1-5 digits up to 65535.
    User info (`127.0.0.1:8083@evil`), a path, spaces, percent-encoding, an empty
    port or anything else is refused, so no name can smuggle another past the check.
    """
    if not host or len(host) > 300 or not host.isascii():
        return None
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return None
        literal, rest = host[1:end], host[end + 1 :]
        try:
            name = ipaddress.IPv6Address(literal).compressed
        except ValueError:
            return None
        if "%" in literal:
            return None  # a zone id names an interface, never a site
    else:
        literal, colon, port = host.partition(":")
        rest = colon + port
        name = literal.lower()
        labels = name.removesuffix(".").split(".")
        if not all(_HOST_LABEL.fullmatch(label) for label in labels):
            return None
    if rest:
        port = rest[1:]
        if not rest.startswith(":") or not _PORT.fullmatch(port) or int(port) > 65535:
            return None
    return name


def _canonical_host(host: str) -> str:
    """`host` (a listen address's host) as host_name spells it: lowercase, IPv6 compressed."""
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare).compressed
    except ValueError:
        return bare.lower()


def _same_origin(request: Request) -> bool:
    """True when the Origin (else the Referer) header names this very site."""
    own = f"{request.url.scheme}://{request.headers.get('host', '')}".lower()
    origin = request.headers.get("origin")
    if origin is not None:
        return origin.lower() == own
    referer = request.headers.get("referer")
    if referer:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}".lower() == own
    return False


def _safe_next(target: str) -> str:
    """A local admin page to go to after signing in; anything else becomes /_admin."""
    if (
        target.startswith("/_admin")
        and not target.startswith("/_admin/signin")
        and "\\" not in target
        and all(c.isprintable() and not c.isspace() for c in target)
    ):
        return target
    return "/_admin"


_PLAIN = re.compile(r"[\w.:@/+,-]{1,200}")


def _log_value(value: object) -> str:
    text = str(value)
    return text if _PLAIN.fullmatch(text) else repr(text[:200])


def _int(text: str, default: int) -> int:
    return int(text) if text.isdigit() and len(text) < 12 else default


def _approval_id(ctx: _Ctx) -> int:
    """The approval request id in the path; NotFound for anything but a plain number."""
    text = ctx.request.path_params["approval_id"]
    found = _int(text, 0)
    if found <= 0:
        raise NotFound(
            f"there is no approval request {text[:40]!r}; requests are numbered from 1 (the "
            "Approvals page lists them)"
        )
    return found


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment is not None else "—"


def _iso(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else ""


def _row(
    state: FeatureState, now: datetime, loads: Exposure | None = None, *, protected: bool = False
) -> dict[str, Any]:
    """A feature as the list and its page's state panel show it; `loads`: its canary's soak
    by exposure so far, if it has one; `protected`: under four eyes."""
    canary = state.canary
    left = canary.seconds_left(now) if canary else 0
    return {
        "id": state.feature_id,
        "stable": state.stable,
        "canary": canary.version if canary else None,
        "canary_text": canary_text(canary) if canary else None,
        "weight": weight_text(canary.weight) if canary else None,
        "soak_seconds": canary.soak_seconds if canary else 0,
        "soak_text": soak_text(canary) if canary else None,
        "exposure": loads,
        "soak_left": (format_duration(left) if left else "over") if canary else None,
        "soak_ends": canary.soak_ends_at if canary else None,
        "sequence": state.sequence,
        "updated_at": state.updated_at,
        "updated_by": state.updated_by,
        "updated_by_principal": state.updated_by_principal,
        **_steps(canary, now, protected=protected),
    }


def _steps(canary: Canary | None, now: datetime, *, protected: bool) -> dict[str, Any]:
    """The step plan of a row: which step, what comes next, and when (None: no plan)."""
    due = canary.step_due_at() if canary else None
    if canary is not None and protected and canary.next_step is None:
        due = None  # four eyes: a plan never promotes by itself, it holds at its last step
    left = math.ceil((due - now).total_seconds()) if due else 0
    return {
        "plan": plan_text(canary) if canary else None,
        "next_step": next_step_text(canary, protected=protected) if canary else None,
        "step_due": due,
        "step_due_left": f"in {format_duration(left)}" if left > 0 else "due now",
    }


def _weight_fields(request: ChangeRequest) -> dict[str, Any]:
    """The weight a canary change set, for its log line."""
    if request.kind is Kind.SET_WEIGHT or (request.kind is Kind.CANARY and request.weight):
        return {"percent": format_weight(request.weight).removesuffix("%")}
    if request.kind is Kind.CANARY and request.steps:
        return {"steps": format_steps(request.steps).removesuffix(" %")}
    return {}


def _channel(state: FeatureState, version: str, was_stable: bool) -> str:
    if state.stable == version:
        return "stable"
    if state.canary is not None and state.canary.version == version:
        return "canary"
    return "earlier stable" if was_stable else "—"


def _history_row(stored: StoredTransition) -> dict[str, Any]:
    r = stored.record
    return {
        "id": stored.id,
        "at": r.at,
        "action": r.action.value.replace("_", " "),
        "version": r.version,
        "stable": _move(r.from_stable, r.to_stable),
        "canary": _move(r.from_canary, r.to_canary),
        "actor": r.actor,
        "principal": r.principal,
        "reason": r.reason,
        "ticket": r.ticket,
        "detail": r.detail,
        "sequence": r.sequence,
    }


def _move(before: str | None, after: str | None) -> str:
    if before == after:
        return after or "—"
    return f"{before or 'none'} → {after or 'none'}"
