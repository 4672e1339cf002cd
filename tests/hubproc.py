"""Run `lanner sidekick` as a real process on loopback ports, as a user would."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support import free_port, wait_port


class HubProcess:
    def __init__(
        self, workdir: Path, config: dict[str, Any], name: str = "hub", grpc: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.name = name
        self.port = free_port()
        self.grpcport = free_port() if grpc else 0
        self.config = {
            "listenaddress": "127.0.0.1",
            "listenport": self.port,
            "grpcport": self.grpcport,
            "datadir": str(workdir / f"{name}-data"),
            "replica": name,
            **config,
        }
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.log_path = workdir / f"{name}.log"
        # The UI token (env LANNER_UI_TOKEN) is in ``url`` as Basic credentials, so API calls
        # through it are authenticated; ``base_url`` has none (a browser, or a test of access).
        self.token = secrets.token_urlsafe(24)
        self.env = {**os.environ, "LANNER_UI_TOKEN": self.token, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://lanner:{self.token}@127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> HubProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidekick.cli", "sidekick", "-c", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env,
        )
        try:
            wait_port(self.port, timeout, self.proc)
            deadline = time.monotonic() + timeout
            while httpx.get(f"{self.url}/healthz").status_code != 200:
                if time.monotonic() > deadline:
                    raise TimeoutError("hub never became healthy")
                time.sleep(0.05)
        except Exception as exc:
            raise RuntimeError(f"hub {self.name} did not start: {exc}\n{self.log()}") from exc
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """kill -9: no chance to flush or drain."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def __enter__(self) -> HubProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def falco_alert(n: int = 0, **overrides: Any) -> dict[str, Any]:
    """An alert exactly as Falco's http_output sends it."""
    alert: dict[str, Any] = {
        "uuid": f"00000000-0000-4000-8000-{n:012d}",
        "output": f"10:00:00.123456789: Warning Shell spawned (user=root proc=bash n={n})",
        "priority": "Warning",
        "rule": "Terminal shell in container",
        "time": "2026-11-29T10:00:00.123456789Z",
        "output_fields": {
            "evt.time": 1795946400123456789,
            "proc.name": "bash",
            "proc.pid": 4242,
            "user.name": "root",
            "container.id": "abcdef123456",
            "k8s.ns.name": "default",
            "fd.name": None,
            "n": n,
        },
        "source": "syscall",
        "tags": ["container", "mitre_execution", "shell"],
        "hostname": "node-1",
    }
    alert.update(overrides)
    return alert
