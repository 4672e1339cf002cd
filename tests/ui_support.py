"""What the UI tests share: a recording whose events the default rules fire on, turning them
into the alerts the detector would publish, and asking `lanner rules test` what fires."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sidekick.alert import Alert, Priority, format_time_ns
from sidekick.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules" / "lanner_rules.yaml"
LANNER = [sys.executable, "-m", "sidekick.cli"]
SHELL_RULE = "Shell started in a container"

# A shell exec'd into a container, as recorded in tests/replay/lanner_rules.jsonl.
_SHELL = {
    "evt.type": "execve", "evt.rawres": 0,
    "evt.args": {"res": "0", "exe": "/usr/bin/bash", "args": "", "pid": "4242", "cwd": "/"},
    "proc.name": "bash", "proc.exe": "/usr/bin/bash", "proc.exepath": "/usr/bin/bash",
    "proc.args": "", "proc.pid": 4242, "proc.cwd": "/", "proc.tty": 34817,
    "proc.aname": ["runc", "containerd-shim", "systemd"],
    "proc.aexe": ["/usr/bin/runc", "/usr/bin/containerd-shim-runc-v2", "/usr/lib/systemd/systemd"],
    "user.uid": 0, "user.name": "root", "user.loginuid": -1, "group.gid": 0,
    "group.name": "root", "container.id": "3f2a9c1d7b45", "container.name": "shop-api-6b8d",
    "container.image.repository": "ghcr.io/acme/shop-api", "container.image.tag": "2.4.1",
    "container.privileged": False, "k8s.ns.name": "shop", "k8s.pod.name": "shop-api-6b8d",
}
# line in the recording -> (proc.name, image): lines 1 and 3 are the CI runner's benign shells.
SHELLS = {1: ("bash", "ghcr.io/acme/ci-runner"), 2: ("bash", "ghcr.io/acme/shop-api"),
          3: ("bash", "ghcr.io/acme/ci-runner"), 4: ("sh", "ghcr.io/acme/ci-runner")}


def write_recording(path: Path) -> Path:
    """Shell execs in containers, a second apart, ending now (inside any default time range)."""
    now = time.time_ns()
    lines = []
    for line, (name, image) in SHELLS.items():
        event = {**_SHELL, "proc.name": name, "container.image.repository": image,
                 "evt.time": now - (len(SHELLS) - line) * 10**9}
        lines.append(json.dumps(event))
    path.write_text("\n".join(lines) + "\n")
    return path


def rules_test(rules: list[Path], recording: Path) -> dict[str, Any]:
    """`lanner rules test --json`, as a user runs it."""
    done = subprocess.run([*LANNER, "rules", "test", *map(str, rules), "--events",
                           str(recording), "--json"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def fired(rules: list[Path], recording: Path, rule: str = SHELL_RULE) -> list[int]:
    """The recording's lines the rule fires on."""
    return sorted(a["line"] for a in rules_test(rules, recording)["alerts"] if a["rule"] == rule)


def uuid_of(line: int) -> str:
    return f"5e1f0000-0000-4000-8000-{line:012d}"


def detector_alerts(recording: Path) -> list[dict[str, Any]]:
    """The alerts the detector publishes for the recording (as Falco JSON, uuid per line)."""
    alerts = []
    for a in rules_test([RULES], recording)["alerts"]:
        alerts.append({
            "uuid": uuid_of(a["line"]), "rule": a["rule"], "priority": a["priority"],
            "output": a["output"], "output_fields": a["output_fields"],
            "time": format_time_ns(a["output_fields"]["evt.time"]), "source": "syscall",
            "tags": ["container", "shell"], "hostname": "node-1",
        })
    return alerts


def big_alert(i: int, time_ns: int) -> Alert:
    """The i-th alert of a large synthetic store: 20 rules, every priority, 30 hosts, 100
    containers in 10 namespaces."""
    return Alert(
        rule=f"Rule {i % 20:02d}", priority=Priority(1 + i % 8), time_ns=time_ns,
        output_fields={"proc.name": f"proc-{i % 50}", "container.name": f"app-{i % 100}",
                       "k8s.ns.name": f"ns-{i % 10}", "proc.pid": i, "evt.time": time_ns},
        output=f"Rule {i % 20:02d} fired for proc-{i % 50} in app-{i % 100} (event {i})",
        source="syscall", tags=["container", f"mitre_{i % 5}"], hostname=f"node-{i % 30:02d}",
        uuid=f"b16e0000-0000-4000-8000-{i:012d}")


def fill_sqlite(path: Path, count: int, spacing_ns: int = 500_000_000) -> float:
    """A SQLite store of ``count`` alerts, the newest now, ``spacing_ns`` apart, written through
    the store as the hub writes them. Returns the seconds it took."""

    async def run() -> None:
        store = SqliteStore(path)
        await store.open()
        now = time.time_ns()
        try:
            for start in range(0, count, 5000):
                batch = [(big_alert(i, now - (count - 1 - i) * spacing_ns), [])
                         for i in range(start, min(count, start + 5000))]
                await store.accept(batch, 600)
        finally:
            await store.close()

    started = time.monotonic()
    asyncio.run(run())
    return time.monotonic() - started
