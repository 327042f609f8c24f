"""while_leading: a one-per-cluster job runs only while its replica leads, stops when the
replica stops leading, and runs again when it leads again."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from releasecontrol_server import leader


@dataclass
class Replica:
    leading: bool


@pytest.fixture(autouse=True)
def quick_looks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leader, "LOOK_SECONDS", 0.01)


async def test_the_job_runs_while_leading_and_moves_with_leadership() -> None:
    replica = Replica(leading=False)
    stop = asyncio.Event()
    runs: list[str] = []

    async def job(its_stop: asyncio.Event) -> None:
        runs.append("start")
        await its_stop.wait()
        runs.append("stop")

    task = asyncio.create_task(leader.while_leading(replica, stop, job, "test-job"))
    await asyncio.sleep(0.05)
    assert runs == []  # not leading: never started

    replica.leading = True
    await asyncio.sleep(0.05)
    assert runs == ["start"]

    replica.leading = False  # another replica took over
    await asyncio.sleep(0.05)
    assert runs == ["start", "stop"]

    replica.leading = True
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 1)
    assert runs == ["start", "stop", "start", "stop"]


async def test_a_job_that_ends_by_itself_is_started_again_while_leading(
    caplog: pytest.LogCaptureFixture,
) -> None:
    replica = Replica(leading=True)
    stop = asyncio.Event()
    runs = 0

    async def job(its_stop: asyncio.Event) -> None:
        nonlocal runs
        runs += 1

    task = asyncio.create_task(leader.while_leading(replica, stop, job, "short-job"))
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(task, 1)
    assert runs >= 2
    # Said as it is: the replica still leads.
    assert "short-job ended by itself" in caplog.text
    assert "no longer leads" not in caplog.text
