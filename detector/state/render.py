"""Raw syscall values as Falco prints them: flag names, enum names, fds with what they point to.

A Record carries raw integers (``flags=524288``); rules compare Falco's rendered text
(``evt.arg.flags contains O_TRUNC``, ``evt.arg.request contains PTRACE_ATTACH``). The tables
here are the x86_64 Linux values. Every function is pure and cached where the same few values
come back for every event.
"""

from __future__ import annotations

import errno
from functools import lru_cache
from typing import Any

# Open flags in the order Falco's examples print them: access mode first, then the rest.
O_ACCMODE = 0o3
O_CREAT = 0o100
O_TRUNC = 0o1000
O_DIRECTORY = 0o200000
O_CLOEXEC = 0o2000000
_ACCESS = {0: "O_RDONLY", 1: "O_WRONLY", 2: "O_RDWR"}
_OPEN_FLAGS = (
    (O_CREAT, "O_CREAT"), (0o200, "O_EXCL"), (0o400, "O_NOCTTY"), (O_TRUNC, "O_TRUNC"),
    (0o2000, "O_APPEND"), (0o4000, "O_NONBLOCK"), (0o4010000, "O_SYNC"), (0o10000, "O_DSYNC"),
    (0o20000, "O_ASYNC"), (0o40000, "O_DIRECT"), (0o100000, "O_LARGEFILE"),
    (O_DIRECTORY, "O_DIRECTORY"), (0o400000, "O_NOFOLLOW"), (0o1000000, "O_NOATIME"),
    (O_CLOEXEC, "O_CLOEXEC"), (0o10000000, "O_PATH"), (0o20000000, "O_TMPFILE"),
)

AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET = 1, 2, 10, 16, 17
_FAMILIES = {
    0: "AF_UNSPEC", AF_UNIX: "AF_UNIX", AF_INET: "AF_INET", 3: "AF_AX25", 4: "AF_IPX",
    5: "AF_APPLETALK", 9: "AF_X25", AF_INET6: "AF_INET6", AF_NETLINK: "AF_NETLINK",
    AF_PACKET: "AF_PACKET", 29: "AF_CAN", 31: "AF_BLUETOOTH", 38: "AF_ALG", 40: "AF_VSOCK",
    44: "AF_XDP", 45: "AF_MCTP",
}
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW = 1, 2, 3
SOCK_TYPE_MASK = 0xF
SOCK_CLOEXEC = O_CLOEXEC
_SOCK_TYPES = {SOCK_STREAM: "SOCK_STREAM", SOCK_DGRAM: "SOCK_DGRAM", SOCK_RAW: "SOCK_RAW",
               4: "SOCK_RDM", 5: "SOCK_SEQPACKET", 6: "SOCK_DCCP", 10: "SOCK_PACKET"}
_SOCK_FLAGS = ((0o4000, "SOCK_NONBLOCK"), (SOCK_CLOEXEC, "SOCK_CLOEXEC"))

_PTRACE = {
    0: "PTRACE_TRACEME", 1: "PTRACE_PEEKTEXT", 2: "PTRACE_PEEKDATA", 3: "PTRACE_PEEKUSR",
    4: "PTRACE_POKETEXT", 5: "PTRACE_POKEDATA", 6: "PTRACE_POKEUSR", 7: "PTRACE_CONT",
    8: "PTRACE_KILL", 9: "PTRACE_SINGLESTEP", 12: "PTRACE_GETREGS", 13: "PTRACE_SETREGS",
    14: "PTRACE_GETFPREGS", 15: "PTRACE_SETFPREGS", 16: "PTRACE_ATTACH", 17: "PTRACE_DETACH",
    18: "PTRACE_GETFPXREGS", 19: "PTRACE_SETFPXREGS", 24: "PTRACE_SYSCALL",
    25: "PTRACE_GET_THREAD_AREA", 26: "PTRACE_SET_THREAD_AREA", 30: "PTRACE_ARCH_PRCTL",
    31: "PTRACE_SYSEMU", 32: "PTRACE_SYSEMU_SINGLESTEP", 0x4200: "PTRACE_SETOPTIONS",
    0x4201: "PTRACE_GETEVENTMSG", 0x4202: "PTRACE_GETSIGINFO", 0x4203: "PTRACE_SETSIGINFO",
    0x4204: "PTRACE_GETREGSET", 0x4205: "PTRACE_SETREGSET", 0x4206: "PTRACE_SEIZE",
    0x4207: "PTRACE_INTERRUPT", 0x4208: "PTRACE_LISTEN", 0x4209: "PTRACE_PEEKSIGINFO",
    0x420A: "PTRACE_GETSIGMASK", 0x420B: "PTRACE_SETSIGMASK",
    0x420C: "PTRACE_SECCOMP_GET_FILTER", 0x420D: "PTRACE_SECCOMP_GET_METADATA",
    0x420E: "PTRACE_GET_SYSCALL_INFO",
}

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
_AT_FLAGS = ((0x100, "AT_SYMLINK_NOFOLLOW"), (0x200, "AT_REMOVEDIR"),
             (0x400, "AT_SYMLINK_FOLLOW"), (AT_EMPTY_PATH, "AT_EMPTY_PATH"))

# Falco's PPM_EXE_* bits: what the kernel knows about the executable at execve.
EXE_WRITABLE, EXE_UPPER_LAYER, EXE_FROM_MEMFD, EXE_LOWER_LAYER = 1, 2, 4, 8
_EXE_FLAGS = ((EXE_WRITABLE, "EXE_WRITABLE"), (EXE_UPPER_LAYER, "EXE_UPPER_LAYER"),
              (EXE_FROM_MEMFD, "EXE_FROM_MEMFD"), (EXE_LOWER_LAYER, "EXE_LOWER_LAYER"))

CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
ALL_CAPS = (1 << len(CAPABILITIES)) - 1
_CAP_BIT = {name: bit for bit, name in enumerate(CAPABILITIES)}


def _names(value: int, table: tuple[tuple[int, str], ...]) -> list[str]:
    return [name for bit, name in table if value & bit == bit]


@lru_cache(maxsize=1024)
def open_flags(flags: int) -> str:
    names = [_ACCESS.get(flags & O_ACCMODE, "O_RDWR")]
    if flags & 0o4010000 == 0o4010000:  # O_SYNC contains O_DSYNC's bit: name it once
        flags &= ~0o10000
    names += _names(flags, _OPEN_FLAGS)
    return "|".join(names)


def flag_names(value: int, table: tuple[tuple[int, str], ...]) -> str:
    """Set flags joined by '|', or the number when none is known (Falco prints 0 as "0")."""
    names = _names(value, table)
    return "|".join(names) if names else str(value)


def at_flags(value: int) -> str:
    return flag_names(value, _AT_FLAGS)


@lru_cache(maxsize=64)
def exe_flags(value: int) -> str:
    return flag_names(value, _EXE_FLAGS)


def family(value: int) -> str:
    return _FAMILIES.get(value, str(value))


@lru_cache(maxsize=64)
def socket_type(value: int) -> str:
    names = [_SOCK_TYPES.get(value & SOCK_TYPE_MASK, str(value & SOCK_TYPE_MASK))]
    names += _names(value, _SOCK_FLAGS)
    return "|".join(names)


def ptrace_request(value: int) -> str:
    return _PTRACE.get(value, str(value))


def mode(value: int) -> str:
    return "0" if not value else f"0{value:o}"


def errno_text(res: int) -> str:
    """A negative return value as Falco prints it: ``-2(ENOENT)``."""
    name = errno.errorcode.get(-res)
    return f"{res}({name})" if name else str(res)


@lru_cache(maxsize=1024)
def cap_names(mask: int) -> str:
    """A capability mask as ``CAP_CHOWN CAP_KILL ...`` (thread.cap_effective's form)."""
    return " ".join(name for bit, name in enumerate(CAPABILITIES) if mask >> bit & 1)


def cap_mask(names: Any) -> int:
    """A mask from capability names (``CAP_SYS_ADMIN`` or ``SYS_ADMIN``, ``ALL``); unknown
    names are ignored: a runtime may know capabilities newer than this table."""
    mask = 0
    for raw in names or ():
        name = str(raw).upper()
        if name in ("ALL", "CAP_ALL"):
            return ALL_CAPS
        bit = _CAP_BIT.get(name if name.startswith("CAP_") else "CAP_" + name)
        if bit is not None:
            mask |= 1 << bit
    return mask
