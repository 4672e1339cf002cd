"""Upstream Falco rules files (Apache-2.0) for compatibility tests, read from the shared folder.

They are never copied into the project. Missing files fail the test in CI (CI=true) and skip it,
with the reason, elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

UPSTREAM = Path(__file__).resolve().parents[2] / "shared" / "upstream" / "falco"


def upstream_file(name: str) -> Path:
    path = UPSTREAM / name
    if not path.is_file():
        message = f"upstream rules file {path} is missing"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
