"""What the server writes to its log: the format, and one event per committed change.

    configure_logging(log_format, level)   once at start: text or JSON lines on stderr
    JsonFormatter                          one JSON object per line
    log_change(event)                      the line of one committed change (a WatchHub observer)

`log_format = "text"` (the default) writes `time level logger message`;
`"json"` writes every line as one JSON object with `time` (UTC, ISO 8601, to the
millisecond), `level`, `logger` and `message`, then the record's structured
fields (those passed as `extra=`), and `exception` with the traceback when there
is one. Either way a line never spans two lines of the stream.

Every committed change, whoever made it (an RPC, the admin UI, the server
itself: a resign, a canary step, a reconcile), is one INFO line on the
`releasecontrol_server.changes` logger, with its fields: `feature`, `action`,
`version`, `from_stable`, `to_stable`, `from_canary`, `to_canary`, `sequence`,
`global_sequence`, `principal` (who was authenticated), `actor` (who it says the
change is for), `reason`, `ticket`, `request_id` and `detail`. In text mode the
same fields are in the message as `key=value` (text fields quoted).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from releasecontrol.errors import ConfigError
from releasecontrol_server.config import LOG_FORMATS, LogFormat
from releasecontrol_server.watch import ChangeEvent

__all__ = [
    "CHANGE_LOGGER",
    "JsonFormatter",
    "configure_logging",
    "log_change",
    "parse_level",
]

CHANGE_LOGGER = "releasecontrol_server.changes"
"""The logger of the change lines, for routing them apart (an audit index, say)."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

LEVEL_ENV_VAR = "RELEASECONTROL_LOG_LEVEL"

_changes = logging.getLogger(CHANGE_LOGGER)

# What every LogRecord carries; anything else on a record came in through `extra=`.
_RECORD_ATTRIBUTES = frozenset(
    {
        *logging.LogRecord("", 0, "", 0, "", (), None).__dict__,
        "message",
        "asctime",
        "taskName",  # Python 3.12+
        "color_message",  # uvicorn's copy of its message with terminal colours
    }
)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a field of another type (a Path, a datetime) is written as its text.
        return json.dumps(entry, ensure_ascii=False, default=str)


def _utc_iso(created: float) -> str:
    moment = datetime.fromtimestamp(created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_level(text: str, setting: str = LEVEL_ENV_VAR) -> int:
    """The logging level `text` names (DEBUG, INFO, WARNING, ERROR, CRITICAL; any case).
    Raises ConfigError naming `setting` otherwise."""
    level = logging.getLevelNamesMapping().get(text.strip().upper())
    if level is None:
        raise ConfigError(
            f"{setting} is {text!r}; set it to DEBUG, INFO, WARNING, ERROR or CRITICAL."
        )
    return level


def configure_logging(
    log_format: LogFormat, level: int | str = logging.INFO, *, stream: TextIO | None = None
) -> None:
    """Send every log record of the process at `level` and above to `stream` (stderr) in
    `log_format`, replacing the handlers the root logger had. Raises ConfigError for an
    unknown level name or format."""
    if isinstance(level, str):
        level = parse_level(level)
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"log_format is {log_format!r}; set it to 'text' or 'json'.")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request at INFO, URL and query included (webhooks, Prometheus):
    # what went wrong is logged by our own code, with what matters and no secrets.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, level))


def log_change(event: ChangeEvent) -> None:
    """Write the line of one committed change (see the module docstring)."""
    record = event.transition.record
    fields = {
        "event": "change",
        "feature": record.feature_id,
        "action": str(record.action),
        "version": record.version,
        "from_stable": record.from_stable,
        "to_stable": record.to_stable,
        "from_canary": record.from_canary,
        "to_canary": record.to_canary,
        "sequence": record.sequence,
        "global_sequence": event.global_sequence,
        "principal": record.principal,
        "actor": record.actor,
        "reason": record.reason,
        "ticket": record.ticket,
        "request_id": event.transition.request_id,
        "detail": record.detail,
    }
    _changes.info(
        "change feature=%s action=%s version=%s from_stable=%s to_stable=%s from_canary=%s "
        "to_canary=%s sequence=%d global_sequence=%d principal=%r actor=%r reason=%r "
        "ticket=%r request_id=%r detail=%r",
        record.feature_id,
        fields["action"],
        record.version or "-",
        record.from_stable or "-",
        record.to_stable or "-",
        record.from_canary or "-",
        record.to_canary or "-",
        record.sequence,
        event.global_sequence,
        record.principal,
        record.actor,
        record.reason,
        record.ticket,
        event.transition.request_id,
        record.detail,
        extra=fields,
    )
