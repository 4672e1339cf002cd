"""Turning the program's ring-buffer events into Records.

Every event is ``struct event`` of program.c: a fixed 112-byte header (times, ids, result, six
integer argument slots, comm) and a data area holding, in order, the peer's raw socket address
(``blob`` bytes), the local end's (``local`` bytes), a kind's extra u64 values, then
NUL-terminated strings. What the slots and strings mean depends only on the kind, so one
table (LAYOUTS) drives decoding; the C side writes them in the same order.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from detector.sources.record import Record

HEADER = struct.Struct("<QQq6qIIIIHHHH16s")
_INET_PORT = struct.Struct(">H")
_COMM_CACHE_MAX = 4096


@dataclass(frozen=True, slots=True)
class Layout:
    """Where one kind's arguments are in its events, and their Falco parameter names."""

    ints: tuple[str, ...] = ()  # names of the integer slots, in slot order
    strs: tuple[str, ...] = ()  # NUL-terminated strings, in order
    addr: str | None = None  # name of the decoded socket address, when the kind carries one
    argv: bool = False  # after the strings, the rest of the data is argv, NUL-separated
    res: str | None = None  # Falco also names the return value (an fd) among the parameters
    extra: tuple[str, ...] = ()  # u64 values at the start of data, for kinds needing > 6


_EXEC_INTS = ("tty", "loginuid", "flags", "cap_inheritable", "cap_permitted", "cap_effective")
_EXEC_EXTRA = ("sid", "pgid", "vpid", "exe_ino")
# The order is the numbering of kinds shared with the C program (K_<kind> = index).
LAYOUTS: dict[str, Layout] = {
    # sched_process_fork: ``pid``/``tid`` are the caller; the child's thread-group id equals
    # the caller's when the flags include CLONE_THREAD.
    "clone": Layout(("child_pid", "child_tid", "flags")),
    # status: the raw exit code (code << 8 | signal); group_dead: 1 when the last thread of
    # the process exits, 0 if not, -1 on kernels whose tracepoint does not say.
    "procexit": Layout(("status", "group_dead")),
    # filename: the path the kernel executed (execveat of an fd: /dev/fd/N); argv from the
    # new image. tty: Falco's device encoding (0: none); loginuid: -1 when unset; flags:
    # Falco's exe flags (EXE_UPPER_LAYER 2, EXE_FROM_MEMFD 4, EXE_LOWER_LAYER 8); cap_*:
    # the capability masks after the exec; sid, pgid: the host's numbers; vpid: the pid in the
    # process's own namespace; exe_ino: the executable's inode.
    "execve": Layout(_EXEC_INTS, ("filename",), argv=True, extra=_EXEC_EXTRA),
    "execveat": Layout(_EXEC_INTS, ("filename",), argv=True, extra=_EXEC_EXTRA),
    "open": Layout(("flags", "mode"), ("name",), res="fd"),
    "creat": Layout(("mode",), ("name",), res="fd"),
    "openat": Layout(("dirfd", "flags", "mode"), ("name",), res="fd"),
    "openat2": Layout(("dirfd", "flags", "mode", "resolve"), ("name",), res="fd"),
    "memfd_create": Layout(("flags",), ("name",), res="fd"),
    "close": Layout(("fd",)),
    "dup": Layout(("oldfd",)),
    "dup2": Layout(("oldfd", "newfd")),
    "dup3": Layout(("oldfd", "newfd", "flags")),
    "symlink": Layout((), ("target", "linkpath")),
    "symlinkat": Layout(("linkdirfd",), ("target", "linkpath")),
    "link": Layout((), ("oldpath", "newpath")),
    "linkat": Layout(("olddir", "newdir", "flags"), ("oldpath", "newpath")),
    "chdir": Layout((), ("path",)),
    "fchdir": Layout(("fd",)),
    "socket": Layout(("domain", "type", "proto"), res="fd"),
    "bind": Layout(("fd",), addr="addr"),
    # Socket calls that succeeded also carry ``local``, the socket's own (family, address,
    # port) as the kernel has it (an ephemeral port once assigned).
    "connect": Layout(("fd",), addr="addr"),
    "sendto": Layout(("fd", "size"), addr="tuple"),
    "sendmsg": Layout(("fd",), addr="tuple"),
    "accept": Layout(addr="tuple", res="fd"),
    "accept4": Layout(("flags",), addr="tuple", res="fd"),
    "setsid": Layout(),
    "setpgid": Layout(("pid", "pgid")),
    # The sets in force after the call.
    "capset": Layout(("cap_effective", "cap_permitted", "cap_inheritable")),
    "setuid": Layout(("uid",)),
    "setgid": Layout(("gid",)),
    "setreuid": Layout(("ruid", "euid")),
    "setregid": Layout(("rgid", "egid")),
    "setresuid": Layout(("ruid", "euid", "suid")),
    "setresgid": Layout(("rgid", "egid", "sgid")),
    "ptrace": Layout(("request", "pid", "addr", "data")),
    "init_module": Layout(("length",), ("uargs",)),
    "finit_module": Layout(("fd", "flags"), ("uargs",)),
}
RESULT_ONLY = Layout()  # a syscall traced for its return value only


def sockaddr(raw: bytes) -> tuple[int, str, int] | None:
    """(family, address, port) from a raw ``struct sockaddr``; None when there is none.

    Unix sockets give their path (abstract ones as ``@name``) and port 0; other families give
    an empty address."""
    if len(raw) < 2:
        return None
    family = raw[0] | raw[1] << 8
    if family == socket.AF_INET and len(raw) >= 8:
        return family, socket.inet_ntop(socket.AF_INET, raw[4:8]), _INET_PORT.unpack_from(raw, 2)[0]
    if family == socket.AF_INET6 and len(raw) >= 24:
        address = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        return family, address, _INET_PORT.unpack_from(raw, 2)[0]
    if family == socket.AF_UNIX:
        path = raw[2:]
        if path[:1] == b"\0":
            return family, "@" + path[1:].split(b"\0", 1)[0].decode(errors="replace"), 0
        return family, path.split(b"\0", 1)[0].decode(errors="replace"), 0
    return family, "", 0


ArgsFunction = Callable[[tuple[Any, ...], bytes, int], dict[str, Any]]


def _args_function(layout: Layout) -> ArgsFunction:
    """One kind's args dict from the unpacked header ``f`` and the strings at ``raw[start:]``,
    as a function compiled from a dict display: building the dict in a loop costs three
    times as much, and this runs for every event. Argv is left to the caller."""
    items = [f"{name!r}: f[{3 + slot}]" for slot, name in enumerate(layout.ints)]
    if layout.res is not None:
        items.append(f"{layout.res!r}: f[2]")
    lines = ["def args(f, raw, start):"]
    if layout.strs and not layout.argv:
        # The last string's NUL ends the event, and no string holds a NUL: one split.
        lines.append(f"    s = raw[start:-1].split(b'\\0', {len(layout.strs) - 1})")
        items += [f"{name!r}: s[{i}].decode('utf-8', 'replace')"
                  for i, name in enumerate(layout.strs)]
    lines.append(f"    return {{{', '.join(items)}}}")
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines), f"<decode {layout}>", "exec"), namespace)
    return namespace["args"]


class Decoder:
    """Decodes events of one compiled program (its kind numbering) into Records. Everything
    known per kind is worked out once, here: this runs for every event."""

    def __init__(self, kinds: Sequence[str], clock_offset_ns: int) -> None:
        self.kinds = tuple(kinds)
        self._plans: list[tuple[str, ArgsFunction, Layout | None, struct.Struct | None]] = []
        for kind in self.kinds:
            layout = LAYOUTS.get(kind, RESULT_ONLY)
            extra = struct.Struct(f"<{len(layout.extra)}q") if layout.extra else None
            rest = layout.addr is not None or extra is not None or layout.argv
            self._plans.append((kind, _args_function(layout), layout if rest else None, extra))
        self._offset = clock_offset_ns
        self._comms: dict[bytes, str] = {}

    def __call__(self, raw: bytes) -> Record:
        f = HEADER.unpack_from(raw)
        kind, build, layout, extra = self._plans[f[13]]
        start = HEADER.size + f[15] + f[16]
        args = build(f, raw, start)
        if layout is not None:
            self._rest(layout, extra, f, raw, start, args)
        comm = self._comms.get(f[17])
        if comm is None:
            comm = self._comm(f[17])
        return Record(kind, f[0] + self._offset, f[9], f[10], f[11], f[12], comm, f[1], f[2],
                      args, f[14])

    @staticmethod
    def _rest(layout: Layout, extra: struct.Struct | None, f: tuple[Any, ...], raw: bytes,
              start: int, args: dict[str, Any]) -> None:
        """Socket addresses, extra values, and strings followed by argv."""
        blob, local = f[15], f[16]
        if layout.addr is not None:
            address = sockaddr(raw[HEADER.size:HEADER.size + blob])
            if address is not None:
                args[layout.addr] = address
            if local:
                args["local"] = sockaddr(raw[HEADER.size + blob:start])
        if extra is not None:
            args.update(zip(layout.extra, extra.unpack_from(raw, start), strict=True))
            start += extra.size
        if layout.argv:
            parts = raw[start:].split(b"\0")
            for name, part in zip(layout.strs, parts, strict=False):
                args[name] = part.decode(errors="replace")
            argv = parts[len(layout.strs):]
            if argv and not argv[-1]:
                argv.pop()  # the NUL ending the last argument
            args["argv"] = [arg.decode(errors="replace") for arg in argv]

    def _comm(self, raw: bytes) -> str:
        if len(self._comms) >= _COMM_CACHE_MAX:
            self._comms.clear()
        comm = self._comms[raw] = raw.split(b"\0", 1)[0].decode(errors="replace")
        return comm
