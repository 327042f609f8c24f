"""Server TLS credentials that follow their files: certificates rotate without a restart.

gRPC asks for the certificate configuration on every new handshake; we answer
with new material only when one of the files changed and all of them still
parse, so a half-copied rotation keeps the old certificates serving.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from releasecontrol.errors import ConfigError

log = logging.getLogger(__name__)

_Stamp = tuple[tuple[int, int, int], ...]


def _stamp(paths: tuple[Path, ...]) -> _Stamp:
    stats = [os.stat(p) for p in paths]
    return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)


def _load(cert: Path, key: Path, ca: Path) -> tuple[bytes, bytes, bytes]:
    """The three PEM files, checked to parse; raises ValueError or OSError."""
    cert_pem, key_pem, ca_pem = cert.read_bytes(), key.read_bytes(), ca.read_bytes()
    x509.load_pem_x509_certificates(cert_pem)
    load_pem_private_key(key_pem, password=None)
    x509.load_pem_x509_certificates(ca_pem)
    return cert_pem, key_pem, ca_pem


class ReloadingServerCredentials:
    """Builds `grpc.ServerCredentials` that re-read the files when they change."""

    def __init__(self, cert: Path, key: Path, client_ca: Path, *, require_client_auth: bool):
        self._paths = (cert, key, client_ca)
        self._require_client_auth = require_client_auth
        try:
            self._stamp = _stamp(self._paths)
            material = _load(*self._paths)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"the TLS files ({cert}, {key}, {client_ca}) cannot be used: {exc}; run "
                "`releasectl dev` to make dev certificates, or point tls_cert_path, "
                "tls_key_path and tls_client_ca_path at yours"
            ) from exc
        self._initial = self._configuration(*material)

    @staticmethod
    def _configuration(cert: bytes, key: bytes, ca: bytes) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC on each new connection: None keeps the current material.
        try:
            stamp = _stamp(self._paths)
            if stamp == self._stamp:
                return None
            material = _load(*self._paths)
        except (OSError, ValueError) as exc:
            log.warning("tls files changed but cannot be used yet; keeping the old ones: %s", exc)
            return None
        self._stamp = stamp
        log.info("tls files changed; new connections use the new certificates")
        return self._configuration(*material)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self._fetch,
            require_client_authentication=self._require_client_auth,
        )
