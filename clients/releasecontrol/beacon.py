"""Beacons: a host's counts of loads and failures per feature version, sent to the control
plane in batches (docs/beacons.md), so it can judge a canary against stable.

A host application that sets a beacon URL and the site's publishable key reports
what only it knows, and the host adds what it sees itself::

    host = FeatureHost(
        index_url, trust, state_dir=state,
        beacon_url="https://beacons.example.com",   # the control plane's beacon listener
        beacon_key="pk_site_example",               # one of the server's beacon_keys
    )
    feature = host.version_for("checkout", user_id)
    host.report_load("checkout", feature.version)
    try:
        run(feature)
    except Exception:
        host.report_failure("checkout", feature.version, "entry_error")
        raise
    ...
    host.close()   # the last batch

`FeatureHost.from_environment` reads `FEATURE_BEACON_URL` and `FEATURE_BEACON_KEY`
(both or neither). The kinds of failure are `entry_error` (the feature's entry
threw while it started), `load_failure` (the application could not load it) and
`refusal` (a verification refused it). The host counts on its own, for the version
it was loading, a file it could not download (`load_failure`: a network error, a
timeout, an HTTP status other than 200) and a file it refused (`refusal`: a hash,
a length, a size or a manifest that does not match what is signed), each also as
a load begun, since the control plane reads failures as loads that failed. A
refused `releases.json` or index names no version, so it is not counted.

Counts only: a row is (feature, version, loads, entry_errors, load_failures,
refusals); no user, no key, no URL is sent. Rows are summed in memory (at most
`max_pending_rows`; counts of a new version past that are dropped, and logged)
and sent by a background thread at most every `interval_seconds` (10 s) while
there are any, and by `close()` (also run at interpreter exit). Reporting never
waits on the network. The answers (docs/beacons.md, "Answers"):

- 202: counted.
- 429: the counts are kept and sent with the next batch after Retry-After.
- 403: the key is not the control plane's: counts are dropped and nothing more is
  sent until the host is made again with another key (logged once).
- 400, 409 and any other 4xx: the batch is dropped (logged once per status). A 422
  naming a row (a feature or version the control plane never published) drops
  that row, and the other rows are sent again at once: one bad report does not
  silence the others.
- 413: the rows are split into two batches.
- no answer, or a 5xx (the server or a proxy in front of it failed): the same
  batch, with its id, is sent again next time, so a batch that did arrive is
  counted once (the server refuses the replay); after `MAX_RETRY_SECONDS` it is
  dropped.
"""

from __future__ import annotations

import atexit
import json
import logging
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit

from releasecontrol.errors import ConfigError, InvalidArgument
from releasecontrol.fields import format_time
from releasecontrol.manifest import validate_feature_id

__all__ = [
    "BEACON_PATH",
    "DEFAULT_INTERVAL_SECONDS",
    "ENV_BEACON_KEY",
    "ENV_BEACON_URL",
    "KINDS",
    "Beacons",
    "FailureKind",
    "beacon_endpoint",
    "check_beacon_key",
    "check_report",
]

logger = logging.getLogger(__name__)

ENV_BEACON_URL = "FEATURE_BEACON_URL"
ENV_BEACON_KEY = "FEATURE_BEACON_KEY"
BEACON_PATH = "/v1/beacons"
DEFAULT_INTERVAL_SECONDS = 10.0
DEFAULT_MAX_PENDING_ROWS = 1000
MAX_ROWS = 200
"""The most rows the server takes in one batch."""
MAX_COUNT = 1_000_000
"""The most one row may report of each count; a larger sum goes in the next batch."""
MAX_BODY_BYTES = 60 * 1024
"""Batches are cut below the server's 64 KiB; a 413 still splits them."""
MAX_RETRY_SECONDS = 240.0
"""A batch that got no answer is sent again for this long: the server takes a batch up to
5 minutes old, and sending it again after it forgot the id would count it twice."""
DEFAULT_RETRY_AFTER_SECONDS = 10.0

FailureKind = Literal["entry_error", "load_failure", "refusal"]
KINDS: tuple[FailureKind, ...] = ("entry_error", "load_failure", "refusal")
_FIELDS = ("loads", "entry_errors", "load_failures", "refusals")
_FIELD_OF_KIND: dict[str, str] = {
    "entry_error": "entry_errors",
    "load_failure": "load_failures",
    "refusal": "refusals",
}
_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_MAX_VERSION_CHARS = 128

_Row = tuple[str, str]  # (feature, version)


def beacon_endpoint(url: str) -> str:
    """The URL batches are POSTed to: `url` (the beacon listener, e.g. the `beacon_url`
    `releasectl dev` prints) with `/v1/beacons`, unless it ends so already.

    Raises ConfigError for a URL that is not http(s).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"beacon URL {url!r} is not an http:// or https:// URL; set it to the control "
            "plane's beacon listener, e.g. http://127.0.0.1:4200"
        )
    base = url.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    return base if base.endswith(BEACON_PATH) else base + BEACON_PATH


def check_beacon_key(key: str) -> str:
    """`key` if it can be a beacon key (8 to 128 of A-Z a-z 0-9 _ -); else ConfigError."""
    if not isinstance(key, str) or not 8 <= len(key) <= 128 or not _KEY_CHARS.issuperset(key):
        raise ConfigError(
            "the beacon key must be the site's publishable key: 8 to 128 letters, digits, "
            "'_' or '-' (one of the control plane's beacon_keys)"
        )
    return key


def check_report(feature_id: str, version: str, kind: str | None = None) -> int:
    """Which count a report adds to (0 a load, else the kind's) after checking it: raises
    InvalidArgument naming "feature_id", "version" or "kind" for one that cannot be."""
    validate_feature_id(feature_id)
    if (
        not isinstance(version, str)
        or not 0 < len(version) <= _MAX_VERSION_CHARS
        or any(c.isspace() for c in version)
    ):
        raise InvalidArgument(
            f"version must be the version as releases.json names it, 1 to "
            f"{_MAX_VERSION_CHARS} characters without spaces, not {version!r}",
            field="version",
        )
    if kind is None:
        return 0
    field = _FIELD_OF_KIND.get(kind)
    if field is None:
        raise InvalidArgument(f"kind {kind!r} is not one of {', '.join(KINDS)}", field="kind")
    return _FIELDS.index(field)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Batch:
    """Rows on their way; `batch_id` and `sent_at` are kept when it is sent again."""

    rows: dict[_Row, list[int]]
    batch_id: str = ""
    sent_at: str = ""
    first_tried: float = 0.0


class Beacons:
    """Counts per feature version, and the thread that sends them; see the module docstring.

    Thread-safe. `report_load` and `report_failure` only take a lock; sending happens on
    the background thread, in `flush()` and in `close()`.
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
        max_pending_rows: int = DEFAULT_MAX_PENDING_ROWS,
        timeout_seconds: float = 5.0,
        clock: Callable[[], datetime] = _utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Raises ConfigError for a URL that is not http(s), a key that cannot be one, and
        an interval, cap or timeout that is not positive.

        `url`: the beacon listener (`/v1/beacons` is added). `clock`: the wall clock of
        `sent_at`; `monotonic`: the clock of the interval and of Retry-After.
        """
        self._url = beacon_endpoint(url)
        self._key = check_beacon_key(key)
        for name, value in (
            ("interval_seconds", interval_seconds),
            ("max_pending_rows", max_pending_rows),
            ("timeout_seconds", timeout_seconds),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{name} must be a positive number, not {value!r}")
        self._interval = float(interval_seconds)
        self._max_pending = int(max_pending_rows)
        self._timeout = float(timeout_seconds)
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()  # the pending rows and the flags
        self._sending = threading.Lock()  # one sender at a time
        self._pending: dict[_Row, list[int]] = {}
        self._unanswered: _Batch | None = None
        self._not_before = 0.0
        self._stopped = False  # a 403: the key is not the control plane's
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._logged: set[str] = set()
        self.sent_batches = 0
        """Batches the control plane answered 202."""
        self.dropped_rows = 0
        """Rows dropped: refused, over the cap, or never answered."""
        atexit.register(self.close)

    @property
    def url(self) -> str:
        """Where batches go: the beacon listener's `/v1/beacons`."""
        return self._url

    @property
    def stopped(self) -> bool:
        """True once the control plane refused the key (403): nothing more is sent."""
        return self._stopped

    @property
    def pending(self) -> dict[tuple[str, str], dict[str, int]]:
        """The counts not sent yet, by (feature, version): a copy."""
        with self._lock:
            rows = {row: list(counts) for row, counts in self._pending.items()}
            if self._unanswered is not None:
                for row, counts in self._unanswered.rows.items():
                    _add(rows, row, counts)
        return {row: dict(zip(_FIELDS, counts, strict=True)) for row, counts in rows.items()}

    # -- reporting -------------------------------------------------------------------------------

    def report_load(self, feature_id: str, version: str) -> None:
        """Count one load (begun) of `version` of `feature_id`.

        Raises InvalidArgument for a feature id or version that cannot be one.
        """
        self._count(feature_id, version, check_report(feature_id, version))

    def report_failure(self, feature_id: str, version: str, kind: FailureKind) -> None:
        """Count one failed load of `version` of `feature_id`: `kind` is "entry_error",
        "load_failure" or "refusal".

        Raises InvalidArgument (field "kind", "feature_id" or "version") for a kind not
        among those, or a feature id or version that cannot be one.
        """
        self._count(feature_id, version, check_report(feature_id, version, kind))

    def _count(self, feature_id: str, version: str, at: int) -> None:
        row = (feature_id, version)
        with self._lock:
            if self._stopped or self._closed:
                return
            counts = self._pending.get(row)
            if counts is None:
                if len(self._pending) >= self._max_pending:
                    self.dropped_rows += 1
                    self._log_once(
                        "cap",
                        f"beacon counts dropped: more than {self._max_pending} feature versions "
                        "wait to be sent",
                    )
                    return
                counts = self._pending[row] = [0, 0, 0, 0]
            counts[at] += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="releasecontrol-beacons", daemon=True
                )
                self._thread.start()

    # -- sending ---------------------------------------------------------------------------------

    def flush(self) -> None:
        """Send what is pending now (blocking), unless the control plane said to wait
        (Retry-After) or refused the key. Never raises for what the network or the server
        did."""
        with self._sending:
            self._send_due()

    def close(self) -> None:
        """Stop the thread and send what is pending, once; later reports are ignored."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._timeout * 2 + 1)
        with self._sending:
            self._send_due(final=True)
        with self._lock:
            left = len(self._pending) + len(self._unanswered.rows if self._unanswered else ())
            self._pending.clear()
            self._unanswered = None
        if left:
            self.dropped_rows += left
            logger.warning("beacon counts not sent at close rows=%d", left)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except Exception:  # a bug: logged; the thread goes on
                logger.exception("sending beacons failed")

    def _send_due(self, *, final: bool = False) -> None:
        """Send batches until nothing is pending or the control plane says stop or wait."""
        if self._stopped or self._monotonic() < self._not_before:
            return
        with self._lock:
            again = self._unanswered
            self._unanswered = None
        if again is not None:
            if self._monotonic() - again.first_tried > MAX_RETRY_SECONDS:
                self._drop(again, "no answer for minutes")
            elif not self._send(again, final=final):
                return
        while True:
            with self._lock:
                batch = self._take()
            if batch is None or not self._send(batch, final=final):
                return

    def _take(self) -> _Batch | None:
        """Up to MAX_ROWS rows of what is pending, each count at most MAX_COUNT and the body
        at most MAX_BODY_BYTES; what is over stays pending. Call with the lock held."""
        rows: dict[_Row, list[int]] = {}
        size = 200  # the batch's own fields
        for row in list(self._pending):
            if len(rows) == MAX_ROWS or size > MAX_BODY_BYTES:
                break
            counts = self._pending[row]
            taken = [min(c, MAX_COUNT) for c in counts]
            rest = [c - t for c, t in zip(counts, taken, strict=True)]
            rows[row] = taken
            size += len(row[0]) + len(row[1]) + 120
            if any(rest):
                self._pending[row] = rest
            else:
                del self._pending[row]
        return _Batch(rows) if rows else None

    def _send(self, batch: _Batch, *, final: bool) -> bool:
        """POST `batch` and act on the answer; False when sending should stop for now."""
        queue = [batch]
        while queue:
            batch = queue.pop(0)
            if not batch.batch_id:
                batch.batch_id = secrets.token_urlsafe(16)  # 128 random bits
                batch.sent_at = format_time(self._clock())
                batch.first_tried = self._monotonic()
            status, answer, retry_after = self._post(self._body(batch))
            if 200 <= status < 300:
                self.sent_batches += 1
            elif status == 429:
                self._keep(batch, *queue)
                wait = retry_after if retry_after is not None else DEFAULT_RETRY_AFTER_SECONDS
                self._not_before = self._monotonic() + wait
                logger.info("beacons rate limited retry_after=%g", wait)
                return False
            elif status == 403:
                with self._lock:
                    self._stopped = True
                    dropped = len(self._pending) + sum(len(b.rows) for b in (batch, *queue))
                    self._pending.clear()
                self.dropped_rows += dropped
                logger.error(
                    "beacons stopped: the control plane refused the key (403 %s); "
                    "configure the host with one of its beacon_keys",
                    answer.get("error", ""),
                )
                return False
            elif status == 413 and len(batch.rows) > 1:
                items = list(batch.rows.items())
                half = len(items) // 2
                queue[:0] = [_Batch(dict(items[:half])), _Batch(dict(items[half:]))]
            elif status == 422 and (bad := _row_named(answer, batch)) is not None:
                rows = dict(batch.rows)
                del rows[bad]
                self._drop(_Batch({bad: batch.rows[bad]}), f"422 {answer.get('error', '')}")
                if rows:
                    queue.insert(0, _Batch(rows))
            elif 400 <= status < 500:  # 400, 409, 413 of one row, 422 of no row: a bug
                self._drop(batch, f"{status} {answer.get('error', '')}")
            else:  # no answer, or a 5xx: neither says the batch was not counted
                if final:
                    self._drop(batch, f"no answer at close ({answer.get('error', status)})")
                    continue
                self._log_once(
                    f"status-{status}",
                    f"beacons not delivered ({answer.get('error', status)}); sent again later",
                )
                with self._lock:
                    self._unanswered = batch
                for later in queue:
                    self._keep(later)
                return False
        return True

    def _body(self, batch: _Batch) -> bytes:
        counts = [
            {"feature": feature, "version": version, **dict(zip(_FIELDS, values, strict=True))}
            for (feature, version), values in batch.rows.items()
        ]
        body = {
            "v": 1,
            "key": self._key,
            "batch": batch.batch_id,
            "sent_at": batch.sent_at,
            "counts": counts,
        }
        return json.dumps(body, separators=(",", ":")).encode("utf-8")

    def _post(self, body: bytes) -> tuple[int, dict[str, str], float | None]:
        """(status, the answer's JSON object, Retry-After seconds); status 0 for no answer.
        The one place errors of the network become answers."""
        request = urllib.request.Request(
            self._url,
            data=body,
            method="POST",
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as reply:
                return reply.status, _json_object(reply.read(4096)), None
        except urllib.error.HTTPError as refused:
            with refused:
                return (
                    refused.code,
                    _json_object(refused.read(4096)),
                    _seconds(refused.headers.get("retry-after")),
                )
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets, bad status lines
            return 0, {"error": str(getattr(exc, "reason", None) or exc)}, None

    def _keep(self, *batches: _Batch) -> None:
        """Put rows back to be sent with the next batch (they were not counted)."""
        with self._lock:
            for batch in batches:
                for row, counts in batch.rows.items():
                    _add(self._pending, row, counts)

    def _drop(self, batch: _Batch, why: str) -> None:
        self.dropped_rows += len(batch.rows)
        self._log_once(why.split(" ", 1)[0], f"beacon batch dropped: {why}")

    def _log_once(self, what: str, message: str) -> None:
        # A bug or a misconfiguration repeats every batch: one line says it, DEBUG after.
        level = logging.DEBUG if what in self._logged else logging.WARNING
        self._logged.add(what)
        logger.log(level, "%s", message)


def _add(rows: dict[_Row, list[int]], row: _Row, counts: list[int]) -> None:
    into = rows.setdefault(row, [0, 0, 0, 0])
    for i, n in enumerate(counts):
        into[i] += n


def _row_named(answer: dict[str, str], batch: _Batch) -> _Row | None:
    """The row a 422's field names ("counts[3].version"), when it names one of `batch`."""
    field = answer.get("field", "")
    if not field.startswith("counts["):
        return None
    index = field[len("counts[") :].split("]", 1)[0]
    if not index.isdigit() or int(index) >= len(batch.rows):
        return None
    return list(batch.rows)[int(index)]


def _json_object(data: bytes) -> dict[str, str]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def _seconds(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return float(min(int(value.strip()), 3600))
