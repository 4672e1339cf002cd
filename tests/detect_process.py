"""A `lanner detect` process writing Falco JSON lines to a file, as the e2e tests run it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support import stop_process


class DetectProcess:
    """``lanner detect --output file:<scratch>/alerts.json ARGS``, started once its stderr
    says ``ready``. With ``hosts``, only this process sees that file as /etc/hosts, so the
    node's resolver is left alone."""

    def __init__(self, scratch: Path, *args: str, hosts: Path | None = None,
                 ready: str = "eBPF source attached") -> None:
        self.out = scratch / "alerts.json"
        self.err = scratch / "stderr.txt"
        command = [sys.executable, "-m", "sidekick.cli", "detect",
                   "--output", f"file:{self.out}", *args]
        if hosts is not None:
            command = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                       'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts), *command]
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        self.wait_for(lambda: ready in self.stderr(), f"{ready!r} in its log", 120)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def alerts(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [orjson.loads(line) for line in self.out.read_bytes().splitlines()
                if line.endswith(b"}")]  # a line being written is skipped until complete

    def wait(self, rule: str, match: Callable[[dict[str, Any]], bool],
             timeout: float) -> dict[str, Any] | None:
        """The first alert of ``rule`` whose output fields ``match``, or None in time."""
        deadline = time.monotonic() + timeout
        while True:
            for alert in self.alerts():
                if alert["rule"] == rule and match(alert["output_fields"]):
                    return alert
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def wait_for(self, check: Callable[[], Any], what: str, timeout: float = 30) -> None:
        """Until ``check()`` holds; fails the test (and stops the process) if it exits first
        or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"no {what}; the detector said:\n{self.stderr()}")
            time.sleep(0.05)

    def stop(self) -> str:
        stop_process(self.proc, 30)
        return self.stderr()
