"""Webhooks: every change, approval request and analysis verdict told to the configured URLs.

What happened is kept as an event in the store, in the transaction of the thing
itself (a change's event commits with the change: `Store._put_event`), so
nothing acknowledged goes untold, across a restart too. One sender per webhook
reads the events after its cursor (`webhook_cursors`), in order, and POSTs each
one; the cursor moves once the receiver answered 2xx. A receiver that is down or
answers otherwise gets the same event again, after 1 s, 2 s, 4 s … up to
`MAX_BACKOFF_SECONDS`, and the events after it wait (order is kept). Delivery is
at least once: a process killed between a delivery and its cursor sends that
event again, with the same id, which the receiver uses to drop the repeat.

Each POST carries:

- `X-ReleaseControl-Event-Id`: the event's id (an integer that only grows);
- `X-ReleaseControl-Event`: `change`, `approval`, `verdict` (or `test`);
- `X-ReleaseControl-Signature`: `t=<unix seconds>,v1=<hex HMAC-SHA256>` of
  `"<t>.<body>"` with the webhook's secret: a receiver recomputes it, compares in
  constant time, and refuses a `t` far from its clock (replays).

The body is JSON: `{"id", "kind", "at", "feature", "data"}`, or with
`format = "slack"` a Slack incoming-webhook body `{"text": "..."}` (the id is
still in the header). A new webhook starts at the newest event: it is told what
happens from then on, not the history (that is `release history`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from releasecontrol.errors import ConfigError
from releasecontrol_server.config import WebhookConfig
from releasecontrol_server.store import Event

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 300.0
TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 5.0
"""How often a sender looks for events when nothing woke it (it is woken on each commit)."""
SIGNATURE_HEADER = "X-ReleaseControl-Signature"
MIN_SECRET_BYTES = 16


@dataclass(frozen=True)
class Webhook:
    """A webhook with its secret read."""

    name: str
    url: str
    secret: bytes
    format: str
    events: tuple[str, ...]


def load(configs: Sequence[WebhookConfig]) -> list[Webhook]:
    """Each configured webhook with its secret; ConfigError naming the file when one cannot
    be read or is too short."""
    out = []
    for config in configs:
        try:
            secret = Path(config.secret_path).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the secret of webhook {config.name!r} at {config.secret_path}: "
                f"{exc.strerror}; write one (e.g. `openssl rand -hex 32 > FILE`)"
            ) from exc
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"the secret of webhook {config.name!r} in {config.secret_path} has "
                f"{len(secret)} bytes; give at least {MIN_SECRET_BYTES} (openssl rand -hex 32)"
            )
        out.append(Webhook(config.name, config.url, secret, config.format, config.events))
    return out


def sign(secret: bytes, body: bytes, at: int) -> str:
    """The signature header's value for `body` sent at unix time `at`."""
    digest = hmac.new(secret, f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={digest}"


def verify(secret: bytes, body: bytes, header: str, now: int, tolerance: int = 300) -> bool:
    """What a receiver does (and the tests): the header's HMAC matches and `t` is recent."""
    try:
        parts = dict(part.split("=", 1) for part in header.split(","))
        at = int(parts["t"])
    except (ValueError, KeyError):
        return False
    expected = sign(secret, body, at).split("v1=", 1)[1]
    return abs(now - at) <= tolerance and hmac.compare_digest(expected, parts.get("v1", ""))


def body_of(event: Event, form: str) -> bytes:
    """The POST body of `event` in `form` ("json" or "slack")."""
    if form == "slack":
        return json.dumps({"text": summary(event)}).encode()
    return json.dumps(
        {
            "id": event.id,
            "kind": event.kind,
            "at": event.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "feature": event.feature_id,
            "data": event.body,
        },
        sort_keys=True,
    ).encode()


def summary(event: Event) -> str:
    """One line for people (the Slack body)."""
    data, feature = event.body, event.feature_id
    if event.kind == "change":
        who = data.get("actor") or data.get("principal") or "someone"
        line = f"{feature}: {data.get('action')} {data.get('version')} by {who}"
        if data.get("detail"):
            line += f" ({data['detail']})"
        if data.get("reason"):
            line += f"; reason: {data['reason']}"
        return line
    if event.kind == "approval":
        if data.get("state") == "approved":
            return f"{feature}: request {data.get('approval_id')} approved by {data['approved_by']}"
        return (
            f"{feature}: {data.get('what')} waits for a second approver (request "
            f"{data.get('approval_id')}, asked by {data.get('requested_by')}): "
            f"`releasectl release approve --id {data.get('approval_id')}`"
        )
    if event.kind == "verdict":
        return (
            f"{feature}: canary {data.get('canary_version')} analysis {data.get('verdict')}: "
            f"{data.get('reason')}"
        )
    return f"{feature or 'ReleaseControl'}: {event.kind} event {event.id}"


class Sender:
    """Delivers the events to one webhook, in order, at least once."""

    def __init__(
        self,
        hook: Webhook,
        *,
        events_after: Callable[[int], Awaitable[list[Event]]],
        cursor: Callable[[str], Awaitable[int | None]],
        save_cursor: Callable[[str, int], Awaitable[None]],
        last_event_id: Callable[[], Awaitable[int]],
        client: httpx.AsyncClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.hook = hook
        self._events_after = events_after
        self._cursor = cursor
        self._save_cursor = save_cursor
        self._last_event_id = last_event_id
        self._client = client
        self._clock = clock
        self.wake = asyncio.Event()
        self.delivered = 0
        self.failures = 0

    async def post(self, event: Event) -> httpx.Response:
        body = body_of(event, self.hook.format)
        headers = {
            "content-type": "application/json",
            "user-agent": "releasecontrol-webhook/1",
            "x-releasecontrol-event-id": str(event.id),
            "x-releasecontrol-event": event.kind,
            SIGNATURE_HEADER: sign(self.hook.secret, body, int(self._clock())),
        }
        return await self._client.post(
            self.hook.url, content=body, headers=headers, timeout=TIMEOUT_SECONDS
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set."""
        position = await self._cursor(self.hook.name)
        if position is None:  # a new webhook: from now on
            position = await self._last_event_id()
            await self._save_cursor(self.hook.name, position)
        backoff = 1.0
        while not stop.is_set():
            batch = await self._events_after(position)
            if not batch:
                await self._sleep(stop, POLL_SECONDS)
                continue
            moved = position
            for event in batch:
                if stop.is_set():
                    break
                if event.kind in self.hook.events:
                    if not await self._deliver(event):
                        await self._sleep(stop, backoff)
                        backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                        break
                    backoff = 1.0
                    await self._save_cursor(self.hook.name, event.id)  # told: never again
                moved = event.id  # told, or not a kind this webhook is told
            if moved > position:
                position = moved
                await self._save_cursor(self.hook.name, position)

    async def _deliver(self, event: Event) -> bool:
        try:
            answer = await self.post(event)
        except httpx.HTTPError as exc:
            self.failures += 1
            log.warning(
                "webhook not delivered name=%s event=%d error=%r", self.hook.name, event.id, exc
            )
            return False
        if not 200 <= answer.status_code < 300:
            self.failures += 1
            log.warning(
                "webhook refused name=%s event=%d status=%d",
                self.hook.name,
                event.id,
                answer.status_code,
            )
            return False
        self.delivered += 1
        return True

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        self.wake.clear()
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())]
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED), timeout=seconds
                )
        finally:
            for wait in waits:
                wait.cancel()


def test_event(name: str) -> Event:
    """What `releasectl webhook test` sends."""
    now = datetime.now(UTC)
    return Event(0, "test", now, "", {"webhook": name, "message": "a test from releasectl"})


def new_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(follow_redirects=False)


async def send_test(sender: Sender) -> tuple[int, float]:
    """POST a test event now; the receiver's status and the seconds it took."""
    started = time.monotonic()
    answer = await sender.post(test_event(sender.hook.name))
    return answer.status_code, time.monotonic() - started


def describe(answer_status: int) -> str:
    return "delivered" if 200 <= answer_status < 300 else f"refused with HTTP {answer_status}"


__all__ = [
    "SIGNATURE_HEADER",
    "Sender",
    "Webhook",
    "body_of",
    "describe",
    "load",
    "new_client",
    "send_test",
    "sign",
    "summary",
    "verify",
]
