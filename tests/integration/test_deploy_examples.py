"""The deploy/ examples work: each production config, filled with fresh material, passes doctor."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import make_feature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from releasecontrol.client import ConnectionSettings, ReleaseControlClient
from releasecontrol.fetch import Fetcher
from releasecontrol.host import FeatureHost
from releasecontrol.manifest import load_feature_folder
from releasecontrol.root import Root
from releasecontrol.trust import SigningKey, TrustStore
from releasecontrol_server.auth.dfs import issue_dfs_token
from releasecontrol_server.auth.tokens import create_token
from releasecontrol_server.config import load_config
from releasecontrol_server.pki import PkiPaths, ensure_dev_pki, issue_client_certificate

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MODES = ("rpc-token", "trusted-cluster", "dfs")
RELEASECTL = Path(sys.executable).with_name("releasectl")
START_TIMEOUT_SECONDS = 30.0


def isolated_env() -> dict[str, str]:
    """This process's environment without any setting a developer's shell could leak in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RELEASECONTROL_", "FEATURE_")) and k != "NODE_ENV"
    }
    env["RELEASECONTROL_LOG_LEVEL"] = "INFO"
    return env


def free_port() -> int:
    # The origin's public URL must name its port before the server starts, so
    # port 0 will not do here; the tiny race with another process is accepted.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_toml(path: Path, settings: Mapping[str, object]) -> Path:
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items()))
    return path


def install(source: Path, target: object, *, mode: int = 0o600) -> None:
    path = Path(str(target))
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, path)
    path.chmod(mode)


@dataclass
class Deployment:
    """An example config filled with fresh material under `root`, and a caller's credentials."""

    root: Path
    mode: str
    settings: dict[str, Any]
    pki: PkiPaths
    client_cert: Path
    client_key: Path
    token: str | None

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def home(self) -> Path:
        return Path(self.settings["home"])

    def write(self, name: str = "config.toml", **changes: Any) -> Path:
        settings = {**self.settings, **changes}
        return write_toml(self.root / name, {k: v for k, v in settings.items() if v is not None})

    def client(self, grpc: str) -> ReleaseControlClient:
        return ReleaseControlClient(
            ConnectionSettings(
                target=grpc,
                ca_pem=self.pki.ca_cert.read_bytes(),
                cert_pem=self.client_cert.read_bytes(),
                key_pem=self.client_key.read_bytes(),
                token=self.token,
            )
        )


def make_keys(settings: Mapping[str, Any], offline: Path) -> None:
    """The key ceremony of deploy/README.md: an online key where signing_key_paths says, a
    root key kept apart (`offline`), root 1 signed by it listing the online key in
    root_dir, and the trust file naming the root key (what hosts pin)."""
    online = SigningKey.generate()
    [key_path] = settings["signing_key_paths"]
    Path(key_path).parent.mkdir(parents=True, exist_ok=True)
    online.save(Path(key_path))
    root_key = SigningKey.generate()
    offline.mkdir(parents=True)
    root_key.save(offline / "root-key.pem")
    now = datetime.now(UTC).replace(microsecond=0)
    root = Root.create(
        version=1,
        root_keys=[root_key.trusted_key()],
        index_keys=[online.trusted_key()],
        issued_at=now,
        expires_at=now + timedelta(days=365),
    )
    root_dir = Path(settings["root_dir"])
    root_dir.mkdir(parents=True)
    (root_dir / "1.json").write_bytes(root.sign([root_key]).to_bytes())
    trust = TrustStore.for_keys([root_key.trusted_key()])
    Path(settings["trust_public_keys_path"]).write_text(trust.to_json())


def fill(mode: str, root: Path) -> Deployment:
    """deploy/config/production-<mode>.toml with /etc and /var under `root`, loopback
    ports, and every file it names made fresh: certificates, keys, the mode's material."""
    text = (DEPLOY / "config" / f"production-{mode}.toml").read_text()
    text = text.replace("/etc/releasecontrol", str(root / "etc"))
    text = text.replace("/var/lib/releasecontrol", str(root / "var"))
    settings: dict[str, Any] = tomllib.loads(text)
    port = free_port()
    settings.update(
        grpc_listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        origin_http_listen=f"127.0.0.1:{port}",
        origin_public_url=f"http://127.0.0.1:{port}/",
    )
    # The state directory exists before the server starts (systemd's StateDirectory,
    # the Kubernetes volume); the server does not make it.
    Path(settings["home"]).mkdir(parents=True, mode=0o700)
    pki = ensure_dev_pki(root / "pki")
    install(pki.server_cert, settings["tls_cert_path"], mode=0o644)
    install(pki.server_key, settings["tls_key_path"])
    install(pki.ca_cert, settings["tls_client_ca_path"], mode=0o644)
    make_keys(settings, root / "offline")

    client_cert, client_key, token = pki.client_cert, pki.client_key, None
    if mode == "rpc-token":
        token = create_token(Path(settings["token_store_path"]), "ci-release-bot", ["releaser"])
    elif mode == "trusted-cluster":
        install(pki.ca_cert, settings["cluster_ca_path"], mode=0o644)
        allow = Path(settings["cluster_allowlist_path"])
        allow.parent.mkdir(parents=True, exist_ok=True)
        allow.write_text('[allow."spiffe://releasecontrol.dev/deployer"]\nroles = ["releaser"]\n')
        client_cert, client_key = issue_client_certificate(pki, "deployer", root / "clients")
    else:
        issuer = Ed25519PrivateKey.generate()
        public = Path(settings["dfs_public_key_path"])
        public.parent.mkdir(parents=True, exist_ok=True)
        public.write_bytes(
            issuer.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        )
        token = issue_dfs_token(
            issuer,
            issuer=settings["dfs_issuer"],
            audience=settings["dfs_audience"],
            subject="ci-release-bot",
            roles=["releaser"],
        )
    deployment = Deployment(root, mode, settings, pki, client_cert, client_key, token)
    deployment.write()
    return deployment


@contextmanager
def running(deployment: Deployment) -> Iterator[dict[str, Any]]:
    """`python -m releasecontrol_server.main --config FILE` (no --dev); yields its endpoints."""
    endpoints_path = deployment.home / "run" / "endpoints.json"
    log_path = deployment.root / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "releasecontrol_server.main",
                "--config",
                str(deployment.config_path),
            ],
            env=isolated_env(),
            cwd=deployment.root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                endpoints = json.loads(endpoints_path.read_bytes())
            except (OSError, ValueError):
                endpoints = {}
            if endpoints.get("pid") == process.pid:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not start:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield endpoints
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def publish(deployment: Deployment, grpc: str, feature_id: str, **extra: Any) -> None:
    folder = make_feature(deployment.root / "src" / feature_id, feature_id, "1.0.0", extra=extra)
    with deployment.client(grpc) as client:
        client.publish(load_feature_folder(folder, feature_id=feature_id))


def doctor(config: Path, cwd: Path) -> tuple[int, dict[str, str], str]:
    """`releasectl doctor --config FILE --output json`: exit code, name -> status, raw output."""
    result = subprocess.run(
        [str(RELEASECTL), "doctor", "--config", str(config), "--output", "json"],
        env=isolated_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(result.stdout)
    return (
        result.returncode,
        {c["name"]: c["status"] for c in report["checks"]},
        result.stdout + result.stderr,
    )


def probe_script(
    grpc: str,
    probe_dir: Path,
    deployment: Path = DEPLOY / "kubernetes" / "deployment.yaml",
    probe: str = "readinessProbe",
) -> list[str]:
    """The Deployment's health probe (`probe`), pointed at this server and these files: the
    script and its arguments, for `python -c`."""
    import yaml  # PyYAML comes with the dev dependencies (moto)

    documents = list(yaml.safe_load_all(deployment.read_text()))
    [container] = documents[0]["spec"]["template"]["spec"]["containers"]
    command = container[probe]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    script = str(command[2])
    for old, new in (
        ("/etc/releasecontrol/probe/", f"{probe_dir}/"),
        ('"127.0.0.1:50051"', json.dumps(grpc)),
        # The dev server certificate's SAN; a real one carries the Service name.
        (
            '"grpc.ssl_target_name_override", "releasecontrol"',
            '"grpc.ssl_target_name_override", "localhost"',
        ),
    ):
        assert old in script, old
        script = script.replace(old, new)
    return [script, *command[3:]]


class TestExampleConfigs:
    @pytest.mark.parametrize("mode", MODES)
    def test_the_example_starts_and_doctor_passes_every_item(
        self, tmp_path: Path, mode: str
    ) -> None:
        """Filled example: the server starts, a releaser publishes, every doctor item is PASS."""
        deployment = fill(mode, tmp_path)
        with running(deployment) as endpoints:
            publish(deployment, endpoints["grpc"], "checkout")
            code, statuses, output = doctor(deployment.config_path, tmp_path)
            assert code == 0, output
            assert set(statuses.values()) == {"PASS"}, output
            assert len(statuses) == 11  # database included

            # A production host (no dev keys) pinning the trust file, the root key alone,
            # follows root 1 from the origin to the online key and loads the feature.
            trust = TrustStore.from_file(Path(deployment.settings["trust_public_keys_path"]))
            online = SigningKey.load(Path(deployment.settings["signing_key_paths"][0]))
            assert online.keyid not in trust.keys
            with Fetcher() as fetcher:
                host = FeatureHost(
                    deployment.settings["origin_public_url"] + "remote-index.json",
                    trust,
                    state_dir=tmp_path / "host",
                    fetcher=fetcher,
                )
                report = host.refresh()
            assert report.ok, report.refused
            assert (report.loaded, report.root_version) == ({"checkout": "1.0.0"}, 1)
            assert host.features["checkout"].keyids == {online.keyid}

            probe = tmp_path / "probe"
            probe.mkdir()
            for name, source in (
                ("ca.pem", deployment.pki.ca_cert),
                ("client.pem", deployment.pki.client_cert),
                ("client-key.pem", deployment.pki.client_key),
            ):
                install(source, probe / name)
            result = subprocess.run(
                [sys.executable, "-c", *probe_script(endpoints["grpc"], probe)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert result.returncode == 0, result.stderr

    def test_a_bad_configuration_fails_exactly_its_broken_items(self, tmp_path: Path) -> None:
        """Dev keys on, no auth mode, a cert expiring in 10 days, a signing key root 1 does not
        list and overlapping routes: doctor exits 1 with exactly those five items FAIL."""
        deployment = fill("rpc-token", tmp_path)
        expiring = ensure_dev_pki(tmp_path / "old-pki", now=datetime.now(UTC) - timedelta(days=355))
        stranger = tmp_path / "etc" / "keys" / "stranger-key.pem"
        SigningKey.generate().save(stranger)
        bad = deployment.write(
            "bad.toml",
            allow_insecure_dev_keys=True,
            auth_mode=None,
            tls_cert_path=str(expiring.server_cert),
            tls_key_path=str(expiring.server_key),
            signing_key_paths=[str(stranger)],
        )
        with running(deployment) as endpoints:
            publish(deployment, endpoints["grpc"], "checkout")
            publish(deployment, endpoints["grpc"], "checkout-extras", routes=["/checkout/*"])
            code, statuses, output = doctor(bad, tmp_path)
        assert code == 1, output
        failed = {name for name, status in statuses.items() if status == "FAIL"}
        assert failed == {"insecure-dev-keys", "auth-mode", "tls", "signing-keys", "lint-routes"}
        assert {s for n, s in statuses.items() if n not in failed} == {"PASS"}, output
        assert "in 10 day(s), within 30 days" in output
        assert "stranger-key.pem" in output and "not an online key of root 1" in output
        assert "'/checkout' and feature 'checkout-extras' route '/checkout/*' overlap" in output

        # The server itself refuses that configuration, naming the setting.
        refused = subprocess.run(
            [sys.executable, "-m", "releasecontrol_server.main", "--config", str(bad)],
            env=isolated_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 1
        assert f"allow_insecure_dev_keys in {bad} is on" in refused.stderr


class TestDeployFiles:
    def test_every_example_setting_says_why(self) -> None:
        """Each `key = value` line in the example configs has a comment right above it (or a
        setting in the same commented group)."""
        for path in sorted((DEPLOY / "config").glob("*.toml")):
            lines = path.read_text().splitlines()
            for number, line in enumerate(lines):
                if re.match(r"^[a-z_0-9]+ = ", line):
                    before = lines[:number]
                    while before and re.match(r"^[a-z_0-9]+ = ", before[-1]):
                        before.pop()
                    assert before and before[-1].startswith("#"), f"{path.name}:{number + 1}"

    @pytest.mark.parametrize("mode", MODES)
    def test_the_examples_load_as_production_in_their_mode(self, mode: str) -> None:
        """The files load as they are: production, the mode, paths under /etc and /var/lib."""
        config = load_config({}, DEPLOY / "config" / f"production-{mode}.toml")
        assert (config.env, config.auth_mode) == ("production", mode)
        assert config.production_problems() == []
        assert str(config.tls_cert_path).startswith("/etc/releasecontrol/")
        assert str(config.database_path).startswith("/var/lib/releasecontrol/")
        # The roots are the operator's (signed offline), beside the keys, not server state.
        assert str(config.root_dir) == "/etc/releasecontrol/roots"

    def test_kubernetes_mounts_every_path_its_config_names(self) -> None:
        """Every file the ConfigMap's config names lies under a volume the Deployment mounts."""
        yaml = pytest.importorskip("yaml")
        kube = DEPLOY / "kubernetes"
        configmap = yaml.safe_load((kube / "configmap.yaml").read_text())
        deployment = yaml.safe_load((kube / "deployment.yaml").read_text())
        config = tomllib.loads(configmap["data"]["config.toml"])
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        paths = [v for k, v in config.items() if k.endswith(("_path", "_dir")) or k == "home"]
        paths += config["signing_key_paths"]
        for path in paths:
            assert any(path == m or path.startswith(m + "/") for m in mounts), path
        assert container["args"] == ["--config", "/etc/releasecontrol/config.toml"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["exec"]["command"][:2] == ["python", "-c"]
        secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        secrets |= {
            s["secret"]["name"]
            for v in pod["volumes"]
            if "projected" in v
            for s in v["projected"]["sources"]
        }
        assert secrets == {
            "releasecontrol-tls",
            "releasecontrol-signing-key",
            "releasecontrol-trust",
            "releasecontrol-tokens",
            "releasecontrol-probe-tls",
        }
        # The roots come from a ConfigMap mounted as a folder (no subPath), so a new root
        # version reaches the running pod.
        assert config["root_dir"] == "/etc/releasecontrol/roots"
        [roots] = [
            v
            for v in pod["volumes"]
            if v.get("configMap", {}).get("name") == "releasecontrol-roots"
        ]
        [mount] = [m for m in container["volumeMounts"] if m["name"] == roots["name"]]
        assert mount["mountPath"] == config["root_dir"] and "subPath" not in mount
        assert "kubectl create configmap releasecontrol-roots" in (DEPLOY / "README.md").read_text()

    @pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
    def test_the_kustomization_renders(self) -> None:
        """`kubectl kustomize deploy/kubernetes` renders all four objects."""
        result = subprocess.run(
            ["kubectl", "kustomize", str(DEPLOY / "kubernetes")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        kinds = re.findall(r"^kind: (\w+)$", result.stdout, re.MULTILINE)
        assert sorted(kinds) == ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Service"]

    @pytest.mark.skipif(
        shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
    )
    def test_the_systemd_unit_verifies_and_is_hardened(self, tmp_path: Path) -> None:
        """The unit has no unknown directive and systemd rates its exposure below 2 (OK)."""
        unit = (DEPLOY / "systemd" / "releasecontrol.service").read_text()
        for directive in (
            "ProtectSystem=strict",
            "ReadWritePaths=/var/lib/releasecontrol",
            "NoNewPrivileges=yes",
            "Restart=on-failure",
            "User=releasecontrol",
        ):
            assert f"\n{directive}\n" in unit
        # verify checks that ExecStart exists: point it at this environment's server.
        local = tmp_path / "releasecontrol.service"
        local.write_text(
            unit.replace(
                "/opt/releasecontrol/venv/bin/releasecontrol-server",
                str(Path(sys.executable).with_name("releasecontrol-server")),
            )
        )
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60
        )
        assert verify.returncode == 0 and verify.stderr == "", verify.stderr
        security = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", str(local)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
        assert found is not None, security.stdout + security.stderr
        assert float(found.group(1)) < 2.0

    def test_the_containerfile_runs_the_server_as_non_root(self) -> None:
        """No engine here to build it: check it is python:3.11-slim, non-root, --config'd."""
        text = (DEPLOY / "container" / "Containerfile").read_text()
        assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == ["python:3.11-slim"] * 2
        assert "\nUSER 10001:10001\n" in text
        assert 'ENTRYPOINT ["releasecontrol-server"]' in text
        assert 'CMD ["--config", "/etc/releasecontrol/config.toml"]' in text
        assert "Docker is not available" in (DEPLOY / "README.md").read_text() or (
            "No container engine is available" in (DEPLOY / "README.md").read_text()
        )
