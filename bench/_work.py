"""Workloads several benchmarks share: release cycles over gRPC, the durable-write baseline,
the fixed work of a change (`protocol_floor`)."""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench._seed import version_name
from releasecontrol.files import fsync_path
from releasecontrol.v1 import release_control_pb2 as pb
from releasecontrol.v1 import release_control_pb2_grpc as pb_grpc
from releasecontrol_server.origin.filesystem import FilesystemOrigin

FLOOR_SIZES = {"releases": 3300, "shard": 600, "top": 7200}
"""The bytes of the files a change to one of 100 features signs under host protocol v2 (its
releases.json, the shard pinning it, the top level), as the scale benchmark measures them."""


def _context() -> pb.ChangeContext:
    # As `releasectl` sends it: a fresh request id per change, so each applies once.
    return pb.ChangeContext(reason="benchmark", request_id=str(uuid.uuid4()))


async def release_cycle(
    stub: pb_grpc.ReleaseControlStub,
    feature_id: str,
    versions: int,
    metadata: tuple[tuple[str, str], ...],
) -> list[float]:
    """canary → promote → rollback on a seeded feature; the seconds each change took.

    The feature is at its newest version (every version was stable once). The
    cycle puts the one before in canary with no soak, promotes it, and rolls
    back to the newest, so it can repeat forever. Each call returns once the
    change is committed, signed and on the origin.
    """
    newest, previous = version_name(versions), version_name(versions - 1)
    times = []
    start = time.perf_counter()
    await stub.DeployCanary(
        pb.DeployCanaryRequest(
            feature_id=feature_id, version=previous, soak_seconds=0, context=_context()
        ),
        metadata=metadata,
    )
    times.append(time.perf_counter() - start)
    start = time.perf_counter()
    await stub.Promote(
        pb.PromoteRequest(feature_id=feature_id, version=previous, context=_context()),
        metadata=metadata,
    )
    times.append(time.perf_counter() - start)
    start = time.perf_counter()
    await stub.Rollback(
        pb.RollbackRequest(feature_id=feature_id, version=newest, context=_context()),
        metadata=metadata,
    )
    times.append(time.perf_counter() - start)
    return times


def durable_write_baseline(directory: Path, iterations: int) -> list[float]:
    """The seconds of each of `iterations` rounds of the minimum a durable signed publish costs.

    One round: commit one row to SQLite (WAL, synchronous=FULL, as the store
    runs), sign 1 KiB with Ed25519, and atomically replace a file (temporary
    file, fsync, rename, fsync of the folder, as the filesystem origin does).
    """
    directory.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(directory / "baseline.db", isolation_level=None)
    times = []
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, body BLOB)")
        key = Ed25519PrivateKey.generate()
        payload = os.urandom(1024)
        target = directory / "signed.bin"
        for i in range(iterations):
            start = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO rows (body) VALUES (?)", (payload,))
            conn.execute("COMMIT")
            signature = key.sign(payload + i.to_bytes(8, "big"))
            fd, name = tempfile.mkstemp(dir=directory, prefix=".signed.")
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload + signature)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(name, target)
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            times.append(time.perf_counter() - start)
    finally:
        conn.close()
    return times


def protocol_floor(
    directory: Path, iterations: int, *, batch: int = 1
) -> tuple[list[float], list[float]]:
    """The fixed work of acknowledging `batch` changes together (to as many features, each in
    a shard of its own), without the rest of the server: the seconds of each of `iterations`
    rounds as clients wait for them, and the CPU seconds of each round including what the
    server does after acknowledging.

    One round: one SQLite transaction (WAL, synchronous=FULL) storing the files the changes
    sign (a releases.json and a shard each, one top level: `FLOOR_SIZES`), an Ed25519
    signature over each, and each written beside its place on a folder origin and swapped
    into it (`FilesystemOrigin.stage` and `publish`, unsynced, as the writer does); then, off
    the clock but on the CPU count, what the sync thread does: the displaced files removed,
    the files and their folders fsynced.
    """
    directory.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(directory / f"floor-{batch}.db", isolation_level=None)
    origin = FilesystemOrigin(directory / "origin")
    key = Ed25519PrivateKey.generate()
    bodies = [
        *(
            (path, os.urandom(FLOOR_SIZES[kind]))
            for n in range(batch)
            for path, kind in (
                (f"features/feature-{n:05d}/releases.json", "releases"),
                (f"index/7/{n}.json", "shard"),
            )
        ),
        ("remote-index.json", os.urandom(FLOOR_SIZES["top"])),
    ]
    times: list[float] = []
    cpu: list[float] = []
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, body BLOB)")
        for path, body in bodies:  # each target exists, as on a live origin: swaps, not creates
            origin.write(path, body)
        for i in range(iterations):
            start, start_cpu = time.perf_counter(), time.thread_time()
            signed = [(path, body + key.sign(body + i.to_bytes(8, "big"))) for path, body in bodies]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO files (path, body) VALUES (?, ?)", signed)
            conn.execute("COMMIT")
            displaced = []
            for path, content in signed:
                staged = origin.stage(path, content, sync=False)
                displaced.append((staged.target, origin.publish(staged, sync=False)))
            times.append(time.perf_counter() - start)
            for _, old in displaced:
                if old is not None:
                    origin.remove_displaced(old)
            for synced in {t for t, _ in displaced} | {t.parent for t, _ in displaced}:
                fsync_path(synced)
            cpu.append(time.thread_time() - start_cpu)
    finally:
        conn.close()
    return times, cpu
