"""The process table: seeded from the real /proc, then kept by hand-built Records."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from detector.state import render
from detector.state.processes import (
    CAPS_OF_CONTAINER,
    LOGINUID_UNSET,
    MAX_DEPTH,
    Process,
    ProcessTable,
    ProcFs,
)
from tests.state_support import Node, record, wait_for, wait_for_info

HERE = os.getpid()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    scratch = Node(tmp_path)
    yield scratch
    scratch.close()


@pytest.fixture
def on_a_tty() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A child that leads its own session with a pseudo-terminal as controlling tty."""
    leader, follower = os.openpty()
    path = os.ttyname(follower)
    child = subprocess.Popen(
        [sys.executable, "-c", f"import os,sys,time; os.open({path!r}, os.O_RDWR); "
                              "print('ready', flush=True); time.sleep(60)", "--marker"],
        stdout=subprocess.PIPE, start_new_session=True, cwd="/tmp",
    )
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"
    yield child, os.stat(path).st_rdev
    child.kill()
    child.wait()
    os.close(leader)
    os.close(follower)


def test_seed_reads_this_process_and_its_parent() -> None:
    table = ProcessTable(ProcFs())
    assert table.seed() > 2
    me = table.procs[HERE]
    assert me.name == _ps(HERE)[0]
    argv = Path("/proc/self/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    assert me.exe == argv[0].decode()
    assert me.args == " ".join(a.decode() for a in argv[1:])
    assert me.cmdline == f"{me.name} {me.args}"
    assert me.exepath == os.path.realpath(sys.executable)
    assert me.ppid == os.getppid()
    assert me.cwd == os.getcwd().rstrip("/") + "/"
    assert (me.uid, me.gid) == (os.geteuid(), os.getegid())
    assert me.sid == os.getsid(0) and me.pgid == os.getpgid(0)
    loginuid = int(Path("/proc/self/loginuid").read_text())
    assert me.loginuid == loginuid
    parent = table.procs[os.getppid()]
    ps = _ps(os.getppid())
    assert parent.name == ps[0]
    assert f"{parent.exe} {parent.args}".split() == ps[1].split()  # ps shows argv whole
    chain = table.ancestors(me)
    assert chain[0] is parent
    assert chain[-1].pid == 1  # the chain reaches init
    assert len({p.pid for p in chain}) == len(chain)


def _ps(pid: int) -> list[str]:
    """comm and the whole argv of a process, as ps(1) shows them."""
    return subprocess.run(["ps", "-ww", "-o", "comm=,args=", "-p", str(pid)],
                          capture_output=True, text=True, check=True).stdout.split(None, 1)


def test_seed_reads_a_controlling_terminal(on_a_tty: tuple[subprocess.Popen[bytes], int]) -> None:
    child, rdev = on_a_tty
    table = ProcessTable(ProcFs())
    table.seed()
    proc = table.procs[child.pid]
    assert proc.tty == rdev != 0
    assert proc.sid == child.pid  # it leads its session
    assert proc.ppid == HERE
    assert proc.cwd == "/tmp/"
    assert proc.args.endswith("--marker")
    assert table.procs[HERE].tty != rdev


def test_seed_reads_capabilities_as_masks() -> None:
    table = ProcessTable(ProcFs())
    table.seed()
    status = Path(f"/proc/{HERE}/status").read_text()
    eff = next(int(line.split()[1], 16) for line in status.splitlines()
               if line.startswith("CapEff:"))
    assert table.procs[HERE].cap_eff == eff
    if os.geteuid() == 0:
        assert "CAP_SYS_ADMIN" in render.cap_names(eff).split()


def test_fork_exec_and_exit_keep_the_table(node: Node) -> None:
    node.apply("execve", 1, comm="init", filename="/sbin/init", argv=["/sbin/init"])
    node.apply("clone", 1, child_pid=500, child_tid=500)
    child = node.tracker.table.procs[500]
    assert (child.name, child.ppid, child.exe) == ("init", 1, "/sbin/init")
    view = node.apply("execve", 500, comm="bash", filename="/usr/bin/bash",
                      argv=["-bash", "-l"], tty=34817, loginuid=1000)
    assert view.get("proc.name") == "bash"
    assert view.get("proc.exe") == "-bash"
    assert view.get("proc.exepath") == "/usr/bin/bash"
    assert view.get("proc.cmdline") == "bash -l"
    assert view.get("proc.pname") == "init"
    assert view.get("proc.tty") == 34817
    assert view.get("user.loginuid") == 1000
    assert view.get("user.loginname") == "alice"
    exit_view = node.apply("procexit", 500, comm="bash", group_dead=1)
    assert exit_view.get("proc.cmdline") == "bash -l"  # evaluated before removal
    assert 500 in node.tracker.table.procs
    node.apply("setsid", 1)  # any next event removes it
    assert 500 not in node.tracker.table.procs


def test_a_fork_and_exit_within_a_millisecond_keeps_parent_and_cmdline(node: Node) -> None:
    node.apply("execve", 40, comm="cron", filename="/usr/sbin/cron", argv=["cron", "-f"])
    t = node.clock.now
    node.tracker.apply(record("clone", 40, comm="cron", time_ns=t + 10_000, child_pid=41,
                              child_tid=41))
    node.tracker.apply(record("execve", 41, comm="sh", time_ns=t + 300_000,
                              filename="/bin/sh", argv=["sh", "-c", "true"]))
    view = node.tracker.apply(record("procexit", 41, comm="sh", time_ns=t + 600_000,
                                     group_dead=1, status=0))
    assert view.get("proc.pname") == "cron"
    assert view.get("proc.pcmdline") == "cron -f"
    assert view.get("proc.cmdline") == "sh -c true"
    assert view.get("proc.aname") == ["cron"]
    assert view.get("evt.type") == "procexit"


def test_threads_share_their_process(node: Node) -> None:
    node.apply("execve", 70, comm="java", filename="/usr/bin/java", argv=["java", "-jar", "a"])
    node.apply("clone", 70, child_pid=70, child_tid=71)
    assert set(node.tracker.table.procs) == {70}
    view = node.apply("openat", 70, tid=71, res=5, dirfd=-100, name="/tmp/x", flags=0)
    assert (view.get("proc.pid"), view.get("thread.tid")) == (70, 71)
    node.apply("procexit", 70, tid=71, group_dead=0)
    node.apply("setsid", 70, res=70)
    assert 70 in node.tracker.table.procs
    node.apply("procexit", 70, tid=70, group_dead=-1)  # kernel that cannot say: main thread
    node.apply("setsid", 1)
    assert 70 not in node.tracker.table.procs


def test_orphans_go_to_a_subreaper_or_their_namespace_init(node: Node) -> None:
    box = node.cgroup("/libpod_parent/libpod-" + "c" * 64)
    node.apply("execve", 1, comm="init", filename="/sbin/init", argv=["/sbin/init"])
    node.tracker.table.procs[1].vpid = 1
    # A daemon double-forks on the host: its grandchild goes to init.
    node.apply("clone", 1, child_pid=10, child_tid=10)
    node.apply("execve", 10, comm="bash", filename="/bin/bash", argv=["bash"])
    node.apply("clone", 10, child_pid=11, child_tid=11)
    node.apply("clone", 11, child_pid=12, child_tid=12)
    node.apply("procexit", 11, group_dead=1)
    view = node.apply("setsid", 12, res=12)
    assert (view.get("proc.pname"), view.get("proc.apid")) == ("init", [1])
    # runc's short-lived processes exit under conmon, a subreaper: the container's first
    # process ends up conmon's child, as `podman run` leaves it.
    node.apply("clone", 1, child_pid=20, child_tid=20)
    node.apply("execve", 20, comm="conmon", filename="/usr/bin/conmon", argv=["conmon"])
    node.apply("clone", 20, child_pid=21, child_tid=21)
    node.apply("execve", 21, comm="runc", filename="/usr/bin/runc", argv=["runc", "create"])
    node.apply("clone", 21, cgroup_id=box, comm="runc:[1:CHILD]", child_pid=22, child_tid=22)
    node.apply("clone", 22, cgroup_id=box, comm="runc:[1:CHILD]", child_pid=23, child_tid=23,
               flags=0x20000000)  # CLONE_NEWPID: 23 is the namespace's init
    node.apply("procexit", 22, cgroup_id=box, group_dead=1)
    node.apply("procexit", 21, group_dead=1)
    view = node.apply("execve", 23, cgroup_id=box, comm="nginx", filename="/usr/sbin/nginx",
                      argv=["nginx"])
    assert (view.get("proc.pname"), view.get("proc.vpid")) == ("conmon", 1)
    # Inside the container the namespace's init adopts, nothing above it.
    node.apply("clone", 23, cgroup_id=box, child_pid=24, child_tid=24)
    node.apply("clone", 24, cgroup_id=box, child_pid=25, child_tid=25)
    node.apply("procexit", 24, cgroup_id=box, group_dead=1)
    view = node.apply("setsid", 25, cgroup_id=box, res=25)
    assert view.get("proc.apid") == [23, 20, 1]


def test_ancestors_stop_at_a_loop_and_at_the_depth_cap() -> None:
    table = ProcessTable(ProcFs("/nonexistent"))
    for pid, ppid in ((2, 3), (3, 4), (4, 2)):
        table.procs[pid] = Process(pid, ppid, f"p{pid}")
    assert [p.pid for p in table.ancestors(table.procs[2])] == [3, 4]
    for pid in range(100, 300):
        table.procs[pid] = Process(pid, pid + 1, "deep")
    assert len(table.ancestors(table.procs[100])) == MAX_DEPTH


def test_an_unknown_process_is_read_from_proc_once_or_made_from_the_event(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    # Popen returns once exec began; the new image's argv is readable a moment later.
    wait_for(lambda: Path(f"/proc/{sleeper.pid}/cmdline").read_bytes(), what="sleep's argv")
    try:
        table = ProcessTable(ProcFs())
        proc = table.lookup(sleeper.pid, "ignored", 0, 0, 1)
        assert (proc.name, proc.exe, proc.args, proc.ppid) == ("sleep", "sleep", "30", HERE)
        ghost = table.lookup(2**22 + 7, "ghost", 1000, 1000, 5)
        assert (ghost.name, ghost.uid, ghost.ppid, ghost.start_ns) == ("ghost", 1000, None, 5)
        assert table.lookups == 2
    finally:
        sleeper.kill()
        sleeper.wait()
    assert table.purge() == 2  # neither is in /proc any more
    assert not table.procs


def test_cwd_session_and_ids(node: Node) -> None:
    node.apply("execve", 30, comm="sh", filename="/bin/sh", argv=["sh"], tty=34816)
    node.tracker.table.procs[30].cwd = "/home/alice/"
    node.apply("chdir", 30, path="../bob/./src")
    assert node.tracker.table.procs[30].cwd == "/home/bob/src/"
    node.apply("openat", 30, res=4, dirfd=-100, name="/var/log", flags=render.O_DIRECTORY)
    node.apply("fchdir", 30, fd=4)
    assert node.apply("setpgid", 30, pid=0, pgid=0).get("proc.cwd") == "/var/log/"
    view = node.apply("setsid", 30, res=30)
    assert (view.get("proc.sid"), view.get("proc.tty"), view.get("proc.vpgid")) == (30, 0, 30)
    assert view.get("proc.sname") == "sh"
    view = node.apply("openat", 30, res=-2, uid=1000, gid=33, dirfd=-100, name="x", flags=0)
    assert (view.get("user.uid"), view.get("user.name")) == (1000, "alice")
    assert (view.get("group.gid"), view.get("group.name")) == (33, "www-data")


def test_capabilities_follow_exec_and_uid_changes(node: Node) -> None:
    full = render.ALL_CAPS
    node.apply("execve", 1, comm="init", filename="/sbin/init", argv=["init"])
    init = node.tracker.table.procs[1]
    init.cap_bnd = init.cap_eff = init.cap_prm = full
    node.apply("clone", 1, child_pid=60, child_tid=60)
    view = node.apply("execve", 60, comm="su", filename="/bin/su", argv=["su"])
    assert "CAP_SYS_ADMIN" in view.get("thread.cap_effective")
    view = node.apply("close", 60, res=0, uid=1000, fd=9)  # setuid(1000) happened
    assert view.get("thread.cap_effective") == ""
    view = node.apply("execve", 60, uid=1000, comm="id", filename="/usr/bin/id", argv=["id"])
    assert view.get("thread.cap_effective") == ""
    view = node.apply("capset", 60, uid=1000, cap_effective=1 << 12, cap_permitted=1 << 12)
    assert view.get("thread.cap_effective") == "CAP_NET_ADMIN"
    # Root in a container holds the container's set, once the runtime said what it is.
    box = node.cgroup("/docker/" + "d" * 64)
    node.metadata["d" * 64] = {"bounding_caps": render.cap_mask(["CHOWN", "SYS_MODULE"])}
    node.apply("clone", 1, child_pid=61, child_tid=61)
    view = node.apply("execve", 61, cgroup_id=box, comm="insmod", filename="/sbin/insmod",
                      argv=["insmod", "x.ko"])
    assert node.tracker.table.procs[61].cap_eff == CAPS_OF_CONTAINER
    ref = node.tracker.table.procs[61].container
    assert ref is not None and ref.type == "docker"
    wait_for_info(node.registry, ref)
    view = node.apply("finit_module", 61, cgroup_id=box, fd=3, uargs="", flags=0)
    assert view.get("thread.cap_effective") == "CAP_CHOWN CAP_SYS_MODULE"


def test_exec_closes_close_on_exec_fds_and_keeps_the_rest(node: Node) -> None:
    node.apply("execve", 80, comm="sh", filename="/bin/sh", argv=["sh"])
    node.apply("openat", 80, res=3, dirfd=-100, name="/etc/a", flags=render.O_CLOEXEC)
    node.apply("openat", 80, res=4, dirfd=-100, name="/etc/b", flags=0)
    node.apply("socket", 80, res=5, domain=2, type=1 | render.SOCK_CLOEXEC, proto=0)
    node.apply("execve", 80, comm="cat", filename="/bin/cat", argv=["cat"])
    assert set(node.tracker.table.procs[80].fds) == {4}


def test_a_failed_exec_changes_nothing(node: Node) -> None:
    node.apply("execve", 90, comm="sh", filename="/bin/sh", argv=["sh"])
    view = node.apply("execve", 90, res=-2, comm="sh", filename="/nope", argv=["nope"])
    assert (view.get("proc.name"), view.get("evt.rawres")) == ("sh", -2)
    assert node.tracker.table.procs[90].loginuid == LOGINUID_UNSET
