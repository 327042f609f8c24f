"""Certificates rotate under a running server: new connections use the new files."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from conftest import RunningServer

from releasecontrol import errors
from releasecontrol.client import ReleaseControlClient, resolve_connection
from releasecontrol_server.pki import ensure_dev_pki

pytestmark = pytest.mark.integration


def client_for(server: RunningServer, pki: Path) -> ReleaseControlClient:
    settings = resolve_connection(server=server.grpc, home=server.home, environ={})
    return ReleaseControlClient(
        dataclasses.replace(
            settings,
            ca_pem=(pki / "ca.pem").read_bytes(),
            cert_pem=(pki / "client.pem").read_bytes(),
            key_pem=(pki / "client-key.pem").read_bytes(),
        ),
        timeout_seconds=5,
    )


def test_replaced_certificate_files_are_used_without_a_restart(
    server: RunningServer, tmp_path: Path
) -> None:
    """After the server's cert, key and client CA are replaced by another CA's, only clients of
    the new CA get in, and the process never restarted."""
    new_pki = tmp_path / "new-pki"
    ensure_dev_pki(new_pki)
    old_pki = server.home / "pki"
    old_client = client_for(server, old_pki)
    assert old_client.get_status().global_sequence == 0

    staged = tmp_path / "staged"
    staged.mkdir()
    for name in ("server.pem", "server-key.pem", "ca.pem"):
        shutil.copy(new_pki / name, staged / name)
    for name in ("server.pem", "server-key.pem", "ca.pem"):
        (staged / name).replace(old_pki / name)  # each file swapped atomically

    new_client = client_for(server, new_pki)
    assert new_client.get_status().global_sequence == 0
    with pytest.raises(errors.Unavailable):
        client_for(server, old_pki).get_status()
    assert server.process is not None and server.process.poll() is None
    for client in (old_client, new_client):
        client.close()
