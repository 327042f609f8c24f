"""Every benchmark runs in quick mode and reports its figures, so none of them rots.

Nothing here asserts anything about speed: a quick run uses small sizes on
whatever machine CI has, and a missed target is a result, not a failure.
"""

from __future__ import annotations

import math
import sqlite3
import sys
from pathlib import Path

import pytest

# `bench` lives at the top of the repository, beside `tests`, and is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.__main__ import BENCHMARKS, main
from bench._report import (
    RESULTS_END,
    RESULTS_START,
    Outcome,
    record,
    render_results,
)
from bench._work import FLOOR_SIZES, protocol_floor

pytestmark = pytest.mark.integration


class TestQuickRuns:
    @pytest.mark.parametrize("name", list(BENCHMARKS))
    def test_each_benchmark_runs_and_reports(self, name: str, tmp_path: Path) -> None:
        """The benchmark finishes and reports finite figures and every target as PASS or MISS."""
        outcome = BENCHMARKS[name](tmp_path, quick=True)
        assert outcome.name == name
        assert outcome.figures, "a benchmark must report what it measured"
        for figure in outcome.figures:
            assert figure.name and figure.unit
            assert math.isfinite(figure.value), figure
        assert outcome.targets, "a benchmark must check its targets"
        for target in outcome.targets:
            assert target.verdict in ("PASS", "MISS")
            assert math.isfinite(target.value), target
            assert target.goal

    def test_the_command_line_records_a_quick_run(self, tmp_path: Path) -> None:
        """`python -m bench --quick --only cli --record F` rewrites F's results part only."""
        doc = tmp_path / "benchmarks.md"
        doc.write_text(f"# Title\n\nkept\n\n{RESULTS_START}\nold\n{RESULTS_END}\n\nalso kept\n")
        assert main(["--quick", "--only", "cli", "--record", str(doc)]) == 0
        text = doc.read_text()
        assert text.startswith("# Title\n\nkept\n")
        assert text.endswith("also kept\n")
        assert "old" not in text
        assert "### cli:" in text and "| CPUs (nproc) |" in text


class TestRecord:
    def test_record_keeps_what_is_around_the_markers(self, tmp_path: Path) -> None:
        """Only the text between the markers is replaced; a new file gets a title."""
        outcome = Outcome("demo", "a demo", "setup")
        outcome.add("rate", 12.5, "ops/s")
        outcome.at_least("ratio", 0.4, 0.5, reason="too slow")
        results = render_results([outcome], [("CPUs (nproc)", "2")], quick=True)
        assert "**0 of 1 targets met.**" in results
        assert "- **MISS, ratio**: too slow" in results
        fresh = tmp_path / "new.md"
        record(fresh, results)
        assert fresh.read_text().startswith("# Benchmarks\n\n" + RESULTS_START)
        record(fresh, results.replace("12.5", "13.0"))
        assert fresh.read_text().count(RESULTS_START) == 1
        assert "13.0 ops/s" in fresh.read_text()


def test_the_protocol_floor_does_the_work_it_measures(tmp_path: Path) -> None:
    """The floor the writes benchmark compares the server with commits, signs and swaps every
    file of the changes into place each round, and leaves nothing hidden behind."""
    times, cpu = protocol_floor(tmp_path, 3, batch=2)
    assert len(times) == len(cpu) == 3
    assert all(t > 0 for t in times) and all(c > 0 for c in cpu)
    origin = tmp_path / "origin"
    placed = sorted(str(p.relative_to(origin)) for p in origin.rglob("*") if p.is_file())
    assert placed == [
        "features/feature-00000/releases.json",
        "features/feature-00001/releases.json",
        "index/7/0.json",
        "index/7/1.json",
        "remote-index.json",
    ]
    # Each file holds its body and a 64-byte signature, the last round's.
    top = (origin / "remote-index.json").read_bytes()
    assert len(top) == FLOOR_SIZES["top"] + 64
    with sqlite3.connect(tmp_path / "floor-2.db") as db:
        (stored,) = db.execute("SELECT body FROM files WHERE path = 'remote-index.json'").fetchone()
    assert stored == top
