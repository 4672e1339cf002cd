"""`make run` as a newcomer runs it (issue 6): the real Makefile target on free ports, the hub
and the detector (real eBPF as root), the sample behaviour it prints performed for real and
its alert seen in the hub's API, Ctrl-C to make's process group, and nothing left running.
Also: the fallback when eBPF cannot load, the hub dying under the detector, a hub that cannot
start, a detector that fails (the hub stays), and a user who is not root (the hub alone).

Needs root and a prepared node: without them the tests fail (skip only a plain user's run
outside CI), as the eBPF tests do. Make must find the set-up stamp current: these tests never
reinstall.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ebpf_support import prepared_node
from tests.support import free_port

REPO = Path(__file__).resolve().parents[1]
LANNER = str(Path(sys.executable).with_name("lanner"))
# The outer `make test` must not leak into the `make run` under test.
MAKE_ENV = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES", "SUDO_USER")
HUB_READY = r"hub ready: (http://\S+)/  events API: (\S+)"
UI_READY = r"lanner run: UI: (http://\S+)/ui/\?token=(\S+)  "
SAMPLE = r"trigger a sample alert: (.+?)  \(rule \"([^\"]+)\"\)"
ALERT_WAIT = 5.0
# What `lanner run` says when a part of it failed: waiting longer would be pointless.
GAVE_UP = r"lanner run: the (hub|detector) (stopped|exited)"


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: state, ppid, pgrp, ... (None: gone)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def cmdline(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def descendants(root: int) -> dict[int, tuple[str, int]]:
    """The processes under ``root`` (itself included): pid -> (start time, process group)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
            children.setdefault(int(stat[1]), []).append(int(entry.name))
    found: dict[int, tuple[str, int]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        stat = _proc_stat(pid)
        if stat is not None:
            found[pid] = (stat[19], int(stat[2]))
            todo += children.get(pid, [])
    return found


def still_running(processes: dict[int, tuple[str, int]]) -> list[int]:
    """Those of ``processes`` alive (not a later process that got the same pid), and any
    process in one of their process groups."""
    alive = [pid for pid, (start, _) in processes.items()
             if (stat := _proc_stat(pid)) is not None and stat[19] == start and stat[0] != "Z"]
    for pgid in {group for _, group in processes.values()}:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            continue
        alive.append(-pgid)
    return alive


def need_root(why: str) -> None:
    """Fail (as root, or in CI); skip only a plain user's run."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail(f"{why}: run the tests as root")
        pytest.skip(why)


class Running:
    """A command (`make run`, `lanner run`) in its own session, its output collected line by
    line."""

    def __init__(self, command: list[str], port: int, grpcport: int) -> None:
        self.port, self.grpcport = port, grpcport
        env = {k: v for k, v in os.environ.items() if k not in MAKE_ENV}
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if found := re.search(pattern, line):
                        return found
                left = deadline - time.monotonic()
                ended = self.proc.poll() is not None and not self._reader.is_alive()
                if left <= 0 or ended or any(re.search(GAVE_UP, line) for line in self.lines):
                    raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.lines))
                self._cond.wait(min(left, 0.2))

    def wait(self, timeout: float = 90) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def cleanup(self) -> None:
        """After a failure: take the whole tree down."""
        for pid in descendants(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def make_run(scratch: Path, *run_args: str) -> Running:
    """`make run` on free ports, as root, never reinstalling."""
    need_root("`make run` starts the detector only as root")
    stale = subprocess.run(["make", "-q", "-C", str(REPO), ".venv/.installed"],
                           capture_output=True, check=False)
    if stale.returncode != 0:
        pytest.fail("the set-up stamp .venv/.installed is out of date: run `make setup` "
                    "first (this test must not reinstall)")
    port, grpcport = free_port(), free_port()
    command = ["make", "--no-print-directory", "-C", str(REPO), "run",
               f"DATADIR={scratch / 'data'}", f"LISTENPORT={port}", f"GRPCPORT={grpcport}"]
    if run_args:
        command.append("RUN_ARGS=" + " ".join(run_args))
    return Running(command, port, grpcport)


def lanner_run(scratch: Path, *args: str, user: list[str] | None = None) -> Running:
    """`lanner run` itself on free ports, optionally behind ``user`` (a setpriv command)."""
    port, grpcport = free_port(), free_port()
    return Running([*(user or []), LANNER, "run", "--datadir", str(scratch / "data"),
                    "--listenport", str(port), "--grpcport", str(grpcport), *args],
                   port, grpcport)


@dataclass(frozen=True)
class Performed:
    """A behaviour run under a shell with a name of its own (``parent``), which an eBPF alert
    shows as ``proc.pname``, between ``start`` and ``end`` (ns, the clock of ``evt.time``)."""

    parent: str
    start: int
    end: int

    def caused(self, fields: dict[str, Any], *, exact: bool) -> bool:
        """Whether an alert's fields are this behaviour's. Not ``exact``: the fallback source
        may miss a short-lived process's exec under load (it says so at start), and blames the
        process it forked from, so the alert is recognised by its time alone."""
        if exact:
            return fields.get("proc.pname") == self.parent
        return self.start <= fields["evt.time"] <= self.end


def perform(command: str, scratch: Path) -> Performed:
    marker = scratch / f"lr{uuid.uuid4().hex[:8]}"
    shutil.copy("/bin/sh", marker)
    start = time.time_ns()
    subprocess.run([str(marker), "-c", command], check=True, timeout=30)
    return Performed(marker.name, start, time.time_ns())


def wait_alert(events_url: str, token: str, rule: str, performed: Performed,
               *, exact: bool = True) -> tuple[dict[str, Any], float]:
    start = time.monotonic()
    while True:
        page = httpx.get(events_url, params={"rule": rule, "limit": 100}, timeout=10,
                         headers={"authorization": f"Bearer {token}"}).json()
        for event in page["events"]:
            if performed.caused(event["output_fields"], exact=exact):
                return event, time.monotonic() - start
        if time.monotonic() - start > ALERT_WAIT:
            raise AssertionError(f"no {rule!r} alert from {performed} within {ALERT_WAIT}s: "
                                 f"{[e['output_fields'] for e in page['events']]}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def node() -> None:
    prepared_node()


@pytest.mark.timeout(600)  # compiling the eBPF program on a loaded 2-core machine
def test_make_run_catches_the_sample_and_stops_cleanly_on_ctrl_c(
        node: None, tmp_path: Path) -> None:
    run = make_run(tmp_path)
    try:
        hub_url, events_url = run.wait_for(HUB_READY, 120).groups()
        assert hub_url == f"http://127.0.0.1:{run.port}"
        assert events_url == f"{hub_url}/api/v1/events"
        ui_url, token = run.wait_for(UI_READY, 5).groups()
        assert ui_url == hub_url and httpx.get(events_url, timeout=10).status_code == 401
        started = time.monotonic()
        command, rule = run.wait_for(SAMPLE, 420).groups()
        ready_after = time.monotonic() - started
        assert "detector ready (eBPF), publishing to the hub over gRPC at " \
            f"127.0.0.1:{run.grpcport}" in run.output
        assert not command.startswith("sudo")  # root's own shell
        event, latency = wait_alert(events_url, token, rule, perform(command, tmp_path))
        assert event["output_fields"]["fd.name"] == "/etc/shadow"
        assert event["uuid"] and event["priority"] == "Warning"
        # Triage: a false positive for cat. The hub saves the exception where the detector
        # loads its rules from, and the detector applies it without a restart.
        saved = httpx.post(f"{hub_url}/api/v1/exceptions", timeout=10,
                           json={"uuid": event["uuid"], "fields": ["proc.name"]},
                           headers={"authorization": f"Bearer {token}"})
        assert saved.status_code == 200 and saved.json()["added"], saved.text
        assert saved.json()["file"] == str(tmp_path / "data" / "lanner_local_rules.yaml")
        run.wait_for(r"detector.*rules reloaded", 30)
        silenced = perform(command, tmp_path)
        control = perform(command.replace("cat ", "head -c1 "), tmp_path)
        wait_alert(events_url, token, rule, control)  # read after cat's: cat's would be in
        page = httpx.get(events_url, params={"rule": rule, "limit": 100}, timeout=10,
                         headers={"authorization": f"Bearer {token}"}).json()
        assert not [e for e in page["events"] if silenced.caused(e["output_fields"], exact=True)]
        assert "restarting" not in run.output
        # The alternative without the detector works too.
        test_line = run.wait_for(r"a test alert, no detector needed: (curl .+)$", 1).group(1)
        assert test_line == f"curl -s -XPOST {hub_url}/test"
        assert httpx.post(f"{hub_url}/test", timeout=10).status_code == 200
        tree = descendants(run.proc.pid)
        assert len(tree) >= 4, tree  # make, lanner run, the hub, the detector
        os.killpg(run.proc.pid, signal.SIGINT)
        code = run.wait()
    except BaseException:
        run.cleanup()
        raise
    print(f"detector ready {ready_after:.1f}s after the hub; alert in the API after "
          f"{latency * 1000:.0f} ms")
    # make dies of the SIGINT it got, once its recipe (lanner run) has exited.
    assert code in (-signal.SIGINT, 128 + signal.SIGINT), run.output
    out = run.output
    assert out.index("stopping the detector") < out.index("stopping the hub") \
        < out.index("lanner run: stopped"), out
    assert "did not stop in time" not in out
    assert "Traceback" not in out
    assert still_running(tree) == []
    with pytest.raises(httpx.ConnectError):  # the hub is gone: nothing answers any more
        httpx.get(events_url, timeout=5)


def test_without_ebpf_it_says_why_in_one_line_and_uses_the_fallback(
        node: None, tmp_path: Path) -> None:
    """Kernel headers that do not exist make eBPF impossible; then the hub dies (kill -9):
    the detector is stopped too and make fails with the reason."""
    run = make_run(tmp_path, "--", "--headers", str(tmp_path / "no-headers"))
    try:
        _, events_url = run.wait_for(HUB_READY, 120).groups()
        token = run.wait_for(UI_READY, 5).group(2)
        command, rule = run.wait_for(SAMPLE, 120).groups()
        why = run.wait_for(r"lanner run: eBPF cannot run here \((.+)\): the detector uses its "
                           r"fallback source", 1).group(1)
        assert "no-headers" in why
        assert "detector ready (fallback)" in run.output
        event, _ = wait_alert(events_url, token, rule, perform(command, tmp_path),
                              exact=False)
        assert event["output_fields"]["fd.name"] == "/etc/shadow"
        tree = descendants(run.proc.pid)
        [hub] = [pid for pid in tree if b"\0sidekick\0" in cmdline(pid)]
        os.kill(hub, signal.SIGKILL)
        code = run.wait()
    except BaseException:
        run.cleanup()
        raise
    out = run.output
    assert code == 2, out  # make: its recipe failed
    assert "lanner run: the hub stopped (killed by SIGKILL)" in out
    assert out.index("the hub stopped") < out.index("stopping the detector") \
        < out.index("lanner run: stopped"), out
    assert still_running(tree) == []


def test_a_hub_that_cannot_start_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [LANNER, "run", "--datadir", str(tmp_path / "data"), "--listenport", str(port),
             "--grpcport", str(free_port())],
            capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stdout
    [reason] = [line for line in done.stdout.splitlines()
                if line.startswith("lanner run: the hub exited")]
    assert "address already in use" in reason, done.stdout
    assert "starting the detector" not in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_not_root_runs_the_hub_alone_and_says_why(tmp_path: Path) -> None:
    """Root drops to nobody, keeping only the right to read the root-owned virtualenv."""
    need_root("this test drops from root to nobody")
    tmp_path.chmod(0o777)  # for nobody's data directory
    nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
              "--inh-caps", "+dac_read_search", "--ambient-caps", "+dac_read_search"]
    run = lanner_run(tmp_path, user=nobody)
    try:
        run.wait_for("Ctrl-C stops everything", 60)
        tree = descendants(run.proc.pid)
        assert httpx.post(f"http://127.0.0.1:{run.port}/test", timeout=10).status_code == 200
        os.killpg(run.proc.pid, signal.SIGINT)
        code = run.wait()
    except BaseException:
        run.cleanup()
        raise
    out = run.output
    assert "lanner run: not root, so the hub runs alone: the detector needs root" in out
    assert "starting the detector" not in out
    assert code == 0 and "lanner run: stopped" in out, out
    assert still_running(tree) == []


def test_a_detector_that_fails_leaves_the_hub_running(tmp_path: Path) -> None:
    need_root("the detector starts only as root")
    run = lanner_run(tmp_path, "--", "--rules", str(tmp_path / "missing.yaml"))
    try:
        reason = run.wait_for(r"lanner run: the detector stopped \(exit 2\): (.+); the hub "
                              r"keeps running", 60).group(1)
        assert "the rules cannot be loaded" in reason and "missing.yaml" in reason
        assert httpx.post(f"http://127.0.0.1:{run.port}/test", timeout=10).status_code == 200
        tree = descendants(run.proc.pid)
        os.killpg(run.proc.pid, signal.SIGINT)
        code = run.wait()
    except BaseException:
        run.cleanup()
        raise
    assert code == 0 and "lanner run: stopped" in run.output, run.output
    assert still_running(tree) == []
