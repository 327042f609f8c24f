"""Wiring: config -> store -> signer -> origin -> servers. The `releasecontrol-server` process.

`releasectl dev` runs this with `--dev`, which first makes the dev PKI, the dev
root and signing keys and the roots (on first run; reused after).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import fcntl
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from releasecontrol.errors import ConfigError, InvalidArgument, ReleaseControlError
from releasecontrol.files import atomic_write
from releasecontrol.keyfiles import load_or_create_dev_keys
from releasecontrol_server import webhooks
from releasecontrol_server.admin import (
    AdminServer,
    AdminSettings,
    create_app,
    load_or_create_secret,
)
from releasecontrol_server.analysis import DEFAULT_POLICY, Policy
from releasecontrol_server.analyzer import CanaryAnalyzer
from releasecontrol_server.approvals import ApprovalPolicy
from releasecontrol_server.artifacts import open_artifact_store
from releasecontrol_server.audit import OriginAuditor
from releasecontrol_server.auth.interceptor import AuthInterceptor, authenticator_for
from releasecontrol_server.beacons import PATH as BEACON_PATH
from releasecontrol_server.beacons import BeaconFlusher, Ingest, beacon_app
from releasecontrol_server.config import (
    Config,
    dev_admin_opens,
    load_config,
    metrics_exposure,
    split_listen_address,
)
from releasecontrol_server.control import ReleaseController
from releasecontrol_server.expiry import Resigner
from releasecontrol_server.keyring import Keyring, KeyWatcher, load_keyring
from releasecontrol_server.leader import while_leading
from releasecontrol_server.logs import configure_logging, log_change, parse_level
from releasecontrol_server.metrics import METRICS_PATH, ServerMetrics, metrics_endpoint
from releasecontrol_server.origin import open_origin
from releasecontrol_server.origin.http import OriginHttpServer
from releasecontrol_server.pki import ensure_dev_pki
from releasecontrol_server.service import SERVICE_NAME, ReleaseControlServicer, add_to_server
from releasecontrol_server.signer import Signer
from releasecontrol_server.steps import StepRunner
from releasecontrol_server.store import open_store
from releasecontrol_server.store.location import redact
from releasecontrol_server.tls import ReloadingServerCredentials
from releasecontrol_server.watch import WatchHub

if TYPE_CHECKING:
    from releasecontrol_server.prometheus import PrometheusSource

log = logging.getLogger("releasecontrol_server")


def prepare_dev(config: Config) -> None:
    """Create the dev PKI and dev signing key under the state directory, once."""
    if config.is_production:
        raise ConfigError(
            "--dev makes insecure development keys and certificates and is refused with "
            "RELEASECONTROL_ENV=production; provision real ones and start without --dev"
        )
    ensure_dev_pki(config.home / "pki")
    load_or_create_dev_keys(config.home / "keys")


def open_dev_admin(config: Config) -> Config:
    """With no auth mode there is no way to sign in to the admin UI: in development, unless
    ALLOW_UNAUTHENTICATED_ADMIN was set either way, open it to this machine (only when it
    listens on loopback). `doctor` reports the same decision (`config.dev_admin_opens`)."""
    if not dev_admin_opens(config):
        return config
    return dataclasses.replace(config, allow_unauthenticated_admin=True)


def lock_home(config: Config) -> int:
    """Hold `home/run/server.lock` for as long as the returned descriptor is open: one server
    per state directory (two would both write its store and its origin; a killed one's lock
    goes with it). Raises ConfigError naming the process that holds it."""
    path = config.home / "run" / "server.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(
            f"another releasecontrol-server (pid {holder}) is running on {config.home}: stop "
            "it first, or give this one another state directory (RELEASECONTROL_HOME)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


async def serve(
    config: Config,
    *,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the control plane until `stop` is set (or SIGINT/SIGTERM), holding its state
    directory's lock (`lock_home`)."""
    lock = lock_home(config)
    try:
        await _serve(config, on_ready=on_ready, stop=stop)
    finally:
        os.close(lock)


async def _serve(
    config: Config,
    *,
    on_ready: Callable[[dict[str, Any]], None] | None,
    stop: asyncio.Event | None,
) -> None:
    keyring = load_keyring(config)
    authenticator = authenticator_for(config)
    tls = ReloadingServerCredentials(
        config.tls_cert_path,
        config.tls_key_path,
        config.tls_client_ca_path,
        require_client_auth=config.require_client_cert,
    )

    # Checked while the controller loads; it waits for the check before writing.
    store = open_store(config.database, wait_for_check=False)
    origin = open_origin(config)
    hub = WatchHub(config.watch_queue_size)
    metrics = ServerMetrics(
        outbox_files=lambda: controller.pending_count(),  # read at scrape time
        watch_subscribers=lambda: hub.subscriber_count,
        database_up=lambda: controller.database_ok,
        leader=lambda: controller.leading,
    )
    controller = ReleaseController(
        store=store,
        origin=origin,
        artifacts=open_artifact_store(config),
        signer=Signer(keyring.keys, config.index_expiry_seconds),
        hub=hub,
        default_soak_seconds=config.default_soak_seconds,
        roots=keyring.roots,
        root_version=keyring.root_version,
        approvals=ApprovalPolicy(config.require_approval, config.approval_ttl_seconds),
        write_observer=metrics,
    )
    hub.on_change(log_change)
    hub.on_change(metrics.count_change)
    origin_http: OriginHttpServer | None = None
    # The metrics interceptor first: it sees the calls the auth interceptor refuses.
    server = aio.server(interceptors=[metrics.interceptor(), AuthInterceptor(authenticator)])
    source = _prometheus_source(config)
    analyzer = CanaryAnalyzer(
        controller,
        enabled=bool(config.beacon_keys) or source is not None,
        interval_seconds=config.analysis_interval_seconds,
        source=source,
        policy=analysis_policy(config),
    )
    controller.count_canary_loads = analyzer.canary_loads
    analyzer.on_verdict = metrics.count_verdict
    admin_app = create_app(
        controller,
        authenticator,
        AdminSettings(
            auth_mode=config.auth_mode,
            allow_unauthenticated=config.allow_unauthenticated_admin,
            session_secret=load_or_create_secret(config.admin_session_secret_path),
            session_seconds=config.admin_session_seconds,
            token_store_path=config.token_store_path,
            listen_host=split_listen_address(config.admin_listen)[0],
        ),
        analyzer=analyzer,
    )
    admin = AdminServer(
        admin_app.app,
        config.admin_listen,
        on_stop=admin_app.close,
        trusted_proxies=config.admin_trusted_proxies,
        routes={METRICS_PATH: metrics_endpoint(metrics.registry, token=config.metrics_token)},
    )
    exposed = metrics_exposure(config)
    if exposed is not None:
        log.warning("%s", exposed)
    ingest = Ingest(frozenset(config.beacon_keys), controller.state_of)
    ingest.on_outcome = metrics.count_beacon
    beacon_http = (
        AdminServer(
            beacon_app(ingest),
            config.beacon_listen,
            what="the beacon endpoint",
            setting="beacon_listen",
            path=BEACON_PATH,
        )
        if config.beacon_keys
        else None
    )
    flusher = BeaconFlusher(ingest, controller.add_beacon_counts)
    http_client = webhooks.new_client()
    senders = [
        webhooks.Sender(
            hook,
            events_after=controller.events_after,
            cursor=controller.webhook_cursor,
            save_cursor=controller.set_webhook_cursor,
            last_event_id=controller.last_event_id,
            client=http_client,
        )
        for hook in webhooks.load(config.webhooks)
    ]
    for sender in senders:
        controller.event_listeners.append(sender.wake.set)
    try:
        await controller.start()
        # What start-up loaded lives as long as the process: keep it out of the
        # collector's full passes, whose pauses grow with it (scale benchmark).
        gc.freeze()
        origin_url = config.origin_public_url
        if config.origin_http_listen:
            http_host, http_port = split_listen_address(config.origin_http_listen)
            origin_http = OriginHttpServer(config.origin_dir, http_host, http_port)
            try:
                origin_http.start()
            except OSError as exc:
                raise ConfigError(
                    f"cannot serve the CDN origin on {config.origin_http_listen} "
                    f"(origin_http_listen): {exc.strerror}; free the port or set "
                    "RELEASECONTROL_ORIGIN_HTTP_LISTEN"
                ) from exc
            if http_port == 0:
                origin_url = origin_http.url
        add_to_server(
            ReleaseControlServicer(
                controller,
                max_manifest_bytes=config.max_manifest_bytes,
                max_publish_bytes=config.max_publish_bytes,
                origin_public_url=origin_url,
                analyzer=analyzer,
                webhooks=senders,
            ),
            server,
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        credentials = tls.credentials()
        host, _ = split_listen_address(config.grpc_listen)
        try:
            port = server.add_secure_port(config.grpc_listen, credentials)
        except RuntimeError as exc:
            raise ConfigError(
                f"cannot listen on {config.grpc_listen} (grpc_listen): is another server "
                "running there? stop it or set RELEASECONTROL_GRPC_LISTEN to another port"
            ) from exc
        await server.start()
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

        def database_answers(answers: bool) -> None:
            # The service, not the server (""): liveness stays, readiness follows the database.
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if answers
                else (health_pb2.HealthCheckResponse.NOT_SERVING)
            )
            asyncio.get_running_loop().create_task(health_servicer.set(SERVICE_NAME, status))

        controller.health_listeners.append(database_answers)
        admin_url = await admin.start()
        if beacon_http is not None:
            await beacon_http.start()

        grpc_host = f"[{host}]" if ":" in host else host
        endpoints = {
            "grpc": f"{grpc_host}:{port}",
            "origin_url": origin_url,
            "admin_url": admin_url,
            "metrics_url": admin.base_url + METRICS_PATH,
            "pid": os.getpid(),
        }
        if beacon_http is not None:
            endpoints["beacon_url"] = beacon_http.base_url
        config.endpoints_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(config.endpoints_path, (json.dumps(endpoints, indent=2) + "\n").encode())
        log.info(
            "serving grpc=%s origin_url=%s admin_url=%s metrics_url=%s",
            endpoints["grpc"],
            origin_url,
            admin_url,
            endpoints["metrics_url"],
        )
        if on_ready is not None:
            on_ready(endpoints)

        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        resigner = Resigner(controller, expiry_seconds=config.index_expiry_seconds)

        def led(
            job: Callable[[asyncio.Event], Coroutine[Any, Any, None]], name: str
        ) -> asyncio.Task[None]:
            """One job per cluster: run on the replica that leads (leader.py)."""
            return loop.create_task(while_leading(controller, stop, job, name), name=name)

        resigning = led(resigner.run, "resign-before-expiry")
        stepping = led(StepRunner(controller, analysis=analyzer.allows_step).run, "canary-steps")
        judging = led(analyzer.run, "canary-analysis")
        flushing = loop.create_task(flusher.run(stop), name="beacon-counts")
        telling = [led(sender.run, f"webhook-{sender.hook.name}") for sender in senders]

        async def install(new: Keyring) -> None:
            await controller.install_keys(
                Signer(new.keys, config.index_expiry_seconds), new.roots, new.root_version
            )

        watching = loop.create_task(
            KeyWatcher(config, keyring, install).run(stop), name="watch-keys"
        )
        auditor = OriginAuditor(
            controller,
            interval_seconds=config.origin_check_interval_seconds or None,
        )
        auditing = led(auditor.run, "check-origin")
        await stop.wait()
        log.info("shutting down")
        await resigning
        await stepping
        await judging
        await flushing
        for told in telling:
            await told
        await watching
        await auditing
    finally:
        await admin.stop()
        if beacon_http is not None:
            await beacon_http.stop()
        await server.stop(config.shutdown_grace_seconds)
        if origin_http is not None:
            origin_http.stop()
        await controller.stop()
        await http_client.aclose()
        if source is not None:
            await source.aclose()
        store.close()
        config.endpoints_path.unlink(missing_ok=True)


def analysis_policy(config: Config) -> Policy:
    """The analysis' budget and error rates from the config; ConfigError naming the setting
    when they do not make a policy (a budget above the 'clearly worse' ratio, say)."""
    try:
        return Policy(
            budget_ratio=config.analysis_budget_ratio,
            budget_points=config.analysis_budget_points,
            worse_ratio=max(DEFAULT_POLICY.worse_ratio, 2 * config.analysis_budget_ratio),
            alpha=config.analysis_alpha,
            min_loads=config.analysis_min_loads,
        )
    except InvalidArgument as exc:
        raise ConfigError(f"analysis_{exc.field}: {exc.message}") from None


def _prometheus_source(config: Config) -> PrometheusSource | None:
    """The analysis' Prometheus source when `analysis_source` is `prometheus`."""
    if config.analysis_source != "prometheus":
        return None
    from releasecontrol_server.prometheus import PrometheusSource, TokenFile

    assert config.prometheus_url and config.prometheus_loads_query
    assert config.prometheus_failures_query  # load_config refuses it unset (_check_analysis)
    path = config.prometheus_bearer_token_path
    return PrometheusSource(
        config.prometheus_url,
        config.prometheus_loads_query,
        config.prometheus_failures_query,
        timeout=config.prometheus_timeout_seconds,
        bearer_token=TokenFile(path) if path else None,
    )


def _origin_description(config: Config) -> str:
    if config.origin_type == "s3":
        return f"bucket s3://{config.s3_bucket}/{config.s3_prefix}"
    return f"files in {config.origin_dir}"


def _banner(config: Config, endpoints: dict[str, Any]) -> str:
    home = config.home
    origin_url = endpoints["origin_url"]
    return "\n".join(
        [
            f"ReleaseControl is running ({config.env})",
            f"  gRPC (mTLS)    {endpoints['grpc']}",
            f"  CDN origin     {origin_url}   {_origin_description(config)}",
            f"  remote index   {origin_url}remote-index.json",
            f"  state          {home}",
            f"  database       {_database_description(config)}",
            f"  client TLS     {home / 'pki' / 'client.pem'} (used by releasectl)",
            f"  trust file     {config.trust_public_keys_path or 'FEATURE_TRUST_PUBLIC_KEYS_JSON'}",
            f"  admin UI       {endpoints['admin_url']}   {_admin_sign_in(config)}",
            f"  metrics        {endpoints['metrics_url']}   {_metrics_access(config)}",
            _beacons_line(config, endpoints),
            "Try `releasectl release status` in another terminal. Stop with Ctrl-C.",
        ]
    )


def _database_description(config: Config) -> str:
    if config.database_url:
        return f"{redact(config.database_url)} (PostgreSQL: several replicas may share it)"
    return f"{config.database_path} (SQLite)"


def _beacons_line(config: Config, endpoints: dict[str, Any]) -> str:
    if "beacon_url" not in endpoints:
        return "  beacons        off: set beacon_keys (RELEASECONTROL_BEACON_KEYS) to take them"
    keys = ", ".join(config.beacon_keys)
    return f"  beacons        {endpoints['beacon_url']}/v1/beacons   keys: {keys}"


def _admin_sign_in(config: Config) -> str:
    if config.allow_unauthenticated_admin:
        return "no sign-in (ALLOW_UNAUTHENTICATED_ADMIN)"
    if config.auth_mode in ("rpc-token", "dfs"):
        return f"sign in with a {config.auth_mode} token"
    return "sign-in needs auth mode rpc-token or dfs, or ALLOW_UNAUTHENTICATED_ADMIN=1 in dev"


def _metrics_access(config: Config) -> str:
    if config.metrics_token is None:
        return "open (no metrics_token)"
    return "bearer token (metrics_token)"


def migrate(config: Config) -> int:
    """`releasecontrol-server migrate`: the store opened (which migrates it) and closed."""
    with open_store(config.database) as store:
        print(f"the database {store.where} is at schema version {store.schema_version()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `releasecontrol-server`; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="releasecontrol-server",
        description="Run the ReleaseControl control plane (gRPC over mTLS, CDN origin).",
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=("serve", "migrate"),
        default="serve",
        help="serve (the default), or migrate: bring the database's schema up to date and exit "
        "(serve does it too; run it once before rolling out replicas of a new version)",
    )
    parser.add_argument("--config", type=Path, help="TOML config file (env vars win over it)")
    parser.add_argument("--home", type=Path, help="state directory (RELEASECONTROL_HOME)")
    parser.add_argument(
        "--dev",
        action="store_true",
        help="development: create a dev PKI, root and signing keys on first run, reuse them after",
    )
    args = parser.parse_args(argv)
    environ = dict(os.environ)
    if args.home is not None:
        environ["RELEASECONTROL_HOME"] = str(args.home)
    try:
        level = parse_level(environ.get("RELEASECONTROL_LOG_LEVEL", "INFO"))
        configure_logging("text", level)  # until the config says which format
        config = load_config(environ, args.config)
        configure_logging(config.log_format, level)
        if args.command == "migrate":
            return migrate(config)
        if args.dev:
            prepare_dev(config)
            config = open_dev_admin(config)

        # In json mode stdout and stderr carry log lines only: no banner (the "serving"
        # line names every address).
        def show_banner(endpoints: dict[str, Any]) -> None:
            print(_banner(config, endpoints), flush=True)

        asyncio.run(serve(config, on_ready=show_banner if config.log_format == "text" else None))
    except ReleaseControlError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
