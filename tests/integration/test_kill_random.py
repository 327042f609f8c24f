"""The kill test's second half: SIGKILLs at random moments (issue 12, item 7).

A module of its own so that pytest-xdist runs it beside test_kill.py's named points (each
module goes to one worker); the run, its checks and the constants are test_kill.py's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_kill import (
    RANDOM_KILL_DELAY_SECONDS,
    RANDOM_MAX_CHANGES,
    RANDOM_ROUNDS,
    run_round,
    start_run,
)

pytestmark = pytest.mark.integration


def test_kills_at_random_moments_lose_no_acknowledged_change(tmp_path: Path) -> None:
    """SIGKILLed from outside 0.05-0.5 s into a stream of changes (wherever it is then: an
    upload, signing, a commit, an fsync, an answer), the server restarts with every
    acknowledged change, its sequences and a clean, verifying origin."""
    run = start_run(tmp_path, "random")
    low, high = RANDOM_KILL_DELAY_SECONDS
    for round_no in range(1, RANDOM_ROUNDS + 1):
        delay = round(run.rng.uniform(low, high), 3)
        run_round(
            run,
            f"round {round_no} (SIGKILL after {delay} s)",
            env={},
            kill_after=delay,
            max_changes=RANDOM_MAX_CHANGES,
        )
    print("\n".join(run.rounds))  # shown with -s, or when the test fails
    assert run.not_killed == [], run.rounds
    assert len(run.acked) > RANDOM_ROUNDS * 3, "too few changes ran to be killed among"
