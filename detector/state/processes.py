"""The process table: every process on the node, its parent and what it runs.

Seeded once from /proc at start, then kept by events only (the tracker applies clone, execve,
chdir, setsid, exit...). Keyed by the thread-group id, the "pid" rules talk about; threads share
their process's entry. An exited process stays until the next event so that rules can still
evaluate its exit, then its children are reparented the way the kernel does: to the nearest
child-subreaper ancestor (conmon, containerd-shim, systemd...), else to the init of their pid
namespace (a container's first process, or pid 1 on the host).

A process the table has never seen (started while events were dropped) is read from /proc on
its first event, once; if it is already gone, a minimal entry is made from the event.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from detector.state.containers import ContainerRef, parse_proc_cgroup
from detector.state.fds import Fd

MAX_DEPTH = 64  # ancestors walked at most: a corrupt parent chain must not cost a whole scan
LOGINUID_UNSET = 4294967295  # (uid_t)-1: nobody logged in
# Processes that make themselves child subreapers (PR_SET_CHILD_SUBREAPER), by comm: service
# managers and container monitors, which adopt what their descendants orphan.
SUBREAPERS = frozenset({"systemd", "conmon", "containerd-shim", "tini", "catatonit",
                        "dumb-init", "docker-init", "s6-svscan"})
# cap_eff/cap_prm of root in a container when the source did not say: the container's
# bounding set, known once its runtime metadata arrives (the view resolves it then).
CAPS_OF_CONTAINER = -1


class Process:
    __slots__ = (
        "args", "cap_bnd", "cap_eff", "cap_inh", "cap_prm", "cgroup_id", "children",
        "container", "cwd", "exe", "exe_ctime", "exe_ino", "exe_lower", "exe_memfd",
        "exe_mtime", "exe_upper", "exe_writable", "exepath", "exited", "fds", "gid",
        "loginuid", "name", "pgid", "pid", "ppid", "sid", "start_ns", "tty", "uid", "vpid",
    )

    def __init__(self, pid: int, ppid: int | None, name: str) -> None:
        self.pid = pid
        self.ppid = ppid
        self.vpid: int | None = None
        self.name = name  # comm
        self.exe = name  # argv[0]
        self.exepath: str | None = None
        self.args = ""  # argv[1:] joined by spaces
        self.cwd: str | None = None  # with a trailing "/", as Falco prints it
        self.tty = 0
        self.sid: int | None = None
        self.pgid: int | None = None
        self.loginuid = LOGINUID_UNSET
        self.uid = 0
        self.gid = 0
        self.cap_eff: int | None = None
        self.cap_prm: int | None = None
        self.cap_inh: int | None = None
        self.cap_bnd: int | None = None
        self.start_ns: int | None = None
        self.cgroup_id = 0
        self.container: ContainerRef | None = None  # None: the host
        self.exe_upper: bool | None = None
        self.exe_lower: bool | None = None
        self.exe_memfd: bool | None = None
        self.exe_writable: bool | None = None
        self.exe_ino: int | None = None
        self.exe_ctime: int | None = None
        self.exe_mtime: int | None = None
        self.fds: dict[int, Fd] = {}
        self.children: set[int] | None = None
        self.exited = False

    @property
    def cmdline(self) -> str:
        return f"{self.name} {self.args}" if self.args else self.name

    def inherit(self, child_pid: int, time_ns: int) -> Process:
        """The child of a fork: the parent's image, ids, cwd, session and open fds."""
        child = Process(child_pid, self.pid, self.name)
        for slot in ("exe", "exepath", "args", "cwd", "tty", "sid", "pgid", "loginuid", "uid",
                     "gid", "cap_eff", "cap_prm", "cap_inh", "cap_bnd", "cgroup_id",
                     "container", "exe_upper", "exe_lower", "exe_memfd", "exe_writable",
                     "exe_ino", "exe_ctime", "exe_mtime"):
            setattr(child, slot, getattr(self, slot))
        child.start_ns = time_ns
        child.fds = dict(self.fds)
        return child


class ProcFs:
    """Reads processes from a procfs mount (``/proc``; another root in tests)."""

    def __init__(self, root: str = "/proc") -> None:
        self.root = root
        self.ticks = os.sysconf("SC_CLK_TCK")
        # starttime in /proc/PID/stat counts ticks since boot (CLOCK_BOOTTIME).
        self.boot_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)

    def pids(self) -> Iterator[int]:
        for entry in os.scandir(self.root):
            if entry.name.isdigit():
                yield int(entry.name)

    def _text(self, pid: int, name: str) -> str:
        with open(f"{self.root}/{pid}/{name}", "rb") as handle:
            return handle.read().decode("utf-8", "surrogateescape")

    def _link(self, pid: int, name: str) -> str | None:
        try:
            return os.readlink(f"{self.root}/{pid}/{name}")
        except OSError:  # kernel threads have no exe; another user's process hides its cwd
            return None

    def read(self, pid: int) -> Process | None:
        """The process as /proc shows it now; None if it is gone."""
        try:
            stat = self._text(pid, "stat")
            status = self._text(pid, "status")
            cmdline = self._text(pid, "cmdline")
            cgroup = self._text(pid, "cgroup")
        except OSError:
            return None
        close = stat.rfind(")")
        comm = stat[stat.find("(") + 1:close]
        fields = stat[close + 2:].split()
        proc = Process(pid, int(fields[1]) or None, comm)
        proc.pgid, proc.sid, proc.tty = int(fields[2]), int(fields[3]), int(fields[4])
        proc.start_ns = self.boot_ns + int(fields[19]) * 1_000_000_000 // self.ticks
        argv = cmdline.split("\0")
        if argv and argv[-1] == "":
            argv.pop()
        if argv:
            proc.exe = argv[0]
            proc.args = " ".join(argv[1:])
        _apply_status(proc, status)
        exe = self._link(pid, "exe")
        if exe is not None:
            exe = exe.removesuffix(" (deleted)")
            proc.exe_memfd = exe.startswith("/memfd:")
            proc.exepath = exe[1:] if proc.exe_memfd else exe
        cwd = self._link(pid, "cwd")
        if cwd is not None:
            proc.cwd = cwd if cwd.endswith("/") else cwd + "/"
        # Without audit support there is no loginuid: nobody logged in, as far as we know.
        with contextlib.suppress(OSError, ValueError):
            proc.loginuid = int(self._text(pid, "loginuid"))
        proc.container = parse_proc_cgroup(cgroup)
        return proc


def _apply_status(proc: Process, status: str) -> None:
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == "Uid":
            proc.uid = int(value.split()[1])  # effective
        elif key == "Gid":
            proc.gid = int(value.split()[1])
        elif key == "CapEff":
            proc.cap_eff = int(value, 16)
        elif key == "CapPrm":
            proc.cap_prm = int(value, 16)
        elif key == "CapInh":
            proc.cap_inh = int(value, 16)
        elif key == "CapBnd":
            proc.cap_bnd = int(value, 16)
        elif key == "NSpid":
            proc.vpid = int(value.split()[-1])  # in the innermost pid namespace


class ProcessTable:
    def __init__(self, procfs: ProcFs) -> None:
        self.procfs = procfs
        self.procs: dict[int, Process] = {}
        self.exiting: list[Process] = []
        self.lookups = 0  # processes read from /proc after the seed (table misses)

    def seed(self) -> int:
        """Read every process in /proc; returns how many. Replaces the table."""
        self.procs = {}
        for pid in self.procfs.pids():
            proc = self.procfs.read(pid)
            if proc is not None:
                self.procs[pid] = proc
        for proc in self.procs.values():
            self._adopt(proc)
        return len(self.procs)

    def _adopt(self, proc: Process) -> None:
        parent = self.procs.get(proc.ppid) if proc.ppid else None
        if parent is not None:
            if parent.children is None:
                parent.children = set()
            parent.children.add(proc.pid)

    def lookup(self, pid: int, comm: str, uid: int, gid: int, time_ns: int) -> Process:
        """The process of an event the table has no entry for: from /proc, else from the
        event alone (it already exited; its parent is unknown)."""
        self.lookups += 1
        proc = self.procfs.read(pid)
        if proc is None:
            proc = Process(pid, None, comm)
            proc.uid, proc.gid, proc.start_ns = uid, gid, time_ns
        self.procs[pid] = proc
        self._adopt(proc)
        return proc

    def fork(self, parent: Process, child_pid: int, time_ns: int) -> Process:
        stale = self.procs.get(child_pid)
        if stale is not None:  # an exit we missed: the pid was reused
            self._forget(stale)
        child = parent.inherit(child_pid, time_ns)
        self.procs[child_pid] = child
        self._adopt(child)
        return child

    def exit(self, proc: Process) -> None:
        """The process ended; it leaves the table when the next event is applied."""
        if not proc.exited:
            proc.exited = True
            self.exiting.append(proc)

    def reap(self) -> None:
        """Remove the processes that exited before the current event."""
        exiting, self.exiting = self.exiting, []
        for proc in exiting:
            if self.procs.get(proc.pid) is proc:
                self._forget(proc)

    def _forget(self, proc: Process) -> None:
        del self.procs[proc.pid]
        parent = self.procs.get(proc.ppid) if proc.ppid else None
        if parent is not None and parent.children:
            parent.children.discard(proc.pid)
        if not proc.children:
            return
        reaper = self._reaper(proc)
        for pid in proc.children:
            child = self.procs.get(pid)
            if child is None or child.ppid != proc.pid:
                continue
            child.ppid = None if reaper is None else reaper.pid
            if reaper is not None:
                self._adopt(child)

    def _reaper(self, proc: Process) -> Process | None:
        """Who the kernel hands the orphans of ``proc`` to: the nearest ancestor that is a
        child subreaper, not looking past the init of the pid namespace, else that init.
        Which processes are subreapers (prctl state) is not in the events, so it goes by the
        names of the ones that always are."""
        in_namespace = proc.vpid != proc.pid  # unknown (None) counts: stop at a vpid 1
        for ancestor in self.ancestors(proc):
            if ancestor.name in SUBREAPERS or (in_namespace and ancestor.vpid == 1):
                return ancestor
        return self.procs.get(1)

    def ancestors(self, proc: Process) -> list[Process]:
        """Parent first, up to MAX_DEPTH, stopping at a loop or an unknown parent."""
        chain: list[Process] = []
        seen = {proc.pid}
        procs = self.procs
        ppid = proc.ppid
        while ppid and ppid not in seen and len(chain) < MAX_DEPTH:
            parent = procs.get(ppid)
            if parent is None:
                break
            chain.append(parent)
            seen.add(ppid)
            ppid = parent.ppid
        return chain

    def purge(self) -> int:
        """Drop processes /proc no longer has (their exits were dropped); returns how many."""
        gone = [p for pid, p in self.procs.items()
                if not p.exited and not os.path.exists(f"{self.procfs.root}/{pid}")]
        for proc in gone:
            self._forget(proc)
        return len(gone)
