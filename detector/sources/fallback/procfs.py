"""Reading a process's state from ``/proc`` for the proc connector, which reports pids only.

Each reader returns None when the process is gone; see ``proc_connector`` for the races.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PPM_EXE_FROM_MEMFD = 1 << 2  # Falco's execve "flags" bit for an executable from memfd_create
ARGV_MAX = 32768  # bytes of /proc/<pid>/cmdline kept; longer command lines are cut

CgroupInode = Callable[[str], int]  # a cgroup v2 path -> its inode (the BPF cgroup id)


@dataclass(frozen=True, slots=True)
class Identity:
    """What every record carries about its task besides pids."""

    comm: str
    uid: int  # effective
    gid: int
    cgroup_id: int


UNKNOWN = Identity("", -1, -1, 0)


def _read(path: str, size: int = 4096) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.read(fd, size)
        finally:
            os.close(fd)
    except OSError:
        return None


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _status(raw: bytes) -> dict[str, str]:
    fields = {}
    for line in raw.decode(errors="replace").splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _cgroup_v2_path(raw: bytes | None) -> str | None:
    for line in (raw or b"").decode(errors="replace").splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def _identity(status: dict[str, str], cgroups: bytes | None,
              cgroup_inode: CgroupInode) -> Identity:
    path = _cgroup_v2_path(cgroups)
    return Identity(status.get("Name", ""), int(status["Uid"].split()[1]),
                    int(status["Gid"].split()[1]), cgroup_inode(path) if path else 0)


def read_identity(proc_dir: str, cgroup_inode: CgroupInode) -> Identity | None:
    raw = _read(f"{proc_dir}/status")
    if not raw:
        return None
    try:
        return _identity(_status(raw), _read(f"{proc_dir}/cgroup"), cgroup_inode)
    except (KeyError, IndexError, ValueError):
        return None


def read_exec(pid: int, cgroup_inode: CgroupInode) -> tuple[Identity, dict[str, Any]] | None:
    """The new image of an exec'd process: identity and execve args, or None if gone."""
    base = f"/proc/{pid}"
    # Most fragile first: exe and cmdline vanish with the memory map at exit, the rest
    # survives until the zombie is reaped.
    exe = _readlink(f"{base}/exe")
    cmdline = _read(f"{base}/cmdline", ARGV_MAX)
    cwd = _readlink(f"{base}/cwd")
    status_raw = _read(f"{base}/status")
    if not status_raw:
        return None
    try:
        status = _status(status_raw)
        who = _identity(status, _read(f"{base}/cgroup"), cgroup_inode)
    except (KeyError, IndexError, ValueError):
        return None
    args: dict[str, Any] = {}
    if exe is not None and cmdline:
        args["filename"] = exe
        args["argv"] = [a.decode(errors="replace") for a in cmdline.rstrip(b"\0").split(b"\0")]
        args.update(_exe_args(base, exe))
    if cwd is not None:
        args["cwd"] = cwd
    args.update(_status_args(status))
    args.update(_stat_args(_read(f"{base}/stat")))
    loginuid = _read(f"{base}/loginuid")
    if loginuid:
        args["loginuid"] = _signed32(int(loginuid))
    return who, args


def _exe_args(base: str, exe: str) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if exe.startswith("/memfd:"):
        # The other bits (writable, overlay upper/lower layer) are unknown here, so "flags"
        # is only given when this one is known to be set.
        args["flags"] = PPM_EXE_FROM_MEMFD
    try:
        info = os.stat(f"{base}/exe")
    except OSError:
        return args
    args.update(exe_ino=info.st_ino, exe_ino_ctime=info.st_ctime_ns,
                exe_ino_mtime=info.st_mtime_ns)
    return args


def _status_args(status: dict[str, str]) -> dict[str, int]:
    args = {}
    if "PPid" in status:
        args["ptid"] = int(status["PPid"])
    for key, name in (("CapInh", "cap_inheritable"), ("CapPrm", "cap_permitted"),
                      ("CapEff", "cap_effective")):
        if key in status:
            args[name] = int(status[key], 16)
    return args


def _stat_args(raw: bytes | None) -> dict[str, int]:
    if not raw:
        return {}
    # The comm in parentheses may itself contain ") ": the fields start after the last one.
    fields = raw.rsplit(b")", 1)[-1].split()
    try:
        return {"pgid": int(fields[2]), "tty": int(fields[4])}
    except (IndexError, ValueError):
        return {}


def _signed32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def find_cgroup2_root(mountinfo: str = "/proc/self/mountinfo") -> str:
    """Where the cgroup v2 hierarchy is mounted ('' if nowhere): cgroup ids are its inodes."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                before, _, after = line.partition(" - ")
                if after.split(" ", 1)[0] == "cgroup2":
                    return before.split()[4]
    except OSError:
        pass
    return ""

