"""The admin UI app in process (httpx's ASGI transport) over a real ReleaseController.

Sign-in, the session cookie, CSRF and Origin checks, authorization, the
confirm-then-apply changes with the state machine's refusals, escaping, hot
refresh. The browser end to end is in tests/e2e.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from itsdangerous import URLSafeTimedSerializer

from releasecontrol.manifest import canonical_bytes, manifest_path, sha256_hex
from releasecontrol.trust import SigningKey
from releasecontrol_server import releases
from releasecontrol_server.admin import AdminApp, AdminSettings
from releasecontrol_server.admin.session import COOKIE_NAME
from releasecontrol_server.admin.signin import SignInThrottle
from releasecontrol_server.analyzer import CanaryAnalyzer
from releasecontrol_server.approvals import ApprovalPolicy
from releasecontrol_server.artifacts import ArtifactStore
from releasecontrol_server.auth.dfs import DfsAuthenticator, issue_dfs_token
from releasecontrol_server.auth.interceptor import Authenticator, MtlsOnlyAuthenticator
from releasecontrol_server.auth.tokens import TokenAuthenticator, create_token, revoke_tokens
from releasecontrol_server.control import ReleaseController, Status
from releasecontrol_server.origin.filesystem import FilesystemOrigin
from releasecontrol_server.releases import ChangeMeta, Channel, FeatureState, PublishedVersion
from releasecontrol_server.signer import Signer
from releasecontrol_server.store import Store, open_store
from releasecontrol_server.watch import WatchHub

BASE = "http://127.0.0.1:8080"
NO_APPROVALS = ApprovalPolicy()
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves; the controller and the app read the same one."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def make_controller(
    root: Path,
    clock: Callable[[], datetime],
    *,
    hub: WatchHub | None = None,
    approvals: ApprovalPolicy = NO_APPROVALS,
) -> tuple[ReleaseController, Store]:
    """A real controller over SQLite and a folder origin under `root`, and its store to close;
    `approvals`: which changes wait for a second principal."""
    store = open_store(root / "releasecontrol.db")
    controller = ReleaseController(
        store=store,
        origin=FilesystemOrigin(root / "origin"),
        artifacts=ArtifactStore.in_folder(root / "artifacts"),
        signer=Signer([SigningKey.generate()], 7 * 24 * 3600),
        hub=hub or WatchHub(64),
        default_soak_seconds=1800,
        clock=clock,
        approvals=approvals,
    )
    return controller, store


async def publish(
    controller: ReleaseController,
    feature_id: str,
    version: str,
    *,
    canary: bool = False,
    soak_seconds: int = 0,
) -> None:
    """Publish `version` as the PublishVersion RPC would (manifest recorded and written)."""
    manifest = canonical_bytes(
        {
            "id": feature_id,
            "version": version,
            "entry": "index.js",
            "routes": [f"/{feature_id}"],
            "compat": {"host": "^2.0.0"},
            "assets": [],
        }
    )
    command = releases.Publish(
        version, sha256_hex(manifest), Channel.CANARY if canary else Channel.STABLE, soak_seconds
    )
    await controller.change(
        feature_id,
        command,
        ChangeMeta(actor="ci-bot"),
        rpc="PublishVersion",
        request_id="",
        manifest=manifest,
    )


async def deploy_canary(
    controller: ReleaseController, feature_id: str, version: str, soak: int
) -> None:
    await controller.change(
        feature_id,
        releases.DeployCanary(version, soak),
        ChangeMeta(actor="cli-user"),
        rpc="DeployCanary",
        request_id="",
    )


@dataclass
class Admin:
    """The admin app behind an in-process HTTP client, with what a test needs around it."""

    controller: ReleaseController
    client: httpx.AsyncClient
    clock: Clock
    root: Path
    tokens: Path
    analyzer: CanaryAnalyzer | None = None

    async def publish(self, feature_id: str, version: str, **kwargs: Any) -> None:
        await publish(self.controller, feature_id, version, **kwargs)

    async def canary(self, feature_id: str, version: str, soak: int) -> None:
        await deploy_canary(self.controller, feature_id, version, soak)

    def state(self, feature_id: str) -> FeatureState:
        return self.controller.feature(feature_id)

    def token(self, principal: str, *roles: str, scopes: list[str] | None = None) -> str:
        return create_token(self.tokens, principal, roles, scopes)

    async def csrf(self, path: str = "/_admin/signin") -> str:
        """The CSRF token of the current session, read from a page's form."""
        page = await self.client.get(path)
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert found, f"no CSRF field on {path}: {page.status_code} {page.text[:300]}"
        return found.group(1)

    async def post(
        self,
        path: str,
        data: dict[str, str],
        *,
        csrf: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST a form the way the pages do: same-origin, with the session's CSRF token."""
        token = await self.csrf("/_admin/signin") if csrf is None else csrf
        form = {"csrf_token": token, **data}
        return await self.client.post(path, data=form, headers={"origin": BASE, **(headers or {})})

    async def sign_in(self, token: str) -> httpx.Response:
        return await self.post("/_admin/signin", {"token": token, "next": "/_admin"})

    async def review(self, feature_id: str, **fields: str) -> httpx.Response:
        return await self.post(f"/_admin/features/{feature_id}/review", fields)

    async def confirm(self, review: httpx.Response) -> httpx.Response:
        """Submit the confirmation form of a review page exactly as a browser would."""
        assert review.status_code == 200, review.text
        action = re.search(r'<form method="post" action="([^"]+/apply)"', review.text)
        assert action
        hidden = r'<input type="hidden" name="([^"]+)" value="([^"]*)">'
        fields = {k: html.unescape(v) for k, v in re.findall(hidden, review.text)}
        return await self.client.post(action.group(1), data=fields, headers={"origin": BASE})


async def build(
    tmp_path: Path,
    *,
    auth_mode: str | None = "rpc-token",
    allow_unauthenticated: bool = False,
    authenticator: Authenticator | None = None,
    base_url: str = BASE,
    throttle: SignInThrottle | None = None,
    client_address: str = "127.0.0.1",
    approvals: ApprovalPolicy = NO_APPROVALS,
    analysis: bool | None = None,
) -> AsyncIterator[Admin]:
    """The app over a fresh controller; `analysis`: an analyzer that is on (True), off
    (False, as without beacon keys) or none at all (None)."""
    clock = Clock()
    controller, store = make_controller(tmp_path, clock, approvals=approvals)
    analyzer = None
    if analysis is not None:
        analyzer = CanaryAnalyzer(controller, enabled=analysis, clock=clock)
        controller.count_canary_loads = analyzer.canary_loads  # as main.py wires them
    tokens = tmp_path / "auth" / "tokens.json"
    create_token(tokens, "bootstrap", ["viewer"])
    if authenticator is None:
        authenticator = (
            TokenAuthenticator(tokens) if auth_mode == "rpc-token" else MtlsOnlyAuthenticator()
        )
    app = AdminApp(
        controller,
        authenticator,
        AdminSettings(
            auth_mode=auth_mode,
            allow_unauthenticated=allow_unauthenticated,
            session_secret=b"k" * 64,
            session_seconds=600,
            token_store_path=tokens,
            listen_host="127.0.0.1",
        ),
        clock=clock,
        throttle=throttle,
        analyzer=analyzer,
    )
    transport = httpx.ASGITransport(app=app.app, client=(client_address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        await controller.start()
        try:
            yield Admin(controller, client, clock, tmp_path, tokens, analyzer)
        finally:
            await controller.stop()
            store.close()


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Admin]:
    async for built in build(tmp_path):
        yield built


@pytest.fixture
async def releaser(admin: Admin) -> Admin:
    """Signed in as `alice`, admin, with checkout 1.0.0 stable and 1.1.0 in canary (no soak)."""
    await admin.publish("checkout", "1.0.0")
    await admin.publish("checkout", "1.1.0", canary=True, soak_seconds=0)
    response = await admin.sign_in(admin.token("alice", "admin"))
    assert response.status_code == 303, response.text
    return admin


def session_csrf(admin: Admin) -> str:
    """The CSRF token inside the session cookie (signed, not secret), for a page without forms."""
    serializer = URLSafeTimedSerializer(b"k" * 64, salt="releasecontrol-admin-session")
    return str(serializer.loads(admin.client.cookies[COOKIE_NAME])["c"])


def set_cookie(response: httpx.Response) -> str:
    values = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
    assert len(values) == 1, values
    return values[0]


class TestSignIn:
    async def test_signed_out_pages_redirect_to_sign_in_with_the_page_to_return_to(
        self, admin: Admin
    ) -> None:
        """Without a sign-in every page redirects to the sign-in page, naming where to return."""
        for path, quoted in [
            ("/_admin", "%2F_admin"),
            ("/_admin/features/checkout?before=3", "%2F_admin%2Ffeatures%2Fcheckout%3Fbefore%3D3"),
        ]:
            response = await admin.client.get(path)
            assert response.status_code == 303
            assert response.headers["location"] == f"/_admin/signin?next={quoted}"
        assert (await admin.client.get("/_admin/events")).status_code == 401

    async def test_sign_in_sets_a_strict_http_only_cookie_and_returns_to_the_page(
        self, admin: Admin
    ) -> None:
        """A good token signs in: a 303 to `next` and an HttpOnly, SameSite=Strict cookie."""
        response = await admin.post(
            "/_admin/signin",
            {"token": admin.token("alice", "viewer"), "next": "/_admin/features/checkout"},
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/_admin/features/checkout"
        cookie = set_cookie(response)
        assert cookie.startswith(f"{COOKIE_NAME}=")
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/_admin"} <= flags
        assert "secure" not in flags  # plain http on loopback
        page = await admin.client.get("/_admin")
        assert page.status_code == 200
        assert "Signed in as" in page.text and "<strong>alice</strong>" in page.text

    async def test_over_https_the_cookie_is_secure(self, tmp_path: Path) -> None:
        """Served over https, the session cookie carries Secure."""
        async for admin in build(tmp_path, base_url="https://127.0.0.1:8443"):
            page = await admin.client.get("/_admin/signin")
            assert "secure" in {p.strip().lower() for p in set_cookie(page).split(";")}

    async def test_an_unknown_token_is_refused_with_the_rpc_message(self, admin: Admin) -> None:
        """A wrong token gets 401 and the token store's own sentence; no one is signed in."""
        response = await admin.sign_in("rc_not-a-real-token")
        assert response.status_code == 401
        assert "not known to this server" in response.text
        assert "rc_not-a-real-token" not in response.text
        assert (await admin.client.get("/_admin")).status_code == 303

    async def test_sign_out_ends_the_session(self, releaser: Admin) -> None:
        """Signing out goes back to the sign-in page, and pages need a sign-in again."""
        response = await releaser.post("/_admin/signout", {}, csrf=await releaser.csrf("/_admin"))
        assert response.status_code == 303
        assert response.headers["location"] == "/_admin/signin"
        assert (await releaser.client.get("/_admin")).status_code == 303

    async def test_sign_out_ends_the_session_on_the_server(self, releaser: Admin) -> None:
        """A copy of the cookie taken before signing out signs nobody in afterwards."""
        copied = releaser.client.cookies[COOKIE_NAME]
        response = await releaser.post("/_admin/signout", {}, csrf=await releaser.csrf("/_admin"))
        assert response.status_code == 303
        releaser.client.cookies.clear()
        releaser.client.cookies.set(COOKIE_NAME, copied, domain="127.0.0.1", path="/_admin")
        assert (await releaser.client.get("/_admin")).status_code == 303
        assert (await releaser.client.get("/_admin/events")).status_code == 401

    async def test_signing_in_again_ends_the_previous_session(self, admin: Admin) -> None:
        """A second sign-in in the same browser replaces the first: its old cookie is closed."""
        await admin.sign_in(admin.token("alice", "viewer"))
        first = admin.client.cookies[COOKIE_NAME]
        await admin.sign_in(admin.token("bob", "viewer"))
        assert "<strong>bob</strong>" in (await admin.client.get("/_admin")).text
        admin.client.cookies.clear()
        admin.client.cookies.set(COOKIE_NAME, first, domain="127.0.0.1", path="/_admin")
        assert (await admin.client.get("/_admin")).status_code == 303

    async def test_a_revoked_token_ends_its_session_at_once(self, admin: Admin) -> None:
        """Revoking the token in the store signs its browser sessions out on the next request."""
        await admin.sign_in(admin.token("mallory", "admin"))
        assert (await admin.client.get("/_admin")).status_code == 200
        revoke_tokens(admin.tokens, "mallory")
        assert (await admin.client.get("/_admin")).status_code == 303

    async def test_roles_changed_in_the_store_apply_to_open_sessions(self, admin: Admin) -> None:
        """A session acts with the store's current roles for its token, not those at sign-in."""
        await admin.publish("checkout", "1.0.0")
        await admin.sign_in(admin.token("bob", "viewer"))
        store = json.loads(admin.tokens.read_text())
        for entry in store["tokens"]:
            if entry["principal"] == "bob":
                entry["roles"] = ["approver"]
        admin.tokens.write_text(json.dumps(store))
        page = await admin.client.get("/_admin/features/checkout")
        assert "(approver)" in page.text

    async def test_a_tampered_cookie_counts_as_signed_out(self, releaser: Admin) -> None:
        """A session cookie whose signature does not verify is ignored."""
        value = releaser.client.cookies[COOKIE_NAME]
        releaser.client.cookies.clear()
        forged = value[:-3] + ("AAA" if not value.endswith("AAA") else "BBB")
        releaser.client.cookies.set(COOKIE_NAME, forged, domain="127.0.0.1", path="/_admin")
        assert (await releaser.client.get("/_admin")).status_code == 303

    async def test_the_session_expires(
        self, releaser: Admin, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """After its lifetime the session no longer counts."""
        import time as time_module

        later = time_module.time() + 601
        monkeypatch.setattr(time_module, "time", lambda: later)
        assert (await releaser.client.get("/_admin")).status_code == 303

    @pytest.mark.parametrize(
        "target",
        [
            "https://evil.example/",
            "//evil.example/x",
            "/elsewhere",
            "/_admin\\@evil",
            "/_admin/signin",
        ],
    )
    async def test_next_never_leaves_the_admin_ui(self, admin: Admin, target: str) -> None:
        """After a sign-in, a `next` outside /_admin goes to /_admin instead."""
        response = await admin.post(
            "/_admin/signin", {"token": admin.token("a", "viewer"), "next": target}
        )
        assert response.headers["location"] == "/_admin"

    async def test_without_an_auth_mode_the_page_says_what_to_set(self, tmp_path: Path) -> None:
        """With no auth mode and no ALLOW_UNAUTHENTICATED_ADMIN, there is no form, only the fix."""
        async for admin in build(tmp_path, auth_mode=None):
            assert (await admin.client.get("/_admin")).status_code == 303
            page = await admin.client.get("/_admin/signin")
            assert "ALLOW_UNAUTHENTICATED_ADMIN=1" in page.text
            assert "RELEASECONTROL_AUTH_MODE=rpc-token" in page.text
            assert 'name="token"' not in page.text
            csrf = session_csrf(admin)
            refused = await admin.post("/_admin/signin", {"token": "anything"}, csrf=csrf)
            assert refused.status_code == 401

    async def test_dfs_sign_in_ends_with_the_token(self, tmp_path: Path) -> None:
        """A dfs token signs in, and the session lasts no longer than the token."""
        key = Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        authenticator = DfsAuthenticator(
            issuer="https://idp.example", audience="releasecontrol", public_key=public.decode()
        )
        async for admin in build(tmp_path, auth_mode="dfs", authenticator=authenticator):
            token = issue_dfs_token(
                key,
                issuer="https://idp.example",
                audience="releasecontrol",
                subject="carol",
                roles=["approver"],
                ttl_seconds=120,
            )
            response = await admin.sign_in(token)
            assert response.status_code == 303
            max_age = re.search(r"Max-Age=(\d+)", set_cookie(response))
            assert max_age and 100 <= int(max_age.group(1)) <= 120
            assert "<strong>carol</strong>" in (await admin.client.get("/_admin")).text


class Ticks:
    """A monotonic clock the test moves, for the sign-in throttle."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestSignInLimits:
    async def test_failures_from_one_address_are_limited_with_retry_after(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Past 10 failures in the window: 429 with Retry-After, logged, token not even checked."""
        ticks = Ticks()
        throttle = SignInThrottle(per_address=10, window_seconds=900, clock=ticks)
        async for admin in build(tmp_path, throttle=throttle, client_address="203.0.113.7"):
            for _ in range(10):
                assert (await admin.sign_in("rc_wrong")).status_code == 401
                ticks.now += 10
            good = admin.token("alice", "viewer")
            with caplog.at_level(logging.INFO, logger="releasecontrol_server.admin.app"):
                blocked = await admin.sign_in(good)
            assert blocked.status_code == 429
            assert blocked.headers["retry-after"] == str(900 - 100)
            assert "too many failed sign-ins from this address" in blocked.text
            assert (await admin.client.get("/_admin")).status_code == 303  # not signed in
            line = next(r.getMessage() for r in caplog.records if "result=throttled" in r.message)
            assert "action=signin" in line and "address=203.0.113.7" in line
            assert "retry_after=800" in line
            ticks.now += 801  # the first failure left the window: one more attempt
            assert (await admin.sign_in(good)).status_code == 303

    async def test_a_good_sign_in_clears_the_addresss_failures(self, tmp_path: Path) -> None:
        """Failures below the limit are forgotten once the same address signs in."""
        throttle = SignInThrottle(per_address=3, clock=Ticks())
        async for admin in build(tmp_path, throttle=throttle):
            for _ in range(2):
                await admin.sign_in("rc_wrong")
            assert (await admin.sign_in(admin.token("alice", "viewer"))).status_code == 303
            for _ in range(2):
                assert (await admin.sign_in("rc_wrong")).status_code == 401

    async def test_failures_naming_one_principal_are_limited_across_addresses(
        self, tmp_path: Path
    ) -> None:
        """dfs: tokens claiming one `sub` that fail are counted for it, whatever the address."""
        key = Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        authenticator = DfsAuthenticator(
            issuer="https://idp.example", audience="releasecontrol", public_key=public.decode()
        )
        forger = Ed25519PrivateKey.generate()
        throttle = SignInThrottle(per_address=1000, per_principal=3, clock=Ticks())

        def token(signer: Ed25519PrivateKey, subject: str) -> str:
            return issue_dfs_token(
                signer,
                issuer="https://idp.example",
                audience="releasecontrol",
                subject=subject,
                roles=["admin"],
            )

        for address in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
            (tmp_path / address).mkdir()
            async for admin in build(
                tmp_path / address,
                auth_mode="dfs",
                authenticator=authenticator,
                throttle=throttle,
                client_address=address,
            ):
                assert (await admin.sign_in(token(forger, "carol"))).status_code == 401
        (tmp_path / "last").mkdir()
        async for admin in build(
            tmp_path / "last",
            auth_mode="dfs",
            authenticator=authenticator,
            throttle=throttle,
            client_address="198.51.100.4",
        ):
            blocked = await admin.sign_in(token(key, "carol"))
            assert blocked.status_code == 429
            assert "for this principal" in blocked.text
            assert int(blocked.headers["retry-after"]) > 0
            assert (await admin.sign_in(token(key, "dave"))).status_code == 303


class TestUnauthenticatedMode:
    @pytest.fixture
    async def open_admin(self, tmp_path: Path) -> AsyncIterator[Admin]:
        async for built in build(tmp_path, auth_mode=None, allow_unauthenticated=True):
            yield built

    async def test_everyone_acts_as_the_unauthenticated_admin(self, open_admin: Admin) -> None:
        """ALLOW_UNAUTHENTICATED_ADMIN: pages work without sign-in, as unauthenticated-admin."""
        await open_admin.publish("checkout", "1.0.0")
        await open_admin.publish("checkout", "1.1.0", canary=True, soak_seconds=0)
        page = await open_admin.client.get("/_admin")
        assert page.status_code == 200
        assert "unauthenticated-admin" in page.text
        csrf = await open_admin.csrf("/_admin")
        review = await open_admin.post(
            "/_admin/features/checkout/review",
            {"action": "promote", "version": "1.1.0"},
            csrf=csrf,
        )
        assert (await open_admin.confirm(review)).status_code == 303
        assert open_admin.state("checkout").updated_by == "unauthenticated-admin"

    async def test_another_host_name_is_refused(self, open_admin: Admin) -> None:
        """Without sign-in, a Host other than our own (DNS rebinding) gets no page."""
        response = await open_admin.client.get("/_admin", headers={"host": "evil.example:8080"})
        assert response.status_code == 421
        assert (
            await open_admin.client.get("/_admin", headers={"host": "localhost:8080"})
        ).status_code == 200

    @pytest.mark.parametrize(
        "host",
        [
            "127.0.0.1:8083@evil",  # issue 13 item 9: user info smuggling another name
            "evil@127.0.0.1:8083",
            "127.0.0.1@evil",
            "127.0.0.1:8083:80",
            "127.0.0.1:",
            "127.0.0.1:99999",
            "127.0.0.1/evil",
            "127.0.0.1%2f",
            "::1",  # IPv6 must be bracketed
            "[::1]evil",
            "[::1",
            "[fe80::1%eth0]:8080",
            "[v1.fe]",
            "127.0.0.1 evil",
        ],
    )
    async def test_a_malformed_host_is_refused(self, open_admin: Admin, host: str) -> None:
        """The Host is parsed as host[:port]; anything else is refused, never trimmed to fit."""
        response = await open_admin.client.get("/_admin", headers={"host": host})
        assert response.status_code == 400
        assert "host[:port]" in response.text
        assert "unauthenticated-admin" not in response.text

    @pytest.mark.parametrize(
        "host", ["127.0.0.1", "127.0.0.1:8080", "LOCALHOST:8080", "[::1]:8080", "[0:0::1]"]
    )
    async def test_our_own_names_are_served(self, open_admin: Admin, host: str) -> None:
        """Loopback names, with or without a port, IPv6 in brackets, any case: served."""
        response = await open_admin.client.get("/_admin", headers={"host": host})
        assert response.status_code == 200

    @pytest.mark.parametrize("host", ["localhost.:8080", "127.0.0.2", "[::2]:8080"])
    async def test_a_well_formed_other_name_is_misdirected(
        self, open_admin: Admin, host: str
    ) -> None:
        """A good host[:port] that is not ours is 421, as before."""
        response = await open_admin.client.get("/_admin", headers={"host": host})
        assert response.status_code == 421


class TestHostHeader:
    async def test_a_malformed_host_is_refused_with_sign_in_too(self, admin: Admin) -> None:
        """A Host that is not host[:port] is never legitimate, whatever the auth mode."""
        response = await admin.client.get("/_admin/signin", headers={"host": "a:1@b"})
        assert response.status_code == 400
        assert (
            await admin.client.get("/_admin/signin", headers={"host": "admin.example.org"})
        ).status_code == 200


class TestCrossSiteRequests:
    async def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
        self, releaser: Admin
    ) -> None:
        """A change form without (or with a wrong) CSRF token gets 403; the feature is untouched."""
        before = releaser.state("checkout")
        for csrf in ("", "forged"):
            review = await releaser.post(
                "/_admin/features/checkout/apply",
                {"action": "promote", "version": "1.1.0", "reason": "x"},
                csrf=csrf,
            )
            assert review.status_code == 403
            assert "security token" in review.text
        assert releaser.state("checkout") == before

    @pytest.mark.parametrize(
        "headers",
        [
            pytest.param({"origin": "https://evil.example"}, id="foreign-origin"),
            pytest.param({"origin": "null"}, id="null-origin"),
            pytest.param({"origin": "http://127.0.0.1:9999"}, id="other-port"),
        ],
    )
    async def test_a_post_from_another_origin_is_refused(
        self, releaser: Admin, headers: dict[str, str]
    ) -> None:
        """Even with the right CSRF token, a POST whose Origin is another site gets 403."""
        before = releaser.state("checkout")
        response = await releaser.post(
            "/_admin/features/checkout/apply",
            {"action": "promote", "version": "1.1.0"},
            csrf=await releaser.csrf("/_admin"),
            headers=headers,
        )
        assert response.status_code == 403
        assert "Origin" in response.text
        assert releaser.state("checkout") == before

    async def test_without_origin_the_referer_decides(self, releaser: Admin) -> None:
        """With no Origin header a same-site Referer is accepted, and none at all is refused."""
        csrf = await releaser.csrf("/_admin")
        form = {"csrf_token": csrf, "action": "promote", "version": "1.1.0"}
        path = "/_admin/features/checkout/review"
        assert (await releaser.client.post(path, data=form)).status_code == 403
        ok = await releaser.client.post(path, data=form, headers={"referer": f"{BASE}/_admin/x"})
        assert ok.status_code == 200

    async def test_every_page_forbids_framing_and_inline_script(self, releaser: Admin) -> None:
        """Pages carry a CSP without inline script, no framing, nosniff and no-store."""
        page = await releaser.client.get("/_admin")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["cache-control"] == "no-store"


class TestPages:
    async def test_the_list_shows_channels_soak_sequence_and_last_change(
        self, releaser: Admin
    ) -> None:
        """Each feature row has stable, canary with its weight, soak left, sequence and who
        changed it last."""
        await releaser.canary("checkout", "1.1.0", 3600)
        releaser.clock.now = T0 + timedelta(minutes=20)
        page = (await releaser.client.get("/_admin")).text
        row = re.search(r'<tr data-feature="checkout">(.*?)</tr>', page, re.S)
        assert row
        cells = re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row.group(1), re.S)
        text = [re.sub(r"<[^>]+>", "", c).strip() for c in cells]
        assert text == [
            "checkout",
            "1.0.0",
            "1.1.0 — opted-in hosts only",
            "40m",
            "3",
            "2030-01-01 12:00:00Z",
            "cli-user",
        ]

    async def test_the_filter_and_pages_hold_a_thousand_features(
        self, admin: Admin, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With 1000 features the list filters by name on the server and pages 100 at a time."""
        version = PublishedVersion("1.0.0", "ab" * 32, T0, was_stable=True)
        states = [
            FeatureState(f"feature-{i:04d}", 1, "1.0.0", None, (version,), T0, "ci-bot")
            for i in range(1000)
        ]
        monkeypatch.setattr(admin.controller, "status", lambda only=(): Status(states, 1000, 0, T0))
        await admin.sign_in(admin.token("v", "viewer"))
        first = await admin.client.get("/_admin")
        assert first.text.count("<tr data-feature=") == 100
        assert "Page 1 of 10" in first.text
        last = (await admin.client.get("/_admin?page=10")).text
        assert 'data-feature="feature-0999"' in last
        hits = (await admin.client.get("/_admin?q=FEATURE-012")).text
        assert hits.count("<tr data-feature=") == 10
        assert "10 of 1000 features match" in hits
        one = (await admin.client.get("/_admin?q=feature-0999")).text
        assert "1 of 1000 features matches" in one

    async def test_one_feature_is_counted_in_the_singular(self, releaser: Admin) -> None:
        """'1 feature', not '1 features'."""
        page = (await releaser.client.get("/_admin")).text
        assert " 1 feature\n" in page or " 1 feature " in page
        assert "1 features" not in page

    async def test_a_scoped_principal_sees_only_its_features(self, admin: Admin) -> None:
        """The list keeps only what the principal may read; another feature's page is refused."""
        await admin.publish("feature-pay", "1.0.0")
        await admin.publish("checkout", "1.0.0")
        await admin.sign_in(admin.token("pay", "viewer", scopes=["feature-pay*"]))
        page = (await admin.client.get("/_admin")).text
        assert 'data-feature="feature-pay"' in page and 'data-feature="checkout"' not in page
        refused = await admin.client.get("/_admin/features/checkout")
        assert refused.status_code == 403
        assert "may not read feature &#39;checkout&#39;" in refused.text

    async def test_the_feature_page_lists_versions_and_history_newest_first(
        self, releaser: Admin
    ) -> None:
        """Every version with its channel and manifest hash; history newest first with actors."""
        page = await releaser.client.get("/_admin/features/checkout")
        assert page.status_code == 200
        versions = re.findall(
            r'<th scope="row">(\d\.\d\.\d)</th>\s*<td><span class="chip ([\w-]+)"', page.text
        )
        assert versions == [("1.1.0", "canary"), ("1.0.0", "stable")]
        digest = releaser.state("checkout").versions[0].manifest_sha256
        assert digest[:12] in page.text
        history = page.text.split('id="history-table"')[1]
        assert history.index("publish 1.1.0") < history.index("publish 1.0.0")

    async def test_an_unknown_feature_is_a_404_with_the_servers_message(
        self, releaser: Admin
    ) -> None:
        """A feature that does not exist shows the NotFound sentence the CLI gets."""
        page = await releaser.client.get("/_admin/features/nope")
        assert page.status_code == 404
        assert "feature &#39;nope&#39; does not exist" in page.text

    async def test_a_server_fault_shows_no_stack_trace(
        self, releaser: Admin, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An unexpected exception becomes a plain 500 page, without a traceback or its text."""

        def boom(*args: object, **kwargs: object) -> None:
            raise RuntimeError("secret internals")

        monkeypatch.setattr(releaser.controller, "status", boom)
        page = await releaser.client.get("/_admin")
        assert page.status_code == 500
        assert "Traceback" not in page.text and "secret internals" not in page.text
        assert "server log" in page.text


class TestChanges:
    async def test_review_names_exactly_what_will_change_and_changes_nothing(
        self, releaser: Admin
    ) -> None:
        """The confirmation page says what moves where; until confirmed nothing changes."""
        before = releaser.state("checkout")
        review = await releaser.review("checkout", action="promote", version="1.1.0", reason="ok")
        assert review.status_code == 200
        assert "Promote checkout 1.1.0 to stable (stable now 1.0.0)" in review.text
        rows = re.findall(
            r"<th scope=\"row\">(\w+)</th><td>([^<]*)</td><td>([^<]*)</td>", review.text
        )
        assert rows == [
            ("Stable", "1.0.0", "1.1.0"),
            ("Canary", "1.1.0 — opted-in hosts only (soak 0s)", "none"),
            ("Sequence", "2", "3"),
        ]
        assert releaser.state("checkout") == before

    async def test_promote_before_the_soak_shows_the_state_machines_refusal(
        self, releaser: Admin
    ) -> None:
        """Promoting a soaking canary is refused with SoakNotOver's message, at review and apply."""
        await releaser.canary("checkout", "1.1.0", 3600)
        review = await releaser.review("checkout", action="promote", version="1.1.0")
        assert review.status_code == 409
        assert "FAILED_PRECONDITION" in review.text
        assert "is still soaking: 1h left" in review.text
        # In the form's words, not the CLI's flags.
        assert "skip the rest of the soak, giving a reason" in review.text
        assert "--" not in review.text.split("is still soaking", 1)[1].split("<", 1)[0]
        # A crafted apply (no review) meets the same rule in the controller.
        apply = await releaser.post(
            "/_admin/features/checkout/apply", {"action": "promote", "version": "1.1.0"}
        )
        assert apply.status_code == 409 and "is still soaking" in apply.text
        assert releaser.state("checkout").stable == "1.0.0"

    async def test_skipping_the_soak_needs_a_reason_and_then_promotes(
        self, releaser: Admin
    ) -> None:
        """skip-soak without a reason is refused; with one the promote applies, by the principal."""
        await releaser.canary("checkout", "1.1.0", 3600)
        refused = await releaser.review(
            "checkout", action="promote", version="1.1.0", skip_soak="1"
        )
        assert refused.status_code == 400 and "skipping the soak needs a reason" in refused.text
        review = await releaser.review(
            "checkout",
            action="promote",
            version="1.1.0",
            skip_soak="1",
            reason="hotfix",
            ticket="INC-1",
        )
        assert "skipping the soak with 1h left" in review.text
        done = await releaser.confirm(review)
        assert done.status_code == 303
        assert re.fullmatch(r"/_admin/features/checkout\?done=\d+", done.headers["location"])
        state = releaser.state("checkout")
        assert (state.stable, state.canary, state.updated_by) == ("1.1.0", None, "alice")
        page = (await releaser.client.get(done.headers["location"])).text
        assert "Promote 1.1.0 applied as sequence 4: soak skipped with 1h left" in page
        assert "hotfix" in page and "INC-1" in page

    async def test_canary_rollback_and_fallback_apply_through_the_controller(
        self, releaser: Admin
    ) -> None:
        """Each form applies its command; the audit records carry the form's actor and reason."""
        steps = [
            {"action": "promote", "version": "1.1.0"},
            {"action": "rollback", "version": "1.0.0", "reason": "errors", "ticket": "INC-7"},
            {"action": "canary", "version": "1.1.0", "soak": "45m"},
            {"action": "fallback", "version": "1.1.0", "channel": "stable", "actor": "ops-bot"},
        ]
        for step in steps:
            assert (
                await releaser.confirm(await releaser.review("checkout", **step))
            ).status_code == 303
        history = await releaser.controller.transitions(feature_id="checkout", before_id=0, limit=4)
        records = [(t.record.action.value, t.record.version, t.record.actor) for t in history]
        assert records == [
            ("set_channel", "1.1.0", "ops-bot"),
            ("deploy_canary", "1.1.0", "alice"),
            ("rollback", "1.0.0", "alice"),
            ("promote", "1.1.0", "alice"),
        ]
        assert history[1].record.detail.startswith("soak 45m")
        assert (history[2].record.reason, history[2].record.ticket) == ("errors", "INC-7")
        # Whoever the form names, the signed-in user is recorded beside it and shown.
        assert {t.record.principal for t in history} == {"alice"}
        page = (await releaser.client.get("/_admin/features/checkout")).text
        assert "ops-bot" in page and "signed in as alice" in page
        # The last change and its history row; not where the actor is the user.
        assert page.count("signed in as") == 2
        listing = (await releaser.client.get("/_admin")).text
        assert "ops-bot" in listing and "signed in as alice" in listing

    async def test_a_role_without_the_action_is_refused_with_authorizes_message(
        self, admin: Admin
    ) -> None:
        """A viewer may look but not promote: 403 with the sentence authorize() gives the RPCs."""
        await admin.publish("checkout", "1.0.0")
        await admin.publish("checkout", "1.1.0", canary=True, soak_seconds=0)
        await admin.sign_in(admin.token("auditor", "viewer"))
        page = (await admin.client.get("/_admin/features/checkout")).text
        assert "may not promote feature" in page  # the note beside the form
        review = await admin.review("checkout", action="promote", version="1.1.0")
        assert review.status_code == 403
        assert "auditor (roles: viewer; features: *) may not promote feature" in review.text
        apply = await admin.post(
            "/_admin/features/checkout/apply", {"action": "promote", "version": "1.1.0"}
        )
        assert apply.status_code == 403
        assert admin.state("checkout").stable == "1.0.0"

    async def test_a_change_by_someone_else_after_review_is_not_applied(
        self, releaser: Admin
    ) -> None:
        """The confirmation pins the sequence it showed; a change in between makes it ABORTED."""
        review = await releaser.review("checkout", action="promote", version="1.1.0")
        await releaser.canary("checkout", "1.1.0", 0)  # someone else redeploys the canary
        response = await releaser.confirm(review)
        assert response.status_code == 409
        assert "someone else changed it" in response.text
        assert releaser.state("checkout").stable == "1.0.0"

    async def test_a_double_submitted_confirmation_applies_once(self, releaser: Admin) -> None:
        """Submitting the same confirmation twice changes the feature once (same request id)."""
        review = await releaser.review("checkout", action="promote", version="1.1.0")
        first, second = await releaser.confirm(review), await releaser.confirm(review)
        assert first.headers["location"] == second.headers["location"]
        assert releaser.state("checkout").sequence == 3

    async def test_each_action_is_one_log_line_with_form_text_quoted(
        self, releaser: Admin, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A change logs one line: action, principal, feature, result; typed text is quoted."""
        caplog.set_level(logging.INFO, logger="releasecontrol_server.admin.app")
        # A newline is refused at the form now (issue 13 item 4); spaces and '=' still could
        # forge fields in a line if the value were written unquoted.
        actor = "x admin action=forged"
        review = await releaser.review("checkout", action="promote", version="1.1.0", actor=actor)
        await releaser.confirm(review)
        lines = [r.getMessage() for r in caplog.records if "step=apply" in r.getMessage()]
        assert lines == [
            "admin action=promote principal=alice feature=checkout result=ok step=apply "
            "version=1.1.0 sequence=3 actor='x admin action=forged'"
        ]

    async def test_a_bad_form_value_names_the_field(self, releaser: Admin) -> None:
        """A soak that is not a duration is refused with the CLI's sentence, keeping the input."""
        review = await releaser.review(
            "checkout", action="canary", version="1.1.0", soak="soon", reason="r1"
        )
        assert review.status_code == 400
        assert "duration &#39;soon&#39; is not understood" in review.text
        assert 'value="r1"' in review.text


class TestEscaping:
    SCRIPT = '<script>alert("x")</script>'

    async def test_a_reason_with_markup_is_shown_as_text_everywhere(self, releaser: Admin) -> None:
        """A reason, ticket and actor holding <script> are escaped on review and in the history."""
        review = await releaser.review(
            "checkout",
            action="promote",
            version="1.1.0",
            reason=self.SCRIPT,
            ticket=self.SCRIPT,
            actor="<b>x</b>",
        )
        assert self.SCRIPT not in review.text and "<b>x</b>" not in review.text
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in review.text
        assert (await releaser.confirm(review)).status_code == 303
        assert releaser.state("checkout").updated_by == "<b>x</b>"  # stored as given
        page = (await releaser.client.get("/_admin/features/checkout")).text
        assert self.SCRIPT not in page and "<b>x</b>" not in page
        assert page.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;") == 2
        listing = (await releaser.client.get("/_admin")).text
        assert "<b>x</b>" not in listing and "&lt;b&gt;x&lt;/b&gt;" in listing

    async def test_a_filter_query_with_markup_is_escaped(self, releaser: Admin) -> None:
        """The filter text is echoed escaped."""
        page = (await releaser.client.get("/_admin", params={"q": '"><script>1</script>'})).text
        assert "<script>1</script>" not in page
        assert "&lt;script&gt;1&lt;/script&gt;" in page


class TestHotRefresh:
    async def test_refresh_restores_a_missing_manifest_and_says_so(self, releaser: Admin) -> None:
        """A manifest deleted from the origin is restored; the page counts checks and watchers."""
        path = releaser.root / "origin" / manifest_path("checkout", "1.0.0")
        recorded = path.read_bytes()
        path.unlink()
        response = await releaser.post("/_admin/refresh", {"feature": "checkout"})
        assert response.status_code == 200
        assert "Checked 2 manifests of 1 feature" in response.text
        assert "<strong>1 restored</strong>" in response.text
        assert "0 watchers (hosts, pages) told to refresh now" in response.text
        assert "origin copy was missing; restored the recorded manifest" in response.text
        assert path.read_bytes() == recorded

    async def test_refresh_needs_the_role(self, admin: Admin) -> None:
        """A viewer cannot hot-refresh: 403 with authorize()'s sentence."""
        await admin.publish("checkout", "1.0.0")
        await admin.sign_in(admin.token("v", "viewer"))
        response = await admin.post("/_admin/refresh", {})
        assert response.status_code == 403
        assert "may not refresh_manifests features" in response.text
