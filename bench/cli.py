"""cli: wall time of `releasectl release status` vs `python -c "import grpc"`.

Both are run as fresh processes, alternating, and compared by their medians:
what a person waits for at the prompt, interpreter start included. The
command talks to a real server (mTLS, rpc-token auth) with a few features.
Target: under twice the bare `import grpc`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench._report import Outcome, median, ms
from bench._server import BenchServer

TARGET_RATIO = 2.0


@dataclass(frozen=True)
class Sizes:
    runs: int
    features: int = 10
    versions: int = 3


FULL = Sizes(runs=15)
QUICK = Sizes(runs=2)


def _releasectl() -> list[str]:
    script = Path(sys.executable).with_name("releasectl")
    if script.exists():
        return [str(script)]
    return [
        sys.executable,
        "-c",
        "import sys; from releasectl import main; sys.exit(main())",
    ]


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode(errors='replace')}"
        )
    return elapsed


def run(work_dir: Path, *, quick: bool = False) -> Outcome:
    sizes = QUICK if quick else FULL
    outcome = Outcome(
        "cli",
        '`releasectl release status` vs `python -c "import grpc"`',
        f"Server: real process, mTLS, rpc-token auth, {sizes.features} features × "
        f"{sizes.versions} versions. {sizes.runs} runs of each command, alternating, as new "
        "processes; medians compared.",
    )
    started = time.perf_counter()
    baseline = [sys.executable, "-c", "import grpc"]
    with BenchServer(work_dir / "server", features=sizes.features, versions=sizes.versions) as srv:
        # PYTHONDONTWRITEBYTECODE (set in some CI shells) would make releasectl compile
        # its own modules on every run, while grpc's come precompiled from the wheel:
        # without it the warm-up run below writes them, as a user's first run does.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RELEASECONTROL_", "FEATURE_")) and k != "PYTHONDONTWRITEBYTECODE"
        }
        env.update(srv.client_env())
        command = [*_releasectl(), "release", "status"]
        _timed(command, env)  # warm the page cache for both
        _timed(baseline, env)
        grpc_times: list[float] = []
        cli_times: list[float] = []
        for _ in range(sizes.runs):
            grpc_times.append(_timed(baseline, env))
            cli_times.append(_timed(command, env))
    outcome.add('python -c "import grpc"', ms(median(grpc_times)), "ms", "median")
    outcome.add("releasectl release status", ms(median(cli_times)), "ms", "median")
    outcome.add("releasectl release status, fastest", ms(min(cli_times)), "ms")
    outcome.at_most(
        "release status ÷ import grpc (medians)",
        median(cli_times) / median(grpc_times),
        TARGET_RATIO,
        reason="",
    )
    outcome.seconds = time.perf_counter() - started
    return outcome
