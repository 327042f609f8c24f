"""The development PKI that `releasectl dev` makes: a CA, a server and a client certificate.

Made once and reused: `ensure_dev_pki` keeps the six files untouched while they
are whole, belong together and stay valid for 30 more days, and otherwise
replaces all of them. Every file is written atomically (temporary file in the
same directory, fsync, rename), private keys with mode 0600, so an interrupted
run leaves either the old file or the new one, never half of one; a set mixed
from two runs fails the checks and is regenerated.

Keys are ECDSA P-256, signatures SHA-256. The certificates are what gRPC and
Python's `ssl` accept with strict X.509 checks: the CA has critical
BasicConstraints and KeyUsage, leaves carry key identifiers, an EKU and SANs
(server: DNS localhost, IP 127.0.0.1 and ::1; client:
`spiffe://<trust_domain>/<principal>`, the identity `trusted-cluster` auth reads).

Development only: the CA key sits beside the certificates, unencrypted.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from releasecontrol.files import atomic_write

logger = logging.getLogger(__name__)

CA_VALIDITY = timedelta(days=3650)
LEAF_VALIDITY = timedelta(days=365)
RENEW_BEFORE = timedelta(days=30)
# Backdate notBefore a little so a peer whose clock runs slightly behind still accepts.
_CLOCK_SKEW = timedelta(minutes=5)

DEFAULT_CLIENT_PRINCIPAL = "dev-operator"
DEFAULT_TRUST_DOMAIN = "releasecontrol.dev"

_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,253}[a-z0-9])?$")
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
_SPIFFE_PREFIX = "spiffe://"


@dataclass(frozen=True)
class PkiPaths:
    """Where the dev PKI's six files live inside one directory."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def pki_paths(pki_dir: Path) -> PkiPaths:
    """The file names of the dev PKI in `pki_dir` (nothing is read or written)."""
    return PkiPaths(
        directory=pki_dir,
        ca_cert=pki_dir / "ca.pem",
        ca_key=pki_dir / "ca-key.pem",
        server_cert=pki_dir / "server.pem",
        server_key=pki_dir / "server-key.pem",
        client_cert=pki_dir / "client.pem",
        client_key=pki_dir / "client-key.pem",
    )


def spiffe_id(trust_domain: str, principal: str) -> str:
    """`spiffe://<trust_domain>/<principal>`; raises ValueError when either part is malformed."""
    if not _TRUST_DOMAIN.match(trust_domain):
        raise ValueError(
            f"trust domain {trust_domain!r} is not valid: use lowercase letters, digits, "
            "'.', '-' and '_', e.g. 'releasecontrol.dev'"
        )
    segments = principal.split("/")
    if not all(_PATH_SEGMENT.match(s) and s not in (".", "..") for s in segments):
        raise ValueError(
            f"principal {principal!r} is not valid: use letters, digits, '.', '-' and '_', "
            "with '/' between parts, e.g. 'ops/alice'"
        )
    if len(principal) > 64:
        # It is also the certificate's CN, which X.509 caps at 64 characters.
        raise ValueError(f"principal {principal!r} is longer than 64 characters")
    return f"{_SPIFFE_PREFIX}{trust_domain}/{principal}"


def ensure_dev_pki(
    pki_dir: Path,
    *,
    client_principal: str = DEFAULT_CLIENT_PRINCIPAL,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    now: datetime | None = None,
) -> PkiPaths:
    """Make the dev PKI in `pki_dir` on first use; reuse it, files untouched, after.

    Reused while all six files exist and parse, each key matches its
    certificate, both leaves chain to the CA, the client certificate is for
    `client_principal` in `trust_domain`, and nothing is outside its validity
    within 30 days of `now` (default: the current time; naive means UTC).
    Otherwise all six are regenerated, and the reason is logged. Raises
    ValueError for a malformed principal or trust domain, OSError when the
    directory cannot be written.
    """
    now = _utc(now)
    expected_client = spiffe_id(trust_domain, client_principal)
    paths = pki_paths(pki_dir)
    problem = _reuse_problem(paths, expected_client, now)
    if problem is None:
        return paths
    logger.info(
        "dev PKI: writing a new CA, server and client certificate in %s (%s)", pki_dir, problem
    )
    _generate(paths, client_principal, expected_client, now)
    return paths


def issue_client_certificate(
    paths: PkiPaths,
    principal: str,
    out_dir: Path,
    *,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    now: datetime | None = None,
    validity: timedelta = LEAF_VALIDITY,
) -> tuple[Path, Path]:
    """Issue another client certificate from the dev CA in `paths`; return (cert, key) paths.

    The files are `client-<principal>.pem` and `client-<principal>-key.pem` in
    `out_dir` ('/' in the principal becomes '_'), with the same SANs and EKU as
    the dev client certificate. Raises ValueError for a malformed principal or a
    CA that does not parse, OSError when the files cannot be read or written.
    """
    now = _utc(now)
    uri = spiffe_id(trust_domain, principal)
    ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    ca_key = _load_key(paths.ca_key.read_bytes())
    key = _new_key()
    cert = _client_certificate(key, principal, uri, ca_cert, ca_key, now, validity)
    slug = principal.replace("/", "_")
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = out_dir / f"client-{slug}.pem", out_dir / f"client-{slug}-key.pem"
    atomic_write(key_path, _key_pem(key), mode=0o600)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def principal_from_certificate(pem_or_der: bytes) -> str:
    """The identity a certificate names: its SPIFFE ID, else its subject CN.

    The SPIFFE ID is used when the certificate's one URI SAN starts with
    `spiffe://`. Raises ValueError when the bytes are not a certificate, when the
    URI SANs are ambiguous (a SPIFFE ID beside other URIs), or when there is no
    SPIFFE ID and no single non-empty CN.
    """
    data = bytes(pem_or_der)
    if data.lstrip().startswith(b"-----BEGIN"):
        cert = x509.load_pem_x509_certificate(data)
    else:
        cert = x509.load_der_x509_certificate(data)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    spiffe = [uri for uri in uris if uri.startswith(_SPIFFE_PREFIX)]
    if spiffe:
        # An X.509-SVID carries exactly one URI SAN; anything else could name two callers.
        if len(uris) != 1:
            raise ValueError(
                f"certificate has {len(uris)} URI SANs including a SPIFFE ID; "
                "an identity certificate must carry exactly one"
            )
        return spiffe[0]
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str) or not names[0].value:
        raise ValueError("certificate has no SPIFFE ID and no single subject common name")
    return names[0].value


# --- checking an existing PKI ----------------------------------------------------------------


def _reuse_problem(paths: PkiPaths, expected_client: str, now: datetime) -> str | None:
    """Why the PKI in `paths` cannot be reused, or None when it can."""
    files = (
        paths.ca_cert,
        paths.ca_key,
        paths.server_cert,
        paths.server_key,
        paths.client_cert,
        paths.client_key,
    )
    missing = [path.name for path in files if not path.is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    try:
        ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        ca_key = _load_key(paths.ca_key.read_bytes())
        server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
        server_key = _load_key(paths.server_key.read_bytes())
        client = x509.load_pem_x509_certificate(paths.client_cert.read_bytes())
        client_key = _load_key(paths.client_key.read_bytes())
    except (OSError, ValueError) as exc:
        return f"a file does not parse: {exc}"
    pairs = ((paths.ca_cert, ca, ca_key), (paths.server_cert, server, server_key))
    for cert_path, cert, key in (*pairs, (paths.client_cert, client, client_key)):
        if _spki(cert.public_key()) != _spki(key.public_key()):
            return f"{cert_path.name} does not match its key"
    for cert_path, cert in (
        (paths.ca_cert, ca),
        (paths.server_cert, server),
        (paths.client_cert, client),
    ):
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as exc:
            return f"{cert_path.name} is not signed by ca.pem ({exc or type(exc).__name__})"
        if cert.not_valid_before_utc > now:
            return f"{cert_path.name} is not valid until {cert.not_valid_before_utc:%Y-%m-%d}"
        if cert.not_valid_after_utc - now < RENEW_BEFORE:
            return f"{cert_path.name} expires {cert.not_valid_after_utc:%Y-%m-%d}, within 30 days"
    try:
        principal = principal_from_certificate(paths.client_cert.read_bytes())
    except ValueError as exc:
        return f"client.pem names no identity ({exc})"
    if principal != expected_client:
        return f"client.pem is for {principal}, not {expected_client}"
    return None


# --- making one ----------------------------------------------------------------------------------


def _generate(paths: PkiPaths, principal: str, client_uri: str, now: datetime) -> None:
    ca_key, server_key, client_key = _new_key(), _new_key(), _new_key()
    ca = _ca_certificate(ca_key, now)
    server = _server_certificate(server_key, ca, ca_key, now)
    client = _client_certificate(client_key, principal, client_uri, ca, ca_key, now, LEAF_VALIDITY)

    paths.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = serialization.Encoding.PEM
    atomic_write(paths.ca_key, _key_pem(ca_key), mode=0o600)
    atomic_write(paths.server_key, _key_pem(server_key), mode=0o600)
    atomic_write(paths.client_key, _key_pem(client_key), mode=0o600)
    atomic_write(paths.server_cert, server.public_bytes(pem))
    atomic_write(paths.client_cert, client.public_bytes(pem))
    # Each file is atomic but the set is not: a run interrupted between files leaves
    # keys that do not match their certificates, which the next run regenerates.
    atomic_write(paths.ca_cert, ca.public_bytes(pem))


def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: datetime) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ReleaseControl (development)"),
            x509.NameAttribute(NameOID.COMMON_NAME, "ReleaseControl dev CA"),
        ]
    )
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: datetime,
) -> x509.Certificate:
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    return _leaf(
        key,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]),
        san,
        ExtendedKeyUsageOID.SERVER_AUTH,
        ca,
        ca_key,
        now,
        LEAF_VALIDITY,
    )


def _client_certificate(
    key: ec.EllipticCurvePrivateKey,
    principal: str,
    uri: str,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: datetime,
    validity: timedelta,
) -> x509.Certificate:
    return _leaf(
        key,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, principal)]),
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ca,
        ca_key,
        now,
        validity,
    )


def _leaf(
    key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    san: x509.SubjectAlternativeName,
    usage: x509.ObjectIdentifier,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: datetime,
    validity: timedelta,
) -> x509.Certificate:
    public = key.public_key()
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(san, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _spki(key: object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return b""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("not an ECDSA P-256 private key")
    return key


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
