"""What a benchmark reports: figures, targets with PASS/MISS, and how they are printed and recorded.

Every benchmark returns one `Outcome`. Its figures are what was measured
(rates, latencies, sizes); its targets are the issue's goals, each a ratio to
a baseline measured in the same run where there is one, or an absolute bound,
with `passed` and, for a miss, the reason in one sentence.
"""

from __future__ import annotations

import math
import os
import platform
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

RESULTS_START = "<!-- bench:results:start -->"
RESULTS_END = "<!-- bench:results:end -->"


@dataclass(frozen=True)
class Figure:
    """One measured value."""

    name: str
    value: float
    unit: str
    note: str = ""

    def text(self) -> str:
        return f"{format_number(self.value)} {self.unit}".strip()


@dataclass(frozen=True)
class Target:
    """One goal of the issue, the value it was checked against, and whether it was met."""

    name: str
    value: float
    unit: str
    goal: str
    """The goal as a sentence fragment, e.g. "≥ 0.8" or "< 5 s"."""
    passed: bool
    reason: str = ""
    """Why it was missed (empty when it passed)."""

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "MISS"


@dataclass
class Outcome:
    """Everything one benchmark measured."""

    name: str
    title: str
    setup: str
    """What was run: sizes, concurrency, durations."""
    figures: list[Figure] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, value: float, unit: str, note: str = "") -> Figure:
        figure = Figure(name, value, unit, note)
        self.figures.append(figure)
        return figure

    def at_least(
        self, name: str, value: float, minimum: float, *, unit: str = "×", reason: str = ""
    ) -> Target:
        return self._target(
            name, value, unit, f"≥ {format_number(minimum)}", value >= minimum, reason
        )

    def at_most(
        self, name: str, value: float, maximum: float, *, unit: str = "×", reason: str = ""
    ) -> Target:
        return self._target(
            name, value, unit, f"≤ {format_number(maximum)}", value <= maximum, reason
        )

    def below(
        self, name: str, value: float, limit: float, *, unit: str = "", reason: str = ""
    ) -> Target:
        return self._target(
            name, value, unit, f"< {format_number(limit)} {unit}".strip(), value < limit, reason
        )

    def _target(
        self, name: str, value: float, unit: str, goal: str, passed: bool, reason: str
    ) -> Target:
        target = Target(name, value, unit, goal, passed, "" if passed else reason)
        self.targets.append(target)
        return target


# -- numbers ------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` in 0..1) of `values`; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def format_number(value: float) -> str:
    """Three significant digits, without exponent for everyday magnitudes."""
    if isinstance(value, int) or (
        math.isfinite(value) and value == int(value) and abs(value) >= 100
    ):
        return f"{int(value):,}"
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def ms(seconds: float) -> float:
    return seconds * 1000.0


# -- the machine -----------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory() -> str:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return "unknown"
    found = re.search(r"MemTotal:\s+(\d+) kB", text)
    return f"{int(found.group(1)) / 1024 / 1024:.1f} GiB" if found else "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def fsync_ms(directory: Path, count: int = 50) -> float:
    """The median time of writing 1 KiB and fsyncing it, in `directory`: what durability costs."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=".fsync-probe-")
    times = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            os.write(fd, b"x" * 1024)
            os.fsync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        os.unlink(name)
    return ms(median(times))


def describe_machine(work_dir: Path) -> list[tuple[str, str]]:
    """(label, value) pairs naming what the figures were measured on."""
    return [
        ("CPUs (nproc)", str(len(os.sched_getaffinity(0)))),
        ("CPU model", _cpu_model()),
        ("memory", _memory()),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", sys.version.split()[0]),
        (
            "libraries",
            f"grpcio {_version('grpcio')}, protobuf {_version('protobuf')}, "
            f"cryptography {_version('cryptography')}, SQLite {sqlite3.sqlite_version}, "
            f"tuf {_version('tuf')}",
        ),
        ("fsync of 1 KiB (median)", f"{fsync_ms(work_dir):.2f} ms in {work_dir}"),
    ]


# -- printing and recording ------------------------------------------------------------------


def print_outcome(outcome: Outcome) -> None:
    print(f"\n== {outcome.name}: {outcome.title} ({outcome.seconds:.1f} s)", flush=True)
    print(f"   {outcome.setup}")
    width = max((len(f.name) for f in outcome.figures), default=0)
    for figure in outcome.figures:
        note = f"   ({figure.note})" if figure.note else ""
        print(f"   {figure.name:<{width}}  {figure.text()}{note}")
    for target in outcome.targets:
        value = f"{format_number(target.value)} {target.unit}".strip()
        reason = f" — {target.reason}" if target.reason else ""
        print(f"   [{target.verdict}] {target.name}: {value} (target {target.goal}){reason}")
    for note in outcome.notes:
        print(f"   note: {note}")
    sys.stdout.flush()


def render_results(
    outcomes: Sequence[Outcome], machine: Sequence[tuple[str, str]], *, quick: bool
) -> str:
    """The generated part of docs/benchmarks.md: the machine, then each benchmark's tables."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = "quick mode (small sizes: the figures are not the targets' sizes)" if quick else "full"
    lines = [
        RESULTS_START,
        "",
        f"## Results ({mode}, {now})",
        "",
        "Generated by `make bench` (`python -m bench --record docs/benchmarks.md`); "
        "everything between the markers is rewritten on every run.",
        "",
        "| machine | |",
        "| --- | --- |",
        *(f"| {label} | {value} |" for label, value in machine),
        "",
    ]
    passed = sum(t.passed for o in outcomes for t in o.targets)
    total = sum(len(o.targets) for o in outcomes)
    lines += [f"**{passed} of {total} targets met.**", ""]
    summary = ["| benchmark | target | measured | goal | |", "| --- | --- | --- | --- | --- |"]
    for outcome in outcomes:
        for target in outcome.targets:
            value = f"{format_number(target.value)} {target.unit}".strip()
            summary.append(
                f"| {outcome.name} | {target.name} | {value} | {target.goal} | {target.verdict} |"
            )
    lines += [*summary, ""]
    for outcome in outcomes:
        lines += [
            f"### {outcome.name}: {outcome.title}",
            "",
            outcome.setup,
            "",
            "| figure | value | |",
            "| --- | --- | --- |",
        ]
        lines += [f"| {f.name} | {f.text()} | {f.note} |" for f in outcome.figures]
        lines.append("")
        if outcome.targets:
            lines += ["| target | measured | goal | |", "| --- | --- | --- | --- |"]
            for target in outcome.targets:
                value = f"{format_number(target.value)} {target.unit}".strip()
                lines.append(f"| {target.name} | {value} | {target.goal} | {target.verdict} |")
            lines.append("")
            for target in outcome.targets:
                if target.reason:
                    lines.append(f"- **MISS, {target.name}**: {target.reason}")
            if any(t.reason for t in outcome.targets):
                lines.append("")
        for note in outcome.notes:
            lines.append(f"- {note}")
        if outcome.notes:
            lines.append("")
        lines += [f"_Ran in {outcome.seconds:.1f} s._", ""]
    lines.append(RESULTS_END)
    return "\n".join(lines)


def record(path: Path, results: str) -> None:
    """Replace the generated part of `path` with `results`, keeping everything around it."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if RESULTS_START in text and RESULTS_END in text:
        head, rest = text.split(RESULTS_START, 1)
        _, tail = rest.split(RESULTS_END, 1)
        text = head + results + tail
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "# Benchmarks\n\n") + results + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
