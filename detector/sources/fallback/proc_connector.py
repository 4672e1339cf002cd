"""Process lifecycle without BPF: the kernel's proc connector (netlink, ``CN_IDX_PROC``).

The kernel multicasts one small message per fork, exec, exit, uid/gid change, setsid, ptrace
attach and PR_SET_NAME, carrying pids only. Everything else is read from ``/proc`` when the
message arrives, so it is racy by nature:

- **exec**: ``/proc/<pid>/{exe,cmdline,cwd,status,stat,cgroup,loginuid}`` are read at once.
  A process that has already exited by then has lost its memory map: ``exe`` and ``cmdline``
  are gone, ``status`` (comm, uids) survives until it is reaped. The record is then emitted
  without ``filename``/``argv`` (``exec_partial``), or not at all if ``status`` is gone too
  (``exec_missed``). A process that exec'd again before the reads finished would show the
  later image under the earlier exec: that earlier exec is dropped (``exec_superseded``),
  detected exactly by comparing the second exec's kernel timestamp with the end of the reads.
  A pid reused within that window would go unnoticed (pid_max makes it unlikely).
- ``filename`` is ``/proc/<pid>/exe``: the resolved executable (``/usr/bin/dash``), not the
  path handed to execve (``/bin/sh``); ``argv[0]`` keeps what the caller wrote.
- uid, gid, comm and cgroup of fork, exit and file events come from an identity table kept by
  these messages (a child inherits its parent's), read from ``/proc`` once for processes that
  were already running. Unknown: uid/gid -1, comm "", cgroup_id 0.
- a new thread's ``clone`` names its process (``pid`` = ``tid`` = ``child_pid``) as the
  creator: the kernel does not say which thread created it.
- Losses are counted exactly: the kernel numbers messages per CPU, so a gap is a lost message
  (``lost``); a full socket buffer also reports ``ENOBUFS`` (``overflows``).

Only a listener in the initial user and pid namespaces is served; elsewhere the kernel ignores
the subscription silently, so start-up waits for the kernel's acknowledgement and fails if none
comes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from detector.sources.fallback.procfs import (
    UNKNOWN,
    Identity,
    find_cgroup2_root,
    read_exec,
    read_identity,
)
from detector.sources.record import Record

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
NLMSG_DONE = 3
SO_RCVBUFFORCE = 33

EV_NONE = 0x0
EV_FORK = 0x1
EV_EXEC = 0x2
EV_UID = 0x4
EV_GID = 0x40
EV_SID = 0x80
EV_PTRACE = 0x100
EV_COMM = 0x200
EV_EXIT = 0x80000000

PTRACE_ATTACH = 16

_NLMSG = struct.Struct("=IHHII")
_CN_MSG = struct.Struct("=IIIIHH")
_EV_HEAD = struct.Struct("=IIQ")  # what, cpu, timestamp_ns (CLOCK_MONOTONIC)
_EV_BODY = 16  # offset of the event union inside struct proc_event
_FOUR = struct.Struct("=4i")
_TWO = struct.Struct("=2i")
_EXIT = struct.Struct("=2i2I")
_COMM = struct.Struct("=2i16s")
_CN_OFF = _NLMSG.size
_EV_OFF = _NLMSG.size + _CN_MSG.size


class ConnectorError(OSError):
    """The proc connector cannot be used here; the message says why."""


@dataclass(slots=True)
class ConnectorStats:
    messages: int = 0
    lost: int = 0  # gaps in the kernel's per-CPU sequence numbers
    overflows: int = 0  # ENOBUFS: the socket buffer was full (the gaps say how much was lost)
    exec_events: int = 0
    exec_partial: int = 0  # emitted without filename/argv: exited before /proc was read
    exec_missed: int = 0  # not emitted: the process was gone from /proc
    exec_superseded: int = 0  # not emitted: exec'd again before its /proc reads finished


@dataclass(slots=True)
class _Exec:
    index: int  # in the batch's records
    read_done: int  # monotonic ns when its /proc reads finished


@dataclass(slots=True)
class _Batch:
    records: list[Record | None] = field(default_factory=list)  # None: a dropped exec
    last_exec: dict[int, _Exec] = field(default_factory=dict)

    def done(self) -> list[Record]:
        return [r for r in self.records if r is not None]


class ProcConnector:
    """A subscribed proc-connector socket; ``read()`` drains it into Records (non-blocking)."""

    def __init__(self, *, cgroup_root: str | None = None, rcvbuf: int = 16 << 20,
                 ack_timeout: float = 2.0) -> None:
        self.stats = ConnectorStats()
        self.cgroup_root = cgroup_root if cgroup_root is not None else find_cgroup2_root()
        self._identities: dict[int, Identity] = {}
        self._cgroup_inodes: dict[str, int] = {}
        self._last_seq: dict[int, int] = {}
        self._buf = bytearray(65536)
        self._backlog: list[Record] = []
        self._clock_offset = time.time_ns() - time.monotonic_ns()
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError as exc:
            raise ConnectorError(exc.errno, f"netlink connector socket: {exc.strerror} "
                                 "(kernel without CONFIG_CONNECTOR?)") from None
        try:
            self._subscribe(rcvbuf, ack_timeout)
        except BaseException:
            self._sock.close()
            raise

    def _subscribe(self, rcvbuf: int, ack_timeout: float) -> None:
        sock = self._sock
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:  # without CAP_NET_ADMIN the limit is net.core.rmem_max
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, 1 << (CN_IDX_PROC - 1)))
        # The kernel overwrites the sequence number of its acknowledgement but answers our
        # ack field plus one, so a random ack tells our answer from another listener's.
        ack = random.randrange(1, 1 << 31)
        self._control(PROC_CN_MCAST_LISTEN, ack)
        deadline = time.monotonic() + ack_timeout
        try:
            while True:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                try:
                    size = sock.recv_into(self._buf)
                except TimeoutError:
                    raise ConnectorError(
                        errno.ETIMEDOUT, "proc connector: no acknowledgement from the kernel "
                        f"within {ack_timeout:g}s (the listener must run in the initial user "
                        "and pid namespaces; kernel needs CONFIG_PROC_EVENTS)") from None
                err = self._find_ack(size, ack + 1)
                if err is not None:
                    break
        finally:
            sock.setblocking(False)
        if err:
            raise ConnectorError(err, f"proc connector refused the subscription: "
                                 f"{os.strerror(err)}")

    def _find_ack(self, size: int, ack: int) -> int | None:
        """Decode a datagram received while waiting; the ack's error code if it is ours."""
        batch = _Batch()
        found = None
        for off in self._messages(size):
            what = _EV_HEAD.unpack_from(self._buf, off + _EV_OFF)[0]
            if what == EV_NONE and _CN_MSG.unpack_from(self._buf, off + _CN_OFF)[3] == ack:
                found = struct.unpack_from("=I", self._buf, off + _EV_OFF + _EV_BODY)[0]
                self._count(off)
            else:
                self._decode(off, batch)
        self._backlog.extend(batch.done())
        return found

    def _control(self, op: int, ack: int = 0) -> None:
        payload = struct.pack("=I", op)
        cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, ack, len(payload), 0) + payload
        header = _NLMSG.pack(_NLMSG.size + len(cn), NLMSG_DONE, 0, 0, 0)
        self._sock.send(header + cn)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        if self._sock.fileno() < 0:
            return
        # The kernel keeps producing events while its listener count is non-zero, and only an
        # explicit IGNORE lowers it.
        with contextlib.suppress(OSError):
            self._control(PROC_CN_MCAST_IGNORE)
        self._sock.close()

    # -- reading ---------------------------------------------------------------------------

    def read(self, limit: int = 4096) -> list[Record]:
        """Up to about ``limit`` records from what the kernel has queued, in arrival order."""
        self._clock_offset = time.time_ns() - time.monotonic_ns()
        batch = _Batch(list(self._backlog))
        self._backlog = []
        while len(batch.records) < limit:
            try:
                size = self._sock.recv_into(self._buf)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.stats.overflows += 1
                continue
            for off in self._messages(size):
                self._decode(off, batch)
        return batch.done()

    def _messages(self, size: int) -> list[int]:
        offsets = []
        off = 0
        while off + _EV_OFF + _EV_HEAD.size <= size:
            length = _NLMSG.unpack_from(self._buf, off)[0]
            if length < _NLMSG.size:
                break
            if _CN_MSG.unpack_from(self._buf, off + _CN_OFF)[:2] == (CN_IDX_PROC, CN_VAL_PROC):
                offsets.append(off)
            off += (length + 3) & ~3
        return offsets

    def _count(self, off: int) -> tuple[int, int, int]:
        seq = _CN_MSG.unpack_from(self._buf, off + _CN_OFF)[2]
        what, cpu, ts = _EV_HEAD.unpack_from(self._buf, off + _EV_OFF)
        self.stats.messages += 1
        last = self._last_seq.get(cpu)
        if last is not None:
            self.stats.lost += (seq - last - 1) & 0xFFFFFFFF
        self._last_seq[cpu] = seq
        return what, cpu, ts

    def _decode(self, off: int, batch: _Batch) -> None:
        what, cpu, ts = self._count(off)
        body = off + _EV_OFF + _EV_BODY
        now = ts + self._clock_offset
        if what == EV_FORK:
            self._fork(_FOUR.unpack_from(self._buf, body), now, cpu, batch)
        elif what == EV_EXEC:
            tid, tgid = _TWO.unpack_from(self._buf, body)
            self._exec(tid, tgid, ts, cpu, batch)
        elif what == EV_EXIT:
            self._exit(_EXIT.unpack_from(self._buf, body), now, cpu, batch)
        elif what in (EV_UID, EV_GID):
            tid, tgid, _real, effective = _FOUR.unpack_from(self._buf, body)
            known = self.identity(tgid, tid)
            changed = {"uid": effective} if what == EV_UID else {"gid": effective}
            self._identities[tid] = replace(known, **changed)
        elif what == EV_COMM:
            tid, tgid, raw = _COMM.unpack_from(self._buf, body)
            comm = raw.split(b"\0", 1)[0].decode(errors="replace")
            self._identities[tid] = replace(self.identity(tgid, tid), comm=comm)
        elif what == EV_SID:
            tid, tgid = _TWO.unpack_from(self._buf, body)
            batch.records.append(self._record("setsid", now, tgid, tid, cpu, res=tgid))
        elif what == EV_PTRACE:
            tracee_tid, _tracee, tracer_tid, tracer = _FOUR.unpack_from(self._buf, body)
            if tracer:  # a detach names no tracer: its subject is unknown
                batch.records.append(self._record(
                    "ptrace", now, tracer, tracer_tid, cpu,
                    args={"request": PTRACE_ATTACH, "pid": tracee_tid}))

    def _record(self, kind: str, now: int, pid: int, tid: int, cpu: int, *, res: int = 0,
                args: dict[str, Any] | None = None, who: Identity | None = None) -> Record:
        who = who or self.identity(pid, tid)
        return Record(kind, now, pid, tid, who.uid, who.gid, who.comm, who.cgroup_id, res,
                      args or {}, cpu)

    def _fork(self, fields: tuple[int, ...], now: int, cpu: int, batch: _Batch) -> None:
        parent_tid, parent, child_tid, child = fields
        if child != child_tid:
            # A new thread's "parent" is its process's parent (the kernel reports real_parent,
            # which CLONE_THREAD inherits); the creating thread is not reported.
            parent = parent_tid = child
        who = self.identity(parent, parent_tid)
        self._identities[child_tid] = who
        batch.records.append(self._record(
            "clone", now, parent, parent_tid, cpu, res=child_tid, who=who,
            args={"child_pid": child, "child_tid": child_tid}))

    def _exit(self, fields: tuple[int, ...], now: int, cpu: int, batch: _Batch) -> None:
        tid, tgid, code, _exit_signal = fields
        batch.records.append(self._record(
            "procexit", now, tgid, tid, cpu,
            args={"status": code, "ret": code >> 8, "sig": code & 0x7F,
                  "core": int(bool(code & 0x80))}))

    def _exec(self, tid: int, tgid: int, ts: int, cpu: int, batch: _Batch) -> None:
        self.stats.exec_events += 1
        earlier = batch.last_exec.pop(tid, None)
        if earlier is not None and earlier.read_done > ts:
            # The earlier exec's reads ended after this exec: they may show this image.
            batch.records[earlier.index] = None
            self.stats.exec_superseded += 1
        info = read_exec(tgid, self._cgroup_inode)
        done = time.monotonic_ns()
        if info is None:
            self.stats.exec_missed += 1
            return
        who, args = info
        if "argv" not in args:
            self.stats.exec_partial += 1
        self._identities[tid] = who
        record = self._record("execve", ts + self._clock_offset, tgid, tid, cpu,
                              args=args, who=who)
        batch.last_exec[tid] = _Exec(len(batch.records), done)
        batch.records.append(record)

    # -- identities ------------------------------------------------------------------------

    def identity(self, pid: int, tid: int) -> Identity:
        """The task's comm/uid/gid/cgroup as last seen, read from /proc if never seen."""
        who = self._identities.get(tid) or self._identities.get(pid)
        if who is None:
            who = read_identity(f"/proc/{pid}/task/{tid}", self._cgroup_inode) or UNKNOWN
            if who is not UNKNOWN:
                self._identities[tid] = who
        return who

    def forget(self, tids: Iterable[int]) -> None:
        """Drop the identities of exited tasks, once no event of theirs can still come."""
        for tid in tids:
            self._identities.pop(tid, None)
        if self.stats.overflows and len(self._identities) > 65536:
            # After lost messages exits may be missing: keep only tasks that still exist.
            self._identities = {t: who for t, who in self._identities.items()
                                if os.path.exists(f"/proc/{t}")}

    def _cgroup_inode(self, path: str) -> int:
        inode = self._cgroup_inodes.get(path)
        if inode is None:
            try:
                inode = os.stat(self.cgroup_root + path).st_ino if self.cgroup_root else 0
            except OSError:
                inode = 0
            if len(self._cgroup_inodes) > 8192:  # cgroups come and go with containers
                self._cgroup_inodes.clear()
            self._cgroup_inodes[path] = inode
        return inode
