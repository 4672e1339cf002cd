"""File opens without BPF: fanotify, notification class, marks on whole filesystems.

What an event says: a file was opened (``FAN_OPEN``), opened for execution
(``FAN_OPEN_EXEC``), written (``FAN_MODIFY``), or closed after or without writing
(``FAN_CLOSE_WRITE``/``FAN_CLOSE_NOWRITE``); which process (its pid, not the thread); and an
fd on the file, opened by the kernel for us, whose ``/proc/self/fd/N`` link is the path.

What it does not say, and how an ``openat`` record is made anyway:

- **flags**: the open mode is not in the event. A read-only open closes with
  ``FAN_CLOSE_NOWRITE``, an open for writing closes with ``FAN_CLOSE_WRITE`` and usually writes
  (``FAN_MODIFY``) first; so an open is held until one of those arrives for the same process and
  path, and reported as ``O_RDONLY`` or ``O_WRONLY``. Still open and unwritten after ``hold``
  seconds (or when its process exits): reported as ``O_RDONLY`` and counted
  (``opens_unresolved``). ``O_RDWR``, ``O_TRUNC``, ``O_CREAT``, ``O_APPEND``... never appear.
- the kernel merges events of one process on one file while they wait in the queue, so two
  opens of the same file (say a read, then a write) can come back as one write.
- **path**: the file as reached by the opener, resolved (no ``..``, symlinks followed); a file
  deleted since shows as its former path. The path as the process wrote it is unknown.
- **fd / res**: not reported; records say ``res`` 0.
- directories, devices, FIFOs and sockets: fanotify reports regular files only.
- opens for execution are not opens (``execve`` is reported by the proc connector).
- the time is when the event was read, not when it happened.
- losses: the kernel queue holds 16384 events (``fs.fanotify.max_queued_events``); beyond it
  events are dropped and one ``FAN_Q_OVERFLOW`` is counted (``overflows``). An event whose
  file the kernel could not open for us is counted in ``no_fd`` (before Linux 6.13, without
  ``FAN_REPORT_FD_ERROR``, the kernel drops it silently instead).
- the detector's own file events are ignored (they would feed back through its outputs).

Filesystems marked by default: every mounted one except pseudo filesystems (nothing to open
there), network and FUSE ones (reading an event opens the file, which may block on a slow
server), and mount points under ``exclude``. New mounts (containers) are marked as they appear
when ``watch_mounts`` is on.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_NOTIF = 0x0
FAN_REPORT_FD_ERROR = 0x2000
FAN_MARK_ADD = 0x1
FAN_MARK_MOUNT = 0x10
FAN_MARK_FILESYSTEM = 0x100
FAN_MODIFY = 0x2
FAN_CLOSE_WRITE = 0x8
FAN_CLOSE_NOWRITE = 0x10
FAN_OPEN = 0x20
FAN_OPEN_EXEC = 0x1000
FAN_Q_OVERFLOW = 0x4000
AT_FDCWD = -100
MASK = FAN_OPEN | FAN_OPEN_EXEC | FAN_MODIFY | FAN_CLOSE_WRITE | FAN_CLOSE_NOWRITE
_WROTE = FAN_MODIFY | FAN_CLOSE_WRITE

_METADATA = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
# The kernel opens one fd per event while copying it to us; past RLIMIT_NOFILE the copy fails
# and the event is gone, so a read asks for few enough events to stay far from a 1024 limit.
READ_SIZE = 128 * _METADATA.size
_DELETED = " (deleted)"
_OCTAL = re.compile(r"\\([0-7]{3})")  # mountinfo writes space, tab, newline, \ as \ooo

PSEUDO_FILESYSTEMS = frozenset({
    "proc", "sysfs", "cgroup", "cgroup2", "devpts", "devtmpfs", "mqueue", "debugfs", "tracefs",
    "securityfs", "pstore", "bpf", "configfs", "fusectl", "hugetlbfs", "autofs", "binfmt_misc",
    "rpc_pipefs", "nsfs", "efivarfs", "selinuxfs", "nfsd",
})
REMOTE_FILESYSTEMS = frozenset({"nfs", "nfs4", "cifs", "smb3", "ceph", "9p", "afs", "glusterfs"})


class FanotifyError(OSError):
    """fanotify cannot be used here; the message says why."""


@dataclass(frozen=True, slots=True)
class FileOpen:
    time_ns: int  # wall clock when the open event was read
    pid: int
    path: str
    flags: int  # os.O_RDONLY or os.O_WRONLY, see the module docstring


@dataclass(slots=True)
class FileStats:
    events: int = 0
    overflows: int = 0
    no_fd: int = 0  # events the kernel could not give a file descriptor for
    opens: int = 0
    opens_unresolved: int = 0  # neither written nor closed within `hold`: said O_RDONLY


@dataclass(slots=True)
class _Pending:
    time_ns: int
    deadline: float  # time.monotonic()


@dataclass(slots=True)
class Marks:
    watched: dict[str, str] = field(default_factory=dict)  # major:minor -> a mount point
    failed: dict[str, str] = field(default_factory=dict)  # mount point -> why


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
    libc.fanotify_init.restype = ctypes.c_int
    libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                   ctypes.c_char_p]
    libc.fanotify_mark.restype = ctypes.c_int
    return libc


class FileEvents:
    """A fanotify group; ``read()`` drains it into FileOpens (non-blocking)."""

    def __init__(self, paths: Sequence[str] | None = None, *, hold: float = 0.2,
                 watch_mounts: bool = True, exclude: Sequence[str] = ()) -> None:
        self.stats = FileStats()
        self.hold = hold
        self.exclude = tuple(p.rstrip("/") for p in exclude)
        self.marks = Marks()
        self._self = os.getpid()
        self._pending: dict[tuple[int, str], _Pending] = {}
        self._pending_pids: dict[int, int] = {}
        try:
            self._libc = _libc()
        except AttributeError:
            raise FanotifyError(errno.ENOSYS, "fanotify: the C library has no fanotify_init"
                                ) from None
        flags = FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK
        opened = os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC
        self._fd = self._libc.fanotify_init(flags | FAN_REPORT_FD_ERROR, opened)
        if self._fd < 0 and ctypes.get_errno() == errno.EINVAL:  # before Linux 6.13
            self._fd = self._libc.fanotify_init(flags, opened)
        if self._fd < 0:
            err = ctypes.get_errno()
            why = {errno.EPERM: " (needs CAP_SYS_ADMIN)",
                   errno.ENOSYS: " (kernel without CONFIG_FANOTIFY)",
                   errno.EMFILE: " (fs.fanotify.max_user_groups reached)"}.get(err, "")
            raise FanotifyError(err, f"fanotify_init: {os.strerror(err)}{why}")
        self._mounts_fd = -1
        try:
            if paths is None:
                if watch_mounts:
                    # mountinfo polls with POLLPRI when the mount table changes.
                    self._mounts_fd = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
                self.refresh_marks()
            else:
                for path in paths:
                    try:
                        device = _device(path)
                    except OSError as exc:
                        self.marks.failed[path] = exc.strerror or str(exc)
                        continue
                    self._mark(path, device)
            if not self.marks.watched:
                raise FanotifyError(errno.ENOENT, "fanotify: no filesystem could be marked: "
                                    + "; ".join(f"{p}: {w}" for p, w in self.marks.failed.items()))
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        return self._fd

    @property
    def mounts_fileno(self) -> int:
        """-1 when new mounts are not watched."""
        return self._mounts_fd

    def close(self) -> None:
        for fd in (self._fd, self._mounts_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._mounts_fd = -1

    # -- marks -----------------------------------------------------------------------------

    def refresh_marks(self) -> None:
        """Mark every filesystem of interest not marked yet (one mark per superblock)."""
        if self._mounts_fd >= 0:
            os.lseek(self._mounts_fd, 0, os.SEEK_SET)
            text = _read_all(self._mounts_fd).decode(errors="replace")
        else:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        mounts = _mounts(text)
        # A mark dies with its superblock, and an unmounted filesystem's anonymous device
        # number is soon given to another: forget marks whose device is gone.
        present = {device for device, _, _ in mounts}
        for device in [d for d in self.marks.watched if d not in present]:
            del self.marks.watched[device]
        points = {point for _, point, _ in mounts}
        for point in [p for p in self.marks.failed if p not in points]:
            del self.marks.failed[point]
        for device, point, fstype in mounts:
            if device in self.marks.watched or point in self.marks.failed:
                continue
            if fstype in PSEUDO_FILESYSTEMS or fstype in REMOTE_FILESYSTEMS or \
                    fstype.startswith("fuse") or self._excluded(point):
                continue
            self._mark(point, device)

    def _excluded(self, point: str) -> bool:
        return any(point == prefix or point.startswith(prefix + "/") for prefix in self.exclude)

    def _mark(self, point: str, device: str) -> None:
        errors = []
        for how, name in ((FAN_MARK_FILESYSTEM, "filesystem"), (FAN_MARK_MOUNT, "mount")):
            if self._libc.fanotify_mark(self._fd, FAN_MARK_ADD | how, MASK, AT_FDCWD,
                                        os.fsencode(point)) == 0:
                self.marks.watched[device] = point
                return
            errors.append(f"{name} mark: {os.strerror(ctypes.get_errno())}")
        self.marks.failed[point] = ", ".join(errors)

    # -- events ----------------------------------------------------------------------------

    def read(self, limit: int = 4096) -> tuple[list[FileOpen], bool]:
        """Opens whose nature is now known, and whether the kernel queue was drained empty."""
        opens: list[FileOpen] = []
        now = time.time_ns()
        deadline = time.monotonic() + self.hold
        seen = 0
        while seen < limit:
            try:
                buf = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                return opens, True
            except OSError:  # the kernel could not open a file for us: that event is lost
                self.stats.no_fd += 1
                seen += 1
                continue
            off = 0
            while off + _METADATA.size <= len(buf):
                length, _ver, _res, _mlen, mask, fd, pid = _METADATA.unpack_from(buf, off)
                off += length
                seen += 1
                self._event(mask, fd, pid, now, deadline, opens)
        return opens, False

    def _event(self, mask: int, fd: int, pid: int, now: int, deadline: float,
               opens: list[FileOpen]) -> None:
        self.stats.events += 1
        if mask & FAN_Q_OVERFLOW:
            self.stats.overflows += 1
            return
        if fd < 0:
            self.stats.no_fd += 1
            return
        try:
            if pid == self._self or mask & FAN_OPEN_EXEC:
                return
            if not mask & FAN_OPEN and pid not in self._pending_pids:
                return  # a write or close of a file whose open was not seen or is settled
            path = _path(fd)
        finally:
            os.close(fd)
        if path is None:
            self.stats.no_fd += 1
            return
        key = (pid, path)
        if mask & (_WROTE | FAN_CLOSE_NOWRITE):
            held = self._unhold(key)
            if mask & FAN_OPEN or held is not None:
                when = held.time_ns if held is not None else now
                flags = os.O_WRONLY if mask & _WROTE else os.O_RDONLY
                opens.append(self._open(when, pid, path, flags))
        elif key not in self._pending:
            self._pending[key] = _Pending(now, deadline)
            self._pending_pids[pid] = self._pending_pids.get(pid, 0) + 1

    def expire(self, exited: Iterable[int] = ()) -> list[FileOpen]:
        """Held opens that waited ``hold`` seconds, or whose process exited: said O_RDONLY."""
        gone = set(exited)
        now = time.monotonic()
        late = [key for key, held in self._pending.items()
                if held.deadline <= now or key[0] in gone]
        opens = []
        for key in late:
            held = self._unhold(key)
            if held is not None:
                self.stats.opens_unresolved += 1
                opens.append(self._open(held.time_ns, key[0], key[1], os.O_RDONLY))
        return opens

    def next_deadline(self) -> float | None:
        """When the oldest held open expires (time.monotonic()), None if none is held."""
        return min((held.deadline for held in self._pending.values()), default=None)

    def _unhold(self, key: tuple[int, str]) -> _Pending | None:
        held = self._pending.pop(key, None)
        if held is not None:
            left = self._pending_pids[key[0]] - 1
            if left:
                self._pending_pids[key[0]] = left
            else:
                del self._pending_pids[key[0]]
        return held

    def _open(self, when: int, pid: int, path: str, flags: int) -> FileOpen:
        self.stats.opens += 1
        return FileOpen(when, pid, path, flags)


def _path(fd: int) -> str | None:
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    # Only a file with no links left gets the suffix; a file really named so keeps it.
    if path.endswith(_DELETED) and os.fstat(fd).st_nlink == 0:
        path = path[: -len(_DELETED)]
    return path


def _device(path: str) -> str:
    dev = os.stat(path).st_dev
    return f"{os.major(dev)}:{os.minor(dev)}"


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _mounts(text: str) -> list[tuple[str, str, str]]:
    """(major:minor, mount point, fs type) per line of /proc/self/mountinfo."""
    mounts = []
    for line in text.splitlines():
        before, _, after = line.partition(" - ")
        fields = before.split()
        if len(fields) < 5 or not after:
            continue
        point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        mounts.append((fields[2], point, after.split(" ", 1)[0]))
    return mounts
