"""ReleaseControl's benchmarks: `python -m bench` (see docs/benchmarks.md).

Each module measures one thing against a baseline it measures itself in the
same run, and returns an `Outcome` (bench._report) with its figures and the
issue's targets marked PASS or MISS.
"""
