"""The committed generated code is exactly what `make proto` makes of the .proto files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "clients" / "releasecontrol" / "v1"


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    """Regenerating from proto/ gives byte-identical *_pb2.py, *_pb2_grpc.py and .pyi files."""
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "proto").rglob("*.proto"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            "proto",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--mypy_out={tmp_path}",
            f"--mypy_grpc_out={tmp_path}",
            *protos,
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "releasecontrol" / "v1").iterdir()}
    assert fresh, "protoc produced nothing"
    committed = {
        p.name: p.read_bytes()
        for p in GENERATED.iterdir()
        if p.name != "__init__.py" and p.is_file()
    }
    stale = sorted(name for name in fresh if committed.get(name) != fresh[name])
    assert not stale, f"run `make proto` and commit: {stale} differ from the .proto"
    assert set(committed) == set(fresh), "generated files without a .proto: remove them"
