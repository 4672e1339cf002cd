"""``evt.args``: an event's parameters rendered as Falco renders them, in Falco's order.

``evt.arg.flags`` reads ``O_WRONLY|O_CREAT|O_TRUNC``, ``evt.arg.fd`` reads
``3(<4t>10.0.0.1:5000->10.0.0.2:80)``, ``evt.arg.domain`` reads ``AF_PACKET``; a relative path
parameter reads as the absolute path it resolved to. Parameters the Record lacks are left out,
so ``evt.arg.X`` on them has no value. Built only when a rule or an output reads an argument.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from detector.state import render
from detector.state.fds import Fd, directory_of, dirfd_text, endpoint_text, fd_text, resolve

if TYPE_CHECKING:
    from detector.state.view import View

# Per event type: (parameter, how to render it). "path:<param>" is a path resolved against
# the directory of the dirfd parameter named (or the cwd for "path:").
_SPECS: dict[str, tuple[tuple[str, str], ...]] = {
    "open": (("fd", "newfd"), ("name", "text"), ("flags", "oflags"), ("mode", "mode"),
             ("dev", "int"), ("ino", "int")),
    "openat": (("fd", "newfd"), ("dirfd", "dirfd"), ("name", "text"), ("flags", "oflags"),
               ("mode", "mode"), ("dev", "int"), ("ino", "int")),
    "openat2": (("fd", "newfd"), ("dirfd", "dirfd"), ("name", "text"), ("flags", "oflags"),
                ("mode", "mode"), ("resolve", "int"), ("dev", "int"), ("ino", "int")),
    "creat": (("fd", "newfd"), ("name", "text"), ("mode", "mode"), ("dev", "int"),
              ("ino", "int")),
    "socket": (("fd", "newfd"), ("domain", "domain"), ("type", "socktype"), ("proto", "int")),
    "connect": (("res", "res"), ("tuple", "tuple"), ("fd", "fd"), ("addr", "addr")),
    "accept": (("fd", "newfd"), ("tuple", "tuple")),
    "accept4": (("fd", "newfd"), ("tuple", "tuple"), ("flags", "socktype")),
    "bind": (("res", "res"), ("addr", "addr"), ("fd", "fd")),
    "sendto": (("res", "res"), ("fd", "fd"), ("size", "int"), ("tuple", "tuple")),
    "sendmsg": (("res", "res"), ("fd", "fd"), ("size", "int"), ("tuple", "tuple")),
    "dup": (("res", "res"), ("oldfd", "fd")),
    "dup2": (("res", "res"), ("oldfd", "fd"), ("newfd", "int")),
    "dup3": (("res", "res"), ("oldfd", "fd"), ("newfd", "int"), ("flags", "oflags")),
    "close": (("res", "res"), ("fd", "fd")),
    "symlink": (("res", "res"), ("target", "text"), ("linkpath", "path:")),
    "symlinkat": (("res", "res"), ("target", "text"), ("linkdirfd", "dirfd"),
                  ("linkpath", "path:linkdirfd")),
    "link": (("res", "res"), ("oldpath", "path:"), ("newpath", "path:")),
    "linkat": (("res", "res"), ("olddir", "dirfd"), ("oldpath", "path:olddir"),
               ("newdir", "dirfd"), ("newpath", "path:newdir"), ("flags", "atflags")),
    "unlink": (("res", "res"), ("path", "path:")),
    "unlinkat": (("res", "res"), ("dirfd", "dirfd"), ("name", "path:dirfd"),
                 ("flags", "atflags")),
    "rename": (("res", "res"), ("oldpath", "path:"), ("newpath", "path:")),
    "renameat": (("res", "res"), ("olddirfd", "dirfd"), ("oldpath", "path:olddirfd"),
                 ("newdirfd", "dirfd"), ("newpath", "path:newdirfd")),
    "renameat2": (("res", "res"), ("olddirfd", "dirfd"), ("oldpath", "path:olddirfd"),
                  ("newdirfd", "dirfd"), ("newpath", "path:newdirfd"), ("flags", "int")),
    "mkdir": (("res", "res"), ("path", "path:"), ("mode", "mode")),
    "mkdirat": (("res", "res"), ("dirfd", "dirfd"), ("path", "path:dirfd"), ("mode", "mode")),
    "chdir": (("res", "res"), ("path", "path:")),
    "fchdir": (("res", "res"), ("fd", "fd")),
    "ptrace": (("res", "res"), ("request", "ptrace"), ("pid", "int"), ("addr", "int"),
               ("data", "int")),
    "init_module": (("res", "res"), ("length", "int"), ("uargs", "text")),
    "finit_module": (("res", "res"), ("fd", "fd"), ("uargs", "text"), ("flags", "int")),
    "memfd_create": (("fd", "newfd"), ("name", "text"), ("flags", "int")),
    "setsid": (("res", "res"),),
}


def _event_fd(v: View, num: Any) -> Fd | None:
    if num == v.fdnum:
        return v.fd  # the fd the event used (a closed one is no longer in the table)
    return v.proc.fds.get(num) if isinstance(num, int) else None


def _directory(v: View, dirfd_param: str) -> str | None:
    if not dirfd_param:
        return v.proc.cwd
    return directory_of(v.proc.fds, v.rec.args.get(dirfd_param), v.proc.cwd)


def _render(v: View, name: str, how: str, value: Any) -> str:
    if how == "text":
        return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) \
            else str(value)
    if how == "int":
        return str(value)
    if how == "fd":
        return fd_text(value, _event_fd(v, value))
    if how == "dirfd":
        return dirfd_text(value, v.proc.fds.get(value) if isinstance(value, int) else None)
    if how.startswith("path:"):
        path = str(value)
        return resolve(path, _directory(v, how[5:])) or path
    if how == "addr":
        return endpoint_text(value)
    return _RENDERERS[how](value)


_RENDERERS: dict[str, Callable[[Any], str]] = {
    "oflags": render.open_flags, "mode": render.mode, "domain": render.family,
    "socktype": render.socket_type, "ptrace": render.ptrace_request,
    "atflags": render.at_flags,
}


def event_args(v: View) -> dict[str, str]:
    rec = v.rec
    kind = rec.kind
    if kind in ("execve", "execveat", "clone", "clone3", "fork", "vfork"):
        return _process_args(v)
    spec = _SPECS.get(kind)
    if spec is None:
        return _generic(v)
    args = rec.args
    out: dict[str, str] = {}
    for name, how in spec:
        if how == "res":
            out[name] = _res(rec.res)
        elif how == "newfd":
            out[name] = fd_text(rec.res, v.fd)
        elif how == "tuple":
            fd = v.fd
            shown = None if fd is None else fd.display_name()
            if shown is not None:
                out[name] = shown
        elif name in args and args[name] is not None:
            out[name] = _render(v, name, how, args[name])
    return out


def _res(res: int) -> str:
    return render.errno_text(res) if res < 0 else str(res)


def _process_args(v: View) -> dict[str, str]:
    """execve/clone: Falco reports the process's state after the event."""
    rec, proc = v.rec, v.proc
    flags = 0
    for value, bit in ((proc.exe_writable, render.EXE_WRITABLE),
                       (proc.exe_upper, render.EXE_UPPER_LAYER),
                       (proc.exe_memfd, render.EXE_FROM_MEMFD),
                       (proc.exe_lower, render.EXE_LOWER_LAYER)):
        if value:
            flags |= bit
    out = {"res": _res(rec.res), "exe": proc.exe, "args": proc.args, "tid": str(rec.tid),
           "pid": str(proc.pid), "ptid": str(proc.ppid or 0), "cwd": proc.cwd or "",
           "tty": str(proc.tty), "loginuid": str(v.get("user.loginuid")),
           "uid": str(rec.uid), "gid": str(rec.gid)}
    if rec.kind in ("execve", "execveat"):
        out["flags"] = render.exe_flags(flags)
        filename = rec.args.get("filename")
        if filename is not None:
            out["filename"] = str(filename)
    elif isinstance(rec.args.get("flags"), int):
        out["flags"] = str(rec.args["flags"])
    return out


def _generic(v: View) -> dict[str, str]:
    """An event type without a table: the result, then each argument as plain text."""
    out = {"res": _res(v.rec.res)}
    for name, value in v.rec.args.items():
        if isinstance(value, list | tuple) and len(value) == 3 and isinstance(value[0], int):
            out[name] = endpoint_text(value)
        elif isinstance(value, list | tuple):
            out[name] = " ".join(str(x) for x in value)
        elif isinstance(value, bytes):
            out[name] = value.decode("utf-8", "surrogateescape")
        else:
            out[name] = str(value)
    return out


def raw_args(v: View) -> dict[str, Any]:
    """``evt.rawarg.X``: the numbers as the kernel gave them (texts are read from evt.args)."""
    raw: dict[str, Any] = {"res": v.rec.res}
    for name, value in v.rec.args.items():
        if isinstance(value, int):
            raw[name] = value
    return raw
