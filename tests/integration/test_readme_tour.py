"""README.md's "A tour of the CLI", run as written against a fresh `releasectl dev`.

The commands are taken from the README itself (the first ```sh block under the
tour's heading), so the tour cannot drift from the CLI (issue 13, item 14: it
had a fallback that the rollback before it made impossible). They run in
order, in a project folder holding what the tour's text says it holds, with
`releasectl dev` started in that folder as a user would (no
RELEASECONTROL_HOME: the CLI finds `./.releasecontrol` itself). A line whose
comment says `(exit N)` must fail with that code in one `error:` line; every
other line must succeed.

TOUR_README names another copy of the README to run (to try a new tour before
it replaces the README's).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from pathlib import Path

import pytest
from conftest import make_feature
from dev_process import DevProcess, releasectl_in

pytestmark = pytest.mark.integration

README = Path(os.environ.get("TOUR_README") or Path(__file__).resolve().parents[2] / "README.md")
TOUR_HEADING = "## A tour of the CLI"
TOUR_SECONDS = 150


def tour(text: str) -> tuple[str, list[str]]:
    """The tour's prose before its commands, and its `releasectl` lines, from the README."""
    section = text.split(TOUR_HEADING, 1)[1]
    prose, rest = section.split("```sh\n", 1)
    block = rest.split("```", 1)[0]
    return prose, [line for line in block.splitlines() if line.startswith("releasectl ")]


def expected_exit(line: str) -> int:
    found = re.search(r"#.*\(exit (\d+)\)", line)
    return int(found.group(1)) if found else 0


@pytest.mark.timeout(TOUR_SECONDS + 30)
def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    """Every command of the tour, in order, against a fresh `releasectl dev`."""
    prose, lines = tour(README.read_text())
    assert len(lines) >= 8, lines
    # The folder the tour's text describes: 1.2.0 in features/checkout, the next build,
    # 1.3.0, in build/checkout.
    assert "features/checkout/" in prose and "build/checkout/" in prose, prose
    project = tmp_path / "project"
    make_feature(project, "checkout", "1.2.0")
    (project / "build").mkdir()
    make_feature(tmp_path / "next", "checkout", "1.3.0").rename(project / "build" / "checkout")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)

    dev = DevProcess(project, runtime)
    started = time.monotonic()
    try:
        for line in lines:
            args = shlex.split(line, comments=True)
            left = TOUR_SECONDS - (time.monotonic() - started)
            assert left > 0, f"the tour took over {TOUR_SECONDS}s, at: {line}"
            done = releasectl_in(project, runtime, *args[1:], timeout=min(60, left))
            code = expected_exit(line)
            assert done.returncode == code, (line, done.stdout, done.stderr)
            if code:
                assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, (
                    line,
                    done.stderr,
                )
            assert "Traceback" not in done.stderr, (line, done.stderr)
        # What the tour did, as the control plane has it.
        status = releasectl_in(project, runtime, "release", "status", "--output", "json")
        assert status.returncode == 0, status.stderr
        assert [f["feature_id"] for f in json.loads(status.stdout)] == ["checkout"]
    finally:
        assert dev.stop() == 0, dev.log.read_text()
    # One process on SQLite leads all along: its jobs start once and never move or restart
    # (a disabled canary analysis used to end at once and restart every second).
    log = dev.log.read_text()
    assert "no longer leads" not in log and "ended by itself" not in log, log
