"""fd.*: the file descriptor an event works on (a file, a socket, a pipe...)."""

from __future__ import annotations

from operator import methodcaller
from typing import Any

from detector.engine.fielddefs_common import Event, computed, derived, ip_of
from detector.engine.fields import Extractor, FieldClass, FieldSpec, FieldType, service_name

S = FieldType.STRING
B = FieldType.BOOL
IP = FieldType.IPADDR
NET = FieldType.IPNET
P = FieldType.PORT

_CHAR_OF_TYPE = {
    "file": "f", "directory": "d", "ipv4": "4", "ipv6": "6", "unix": "u", "pipe": "p",
    "event": "e", "signalfd": "s", "eventpoll": "l", "inotify": "i", "timerfd": "t",
    "netlink": "n", "bpf": "b", "userfaultfd": "u", "io_uring": "r", "memfd": "m",
}
# 'u' is both unix and userfaultfd in Falco; read back, it is the common one, unix.
_TYPE_OF_CHAR = {char: kind for kind, char in reversed(_CHAR_OF_TYPE.items())}
_FAMILY = {"ipv4": "ip", "ipv6": "ip", "unix": "unix"}


def _type(event: Event) -> Any:
    kind = event.get("fd.type")
    if kind is None:
        char = event.get("fd.typechar")
        return None if char is None else _TYPE_OF_CHAR.get(char)
    return kind


def _typechar(event: Event) -> Any:
    kind = event.get("fd.type")
    return None if kind is None else _CHAR_OF_TYPE.get(kind, "o")


def _family(event: Event) -> Any:
    kind = _type(event)
    return None if kind is None else _FAMILY.get(kind)


def _path_kind(event: Event) -> Any:
    """"file", "directory" or None (not a path): an fd of unknown type with a name is a file,
    as for a failed open, which has a name but no fd."""
    kind = _type(event)
    return "file" if kind is None else kind


def _directory(event: Event) -> Any:
    name = event.get("fd.name")
    if name is None:
        return None
    kind = _path_kind(event)
    if kind == "directory":
        return name
    if kind != "file":
        return None
    cut = name.rfind("/")
    if cut <= 0:
        return "/"
    # Falco keeps a path ending with "/" whole rather than stripping the slash.
    return name[:cut] if cut < len(name) - 1 else name


def _filename(event: Event) -> Any:
    name = event.get("fd.name")
    if name is None or _path_kind(event) != "file":
        return None
    cut = name.rfind("/")
    return name[cut + 1:] if -1 < cut < len(name) - 1 else name


def _ip(key: str) -> Extractor:
    def extract(event: Event) -> Any:
        return ip_of(event.get(key))

    return extract


def _side(key: str, local: bool, client_key: str, server_key: str, convert: bool) -> Extractor:
    """fd.lip, fd.rport...: local is the client side unless the process is the server."""

    def extract(event: Event) -> Any:
        value = event.get(key)
        if value is None:
            use_server = bool(event.get("fd.is_server")) == local
            value = event.get(server_key if use_server else client_key)
        return ip_of(value) if convert else value

    return extract


_cip = _ip("fd.cip")
_sip = _ip("fd.sip")
_lip = _side("fd.lip", True, "fd.cip", "fd.sip", convert=True)
_rip = _side("fd.rip", False, "fd.cip", "fd.sip", convert=True)
_lport = _side("fd.lport", True, "fd.cport", "fd.sport", convert=False)
_rport = _side("fd.rport", False, "fd.cport", "fd.sport", convert=False)


def _proto(port_of: Extractor) -> Extractor:
    """Service name of a port, as Falco's fd.sproto ("ssh", "http"), or the number as text."""

    def extract(event: Event) -> Any:
        port = port_of(event)
        if port is None:
            return None
        return service_name(port, event.get("fd.l4proto") or "tcp")

    return extract


_cport = methodcaller("get", "fd.cport")
_sport = methodcaller("get", "fd.sport")
_cproto = _proto(_cport)
_sproto = _proto(_sport)


def _either(client: Extractor, server: Extractor) -> Extractor:
    def both(event: Event) -> Any:
        a = client(event)
        b = server(event)
        if a is None and b is None:
            return None
        return (a, b)

    return both


def _socket_name(event: Event) -> Any:
    if _type(event) not in ("ipv4", "ipv6"):
        return None
    cip = event.get("fd.cip")
    cport = event.get("fd.cport")
    sip = event.get("fd.sip")
    sport = event.get("fd.sport")
    if cip is None or cport is None or sip is None or sport is None:
        return None
    return f"{cip}:{cport}->{sip}:{sport}"


def _nameraw(event: Event) -> Any:
    return event.get("fd.name")


def _hostname(name: str, address: str, which: str) -> FieldSpec:
    return FieldSpec(
        name, S,
        f"Hostname of the {which} address. A rule compares it with a DNS name, and the check "
        f"holds when {address} is one of the addresses that name resolves to.",
        resolves=address, transformers=False, rhs=False,
    )


def _net(name: str, which: str, extract: Extractor,
         either: tuple[str, str] | None = None) -> FieldSpec:
    return FieldSpec(
        name, NET, f"The {which} address is within a network (address/prefix); conditions only.",
        either=either, filter_only=True, transformers=False, rhs=False,
        factory=computed(extract),
    )


FD = FieldClass(
    name="fd",
    shortdesc="File descriptors",
    desc="The file descriptor the event uses or creates: a file, a directory, a socket, a pipe.",
    fields=(
        FieldSpec("fd.num", FieldType.NUMBER,
                  "Number of the file descriptor; -1 when an open failed."),
        FieldSpec("fd.type", S,
                  "Kind of descriptor: file, directory, ipv4, ipv6, unix, pipe, event, "
                  "signalfd, eventpoll, inotify, timerfd, netlink, bpf, userfaultfd, io_uring, "
                  "memfd.", factory=computed(_type)),
        FieldSpec("fd.typechar", S,
                  "Kind of descriptor as one character: f file, d directory, 4 IPv4, 6 IPv6, "
                  "u unix, p pipe, e event, s signalfd, l eventpoll, i inotify, m memfd, "
                  "o other.", factory=derived("fd.typechar", _typechar)),
        FieldSpec("fd.name", S,
                  "Full name: the absolute path of a file, or client:port->server:port for "
                  "a socket.", factory=derived("fd.name", _socket_name)),
        FieldSpec("fd.nameraw", S,
                  "The path exactly as the process passed it, before making it absolute.",
                  factory=derived("fd.nameraw", _nameraw)),
        FieldSpec("fd.directory", S, "Directory part of a file's path (the path of a "
                  "directory).", factory=derived("fd.directory", _directory)),
        FieldSpec("fd.filename", S, "Last component of a file's path.",
                  factory=derived("fd.filename", _filename)),
        FieldSpec("fd.cip", IP, "Client IP address.", factory=computed(_cip)),
        FieldSpec("fd.sip", IP, "Server IP address.", factory=computed(_sip)),
        FieldSpec("fd.lip", IP, "Local IP address.", factory=computed(_lip)),
        FieldSpec("fd.rip", IP, "Remote IP address.", factory=computed(_rip)),
        FieldSpec("fd.ip", IP,
                  "Client or server IP address: = and in hold if either side matches, != "
                  "only if both differ; conditions only.", either=("fd.cip", "fd.sip"),
                  filter_only=True, transformers=False, rhs=False,
                  factory=computed(_either(_cip, _sip))),
        FieldSpec("fd.cport", P, "Client port."),
        FieldSpec("fd.sport", P, "Server port."),
        FieldSpec("fd.lport", P, "Local port.", factory=computed(_lport)),
        FieldSpec("fd.rport", P, "Remote port.", factory=computed(_rport)),
        FieldSpec("fd.port", P,
                  "Client or server port (either side matches); conditions only.",
                  either=("fd.cport", "fd.sport"), filter_only=True, transformers=False,
                  rhs=False, factory=computed(_either(_cport, _sport))),
        FieldSpec("fd.cproto", S, "Service name of the client port.",
                  factory=derived("fd.cproto", _cproto)),
        FieldSpec("fd.sproto", S, "Service name of the server port, e.g. ssh or http.",
                  factory=derived("fd.sproto", _sproto)),
        FieldSpec("fd.lproto", S, "Service name of the local port.",
                  factory=derived("fd.lproto", _proto(_lport))),
        FieldSpec("fd.rproto", S, "Service name of the remote port.",
                  factory=derived("fd.rproto", _proto(_rport))),
        FieldSpec("fd.proto", S,
                  "Service name of the client or server port (either side matches); "
                  "conditions only.", either=("fd.cproto", "fd.sproto"), filter_only=True,
                  transformers=False, rhs=False, factory=computed(_either(_cproto, _sproto))),
        _net("fd.net", "client or server", _either(_cip, _sip), ("fd.cnet", "fd.snet")),
        _net("fd.cnet", "client", _cip),
        _net("fd.snet", "server", _sip),
        _net("fd.lnet", "local", _lip),
        _net("fd.rnet", "remote", _rip),
        FieldSpec("fd.l4proto", S, "Transport protocol of a socket: tcp, udp, icmp or raw."),
        FieldSpec("fd.sockfamily", S, "Socket family: ip or unix.",
                  factory=derived("fd.sockfamily", _family)),
        FieldSpec("fd.is_server", B, "True if the process is the server end of the socket."),
        FieldSpec("fd.connected", B, "True if the socket is connected."),
        FieldSpec("fd.name_changed", B,
                  "True if this event changed the descriptor's name, e.g. an unconnected UDP "
                  "socket sending to a new address."),
        _hostname("fd.cip.name", "fd.cip", "client"),
        _hostname("fd.sip.name", "fd.sip", "server"),
        _hostname("fd.lip.name", "fd.lip", "local"),
        _hostname("fd.rip.name", "fd.rip", "remote"),
        FieldSpec("fd.dev", FieldType.NUMBER, "Device number of the file's filesystem."),
        FieldSpec("fd.ino", FieldType.NUMBER, "Inode number of the file."),
    ),
)

CLASSES = (FD,)
