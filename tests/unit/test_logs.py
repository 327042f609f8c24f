"""logs.py: the JSON line format, the line of each committed change, and the log settings."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from releasecontrol.errors import ConfigError
from releasecontrol_server.config import load_config
from releasecontrol_server.logs import (
    CHANGE_LOGGER,
    JsonFormatter,
    configure_logging,
    log_change,
    parse_level,
)
from releasecontrol_server.releases import Action, AuditRecord, FeatureState
from releasecontrol_server.store import StoredTransition
from releasecontrol_server.watch import ChangeEvent, WatchHub


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord(
        "releasecontrol_server.test", logging.WARNING, __file__, 1, message, args, None
    )
    made.__dict__.update(extra)
    return made


def promote_event() -> ChangeEvent:
    audit = AuditRecord(
        feature_id="checkout",
        sequence=4,
        action=Action.PROMOTE,
        version="1.1.0",
        from_stable="1.0.0",
        to_stable="1.1.0",
        from_canary="1.1.0",
        to_canary=None,
        actor="alice",
        reason="canary healthy\nfor 2 days",
        ticket="OPS-7",
        at=datetime(2026, 11, 26, tzinfo=UTC),
        detail="soak skipped",
        principal="ci-bot",
    )
    transition = StoredTransition(id=9, record=audit, global_sequence=9, request_id="r-1")
    return ChangeEvent(9, FeatureState("checkout", sequence=4), transition)


@pytest.fixture
def root_logging() -> Iterator[None]:
    """The root logger's handlers and level put back after a test that configures them."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


class TestJsonFormatter:
    def test_a_record_is_one_json_object_with_its_fields(self) -> None:
        """time, level, logger and message, then the fields passed as extra=."""
        line = JsonFormatter().format(record("origin write failed: %s", "disk full", path="a.json"))
        entry = json.loads(line)
        assert entry["level"] == "WARNING"
        assert entry["logger"] == "releasecontrol_server.test"
        assert entry["message"] == "origin write failed: disk full"
        assert entry["path"] == "a.json"
        assert entry["time"].endswith("Z") and len(entry["time"]) == len("2026-11-26T10:00:00.000Z")
        assert datetime.fromisoformat(entry["time"]).tzinfo is not None

    def test_a_multi_line_message_and_a_traceback_stay_on_one_line(self) -> None:
        """Newlines in the message or an exception's traceback never split the line."""
        try:
            raise ValueError("boom")
        except ValueError:
            made = record("first\nsecond")
            made.exc_info = __import__("sys").exc_info()
        line = JsonFormatter().format(made)
        assert "\n" not in line
        entry = json.loads(line)
        assert entry["message"] == "first\nsecond"
        assert "ValueError: boom" in entry["exception"]

    def test_fields_json_cannot_hold_are_written_as_text(self) -> None:
        """A Path or a datetime field is its text; uvicorn's coloured copy is left out."""
        entry = json.loads(
            JsonFormatter().format(
                record("x", where=Path("/srv/db"), color_message="\x1b[36mx\x1b[0m")
            )
        )
        assert entry["where"] == "/srv/db"
        assert "color_message" not in entry


class TestChangeLine:
    def test_each_committed_change_is_one_line_with_who_what_and_why(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A change published by the hub is one INFO record on the changes logger carrying
        principal, actor, feature, action, the versions, sequences, reason and ticket."""
        hub = WatchHub(10)
        hub.on_change(log_change)
        with caplog.at_level(logging.INFO, logger=CHANGE_LOGGER):
            hub.publish(promote_event())
        [line] = [r for r in caplog.records if r.name == CHANGE_LOGGER]
        assert line.levelno == logging.INFO
        fields = {
            key: getattr(line, key)
            for key in (
                "principal",
                "actor",
                "feature",
                "action",
                "from_stable",
                "to_stable",
                "from_canary",
                "to_canary",
                "sequence",
                "global_sequence",
                "reason",
                "ticket",
                "request_id",
                "detail",
            )
        }
        assert fields == {
            "principal": "ci-bot",
            "actor": "alice",
            "feature": "checkout",
            "action": "promote",
            "from_stable": "1.0.0",
            "to_stable": "1.1.0",
            "from_canary": "1.1.0",
            "to_canary": None,
            "sequence": 4,
            "global_sequence": 9,
            "reason": "canary healthy\nfor 2 days",
            "ticket": "OPS-7",
            "request_id": "r-1",
            "detail": "soak skipped",
        }
        # In text mode the message says it all, on one line.
        text = line.getMessage()
        assert "\n" not in text
        assert text.startswith("change feature=checkout action=promote version=1.1.0")
        assert "from_stable=1.0.0 to_stable=1.1.0 from_canary=1.1.0 to_canary=-" in text
        assert "principal='ci-bot' actor='alice'" in text
        assert "reason='canary healthy\\nfor 2 days' ticket='OPS-7'" in text

    def test_an_observer_that_fails_does_not_stop_the_others_or_the_watchers(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A change observer that raises is logged; later observers and subscribers still
        get the change."""
        hub = WatchHub(10)
        seen: list[int] = []

        def broken(event: ChangeEvent) -> None:
            raise RuntimeError("a bug")

        hub.on_change(broken)
        hub.on_change(lambda event: seen.append(event.global_sequence))
        subscriber = hub.subscribe()
        with caplog.at_level(logging.ERROR):
            hub.publish(promote_event())
        assert seen == [9]
        assert subscriber._queue.qsize() == 1
        assert "a change observer failed" in caplog.text


class TestConfigureLogging:
    def test_json_mode_writes_every_record_as_json(self, root_logging: None) -> None:
        """After configure_logging('json'), any logger's line is one JSON object."""
        stream = io.StringIO()
        configure_logging("json", "info", stream=stream)
        logging.getLogger("releasecontrol_server.somewhere").info("hello %s", "there")
        logging.getLogger("releasecontrol_server.somewhere").debug("not at INFO")
        [line] = stream.getvalue().splitlines()
        assert json.loads(line)["message"] == "hello there"

    def test_text_mode_writes_time_level_logger_message(self, root_logging: None) -> None:
        """The default format: `time LEVEL logger message`."""
        stream = io.StringIO()
        configure_logging("text", logging.INFO, stream=stream)
        logging.getLogger("releasecontrol_server.somewhere").warning("careful")
        assert (
            stream.getvalue().rstrip().endswith("WARNING releasecontrol_server.somewhere careful")
        )

    def test_an_unknown_level_names_the_variable(self) -> None:
        """RELEASECONTROL_LOG_LEVEL=loud is refused naming the variable and the choices."""
        with pytest.raises(
            ConfigError, match="RELEASECONTROL_LOG_LEVEL is 'loud'; set it to DEBUG"
        ):
            parse_level("loud")
        assert parse_level("warning") == logging.WARNING


class TestLogFormatSetting:
    @pytest.mark.parametrize("given", ["json", "JSON", " text "])
    def test_text_and_json_are_accepted(self, tmp_path: Path, given: str) -> None:
        """log_format takes text or json, in any case."""
        loaded = load_config(
            {"RELEASECONTROL_HOME": str(tmp_path), "RELEASECONTROL_LOG_FORMAT": given},
            cwd=tmp_path,
        )
        assert loaded.log_format == given.strip().lower()

    def test_the_default_is_text(self, tmp_path: Path) -> None:
        """Without the setting, logs are text."""
        assert (
            load_config({"RELEASECONTROL_HOME": str(tmp_path)}, cwd=tmp_path).log_format == "text"
        )

    def test_another_value_in_the_file_is_refused_naming_the_key(self, tmp_path: Path) -> None:
        """log_format = "logfmt" in the TOML file stops the load with one line naming it."""
        (tmp_path / "config.toml").write_text('log_format = "logfmt"\n')
        with pytest.raises(ConfigError) as caught:
            load_config({"RELEASECONTROL_HOME": str(tmp_path)}, cwd=tmp_path)
        assert caught.value.message == (
            f"log_format in {tmp_path / 'config.toml'} is 'logfmt'; set it to 'text' or 'json'."
        )
