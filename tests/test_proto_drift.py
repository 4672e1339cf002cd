"""The committed generated code matches what scripts/gen_proto.sh makes from lanner.proto."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ("lanner_pb2.py", "lanner_pb2.pyi", "lanner_pb2_grpc.py")


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(
        ["sh", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    stale = [
        name
        for name in GENERATED
        if (tmp_path / "sidekick" / "proto" / name).read_bytes()
        != (ROOT / "sidekick" / "proto" / name).read_bytes()
    ]
    assert not stale, f"{stale} out of date with lanner.proto: run scripts/gen_proto.sh"


def test_generated_grpc_module_imports_as_package() -> None:
    text = (ROOT / "sidekick" / "proto" / "lanner_pb2_grpc.py").read_text()
    assert "from sidekick.proto import lanner_pb2" in text
