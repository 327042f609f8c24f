"""The admin UI behind a TLS-terminating proxy: sign-in works only when the proxy is trusted."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import RunningServer, start_server

from releasecontrol_server.auth.tokens import create_token

pytestmark = pytest.mark.integration

PUBLIC = "https://admin.example.test"
PROXY_HEADERS = {"host": "admin.example.test", "x-forwarded-proto": "https"}


def sign_in(server: RunningServer, token: str) -> httpx.Response:
    """GET the sign-in form and POST it as a browser behind the proxy would."""
    base = server.endpoints["admin_url"].removesuffix("/_admin")
    with httpx.Client(base_url=base, headers=PROXY_HEADERS) as browser:
        page = browser.get("/_admin/signin")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert csrf is not None, page.text
        # The browser talks https to the proxy, so it sends the cookie back even when it is
        # Secure; httpx on this plain-http hop would not, so the test carries it by hand.
        session = page.headers["set-cookie"].split(";", 1)[0]
        browser.cookies.clear()
        return browser.post(
            "/_admin/signin",
            data={"csrf_token": csrf.group(1), "token": token},
            headers={"origin": PUBLIC, "referer": f"{PUBLIC}/_admin/signin", "cookie": session},
        )


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    create_token(home / "auth" / "tokens.json", "bootstrap", ["viewer"])
    yield home


@pytest.mark.parametrize(
    ("trusted", "status"),
    [pytest.param("127.0.0.1", 303, id="proxy-trusted"), pytest.param("", 403, id="not-trusted")],
)
def test_sign_in_through_a_tls_proxy(home: Path, trusted: str, status: int) -> None:
    """With the proxy trusted, an https origin signs in and gets a Secure cookie; without, 403."""
    token = create_token(home / "auth" / "tokens.json", "alice", ["approver"])
    server = start_server(
        home, RELEASECONTROL_AUTH_MODE="rpc-token", RELEASECONTROL_ADMIN_TRUSTED_PROXIES=trusted
    )
    try:
        reply = sign_in(server, token)
        assert reply.status_code == status, reply.text
        if status == 303:
            cookie = reply.headers["set-cookie"].lower()
            assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    finally:
        server.stop()
