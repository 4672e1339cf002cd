"""File descriptors: what each open fd of a process is (a file, a socket and its tuple, a pipe).

A process's table is a plain ``dict[int, Fd]`` on the process (``Process.fds``), kept by the
tracker from open/socket/connect/accept/dup/close results. Nothing reads ``/proc`` for an fd the
table knows; an fd opened before the detector started is looked up once, lazily, by
:func:`from_proc` (one readlink), and only when an event actually uses it.

Socket sides follow Falco: ``c*`` is the client end and ``s*`` the server end, and
``is_server`` says which one is local (set by accept and bind, clear after connect).
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
from functools import lru_cache
from typing import Any

from detector.state import render

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Endpoint = tuple[int, Any, int]  # (address family, IP address object or unix path, port)

_L4 = {render.SOCK_STREAM: "tcp", render.SOCK_DGRAM: "udp", render.SOCK_RAW: "raw"}
_TYPE_OF_FAMILY = {render.AF_INET: "ipv4", render.AF_INET6: "ipv6", render.AF_UNIX: "unix",
                   render.AF_NETLINK: "netlink"}
_TYPE_CHAR = {"file": "f", "directory": "d", "ipv4": "4", "ipv6": "6", "unix": "u",
              "pipe": "p", "event": "e", "signalfd": "s", "eventpoll": "l", "inotify": "i",
              "timerfd": "t", "netlink": "n", "bpf": "b", "userfaultfd": "u", "io_uring": "r",
              "memfd": "m"}
# readlink(/proc/PID/fd/N) of anonymous inodes -> Falco's fd type.
_ANON = {"[eventfd]": "event", "[signalfd]": "signalfd", "[eventpoll]": "eventpoll",
         "inotify": "inotify", "[timerfd]": "timerfd", "bpf-map": "bpf", "bpf-prog": "bpf",
         "[userfaultfd]": "userfaultfd", "[io_uring]": "io_uring"}


class Fd:
    """One open file description as a process sees it through one fd number."""

    __slots__ = ("cip", "cloexec", "connected", "cport", "is_server", "l4proto", "name",
                 "sip", "sport", "type")

    def __init__(self, kind: str | None, name: str | None = None, *, cloexec: bool = False,
                 l4proto: str | None = None) -> None:
        self.type = kind
        self.name = name  # a file's absolute path, a unix socket's path; None for ip sockets
        self.cloexec = cloexec  # closed by execve
        self.l4proto = l4proto
        self.cip: IPAddress | None = None
        self.cport: int | None = None
        self.sip: IPAddress | None = None
        self.sport: int | None = None
        self.is_server = False
        self.connected = False

    def copy(self, *, cloexec: bool) -> Fd:
        """Another fd number for the same description (dup): same target, own close-on-exec."""
        twin = Fd(self.type, self.name, cloexec=cloexec, l4proto=self.l4proto)
        twin.cip, twin.cport, twin.sip, twin.sport = self.cip, self.cport, self.sip, self.sport
        twin.is_server, twin.connected = self.is_server, self.connected
        return twin

    @property
    def is_ip(self) -> bool:
        return self.type == "ipv4" or self.type == "ipv6"

    def display_name(self) -> str | None:
        """fd.name: the path, or ``cip:cport->sip:sport`` for an ip socket with a peer.

        An end not known yet (connect reported no local address) prints as Falco prints an
        unbound end, 0.0.0.0:0; the cip/cport fields themselves stay missing."""
        if not self.is_ip:
            return self.name
        if self.sip is None and self.cip is None:
            return None
        unset = "0.0.0.0" if self.type == "ipv4" else "::"
        return (f"{_ip_text(self.cip, unset)}:{self.cport or 0}->"
                f"{_ip_text(self.sip, unset)}:{self.sport or 0}")

    def typechar(self) -> str:
        return _TYPE_CHAR.get(self.type or "", "o")

    def text(self) -> str:
        """How Falco shows the fd inside an fd argument: ``<f>/etc/passwd``, ``<4t>a:1->b:2``."""
        l4 = (self.l4proto or "")[:1] if self.is_ip else ""
        return f"<{self.typechar()}{l4}>{self.display_name() or ''}"


def _ip_text(ip: IPAddress | None, unset: str) -> str:
    # Falco prints IPv6 ends unbracketed too: ::1:5000->::1:22.
    return unset if ip is None else str(ip)


def fd_text(num: Any, fd: Fd | None) -> str:
    """An fd argument as Falco renders it: ``3(<f>/etc/passwd)``, or the bare number."""
    if not isinstance(num, int):
        return str(num)
    if num < 0:
        return render.errno_text(num)
    return str(num) if fd is None else f"{num}({fd.text()})"


def dirfd_text(num: Any, fd: Fd | None) -> str:
    if num == render.AT_FDCWD:
        return "-100(AT_FDCWD)"
    return fd_text(num, fd)


# ---- paths ---------------------------------------------------------------------------------


def absolute(path: str, base: str) -> str:
    """``path`` made absolute against the directory ``base`` and normalised as Falco does
    (``..`` and ``.`` folded, symlinks not followed)."""
    if not path.startswith("/"):
        path = base.rstrip("/") + "/" + path
    if "/." not in path and "//" not in path and not path.endswith("/"):
        return path  # already normal: the common case, without normpath's cost
    clean = posixpath.normpath(path)
    return clean[1:] if clean.startswith("//") else clean  # POSIX keeps a leading "//"


def directory_of(fds: dict[int, Fd], dirfd: Any, cwd: str | None) -> str | None:
    """The directory a *at() call resolves relative paths from: the cwd or dirfd's path."""
    if dirfd is None or dirfd == render.AT_FDCWD:
        return cwd
    fd = fds.get(dirfd)
    return None if fd is None else fd.name


def resolve(path: str, base: str | None) -> str | None:
    if path.startswith("/"):
        return absolute(path, "/")
    return None if base is None else absolute(path, base)


# ---- sockets -------------------------------------------------------------------------------


def socket_fd(domain: int, sock_type: int, proto: int = 0) -> Fd:
    kind = _TYPE_OF_FAMILY.get(domain)
    l4 = _L4.get(sock_type & render.SOCK_TYPE_MASK)
    if l4 == "raw" and proto == 1:
        l4 = "icmp"
    return Fd(kind, cloexec=bool(sock_type & render.SOCK_CLOEXEC), l4proto=l4)


def endpoint(value: Any) -> Endpoint | None:
    """A Record address, ``(family, address, port)``, as (family, IP object or unix path,
    port); None when the value is not one. Addresses may be text or raw bytes."""
    if not isinstance(value, list | tuple) or len(value) != 3:
        return None
    fam, addr, port = value
    if fam == render.AF_UNIX:
        if isinstance(addr, bytes):
            addr = addr.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        return fam, addr, 0
    if fam not in (render.AF_INET, render.AF_INET6):
        return None
    ip = _ip(addr) if isinstance(addr, str | bytes) else None
    return None if ip is None else (fam, ip, int(port or 0))


@lru_cache(maxsize=8192)
def _ip(addr: str | bytes) -> IPAddress | None:
    # A node talks to the same few peers over and over; parsing one costs microseconds.
    try:
        return ipaddress.ip_address(addr)
    except ValueError:
        return None


def endpoint_text(value: Any) -> str:
    point = endpoint(value)
    if point is None:
        return "NULL" if value is None else str(value)
    fam, addr, port = point
    if fam == render.AF_UNIX:
        return str(addr)
    return f"{_ip_text(addr, '')}:{port}"


def family_type(fam: int) -> str | None:
    return _TYPE_OF_FAMILY.get(fam)


# ---- lazy /proc lookup ---------------------------------------------------------------------


def from_link(target: str) -> Fd:
    """An fd of a process that existed before the detector, from its /proc/PID/fd link."""
    if target.startswith("/memfd:"):
        return Fd("memfd", target[1:].removesuffix(" (deleted)"))
    if target.startswith("/"):
        return Fd("file", target.removesuffix(" (deleted)"))
    if target.startswith("pipe:"):
        return Fd("pipe")
    if target.startswith("socket:"):
        # The family needs /proc/net tables; the next connect/accept/sendto fills the tuple.
        return Fd(None)
    if target.startswith("anon_inode:"):
        return Fd(_ANON.get(target[len("anon_inode:"):]))
    return Fd(None, target)


def from_proc(proc_root: str, pid: int, num: int) -> Fd | None:
    try:
        return from_link(os.readlink(f"{proc_root}/{pid}/fd/{num}"))
    except OSError:  # gone, or not this process's any more
        return None
