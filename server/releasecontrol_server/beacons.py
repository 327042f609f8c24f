"""Beacons: hosts report how each feature version loads, counts only (docs/beacons.md).

A host batches, per feature version, how many times it loaded it and how many
of those failed (an error thrown by the entry, a failed load, a verification
refusal), and POSTs the batch to `/v1/beacons` on the beacon listener
(`beacon_listen`). The batch carries a publishable key (`beacon_keys`: it names
the site, it is no secret), a random batch id and when it was sent; no user,
no host, no address is kept.

Refused, with a JSON `{"error", "field"}` and nothing counted: a body that is
not a batch (400, the field named), a key not configured (403), a batch sent
over `MAX_AGE` ago or in the future, or before this process started (409: a
replay cannot be told from a late batch then), a batch id seen already (409),
a feature or a version the control plane never published (422, the field
named), and more than `RATE_PER_SECOND` batches a second from one address and
key (429, with Retry-After). The analysis needs a minimum sample on both sides
(`analysis.Policy.min_loads`), so a flood within the rate cannot roll a canary
back by itself.

Counts are summed in memory per (feature, version, minute) and written to the
store every second (`Tally`, `BeaconFlusher`): a process killed loses at most
that second of counts, which the analysis, being statistics, tolerates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from releasecontrol.errors import ReleaseControlError
from releasecontrol.fields import parse_time
from releasecontrol.manifest import validate_feature_id
from releasecontrol_server.releases import FeatureState

log = logging.getLogger(__name__)

PATH = "/v1/beacons"
MAX_BODY_BYTES = 64 * 1024
MAX_ROWS = 200
MAX_COUNT = 1_000_000
"""The most loads (or failures of a kind) one row of one batch may report."""
MAX_AGE = timedelta(minutes=5)
"""How old (or how far ahead of the server's clock) a batch may be."""
RATE_PER_SECOND = 20.0
BURST = 100.0
_BATCH_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
_KEY = re.compile(r"[A-Za-z0-9_-]{8,128}")
_FAILURE_KINDS = ("entry_errors", "load_failures", "refusals")
_ROW_FIELDS = frozenset({"feature", "version", "loads", *_FAILURE_KINDS})
_BATCH_FIELDS = frozenset({"v", "key", "batch", "sent_at", "counts"})


class Refused(Exception):
    """A batch not counted: the HTTP status, one line saying why, and the field."""

    def __init__(self, status: int, message: str, field: str = "", retry_after: int = 0) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field
        self.retry_after = retry_after


@dataclass
class Counts:
    loads: int = 0
    entry_errors: int = 0
    load_failures: int = 0
    refusals: int = 0
    batches: int = 0

    @property
    def failures(self) -> int:
        return self.entry_errors + self.load_failures + self.refusals

    def add(self, other: Counts) -> None:
        self.loads += other.loads
        self.entry_errors += other.entry_errors
        self.load_failures += other.load_failures
        self.refusals += other.refusals
        self.batches += other.batches


@dataclass(frozen=True)
class Row:
    feature: str
    version: str
    counts: Counts


@dataclass(frozen=True)
class Batch:
    key: str
    batch_id: str
    sent_at: datetime
    rows: tuple[Row, ...]


def parse_batch(body: bytes, *, keys: frozenset[str], now: datetime, since: datetime) -> Batch:
    """The batch in `body`, checked (not yet against what is published: `Ingest` does that).

    `since`: when this process started; a batch sent before cannot be told from a replay.
    """
    if len(body) > MAX_BODY_BYTES:
        raise Refused(413, f"a batch is at most {MAX_BODY_BYTES} bytes; send smaller batches")
    try:
        data = json.loads(body, parse_float=_no_float, parse_constant=_no_float)
    except (ValueError, RecursionError):
        raise Refused(400, "the body is not JSON; send one batch as a JSON object") from None
    if not isinstance(data, dict):
        raise Refused(400, "the body must be a JSON object (a batch)")
    unknown = sorted(set(data) - _BATCH_FIELDS)
    if unknown:
        raise Refused(400, f"unknown field {unknown[0]!r} in the batch", unknown[0])
    if data.get("v") != 1:
        raise Refused(400, "v must be 1, the beacon format this server speaks", "v")
    key = data.get("key")
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise Refused(400, "key must be the publishable beacon key of the site", "key")
    if key not in keys:
        raise Refused(403, "key is not a beacon key of this control plane", "key")
    batch_id = data.get("batch")
    if not isinstance(batch_id, str) or not _BATCH_ID.fullmatch(batch_id):
        raise Refused(400, "batch must be a random id of 16 to 64 letters, digits, - or _", "batch")
    try:
        sent_at = parse_time(str(data.get("sent_at", "")))
    except ReleaseControlError:
        raise Refused(
            400, 'sent_at must be a UTC time like "2026-12-07T10:00:00Z"', "sent_at"
        ) from None
    if abs(now - sent_at) > MAX_AGE:
        raise Refused(
            409,
            f"sent_at is {_minutes(now - sent_at)} from the server's clock (at most "
            f"{_minutes(MAX_AGE)} either way): a stale or replayed batch, or a wrong clock",
            "sent_at",
        )
    if sent_at < since - timedelta(seconds=1):
        raise Refused(409, "sent_at is before the server started: not counted", "sent_at")
    rows = data.get("counts")
    if not isinstance(rows, list) or not rows:
        raise Refused(400, "counts must be a non-empty list of rows", "counts")
    if len(rows) > MAX_ROWS:
        raise Refused(400, f"counts has {len(rows)} rows; send at most {MAX_ROWS}", "counts")
    parsed = tuple(_row(r, i) for i, r in enumerate(rows))
    seen: dict[tuple[str, str], int] = {}
    for at, row in enumerate(parsed):
        first = seen.setdefault((row.feature, row.version), at)
        if first != at:
            raise Refused(
                400,
                f"counts[{at}] repeats the feature and version of counts[{first}]; send one "
                "row per feature version",
                f"counts[{at}]",
            )
    return Batch(key, batch_id, sent_at, parsed)


def _row(raw: Any, at: int) -> Row:
    where = f"counts[{at}]"
    if not isinstance(raw, dict):
        raise Refused(400, f"{where} must be an object", where)
    unknown = sorted(set(raw) - _ROW_FIELDS)
    if unknown:
        raise Refused(400, f"unknown field {unknown[0]!r} in {where}", f"{where}.{unknown[0]}")
    feature = raw.get("feature")
    try:
        validate_feature_id(feature if isinstance(feature, str) else "")
    except ReleaseControlError:
        raise Refused(400, f"{where}.feature must be a feature id", f"{where}.feature") from None
    version = raw.get("version")
    if not isinstance(version, str) or not 0 < len(version) <= 128:
        raise Refused(400, f"{where}.version must be a version", f"{where}.version")
    values = {}
    for name in ("loads", *_FAILURE_KINDS):
        value = raw.get(name, 0)
        if type(value) is not int or not 0 <= value <= MAX_COUNT:
            raise Refused(
                400, f"{where}.{name} must be an integer from 0 to {MAX_COUNT}", f"{where}.{name}"
            )
        values[name] = value
    if values["loads"] == 0:
        if not any(values[k] for k in _FAILURE_KINDS):
            raise Refused(400, f"{where} counts nothing; leave it out", f"{where}.loads")
        raise Refused(
            400,
            f"{where} counts failures but no loads: a failed load is a load begun; count it "
            "in loads too",
            f"{where}.loads",
        )
    return Row(str(feature), version, Counts(**values, batches=1))


def _no_float(text: str) -> Any:
    raise ValueError(f"{text} is not an integer")


def _minutes(delta: timedelta) -> str:
    return f"{abs(delta.total_seconds()) / 60:.1f} min"


def minute_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


class Tally:
    """Counts accepted and not yet in the store, summed per (feature, version, minute)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, datetime], Counts] = {}

    def add(self, batch: Batch, at: datetime) -> None:
        minute = minute_of(at)
        for row in batch.rows:
            self._rows.setdefault((row.feature, row.version, minute), Counts()).add(row.counts)

    def drain(self) -> dict[tuple[str, str, datetime], Counts]:
        rows, self._rows = self._rows, {}
        return rows

    def __len__(self) -> int:
        return len(self._rows)


class _Buckets:
    """A token bucket per (address, key): RATE_PER_SECOND, up to BURST; oldest forgotten."""

    def __init__(self, rate: float, burst: float, kept: int = 100_000) -> None:
        self._rate, self._burst, self._kept = rate, burst, kept
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    def take(self, who: tuple[str, str], now: float) -> float:
        """0 when `who` may send now (a token taken), else seconds until it may."""
        tokens, then = self._buckets.pop(who, (self._burst, now))
        tokens = min(self._burst, tokens + (now - then) * self._rate)
        if tokens < 1:
            self._buckets[who] = (tokens, now)
            return (1 - tokens) / self._rate
        self._buckets[who] = (tokens - 1, now)
        while len(self._buckets) > self._kept:
            self._buckets.popitem(last=False)
        return 0.0


class Ingest:
    """Checks each batch against the keys, replays, the rate and what is published, and
    tallies what passes. Runs on the event loop; never waits."""

    def __init__(
        self,
        keys: frozenset[str],
        features: Callable[[str], FeatureState | None],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        rate_per_second: float = RATE_PER_SECOND,
        burst: float = BURST,
    ) -> None:
        self.keys = keys
        self._features = features
        self._clock = clock
        self._monotonic = monotonic
        self.started_at = clock()
        self.tally = Tally()
        self._buckets = _Buckets(rate_per_second, burst)
        self._seen: OrderedDict[str, datetime] = OrderedDict()
        self.on_outcome: Callable[[str], None] | None = None

    def receive(self, body: bytes, address: str) -> Batch:
        """Count `body` from `address`, or raise Refused saying why not (nothing counted)."""
        try:
            batch = self._check(body, address)
        except Refused as refused:
            self._outcome(_OUTCOMES.get(refused.status, "bad"))
            raise
        self.tally.add(batch, self._clock())
        self._outcome("accepted")
        return batch

    def _check(self, body: bytes, address: str) -> Batch:
        now = self._clock()
        batch = parse_batch(body, keys=self.keys, now=now, since=self.started_at)
        wait = self._buckets.take((address, batch.key), self._monotonic())
        if wait:
            seconds = math.ceil(wait)
            raise Refused(
                429, f"too many batches from {address}; retry in {seconds}s", retry_after=seconds
            )
        self._forget(now)
        if batch.batch_id in self._seen:
            raise Refused(409, "this batch was counted already (a replay): not counted", "batch")
        for at, row in enumerate(batch.rows):
            state = self._features(row.feature)
            if state is None:
                raise Refused(
                    422, f"feature {row.feature!r} is not published here", f"counts[{at}].feature"
                )
            if state.find(row.version) is None:
                raise Refused(
                    422,
                    f"version {row.version!r} of {row.feature!r} was never published",
                    f"counts[{at}].version",
                )
        self._seen[batch.batch_id] = now
        return batch

    def _forget(self, now: datetime) -> None:
        while self._seen and next(iter(self._seen.values())) < now - 2 * MAX_AGE:
            self._seen.popitem(last=False)

    def _outcome(self, outcome: str) -> None:
        if self.on_outcome is not None:  # /metrics counts them (releasecontrol_beacons_total)
            self.on_outcome(outcome)


_OUTCOMES: Mapping[int, str] = {403: "forged", 409: "replayed", 422: "unknown", 429: "limited"}
OUTCOMES = ("accepted", "bad", *_OUTCOMES.values())
"""What can become of a batch (the label of releasecontrol_beacons_total)."""


def beacon_app(ingest: Ingest) -> Callable[[Any, Any, Any], Any]:
    """The ASGI app of the beacon listener: POST /v1/beacons (and its CORS preflight)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != PATH:
            await _answer(send, 404, {"error": f"not found; beacons go to POST {PATH}"})
            return
        if scope["method"] == "OPTIONS":  # a browser's preflight
            await _answer(send, 204, None)
            return
        if scope["method"] != "POST":
            await _answer(send, 405, {"error": f"use POST {PATH}"}, allow="POST, OPTIONS")
            return
        body = await _body(receive)
        if body is None:
            await _answer(send, 413, {"error": f"a batch is at most {MAX_BODY_BYTES} bytes"})
            return
        address = (scope.get("client") or ("?", 0))[0]
        try:
            ingest.receive(body, address)
        except Refused as refused:
            headers = {}
            if refused.retry_after:
                headers["retry_after"] = str(refused.retry_after)
            await _answer(
                send, refused.status, {"error": refused.message, "field": refused.field}, **headers
            )
            return
        await _answer(send, 202, {"accepted": True})

    return app


async def _body(receive: Any) -> bytes | None:
    """The request body, or None past MAX_BODY_BYTES."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(send: Any, status: int, body: Any, **headers: str) -> None:
    data = b"" if body is None else json.dumps(body).encode()
    head = [
        (b"access-control-allow-origin", b"*"),
        (b"access-control-allow-methods", b"POST, OPTIONS"),
        (b"access-control-allow-headers", b"content-type"),
        (b"access-control-max-age", b"86400"),
        (b"cache-control", b"no-store"),
        (b"content-length", str(len(data)).encode()),
    ]
    if body is not None:
        head.append((b"content-type", b"application/json"))
    head += [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": data})


class BeaconFlusher:
    """Every second, what the tally holds written to the store (on the controller's write
    path, one transaction)."""

    def __init__(self, ingest: Ingest, write: Callable[[dict[Any, Counts]], Any]) -> None:
        self._ingest = ingest
        self._write = write

    async def flush(self) -> int:
        rows = self._ingest.tally.drain()
        if rows:
            try:
                await self._write(rows)
            except Exception:  # the counts of this second are lost; logged, go on
                log.exception("writing %d beacon counts failed", len(rows))
        return len(rows)

    async def run(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            await self.flush()
