"""The event source used when eBPF cannot load: proc connector + fanotify, no BPF.

    source = FallbackSource()            # raises ConnectorError if even this is impossible
    log.warning(source.describe(engine.rules))
    while running:
        for record in source.poll(0.5):  # seconds; [] when nothing happened
            tracker.apply(record)
    source.close()

It produces ``clone``, ``execve``, ``procexit``, ``setsid``, ``ptrace`` (attach) and ``openat``
records (see ``proc_connector`` and ``fanotify`` for what each can and cannot fill), so rules
on process execution and file opens keep working with a reduced field set that ``describe()``
states; rules on anything else cannot fire. If fanotify is unavailable the source still runs,
process events only, and says so.

Timing: the exec race is lost when the reader wakes late, and on a small machine the woken
reader tends to queue behind the very process it should read (measured here: a third of
``/bin/echo`` execs missed from an ordinary thread, none from a ``SCHED_FIFO`` one). So the
proc connector is read by its own thread, at real-time priority 1 when permitted
(``realtime``); it only decodes messages and reads ``/proc``, a bounded amount of work per
message, and the kernel's RT throttling (``sched_rt_runtime_us``) caps it under an exec storm.
It still needs the GIL, which a busy thread of the detector gives up only every
``sys.getswitchinterval()`` (5 ms by default, longer than many a process lives), so with
``realtime`` the source lowers that interval to 0.5 ms while it is open (measured here on a
loop of /bin/true with file events on: 0.6-5% of execs missed at 5 ms, 0-0.4% at 0.5 ms).

Order: the proc connector's records carry kernel timestamps and are sorted by them; fanotify
events carry none, so an open is stamped when read, which puts it after the exec that preceded
it. It must also come before its process's exit: a process's file events are queued before its
exit message is sent, so exits are handed out only once the fanotify queue has been read empty
after them (or after a second under a flood of file events), and an open is stamped no later
than its process's exit in the same batch.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING

from detector.sources.fallback.fanotify import FanotifyError, FileEvents, FileOpen
from detector.sources.fallback.proc_connector import ProcConnector
from detector.sources.record import Record

if TYPE_CHECKING:
    from detector.engine.build import CompiledRule

SWITCH_INTERVAL = 0.0005  # seconds; see "Timing" above
MAX_QUEUED = 1 << 18  # records read but not yet polled; beyond, new ones are dropped and counted
EXIT_HOLD_NS = 10**9  # under a file-event flood the queue never drains: exits wait at most this
KINDS = frozenset({"clone", "execve", "procexit", "setsid", "ptrace", "openat"})
PROCESS_KINDS = KINDS - {"openat"}

# Fields a condition may read that have no value (or a coarser one) in fallback mode.
UNAVAILABLE: dict[str, str] = {
    "fd.nameraw": "only the resolved path of an opened file is known",
    "evt.arg.flags": "open flags are only O_RDONLY (closed unwritten) or O_WRONLY (written); "
                     "O_TRUNC, O_CREAT, O_RDWR, O_APPEND... never appear",
    "evt.rawarg.flags": "see evt.arg.flags",
    "evt.arg.mode": "open mode not reported",
    "evt.arg.dirfd": "opens are reported with their resolved path only",
    "evt.arg.request": "ptrace is only seen attaching (PTRACE_ATTACH, also for "
                       "PTRACE_SEIZE): no PTRACE_TRACEME, POKETEXT, POKEDATA, SETREGS...",
    "evt.buffer": "no read/write data",
    "fd.dev": "not reported", "fd.ino": "not reported",
    "proc.is_exe_writable": "unknown without BPF",
    "proc.is_exe_upper_layer": "unknown without BPF (overlay layer of the executable)",
    "proc.is_exe_lower_layer": "unknown without BPF (overlay layer of the executable)",
    "proc.env": "the environment is not read",
    **{name: "no network events" for name in (
        "fd.sip", "fd.cip", "fd.rip", "fd.lip", "fd.sport", "fd.cport", "fd.rport", "fd.lport",
        "fd.l4proto", "fd.sip.name", "fd.cip.name", "fd.rip.name", "fd.lip.name",
        "fd.connected", "fd.name_changed", "fd.ip", "fd.net", "fd.port", "fd.proto",
        "fd.snet", "fd.cnet", "fd.rnet", "fd.lnet", "fd.is_server", "fd.sproto",
        "fd.cproto", "fd.rproto", "fd.lproto")},
}

_REDUCED = """\
Reduced field set in fallback mode:
- execve: proc.exepath/filename is the resolved executable (/usr/bin/dash for /bin/sh);
  argv, cwd, tty, pgid, loginuid, capabilities and cgroup are read from /proc when the exec is
  reported, so a process that exits within about a millisecond may have no argv/exe, or no
  record at all (counted: exec_partial, exec_missed; a process that exec'd twice before its
  first exec was read keeps only the second: exec_superseded); thread.cap_* are as of the
  exec (later capset calls are not seen); proc.is_exe_writable/upper_layer/lower_layer and
  proc.env have no value; proc.is_exe_from_memfd only when true.
- openat: fd.name is the resolved path (fd.nameraw has no value); evt.arg.flags is O_RDONLY
  or O_WRONLY only, guessed from whether the file was written or closed after writing (no
  O_TRUNC, O_CREAT, O_RDWR); fd.num and evt.res are 0, not the real descriptor; evt.time is
  when the event was read; thread.tid is the pid; no open of a directory, device or socket,
  no failed open; one record when a process opens the same file again before the first
  event was read.
- uid/gid changes update user.*/group.* of later events but produce no setuid/setgid event;
  ptrace records only attaches (PTRACE_ATTACH or PTRACE_SEIZE, reported as PTRACE_ATTACH).
- no other event type: no network (connect, accept, socket, sendto...), dup, link, symlink,
  rename, unlink, mkdir, chmod, mount, module loading, memfd_create, PTRACE_TRACEME, read or
  write data; evt.cpu is 0 for openat."""


class _Reader(threading.Thread):
    """Reads the proc connector as soon as the kernel writes, and queues its records."""

    def __init__(self, connector: ProcConnector, batch: int, realtime: bool) -> None:
        super().__init__(name="proc-connector", daemon=True)
        self.connector = connector
        self.batch = batch
        self.realtime = realtime
        self.realtime_error: str | None = None
        self.error: BaseException | None = None
        self.records: list[Record] = []
        self.dropped = 0
        self.lock = threading.Lock()
        self.started = threading.Event()  # set once the priority is settled
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)

    def run(self) -> None:
        if self.realtime:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            except OSError as exc:
                self.realtime_error = exc.strerror or str(exc)
        self.started.set()
        poller = select.poll()
        poller.register(self.connector.fileno(), select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        try:
            while all(fd != self._stop_r for fd, _ in poller.poll()):
                records = self.connector.read(self.batch)
                if records:
                    with self.lock:
                        room = max(MAX_QUEUED - len(self.records), 0)
                        self.dropped += max(len(records) - room, 0)
                        self.records += records[:room]
                    self._wake()
        except BaseException as exc:  # handed to poll(), which raises it in the caller
            self.error = exc
            self._wake()

    def _wake(self) -> None:
        # A full pipe means the consumer has a wake-up pending anyway.
        with contextlib.suppress(BlockingIOError):
            os.write(self.wake_w, b"\0")

    def take(self) -> list[Record]:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 4096):
                pass
        with self.lock:
            records, self.records = self.records, []
        return records

    def stop(self) -> None:
        os.write(self._stop_w, b"\0")
        self.join()
        for fd in (self.wake_r, self.wake_w, self._stop_r, self._stop_w):
            os.close(fd)


class FallbackSource:
    """Proc connector + fanotify behind the eBPF source's poll/close shape."""

    def __init__(self, *, paths: list[str] | None = None, exclude: list[str] | None = None,
                 cgroup_root: str | None = None, open_hold: float = 0.2,
                 file_events: bool = True, realtime: bool = True, batch: int = 4096) -> None:
        """``paths``: mount points whose filesystems fanotify watches (default: every local
        filesystem, new mounts included, except mount points under ``exclude``)."""
        self.batch = batch
        self.connector = ProcConnector(cgroup_root=cgroup_root)
        self.files: FileEvents | None = None
        self.file_error: str | None = None if file_events else "disabled by configuration"
        try:
            if file_events:
                self.files = FileEvents(paths, hold=open_hold, watch_mounts=paths is None,
                                        exclude=exclude or ())
        except FanotifyError as exc:
            self.file_error = str(exc)
        except BaseException:
            self.connector.close()
            raise
        self._reader = _Reader(self.connector, batch, realtime)
        self._switch_interval = sys.getswitchinterval()
        if realtime and self._switch_interval > SWITCH_INTERVAL:
            sys.setswitchinterval(SWITCH_INTERVAL)
        self._poller = select.poll()
        self._poller.register(self._reader.wake_r, select.POLLIN)
        if self.files is not None:
            self._poller.register(self.files.fileno(), select.POLLIN)
            if self.files.mounts_fileno >= 0:
                self._poller.register(self.files.mounts_fileno, select.POLLPRI)
        self._held_exits: list[Record] = []
        self._forget: list[int] = []
        self._closed = False
        self._returned = 0
        self._reader.start()
        self._reader.started.wait()

    def __enter__(self) -> FallbackSource:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._reader.stop()
        if sys.getswitchinterval() == SWITCH_INTERVAL:  # unless someone changed it since
            sys.setswitchinterval(self._switch_interval)
        self.connector.close()
        if self.files is not None:
            self.files.close()

    def poll(self, timeout: float | None = None) -> list[Record]:
        """Wait up to ``timeout`` seconds (None: until something happens) for events; return
        the records that are ready, oldest first."""
        if self._closed:
            raise ValueError("poll() on a closed FallbackSource")
        self.connector.forget(self._forget)
        self._forget = []
        ready = self._poller.poll(self._wait_ms(timeout))
        if self.files is not None and any(fd == self.files.mounts_fileno for fd, _ in ready):
            self.files.refresh_marks()
        if self._reader.error is not None:
            raise self._reader.error
        records = self._reader.take()
        exits = self._held_exits + [r for r in records if r.kind == "procexit"]
        records = [r for r in records if r.kind != "procexit"]
        if self.files is None:
            drained = True
        else:
            opens, drained = self.files.read(self.batch)
            if drained:
                opens += self.files.expire(r.pid for r in exits if r.pid == r.tid)
            else:
                opens += self.files.expire()
            records += self._opens(opens, exits if drained else [])
        if drained or (exits and time.time_ns() - exits[0].time_ns > EXIT_HOLD_NS):
            records += exits
            self._forget = [r.tid for r in exits]
            self._held_exits = []
        else:
            self._held_exits = exits
        records.sort(key=_time)
        self._returned += len(records)
        return records

    def __iter__(self) -> Iterator[list[Record]]:
        """Non-empty batches until closed, like the eBPF source."""
        while not self._closed:
            batch = self.poll(0.1)
            if batch:
                yield batch

    def _wait_ms(self, timeout: float | None) -> int:
        deadline = self.files.next_deadline() if self.files is not None else None
        if deadline is not None:
            until = max(deadline - time.monotonic(), 0.0)
            timeout = until if timeout is None else min(timeout, until)
        return -1 if timeout is None else max(math.ceil(timeout * 1000), 0)

    def _opens(self, opens: list[FileOpen], exits: list[Record]) -> list[Record]:
        last = {r.pid: r.time_ns for r in exits if r.pid == r.tid}
        records = []
        for item in opens:
            who = self.connector.identity(item.pid, item.pid)
            when = item.time_ns
            if item.pid in last:
                when = min(when, last[item.pid] - 1)
            records.append(Record("openat", when, item.pid, item.pid, who.uid, who.gid,
                                  who.comm, who.cgroup_id, 0,
                                  {"name": item.path, "flags": item.flags}))
        return records

    def stats(self) -> dict[str, int]:
        """Counters for the drop metrics: what was read, lost, or only partly decoded."""
        c = self.connector.stats
        out = {"records": self._returned, "proc_messages": c.messages, "proc_lost": c.lost,
               "proc_overflows": c.overflows, "exec_events": c.exec_events,
               "exec_partial": c.exec_partial, "exec_missed": c.exec_missed,
               "exec_superseded": c.exec_superseded, "queue_dropped": self._reader.dropped}
        if self.files is not None:
            f = self.files.stats
            out.update(file_events=f.events, file_overflows=f.overflows, file_no_fd=f.no_fd,
                       opens=f.opens, opens_unresolved=f.opens_unresolved)
        return out

    def describe(self, rules: Iterable[CompiledRule] | None = None) -> str:
        """What this source sees and misses, for the start-up log; with the loaded rules
        (``Engine.rules``), which of them cannot fire or lose fields in fallback mode."""
        lines = ["Fallback event source (no eBPF): netlink proc connector for process events "
                 f"(cgroup v2 root {self.connector.cgroup_root or 'not mounted'})"]
        if self._reader.realtime_error is not None:
            lines.append("- the proc connector reader could not get real-time priority "
                         f"({self._reader.realtime_error}): more short-lived execs will be "
                         "missed")
        if self.files is None:
            lines.append(f"- NO file events ({self.file_error}): file-based rules cannot fire")
            kinds = PROCESS_KINDS
        else:
            marks = self.files.marks
            lines.append("- fanotify file events on "
                         + ", ".join(sorted(set(marks.watched.values()))))
            lines += [f"- not watched: {point} ({why})" for point, why in marks.failed.items()]
            kinds = KINDS
        lines.append("Event types produced: " + ", ".join(sorted(kinds)))
        lines.append(_REDUCED)
        if rules is not None:
            lines += rule_coverage(rules, kinds)
        return "\n".join(lines)


def rule_coverage(rules: Iterable[CompiledRule], kinds: frozenset[str] = KINDS) -> list[str]:
    """Lines naming the enabled syscall rules that cannot fire without these event types, and
    those whose condition reads a field that has no value (or a coarser one) here."""
    cannot, reduced = [], []
    for rule in rules:
        if not rule.enabled or rule.source != "syscall":
            continue
        if rule.event_types is not None and not rule.event_types & kinds:
            needs = ", ".join(sorted(rule.event_types))
            cannot.append(f"  - {rule.name} (needs {needs})")
            continue
        missing = sorted({name for name in _condition_fields(rule) if name in UNAVAILABLE})
        if missing:
            reduced.append(f"  - {rule.name}: " + "; ".join(
                f"{name}: {UNAVAILABLE[name]}" for name in missing))
    lines = []
    if cannot:
        lines += ["Rules that cannot fire in fallback mode:", *cannot]
    if reduced:
        lines += ["Rules whose condition reads a field fallback mode lacks or coarsens:", *reduced]
    return lines


def _condition_fields(rule: CompiledRule) -> set[str]:
    names = set()
    for check in rule.checks.values():
        for operand in (check.left, check.right):
            if operand is None:
                continue
            name, arg = operand.spec.name, operand.arg
            names.add(f"{name}.{arg}" if arg is not None and name in ("evt.arg", "evt.rawarg")
                      else name)
    return names


def _time(record: Record) -> int:
    return record.time_ns
