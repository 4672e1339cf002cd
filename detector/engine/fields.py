"""The typed field registry: every Falco field we know, its type and how to read it from an event.

Events are read-only mappings (``Mapping[str, Any]``): the replay source gives plain dicts read
from JSON lines, the eBPF source a lazy mapping over its process/fd tables. Both speak the same
keys, so an extractor never knows where an event came from:

    spec, arg = REGISTRY.resolve("proc.aname", "2")     # or ("evt.arg.flags", None)
    extract = spec.extractor(arg)                        # Callable[[Mapping], Any]
    extract(event)  -> the typed value, or MISSING
    spec.convert("ssh") -> 22                            # a condition literal, typed like the field

"No value" is MISSING, which is None: an event says a field has no value by leaving its key out
or setting it to None (JSON null), and no Falco field has a null value of its own, so a plain
``event.get(key)`` is already a correct extractor for most fields.

Recorded keys. Every field may be recorded under its own name and a recorded value always wins.
Fields that Falco derives from others are derived the same way here when not recorded, so a
source records only the base keys below (values are plain JSON types unless noted):

    evt.*   evt.type str, evt.num int, evt.time int ns since the epoch, evt.cpu int,
            evt.rawres int (evt.res, evt.failed derive from it), evt.args dict param name ->
            rendered string in the event's parameter order (evt.arg.X, evt.arg[N], evt.args,
            evt.is_open_*), evt.rawargs dict param name -> raw value (evt.rawarg.X; falls back
            to evt.args parsed as an integer), evt.buffer bytes (or str, taken as UTF-8)
    proc.*  proc.name proc.exe proc.exepath proc.args (argv[1:] joined by spaces) proc.cwd
            proc.sname proc.vpgid.name proc.vpgid.exe proc.vpgid.exepath str; proc.pid proc.vpid
            proc.pvpid proc.sid proc.vpgid proc.tty proc.exe_ino int; proc.pid.ts proc.ppid.ts
            proc.exe_ino.ctime proc.exe_ino.mtime proc.pidns_init_start_ts int ns;
            proc.is_exe_writable proc.is_exe_upper_layer proc.is_exe_lower_layer
            proc.is_exe_from_memfd proc.is_container_healthcheck/_liveness_probe/_readiness_probe
            bool; proc.env list of "NAME=value" or dict NAME -> value
            ancestors, nearest first (the parent is element 0): proc.aname proc.aexe
            proc.aexepath proc.acmdline list[str], proc.apid list[int]; the parent fields
            (proc.pname, proc.ppid, proc.pexe, proc.pexepath, proc.pcmdline) derive from them
    thread.* thread.tid thread.vtid int, thread.cap_effective/_permitted/_inheritable str of
            space-separated CAP_* names
    user.*  user.uid user.loginuid int, user.name user.loginname user.homedir user.shell str;
    group.* group.gid int, group.name str
    fd.*    fd.num int, fd.name str (files: absolute path; sockets: derived from the tuple),
            fd.nameraw str (only when it differs from fd.name), fd.type or fd.typechar str,
            fd.cip fd.sip str (or ipaddress objects), fd.cport fd.sport int, fd.is_server bool
            (local = client side unless true), fd.l4proto str, fd.connected fd.name_changed
            bool, fd.dev fd.ino int, fd.cip.name fd.sip.name fd.lip.name fd.rip.name str
            (a hostname the source resolved)
    container.* container.id container.name container.image.repository container.image.tag
            container.image.id container.image.digest container.type str,
            container.privileged bool, container.start_ts int ns (else the pid namespace's
            start, proc.pidns_init_start_ts), container.labels dict,
            container.mounts list of {source, dest, mode, rdwr, propagation}
    k8s.*   k8s.ns.name k8s.pod.name k8s.pod.uid str, k8s.pod.labels dict

Kubernetes audit events (``evt.source`` = ``k8s_audit``) carry ``evt.time`` (the event's
stageTimestamp) and the audit Event itself, as decoded from JSON, under ``ka.event``: every ka.*,
json.* and jevt.* field reads it (``detector.engine.fielddefs_k8saudit``, ``fielddefs_json``).

Literals: ``spec.convert(text)`` types a condition's right-hand side (Falco's rules: ints
decimal or hex, ports numbers or service names, bools ``true``/``false``, IP addresses,
networks as addr/prefix) and raises ValueError naming the field.

Sources: each field belongs to one event source (``spec.source``), or to every source
(ANY_SOURCE: evt.num, evt.time... as Falco's generic event fields). Given the source of a
rule, ``resolve`` refuses the fields of other sources, as Falco has no proc.name for an audit
event.

Errors: ``resolve`` raises UnknownField for a name nobody registered (or registered for another
source) and FieldArgError for an argument that is missing, unexpected or malformed; both are
FieldError.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
import socket
import textwrap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from operator import methodcaller
from typing import Any

MISSING: Any = None  # "no value": every check on it is false, even !=
ANY_SOURCE = "*"  # spec.source of the fields every event source has


class FieldType(enum.Enum):
    STRING = "string"
    NUMBER = "number"  # int
    BOOL = "bool"
    IPADDR = "ipaddr"  # extracted as ipaddress.IPv4Address / IPv6Address
    IPNET = "ipnet"  # extracted as an address; literals are networks and `=` means "within"
    PORT = "port"  # int; literals may be service names
    BYTES = "bytes"
    RELTIME = "reltime"  # ns, int
    ABSTIME = "abstime"  # ns since the epoch, int
    LIST = "list"  # list of strings


NUMERIC_TYPES = frozenset({FieldType.NUMBER, FieldType.PORT, FieldType.RELTIME, FieldType.ABSTIME})

Extractor = Callable[[Mapping[str, Any]], Any]
Factory = Callable[[str | None], Extractor]  # builds the extractor for one argument


class FieldError(Exception):
    """A field reference the registry cannot honour; the message is ready to show a user."""


class UnknownField(FieldError, LookupError):
    """No registered field has this name (nor is it the dotted-argument form of one)."""


class ForeignField(UnknownField):
    """The field exists, but for events of another source than the rule's."""


class FieldArgError(FieldError, ValueError):
    """The field exists but its argument is missing, unexpected or malformed."""


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field. The compiler reads the flags; ``extractor(arg)`` builds the hot-path reader.

    ``ancestors``: proc.aname and friends; without an index the extractor returns the list of
    ancestors (parent first) and a check is true if any element matches. ``either``: fd.ip,
    fd.net, fd.port, fd.proto; the extractor returns ``(client, server)`` (either may be
    MISSING; MISSING if both are) and ``=``/``in`` hold if one side matches, ``!=`` only if
    both differ. ``resolves``: fd.sip.name and friends; a rule compares them with a hostname,
    which Falco forward-resolves: the check should also hold when the address field named here
    is one of the hostname's addresses. ``rhs``: may be used as ``val(field)`` or under a
    transformer on the right-hand side.
    """

    name: str
    type: FieldType
    desc: str
    arg: str = "none"  # none | required | optional
    source: str = "syscall"
    ancestors: bool = False
    either: tuple[str, str] | None = None
    resolves: str | None = None
    filter_only: bool = False  # not allowed in outputs
    transformers: bool = True  # may be wrapped in tolower(), basename()...
    rhs: bool = True
    dot_arg: bool = False  # `evt.arg.flags` is `evt.arg[flags]`
    deprecated: bool = False  # Falco warns (LOAD_DEPRECATED_ITEM) when a rule uses it
    factory: Factory | None = field(default=None, compare=False, repr=False)
    arg_type: Callable[[str], FieldType] | None = field(default=None, compare=False, repr=False)
    text: Callable[[Any], str] | None = field(default=None, compare=False, repr=False)

    @property
    def is_list(self) -> bool:
        return self.type is FieldType.LIST

    @property
    def numeric(self) -> bool:
        return self.type in NUMERIC_TYPES

    def extractor(self, arg: str | None) -> Extractor:
        """Raises FieldArgError when the argument is missing, unexpected or malformed."""
        if arg is None and self.arg == "required":
            raise FieldArgError(f"field '{self.name}' requires an argument, e.g. {self.name}[x]")
        if arg is not None and self.arg == "none":
            raise FieldArgError(f"field '{self.name}' does not take an argument (got [{arg}])")
        if self.factory is None:
            return methodcaller("get", self.name)
        return self.factory(arg)

    def convert(self, text: str) -> Any:
        """A condition literal as a value of this field's type. Raises ValueError."""
        return _CONVERTERS[self.type](self.name, text)


@dataclass(frozen=True, slots=True)
class FieldClass:
    """A group of fields as ``falco --list`` shows them."""

    name: str
    desc: str
    shortdesc: str
    fields: tuple[FieldSpec, ...]
    source: str = "syscall"


class FieldRegistry:
    """Field lookup by name. Definitions are imported on first use (they import this module)."""

    def __init__(self, load: Callable[[], Iterable[FieldClass]]) -> None:
        self._load = load
        self._classes: tuple[FieldClass, ...] = ()
        self._by_name: dict[str, FieldSpec] = {}

    def _index(self) -> dict[str, FieldSpec]:
        if not self._by_name:
            classes = tuple(self._load())
            by_name: dict[str, FieldSpec] = {}
            for cls in classes:
                for spec in cls.fields:
                    if spec.name in by_name:
                        raise RuntimeError(f"field {spec.name} is defined twice")
                    by_name[spec.name] = spec
            self._classes, self._by_name = classes, by_name
        return self._by_name

    def classes(self) -> tuple[FieldClass, ...]:
        self._index()
        return self._classes

    def fields(self) -> list[FieldSpec]:
        return list(self._index().values())

    def get(self, name: str) -> FieldSpec | None:
        """The field registered under exactly this name (no dotted-argument lookup)."""
        return self._index().get(name)

    def sources(self) -> frozenset[str]:
        """The event sources some field belongs to: rules of any other source are skipped."""
        return frozenset(spec.source for spec in self._index().values()) - {ANY_SOURCE}

    def resolve(self, name: str, arg: str | None = None,
                source: str | None = None) -> tuple[FieldSpec, str | None]:
        """The field a token names and its argument, validated.

        ``name`` is the token as written without its bracketed argument: an exact name wins,
        else the longest registered prefix that takes a dotted argument (``evt.arg.flags`` is
        ``evt.arg`` with argument ``flags``). The returned spec may be specialised for the
        argument (``evt.rawarg.name`` is a string, ``evt.rawarg.fd`` a number): use it, not
        ``get(name)``. ``source``: the event source of the rule asking (None: any field).
        Raises UnknownField or FieldArgError.
        """
        by_name = self._index()
        spec = by_name.get(name)
        if spec is None:
            spec, arg = self._dotted(by_name, name, arg)
        if source is not None and spec.source not in (source, ANY_SOURCE):
            raise ForeignField(f"unknown field '{name}' for source {source} (it is a field of "
                               f"{spec.source} events)")
        spec.extractor(arg)  # validates the argument now rather than at the first event
        if spec.arg_type is not None and arg is not None:
            typed = spec.arg_type(arg)
            if typed is not spec.type:
                spec = _specialised(spec, typed)
        return spec, arg

    @staticmethod
    def _dotted(
        by_name: dict[str, FieldSpec], name: str, arg: str | None
    ) -> tuple[FieldSpec, str]:
        cut = name.rfind(".")
        while cut > 0:
            spec = by_name.get(name[:cut])
            if spec is not None and spec.dot_arg:
                if arg is not None:
                    raise FieldArgError(
                        f"field '{name}' already has its argument after the dot; "
                        f"write {spec.name}[{name[cut + 1:]}] or {name}, not both"
                    )
                return spec, name[cut + 1:]
            cut = name.rfind(".", 0, cut)
        raise UnknownField(f"unknown field '{name}'")


@lru_cache(maxsize=64)
def _specialised(spec: FieldSpec, typed: FieldType) -> FieldSpec:
    return replace(spec, type=typed)


def _load_definitions() -> list[FieldClass]:
    # Imported here: the definition modules import FieldSpec from this module.
    from detector.engine import (
        fielddefs_container,
        fielddefs_event,
        fielddefs_fd,
        fielddefs_json,
        fielddefs_k8saudit,
        fielddefs_process,
    )

    return [
        *fielddefs_event.CLASSES,
        *fielddefs_process.CLASSES,
        *fielddefs_fd.CLASSES,
        *fielddefs_container.CLASSES,
        *fielddefs_k8saudit.CLASSES,
        *fielddefs_json.CLASSES,
    ]


REGISTRY = FieldRegistry(_load_definitions)


# ---- literal conversion ------------------------------------------------------------------

_DECIMAL = re.compile(r"[+-]?[0-9]+")
_HEX = re.compile(r"[+-]?0[xX][0-9a-fA-F]+")

# getservbyname needs /etc/services, which slim container images lack; rules only name a few.
WELL_KNOWN_PORTS = {
    "ftp": 21, "ssh": 22, "telnet": 23, "smtp": 25, "domain": 53, "http": 80, "kerberos": 88,
    "pop3": 110, "ntp": 123, "imap": 143, "snmp": 161, "ldap": 389, "https": 443,
    "smtps": 465, "syslog": 514, "ldaps": 636, "imaps": 993, "pop3s": 995,
    "mysql": 3306, "postgresql": 5432, "redis": 6379, "http-alt": 8080,
}
_PORT_NAMES = {port: name for name, port in WELL_KNOWN_PORTS.items()}


def service_port(name: str) -> int | None:
    try:
        return socket.getservbyname(name)
    except OSError:
        return WELL_KNOWN_PORTS.get(name)


@lru_cache(maxsize=4096)
def service_name(port: int, proto: str) -> str:
    """Falco's fd.sproto: the service name of a port, or the number when none is known."""
    try:
        return socket.getservbyport(port, proto)
    except (OSError, OverflowError, TypeError):
        return _PORT_NAMES.get(port, str(port))


def _to_int(name: str, text: str) -> int:
    if _DECIMAL.fullmatch(text):
        return int(text)
    if _HEX.fullmatch(text):
        return int(text, 16)
    raise ValueError(f"'{text}' is not a number for {name}")


def _to_port(name: str, text: str) -> int:
    if _DECIMAL.fullmatch(text) or _HEX.fullmatch(text):
        port = _to_int(name, text)
    else:
        found = service_port(text)
        if found is None:
            raise ValueError(f"'{text}' is not a port number or a known service name for {name}")
        port = found
    if not 0 <= port <= 65535:
        raise ValueError(f"'{text}' is not a port (0-65535) for {name}")
    return port


def _to_bool(name: str, text: str) -> bool:
    if text == "true":
        return True
    if text == "false":
        return False
    raise ValueError(f"'{text}' is not a boolean for {name} (use true or false)")


def _to_ipaddr(name: str, text: str) -> Any:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"'{text}' is not an IP address for {name}") from None


def _to_ipnet(name: str, text: str) -> Any:
    if "/" in text:
        try:
            return ipaddress.ip_network(text, strict=False)
        except ValueError:
            pass
    raise ValueError(
        f"'{text}' is not an IP network for {name} (write address/prefix, e.g. 10.0.0.0/8)"
    )


def _to_bytes(name: str, text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _to_str(name: str, text: str) -> str:
    return text


_CONVERTERS: dict[FieldType, Callable[[str, str], Any]] = {
    FieldType.STRING: _to_str,
    FieldType.LIST: _to_str,
    FieldType.NUMBER: _to_int,
    FieldType.RELTIME: _to_int,
    FieldType.ABSTIME: _to_int,
    FieldType.PORT: _to_port,
    FieldType.BOOL: _to_bool,
    FieldType.IPADDR: _to_ipaddr,
    FieldType.IPNET: _to_ipnet,
    FieldType.BYTES: _to_bytes,
}


# ---- listing (`lanner rules fields`) ---------------------------------------------------------

_NAME_COLUMN = 30
_LINE = 100


def describe_fields(fmt: str = "text", registry: FieldRegistry = REGISTRY) -> str:
    """The field list grouped by class, like ``falco --list``: text or JSON.

    Deprecated fields are left out, as Falco does.
    """
    classes = [
        (cls, [f for f in cls.fields if not f.deprecated]) for cls in registry.classes()
    ]
    if fmt == "json":
        return json.dumps({"fieldclasses": [
            {
                "name": cls.name,
                "shortdesc": cls.shortdesc,
                "desc": cls.desc,
                "event_sources": [cls.source],
                "fields": [_field_json(f) for f in specs],
            }
            for cls, specs in classes
        ]}, indent=2)
    if fmt != "text":
        raise ValueError(f"unknown format {fmt!r} (text or json)")
    lines: list[str] = []
    for cls, specs in classes:
        lines += [
            "-" * _LINE,
            f"Field Class:                  {cls.name} ({cls.shortdesc})",
            f"Description:                  {cls.desc}",
            f"Event Sources:                {cls.source}",
            "",
        ]
        for spec in specs:
            lines += _field_lines(spec)
        lines.append("")
    return "\n".join(lines)


def _field_json(spec: FieldSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "type": spec.type.value,
        "desc": spec.desc,
        "is_list": spec.is_list,
        "argument": None if spec.arg == "none" else {"required": spec.arg == "required"},
        "filter_only": spec.filter_only,
    }


def _field_lines(spec: FieldSpec) -> list[str]:
    wrapped = textwrap.wrap(spec.desc, _LINE - _NAME_COLUMN) or [""]
    pad = " " * _NAME_COLUMN
    if len(spec.name) < _NAME_COLUMN:
        first = [spec.name.ljust(_NAME_COLUMN) + wrapped[0]]
        return first + [pad + line for line in wrapped[1:]]
    return [spec.name] + [pad + line for line in wrapped]
