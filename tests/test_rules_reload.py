"""`lanner detect` reloads its rules when their files change, or on SIGHUP, as Falco does: an
exception saved from the UI silences a rule without a restart; rules that do not load leave
the previous ones running; rules the kernel program was not built for restart the detector.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from detector.rules_watch import fingerprint
from tests.detect_process import DetectProcess
from tests.ebpf_support import prepared_node
from tests.state_support import record

RULE = """\
- rule: Read marker
  desc: a file under {root} opened
  condition: evt.type in (open, openat) and fd.name startswith {root}/
  output: "marker read (file=%fd.name proc=%proc.name)"
  priority: WARNING
"""
EXCEPTION = """\
- rule: Read marker
  exceptions:
    - name: lanner_ui_cat
      fields: [proc.name]
      values: [[{proc}]]
  override:
    exceptions: append
"""
COUNT = 1000  # opens in the recording, 100 a second


@pytest.fixture
def recording(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A recording of `cat` opening /srv/marker/<n> COUNT times, and the rules watching it."""
    rows = [record("execve", 7, comm="cat", time_ns=1, filename="/usr/bin/cat", argv=["cat"])]
    rows += [record("openat", 7, comm="cat", time_ns=2 + n, res=3, dirfd=-100,
                    name=f"/srv/marker/{n}", flags=0) for n in range(COUNT)]
    path = tmp_path / "opens.jsonl"
    path.write_text("".join(orjson.dumps(asdict(r)).decode() + "\n" for r in rows))
    (tmp_path / "proc").mkdir()  # the recording's pids are not this machine's
    yield path, tmp_path / "proc"


def replay(tmp_path: Path, recording: tuple[Path, Path], *rules: Path) -> DetectProcess:
    records, proc = recording
    detect = DetectProcess(tmp_path, "--rules", *map(str, rules), "--source", f"records:{records}",
                    "--replay-rate", "100", "--proc-root", str(proc),
                    "--runtime-socket", str(tmp_path / "none.sock"), ready="")
    detect.wait_for(detect.alerts, "first alert")
    return detect


def numbers(alerts: list[dict[str, Any]]) -> list[int]:
    return [int(a["output_fields"]["fd.name"].rsplit("/", 1)[1]) for a in alerts]


def rules_files(tmp_path: Path, root: str) -> tuple[Path, Path]:
    rules, local = tmp_path / "rules.yaml", tmp_path / "local.yaml"
    rules.write_text(RULE.format(root=root))
    local.write_text("# exceptions made in the UI\n")
    return rules, local


def test_an_exception_saved_while_running_silences_the_rule_without_a_restart(
    tmp_path: Path, recording: tuple[Path, Path]
) -> None:
    rules, local = rules_files(tmp_path, "/srv/marker")
    detect = replay(tmp_path, recording, rules, local)
    local.write_text(local.read_text() + EXCEPTION.format(proc="cat"))
    detect.wait_for(lambda: "rules reloaded: 1 rules run" in detect.stderr(), "reload")
    before = len(detect.alerts())
    assert detect.proc.wait(timeout=60) == 0
    fired = numbers(detect.alerts())
    # Events read before the swap may still fire: one batch (10 ms of the replay) at most.
    assert len(fired) - before <= 2, detect.stderr()
    assert fired[0] == 0 and fired[-1] < COUNT - 100
    assert "restarting" not in detect.stderr()


def test_rules_that_do_not_load_leave_the_previous_ones_running(
    tmp_path: Path, recording: tuple[Path, Path]
) -> None:
    rules, local = rules_files(tmp_path, "/srv/marker")
    detect = replay(tmp_path, recording, rules, local)
    local.write_text("- rule: Read marker\n  condition: evt.type = \n")
    detect.wait_for(lambda: "cannot be loaded" in detect.stderr(), "reload error")
    assert detect.proc.wait(timeout=60) == 0
    error = next(line for line in detect.stderr().splitlines() if "cannot be loaded" in line)
    assert f"{local}:" in error and "previous rules go on running" in error
    assert "Traceback" not in detect.stderr()
    assert numbers(detect.alerts()) == list(range(COUNT))  # none missed


def test_sighup_reloads_the_rules_even_unchanged(
    tmp_path: Path, recording: tuple[Path, Path]
) -> None:
    rules, _ = rules_files(tmp_path, "/srv/marker")
    detect = replay(tmp_path, recording, rules)
    detect.proc.send_signal(signal.SIGHUP)
    detect.wait_for(lambda: "rules reloaded" in detect.stderr(), "reload on SIGHUP")
    assert detect.proc.wait(timeout=60) == 0
    assert numbers(detect.alerts()) == list(range(COUNT))


def test_no_watch_rules_ignores_changes(tmp_path: Path, recording: tuple[Path, Path]) -> None:
    rules, local = rules_files(tmp_path, "/srv/marker")
    records, proc = recording
    detect = DetectProcess(tmp_path, "--rules", str(rules), str(local), "--no-watch-rules",
                    "--source", f"records:{records}", "--replay-rate", "250",
                    "--proc-root", str(proc), "--runtime-socket", str(tmp_path / "none.sock"),
                    ready="")
    detect.wait_for(detect.alerts, "first alert")
    local.write_text(local.read_text() + EXCEPTION.format(proc="cat"))
    assert detect.proc.wait(timeout=60) == 0
    assert numbers(detect.alerts()) == list(range(COUNT))
    assert "reloaded" not in detect.stderr()


def test_a_fingerprint_sees_files_of_directories_and_links_swapped(tmp_path: Path) -> None:
    # How a ConfigMap volume updates: ..data is a link swapped to a new directory.
    for version in ("v1", "v2"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "rules.yaml").write_text(f"# {version}\n")
    (tmp_path / "..data").symlink_to("v1")
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    (mounted / "rules.yaml").symlink_to(tmp_path / "..data" / "rules.yaml")
    before = fingerprint([mounted])
    assert before == fingerprint([mounted])
    (tmp_path / "..data").unlink()
    (tmp_path / "..data").symlink_to("v2")
    assert fingerprint([mounted]) != before
    (mounted / "more.yaml").write_text("# another file\n")
    assert len(fingerprint([mounted])) == 2


# ---- on the real kernel: the eBPF program is built for the rules ---------------------------


@pytest.fixture(scope="module")
def node() -> None:
    prepared_node()


def open_as(name: str, path: Path) -> None:
    """Open ``path`` from a process named ``name`` (a copy of cat under that name)."""
    binary = path.parent.parent / name
    if not binary.exists():
        binary.write_bytes(Path("/usr/bin/cat").read_bytes())
        binary.chmod(0o755)
    subprocess.run([str(binary), str(path)], stdout=subprocess.DEVNULL, check=True)


def fired_for(detect: DetectProcess, path: Path) -> Callable[[], bool]:
    return lambda: any(a["output_fields"]["fd.name"] == str(path) for a in detect.alerts())


@pytest.mark.usefixtures("node")
def test_on_ebpf_an_exception_swaps_rules_and_a_new_path_restarts_the_program(
    tmp_path: Path,
) -> None:
    watched, other = tmp_path / "watched", tmp_path / "other"
    for directory in (watched, other):
        directory.mkdir()
    for path in (watched / "a", watched / "b", other / "c"):  # before: writing them would fire
        path.write_text(path.name)
    rules, local = rules_files(tmp_path, str(watched))
    detect = DetectProcess(tmp_path, "--rules", str(rules), str(local), "--source", "ebpf",
                    ready="eBPF source attached")
    try:
        assert "path tests" in detect.stderr()  # the kernel filters opens for this rule
        open_as("reader1", watched / "a")
        detect.wait_for(fired_for(detect, watched / "a"), "alert for reader1")

        # An exception narrows the rule: same syscalls, same path tests, no new program.
        local.write_text(local.read_text() + EXCEPTION.format(proc="reader1"))
        detect.wait_for(lambda: "rules reloaded" in detect.stderr(), "reload")
        open_as("reader1", watched / "b")
        open_as("reader2", watched / "b")
        detect.wait_for(lambda: any(a["output_fields"]["proc.name"] == "reader2"
                                    for a in detect.alerts()), "alert for reader2")
        assert [a["output_fields"]["proc.name"] for a in detect.alerts()] == \
            ["reader1", "reader2"]
        assert detect.stderr().count("eBPF source attached") == 1

        # A rule on another directory: the kernel drops those opens now, so the detector
        # restarts itself (same pid) with a program built for the new rules.
        pid = detect.proc.pid
        rules.write_text(RULE.format(root=str(watched)) + RULE.format(root=str(other))
                         .replace("Read marker", "Read other"))
        detect.wait_for(lambda: detect.stderr().count("eBPF source attached") == 2, "restart")
        assert "need opens that the kernel's path filter drops: restarting" in detect.stderr()
        assert detect.proc.pid == pid and detect.proc.poll() is None
        open_as("reader2", other / "c")
        detect.wait_for(fired_for(detect, other / "c"), "alert after the restart")
    finally:
        log = detect.stop()
    assert "Traceback" not in log
