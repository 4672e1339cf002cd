"""The detect loop, its sinks and `lanner detect`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from detector.detect import DROP_RULE, Detector, RecordQueue, serve_metrics
from detector.engine.engine import Engine
from detector.publish import SinkError, StreamSink, falco_json, open_sink
from detector.sources.opener import IterSource, read_records
from detector.sources.record import Record
from sidekick.alert import Alert
from tests.state_support import Node, record
from tests.support import free_port
from tests.upstream import upstream_file

LANNER = str(Path(sys.executable).with_name("lanner"))
FALCO_KEYS = ["hostname", "output", "output_fields", "priority", "rule", "source", "tags",
              "time"]
CONTAINER = "e5" * 32


@pytest.fixture(scope="module")
def engine() -> Engine:
    loaded, _ = Engine.from_files([upstream_file("falco_rules.yaml")], hostname="node-1")
    return loaded


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    scratch = Node(tmp_path, {CONTAINER: {"name": "web"}})
    yield scratch
    scratch.close()


class Collect:
    """A sink that keeps what it is given."""

    name = "memory"

    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self.flushes = 0

    def write(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        pass


def attack(start: int = 0) -> list[Record]:
    """A shell reading /etc/shadow with cat, then a symlink over it: two alerts."""
    t = 1_767_258_764_000_000_000 + start
    return [
        record("execve", 300, comm="bash", time_ns=t + 1, filename="/bin/bash", argv=["bash"]),
        record("clone", 300, comm="bash", time_ns=t + 2, child_pid=301, child_tid=301),
        record("execve", 301, comm="cat", time_ns=t + 3, filename="/bin/cat",
               argv=["cat", "/etc/shadow"]),
        record("openat", 301, comm="cat", time_ns=t + 4, res=3, dirfd=-100,
               name="/etc/shadow", flags=0),
        record("symlinkat", 301, comm="ln", time_ns=t + 5, target="/etc/shadow",
               linkdirfd=-100, linkpath="/tmp/s"),
        record("procexit", 301, comm="cat", time_ns=t + 6, group_dead=1),
    ]


def test_the_loop_turns_records_into_alerts(engine: Engine, node: Node) -> None:
    sink = Collect()
    detector = Detector(engine, node.tracker, IterSource(attack(), batch=4), [sink], live=False)
    metrics = detector.run()
    assert [a.rule for a in sink.alerts] == ["Read sensitive file untrusted",
                                             "Create Symlink Over Sensitive Files"]
    first = sink.alerts[0].output_fields
    assert (first["fd.name"], first["proc.name"], first["proc.pname"]) == \
        ("/etc/shadow", "cat", "bash")
    assert (first["container.id"], first["user.name"]) == ("host", "root")
    assert asdict(metrics) == {"received": 6, "processed": 6, "userspace_drops": 0,
                               "kernel_drops": 0, "alerts": 2, "drop_alerts": 0, "errors": 0}
    assert sink.flushes >= 2  # once per batch, and at the end


def test_metrics_are_served_for_prometheus(engine: Engine, node: Node) -> None:
    detector = Detector(engine, node.tracker, IterSource(attack()), [Collect()], live=False)
    detector.run()
    port = free_port()
    server = serve_metrics(f"127.0.0.1:{port}", detector)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    finally:
        server.shutdown()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines()
                  if line.startswith("lanner_detector_"))
    assert float(values["lanner_detector_events_processed_total"]) == 6
    assert float(values["lanner_detector_alerts_total"]) == 2
    assert float(values["lanner_detector_userspace_drops_total"]) == 0
    assert float(values["lanner_detector_processes"]) == len(node.tracker.table.procs)


def test_falco_json_and_text_lines(engine: Engine, node: Node, tmp_path: Path) -> None:
    json_path, text_path = tmp_path / "alerts.json", tmp_path / "alerts.txt"
    sinks = [open_sink(f"file:{json_path}", "json"), open_sink(f"file:{text_path}", "text")]
    Detector(engine, node.tracker, IterSource(attack()), sinks, live=False).run()
    for sink in sinks:
        sink.close()
    lines = json_path.read_bytes().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert list(orjson.loads(line)) == FALCO_KEYS
    alert = orjson.loads(lines[0])
    assert alert["rule"] == "Read sensitive file untrusted"
    assert alert["priority"] == "Warning" and alert["source"] == "syscall"
    assert alert["hostname"] == "node-1"
    assert alert["time"] == "2026-01-01T09:12:44.000000004Z"
    assert alert["output_fields"]["evt.time"] == 1_767_258_764_000_000_004
    assert alert["tags"] == sorted(alert["tags"])
    text = text_path.read_text().splitlines()
    assert text[0] == alert["output"]
    assert re.fullmatch(r"09:12:44\.000000004: Warning Sensitive file opened for reading by "
                        r"non-trusted program \| file=/etc/shadow .* container_id=host "
                        r"container_name=host", text[0])
    # Appended, never truncated: a restart keeps earlier alerts.
    again = open_sink(f"file:{json_path}")
    again.write(Alert.from_dict({**alert, "priority": "Notice"}))
    again.close()
    assert len(json_path.read_bytes().splitlines()) == 3


def test_sink_specs() -> None:
    with pytest.raises(SinkError, match="needs the hub's address"):
        open_sink("grpc://")
    with pytest.raises(SinkError, match="needs a path"):
        open_sink("file:")
    with pytest.raises(SinkError, match="unknown --output"):
        open_sink("kafka://x")
    with pytest.raises(SinkError, match="cannot open"):
        open_sink("file:/nonexistent-dir/alerts.json")
    assert isinstance(open_sink("stdout", "text"), StreamSink)
    alert = Alert.from_dict({"rule": "r", "priority": "Error", "time": "2026-01-01T00:00:00Z",
                             "output_fields": {"a": 1}, "output": "x", "uuid": "u-1"})
    assert "uuid" not in orjson.loads(falco_json(alert))  # Falco's lines have none


class Flood:
    """A live source: ``batches`` batches of ``size`` records as fast as asked, and a kernel
    that reports ``lost`` events it could not queue."""

    def __init__(self, batches: int, size: int, lost: int = 0) -> None:
        self.left = batches
        self.size = size
        self.lost = lost
        self.produced = 0

    def poll(self, timeout: float | None = None) -> list[Record] | None:
        if not self.left:
            return None
        self.left -= 1
        base = self.produced
        self.produced += self.size
        return [record("close", 7, res=-9, fd=n, time_ns=base + n) for n in range(self.size)]

    def drops(self) -> Any:
        return type("Drops", (), {"total": self.lost})()

    def close(self) -> None:
        pass


def test_a_full_queue_drops_and_counts_exactly(engine: Engine, node: Node) -> None:
    source = Flood(batches=400, size=500, lost=1234)
    sink = Collect()
    detector = Detector(engine, node.tracker, source, [sink], queue_records=1000, live=True,
                        drop_alert_interval=3600)
    metrics = detector.run()
    assert metrics.received == source.produced == 200_000
    assert metrics.userspace_drops > 0
    assert metrics.received == metrics.processed + metrics.userspace_drops
    assert metrics.kernel_drops == 1234
    drops = [a for a in sink.alerts if a.rule == DROP_RULE]
    assert len(drops) == metrics.drop_alerts == 1  # rate-limited to one per interval
    fields = drops[0].output_fields
    assert fields["n_drops_userspace"] + fields["n_drops_kernel"] == fields["n_drops"]
    assert drops[0].source == "internal"


def test_drop_alerts_once_per_window_above_the_threshold(engine: Engine, node: Node) -> None:
    now = [100.0]
    sink = Collect()
    detector = Detector(engine, node.tracker, Flood(0, 0), [sink], drop_threshold=0.1,
                        drop_alert_interval=30, clock_s=lambda: now[0])
    m = detector.metrics

    def second(received: int, kernel: int, user: int) -> None:
        now[0] += 1.0
        m.received += received
        m.kernel_drops += kernel
        m.userspace_drops += user
        detector._check_drops()

    second(1000, 50, 40)  # 90 of 1050 lost: 8.6%, under the threshold
    assert not sink.alerts
    second(1000, 300, 0)  # 23%
    assert len(sink.alerts) == 1
    second(1000, 300, 0)  # still dropping, but one alert per 30 s
    second(1000, 0, 500)
    assert len(sink.alerts) == 1
    now[0] += 30
    second(1000, 200, 0)
    assert len(sink.alerts) == 2
    assert sink.alerts[1].output_fields["n_evts"] == 1200
    second(0, 0, 0)  # nothing happened: no division by zero, no alert
    assert len(sink.alerts) == 2


def test_processes_whose_exit_was_lost_are_purged(engine: Engine, node: Node) -> None:
    node.apply("clone", 1, child_pid=900, child_tid=900)  # its exit never arrives
    assert 900 in node.tracker.table.procs
    clock = iter(range(0, 1000, 10))
    detector = Detector(engine, node.tracker, IterSource(attack()), [Collect()], live=False,
                        purge_interval=5, clock_s=lambda: float(next(clock)))
    detector.run()
    assert 900 not in node.tracker.table.procs  # the scratch /proc has none of them


def test_the_record_queue_is_bounded_in_records() -> None:
    queue = RecordQueue(10)
    batch = [record("close", 1)] * 4
    assert queue.put(batch, wait=False) and queue.put(batch, wait=False)
    assert not queue.put(batch, wait=False)  # 12 > 10
    assert len(queue) == 8
    assert queue.get(0.01) == batch
    assert queue.put(batch, wait=False)
    queue.close()
    assert queue.get(0.01) == batch and queue.get(0.01) == batch and queue.get(0.01) is None


def test_a_failing_source_is_reported(engine: Engine, node: Node) -> None:
    class Broken:
        def poll(self, timeout: float | None = None) -> list[Record]:
            raise OSError("ring buffer gone")

        def close(self) -> None:
            pass

    with pytest.raises(RuntimeError, match="ring buffer gone"):
        Detector(engine, node.tracker, Broken(), [Collect()]).run()


def test_records_files(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    rows = [{"kind": "connect", "time_ns": 5, "pid": 2, "tid": 2, "uid": 0, "gid": 0,
             "comm": "curl", "cgroup_id": 0, "res": 0,
             "args": {"fd": 3, "addr": [2, "10.0.0.1", 80]}}]
    path.write_text("# a comment\n\n" + "\n".join(json.dumps(r) for r in rows) + "\n")
    [rec] = list(read_records(str(path)))
    assert (rec.kind, rec.args["addr"], rec.cpu) == ("connect", [2, "10.0.0.1", 80], 0)
    path.write_text('{"kind": "x"}\n')
    with pytest.raises(ValueError, match=r"records\.jsonl:1"):
        list(read_records(str(path)))


# ---- the command -----------------------------------------------------------------------------


def _lanner(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LANNER, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_cli_help() -> None:
    done = _lanner("detect", "--help")
    assert done.returncode == 0
    for option in ("--rules", "--output", "file:PATH", "grpc://", "--source", "--no-fallback",
                   "--cgroup-root", "--metrics", "--drop-threshold"):
        assert option in done.stdout
    assert "detect" in _lanner("--help").stdout
    done = _lanner("detector", "--help")
    assert done.returncode == 0 and "setup" in done.stdout


def test_cli_writes_falco_json_to_a_file(tmp_path: Path) -> None:
    records = tmp_path / "attack.jsonl"
    records.write_text("".join(orjson.dumps(asdict(r)).decode() + "\n" for r in attack()))
    (tmp_path / "proc").mkdir()  # the recording's pids are not this machine's
    out = tmp_path / "alerts.json"
    done = _lanner("detect", "--rules", str(upstream_file("falco_rules.yaml")),
                   "--source", f"records:{records}", "--output", f"file:{out}",
                   "--proc-root", str(tmp_path / "proc"),
                   "--runtime-socket", str(tmp_path / "none.sock"))
    assert done.returncode == 0, done.stderr
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [a["rule"] for a in lines] == ["Read sensitive file untrusted",
                                          "Create Symlink Over Sensitive Files"]
    assert all(list(a) == FALCO_KEYS for a in lines)
    assert lines[0]["output_fields"]["proc.pname"] == "bash"
    assert "received=6, processed=6" in done.stderr


def test_cli_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    done = _lanner("detect", "--output", "grpc://", "--source", "records:/dev/null")
    assert done.returncode == 2
    assert "needs the hub's address" in done.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("- rule: x\n  condition: proc.nam = a\n  output: x\n  priority: INFO\n"
                   "  desc: x\n")
    done = _lanner("detect", "--rules", str(bad), "--source", "records:/dev/null")
    assert done.returncode == 2 and "rules cannot be loaded" in done.stderr


def test_cli_explains_why_ebpf_cannot_load(tmp_path: Path) -> None:
    """Headers that do not exist make the eBPF compile impossible on any machine."""
    done = _lanner("detect", "--source", "ebpf", "--headers", str(tmp_path / "no-headers"),
                   "--output", f"file:{tmp_path / 'a.json'}")
    assert done.returncode == 2
    assert "eBPF cannot load:" in done.stderr
    assert "no-headers" in done.stderr  # the precise reason, naming the path
    assert "no event source" in done.stderr


def test_cli_falls_back_and_still_catches_an_exec(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("the fallback source (proc connector) needs root")
    rules = tmp_path / "marker.yaml"
    rules.write_text("- rule: Marker executed\n  desc: a test rule on exec\n"
                     "  condition: evt.type in (execve, execveat) and proc.name = lanner-marker\n"
                     "  output: marker ran (command=%proc.cmdline)\n  priority: WARNING\n")
    marker = tmp_path / "lanner-marker"
    shutil.copy("/bin/sleep", marker)
    out = tmp_path / "alerts.json"
    proc = subprocess.Popen(
        [LANNER, "detect", "--rules", str(rules), "--headers", str(tmp_path / "no-headers"),
         "--output", f"file:{out}"], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        told = ""
        while "Fallback event source" not in told:
            line = proc.stderr.readline()
            assert line, f"lanner detect exited early: {told}"
            told += line
        assert "eBPF cannot load:" in told and "no-headers" in told
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            subprocess.run([str(marker), "0.3"], check=True)
            if out.exists() and b"Marker executed" in out.read_bytes():
                break
        alert = orjson.loads(out.read_bytes().splitlines()[0])
        assert alert["rule"] == "Marker executed"
        assert alert["output_fields"]["proc.cmdline"] == "lanner-marker 0.3"
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[1]
    assert proc.returncode == 0, rest
    assert "alerts=" in rest


def test_a_replay_rate_paces_the_records() -> None:
    records = [record("close", 7, res=0, fd=n) for n in range(300)]
    source = IterSource(records, rate=1000.0)
    started = time.monotonic()
    batches = []
    while (batch := source.poll()) is not None:
        batches.append(batch)
    # 10 ms batches; the last one waits until 290 records' worth of time has passed
    assert [len(b) for b in batches] == [10] * 30
    assert time.monotonic() - started >= 0.29


def test_min_priority_runs_only_rules_at_or_above_it(tmp_path: Path) -> None:
    records = tmp_path / "records.jsonl"
    base = {"pid": 7, "tid": 7, "uid": 0, "gid": 0, "comm": "cat", "cgroup_id": 0}
    rows = [{**base, "kind": "execve", "time_ns": 1, "res": 0,
             "args": {"filename": "/usr/bin/cat", "argv": ["cat"]}},
            {**base, "kind": "openat", "time_ns": 2, "res": 3, "args": {
                "dirfd": -100, "flags": 0, "mode": 0, "fd": 3, "name": "/root/.ssh/id_rsa"}}]
    records.write_text("\n".join(json.dumps(row) for row in rows) + "\n")

    def alerts(*extra: str) -> list[str]:
        done = subprocess.run([sys.executable, "-m", "sidekick.cli", "detect", "--source",
                               f"records:{records}", *extra], capture_output=True, text=True,
                              timeout=60, check=True)
        return [json.loads(line)["rule"] for line in done.stdout.splitlines()]

    assert alerts() == alerts("--min-priority", "warning") == ["Credential file read"]
    assert alerts("--min-priority", "error") == []  # a Warning rule does not run
