"""A real Alertmanager (Debian's prometheus-alertmanager) on loopback, for output tests."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support import free_port, require_binary, stop_process, wait_port

# Everything goes to a receiver with no integrations: alerts are stored, nothing is notified.
CONFIG = """\
route:
  receiver: "null"
receivers:
  - name: "null"
"""


class AlertmanagerServer:
    def __init__(self, workdir: Path) -> None:
        binary = require_binary("prometheus-alertmanager")
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "alertmanager.yml"
        config.write_text(CONFIG)
        self.log_path = workdir / "alertmanager.log"
        with self.log_path.open("wb") as log:
            # An empty cluster address keeps it from listening on 0.0.0.0:9094 for gossip.
            self.proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
                stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            wait_port(self.port, proc=self.proc)
            deadline = time.monotonic() + 15
            while httpx.get(f"{self.url}/-/ready").status_code != 200:
                if time.monotonic() > deadline:
                    raise TimeoutError("alertmanager never became ready")
                time.sleep(0.05)
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"alertmanager did not start: {exc}\n{self.log()}") from exc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alerts(self) -> list[dict[str, Any]]:
        """The active alerts, as `GET /api/v2/alerts` returns them."""
        response = httpx.get(f"{self.url}/api/v2/alerts")
        response.raise_for_status()
        alerts: list[dict[str, Any]] = response.json()
        return alerts

    def wait_alerts(self, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Block until at least ``n`` alerts are active; returns them."""
        deadline = time.monotonic() + timeout
        while len(alerts := self.alerts()) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"alertmanager has {len(alerts)} of {n} alerts")
            time.sleep(0.05)
        return alerts

    def stop(self) -> None:
        stop_process(self.proc, 10)
