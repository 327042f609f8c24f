"""The dev PKI: made once, reused, regenerated when unusable, and good for a real mTLS handshake."""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import stat
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from releasecontrol_server.pki import (
    PkiPaths,
    ensure_dev_pki,
    issue_client_certificate,
    pki_paths,
    principal_from_certificate,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
DEV_SPIFFE = "spiffe://releasecontrol.dev/dev-operator"


def all_files(paths: PkiPaths) -> list[Path]:
    return [
        paths.ca_cert,
        paths.ca_key,
        paths.server_cert,
        paths.server_key,
        paths.client_cert,
        paths.client_key,
    ]


def snapshot(paths: PkiPaths) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in all_files(paths)}


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def self_signed(*, cn: str | None, uris: list[str] | None = None, der: bool = False) -> bytes:
    """A throwaway certificate with the given subject CN and URI SANs."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    cert = builder.sign(key, hashes.SHA256())
    encoding = serialization.Encoding.DER if der else serialization.Encoding.PEM
    return cert.public_bytes(encoding)


class TestEnsureDevPki:
    def test_first_run_creates_six_files_with_private_keys_0600(self, tmp_path: Path) -> None:
        """The first call writes the six contract files; keys are readable by the owner only."""
        paths = ensure_dev_pki(tmp_path / "pki")
        assert paths == pki_paths(tmp_path / "pki")
        names = sorted(p.name for p in (tmp_path / "pki").iterdir())
        assert names == sorted(
            ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem"]
        )
        for key in (paths.ca_key, paths.server_key, paths.client_key):
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
        for cert in (paths.ca_cert, paths.server_cert, paths.client_cert):
            assert stat.S_IMODE(cert.stat().st_mode) & 0o077 == 0o044

    def test_certificates_have_the_promised_shape(self, tmp_path: Path) -> None:
        """CA 10y with certSign, server 1y for localhost/127.0.0.1/::1, client 1y with SPIFFE ID."""
        paths = ensure_dev_pki(tmp_path, now=NOW)
        ca, server, client = (
            load_cert(p) for p in (paths.ca_cert, paths.server_cert, paths.client_cert)
        )
        for cert in (ca, server, client):
            assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
            assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
            assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
        assert ca.not_valid_after_utc - NOW == timedelta(days=3650)

        assert server.not_valid_after_utc - NOW == timedelta(days=365)
        san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == ["localhost"]
        assert set(san.get_values_for_type(x509.IPAddress)) == {
            ipaddress.ip_address("127.0.0.1"),
            ipaddress.ip_address("::1"),
        }
        server_eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(server_eku) == [ExtendedKeyUsageOID.SERVER_AUTH]

        client_eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(client_eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-operator"
        client_san = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert client_san.get_values_for_type(x509.UniformResourceIdentifier) == [DEV_SPIFFE]

    def test_second_run_reuses_files_untouched(self, tmp_path: Path) -> None:
        """While the PKI is usable, a second call rewrites nothing (same bytes, same mtimes)."""
        paths = ensure_dev_pki(tmp_path, now=NOW)
        before = snapshot(paths)
        # 31 days before the leaves expire is still comfortably usable.
        ensure_dev_pki(tmp_path, now=NOW + timedelta(days=334))
        assert snapshot(paths) == before

    @pytest.mark.parametrize(
        "damage",
        [
            pytest.param(lambda p: p.client_key.unlink(), id="missing-file"),
            pytest.param(lambda p: p.server_cert.write_bytes(b"not a certificate"), id="garbage"),
            pytest.param(
                lambda p: p.server_key.write_bytes(
                    ec.generate_private_key(ec.SECP256R1()).private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    )
                ),
                id="key-does-not-match-cert",
            ),
        ],
    )
    def test_unusable_pki_is_regenerated_whole(
        self, tmp_path: Path, damage: Callable[[PkiPaths], None]
    ) -> None:
        """A missing, unparsable or mismatched file makes all six files new."""
        paths = ensure_dev_pki(tmp_path, now=NOW)
        before = snapshot(paths)
        damage(paths)
        ensure_dev_pki(tmp_path, now=NOW)
        after = snapshot(paths)
        for name in before:
            assert after[name][0] != before[name][0], name

    def test_cert_from_another_ca_is_regenerated(self, tmp_path: Path) -> None:
        """Leaves that do not chain to ca.pem (a mixed set) make the whole PKI new."""
        paths = ensure_dev_pki(tmp_path / "a", now=NOW)
        other = ensure_dev_pki(tmp_path / "b", now=NOW)
        paths.client_cert.write_bytes(other.client_cert.read_bytes())
        paths.client_key.write_bytes(other.client_key.read_bytes())
        old_ca = paths.ca_cert.read_bytes()
        ensure_dev_pki(tmp_path / "a", now=NOW)
        assert paths.ca_cert.read_bytes() != old_ca
        load_cert(paths.client_cert).verify_directly_issued_by(load_cert(paths.ca_cert))

    def test_expiring_within_30_days_is_regenerated(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A leaf expiring within 30 days of `now` makes new files from that `now`, and logs why."""
        paths = ensure_dev_pki(tmp_path, now=NOW)
        before = snapshot(paths)
        later = NOW + timedelta(days=340)
        with caplog.at_level("INFO", logger="releasecontrol_server.pki"):
            ensure_dev_pki(tmp_path, now=later)
        after = snapshot(paths)
        assert all(after[name][0] != before[name][0] for name in before)
        assert load_cert(paths.server_cert).not_valid_after_utc == later + timedelta(days=365)
        assert "within 30 days" in caplog.text

    def test_other_client_principal_is_regenerated(self, tmp_path: Path) -> None:
        """Asking for another client principal replaces a PKI made for the old one."""
        paths = ensure_dev_pki(tmp_path, now=NOW)
        ensure_dev_pki(tmp_path, client_principal="ops/alice", trust_domain="corp.test", now=NOW)
        assert principal_from_certificate(paths.client_cert.read_bytes()) == (
            "spiffe://corp.test/ops/alice"
        )

    @pytest.mark.parametrize(
        ("principal", "trust_domain"),
        [
            pytest.param("", "releasecontrol.dev", id="empty-principal"),
            pytest.param("a/../b", "releasecontrol.dev", id="dot-dot"),
            pytest.param("alice bob", "releasecontrol.dev", id="space"),
            pytest.param("alice", "Bad_Domain.", id="bad-trust-domain"),
        ],
    )
    def test_malformed_identity_is_refused(
        self, tmp_path: Path, principal: str, trust_domain: str
    ) -> None:
        """A principal or trust domain unfit for a SPIFFE ID raises ValueError, writing nothing."""
        with pytest.raises(ValueError):
            ensure_dev_pki(tmp_path / "pki", client_principal=principal, trust_domain=trust_domain)
        assert not (tmp_path / "pki").exists()

    def test_interrupted_write_leaves_no_partial_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If the final rename fails, the old file stays as it was and no temp file is left."""
        paths = ensure_dev_pki(tmp_path, now=NOW)
        before = snapshot(paths)
        paths.server_cert.write_bytes(b"garbage")  # forces a regeneration
        garbage = paths.server_cert.read_bytes()

        def fail(src: str, dst: str) -> None:
            raise OSError("disk full")

        monkeypatch.setattr(os, "replace", fail)
        with pytest.raises(OSError, match="disk full"):
            ensure_dev_pki(tmp_path, now=NOW)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)
        assert paths.server_cert.read_bytes() == garbage
        assert paths.ca_key.read_bytes() == before["ca-key.pem"][0]


def handshake(
    server: PkiPaths,
    client_ca: Path,
    client_cert: Path,
    client_key: Path,
    server_hostname: str = "localhost",
) -> dict[str, object]:
    """One TLS connection on 127.0.0.1: server requires a client certificate from its CA."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    server_ctx.load_cert_chain(server.server_cert, server.server_key)
    server_ctx.load_verify_locations(server.ca_cert)
    server_ctx.verify_mode = ssl.CERT_REQUIRED

    client_ctx = ssl.create_default_context(cafile=str(client_ca))
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    client_ctx.load_cert_chain(client_cert, client_key)

    result: dict[str, object] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(10)
                    with server_ctx.wrap_socket(conn, server_side=True) as tls:
                        peer = tls.getpeercert(binary_form=True)
                        assert peer is not None
                        result["principal"] = principal_from_certificate(peer)
                        tls.sendall(b"ok")
            except Exception as exc:
                result["server_error"] = exc

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
            ):
                result["reply"] = tls.recv(2)
        except (ssl.SSLError, OSError) as exc:
            result["client_error"] = exc
        thread.join(10)
        assert not thread.is_alive()
    return result


class TestHandshake:
    @pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
    def test_dev_client_and_server_complete_mtls(self, tmp_path: Path, hostname: str) -> None:
        """The dev client certificate and server certificate complete a strict mTLS handshake."""
        paths = ensure_dev_pki(tmp_path)
        result = handshake(paths, paths.ca_cert, paths.client_cert, paths.client_key, hostname)
        assert result.get("reply") == b"ok", result
        assert result["principal"] == DEV_SPIFFE

    def test_issued_client_certificate_is_a_second_identity(self, tmp_path: Path) -> None:
        """A client certificate issued from the dev CA is accepted and names its own principal."""
        paths = ensure_dev_pki(tmp_path / "pki")
        cert, key = issue_client_certificate(paths, "ops/bob", tmp_path / "bob")
        assert (cert.name, key.name) == ("client-ops_bob.pem", "client-ops_bob-key.pem")
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        result = handshake(paths, paths.ca_cert, cert, key)
        assert result.get("reply") == b"ok", result
        assert result["principal"] == "spiffe://releasecontrol.dev/ops/bob"

    def test_client_certificate_from_another_ca_is_refused(self, tmp_path: Path) -> None:
        """The server refuses a client certificate that does not chain to the dev CA."""
        paths = ensure_dev_pki(tmp_path / "ours")
        stranger = ensure_dev_pki(tmp_path / "theirs")
        result = handshake(paths, paths.ca_cert, stranger.client_cert, stranger.client_key)
        assert isinstance(result.get("server_error"), ssl.SSLError), result
        assert "principal" not in result
        assert result.get("reply") != b"ok"

    def test_server_from_another_ca_is_refused_by_the_client(self, tmp_path: Path) -> None:
        """A client trusting only its own dev CA refuses a server certificate from another."""
        paths = ensure_dev_pki(tmp_path / "ours")
        stranger = ensure_dev_pki(tmp_path / "theirs")
        result = handshake(stranger, paths.ca_cert, paths.client_cert, paths.client_key)
        assert isinstance(result.get("client_error"), ssl.SSLCertVerificationError), result


class TestPrincipalFromCertificate:
    @pytest.mark.parametrize(
        ("kwargs", "expected"),
        [
            pytest.param(
                {"cn": "svc", "uris": ["spiffe://td/svc"]}, "spiffe://td/svc", id="spiffe-pem"
            ),
            pytest.param(
                {"cn": "svc", "uris": ["spiffe://td/svc"], "der": True},
                "spiffe://td/svc",
                id="spiffe-der",
            ),
            pytest.param({"cn": "alice"}, "alice", id="cn-only"),
            pytest.param(
                {"cn": "alice", "uris": ["https://a.example/"]}, "alice", id="non-spiffe-uri"
            ),
        ],
    )
    def test_identity(self, kwargs: dict[str, object], expected: str) -> None:
        """The one SPIFFE URI SAN is the identity; without one, the subject CN."""
        assert principal_from_certificate(self_signed(**kwargs)) == expected  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "data",
        [
            pytest.param(
                self_signed(cn="x", uris=["spiffe://td/a", "spiffe://td/b"]), id="two-spiffe-ids"
            ),
            pytest.param(
                self_signed(cn="x", uris=["spiffe://td/a", "https://a.example/"]),
                id="spiffe-beside-other-uri",
            ),
            pytest.param(self_signed(cn=None), id="no-cn-no-san"),
            pytest.param(
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", id="bad-pem"
            ),
            pytest.param(b"\x30\x03\x02\x01\x01", id="bad-der"),
        ],
    )
    def test_no_single_identity_raises(self, data: bytes) -> None:
        """An ambiguous, missing or unparsable identity raises ValueError rather than guessing."""
        with pytest.raises(ValueError):
            principal_from_certificate(data)

    def test_dev_client_certificate(self, tmp_path: Path) -> None:
        """The dev client.pem names the default dev operator's SPIFFE ID."""
        paths = ensure_dev_pki(tmp_path)
        assert principal_from_certificate(paths.client_cert.read_bytes()) == DEV_SPIFFE
