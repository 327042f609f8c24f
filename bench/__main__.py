"""`python -m bench [--quick] [--only NAME ...] [--record docs/benchmarks.md]`.

Runs the benchmarks one after another, each in a fresh temporary folder,
prints every figure and target as it finishes, and with `--record` rewrites
the results part of the given Markdown file (machine, figures, PASS/MISS).
The exit code is 0 whether or not targets are met: a missed target is a
result to record, not a crash. It is 1 when a benchmark fails to run.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import (
    _server,
    browser,
    cli,
    hosts,
    propagation,
    reads,
    replicas,
    scale,
    streaming,
    writes,
)
from bench._report import Outcome, describe_machine, print_outcome, record, render_results

BENCHMARKS: dict[str, Callable[..., Outcome]] = {
    "reads": reads.run,
    "writes": writes.run,
    "scale": scale.run,
    "hosts": hosts.run,
    "browser": browser.run,
    "propagation": propagation.run,
    "cli": cli.run,
    "streaming": streaming.run,
    "replicas": replicas.run,
}


def run_all(
    names: list[str], *, quick: bool, work_root: Path | None = None, keep: bool = False
) -> list[Outcome]:
    """Run the named benchmarks (in the order given); each in its own temporary folder."""
    outcomes = []
    for name in names:
        work_dir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir=work_root))
        try:
            outcome = BENCHMARKS[name](work_dir, quick=quick)
        finally:
            if not keep:
                shutil.rmtree(work_dir, ignore_errors=True)
        print_outcome(outcome)
        outcomes.append(outcome)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks they all run")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these benchmarks"
    )
    parser.add_argument("--record", type=Path, help="rewrite the results in this Markdown file")
    parser.add_argument(
        "--work-dir", type=Path, help="where temporary state goes (default: the system temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    parser.add_argument(
        "--server-code",
        type=Path,
        help="run the server and releasectl from another checkout (before/after comparisons); "
        "the benchmark itself, its baselines and FeatureHost stay this checkout's",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    names = args.only or list(BENCHMARKS)
    if args.server_code is not None:
        _server.SERVER_CODE = args.server_code.resolve()
    started = time.perf_counter()
    try:
        outcomes = run_all(names, quick=args.quick, work_root=args.work_dir, keep=args.keep)
    except Exception:
        traceback.print_exc()
        return 1
    print(f"\nall benchmarks ran in {time.perf_counter() - started:.1f} s")
    if args.record is not None:
        machine = describe_machine(args.work_dir or Path(tempfile.gettempdir()))
        record(args.record, render_results(outcomes, machine, quick=args.quick))
        print(f"recorded in {args.record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
