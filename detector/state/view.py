"""The event as the rule engine reads it: Falco field names to values, computed lazily from
one Record and the tracker's tables, each at most once per event.

Keys are the recorded-event keys of ``detector.engine.fields`` (``proc.aname`` a list starting
at the parent, ``evt.args`` a dict of rendered strings, ``fd.cip`` an address object...), so
the engine's extractors work on a view exactly as on a replayed event. A field with no value
reads as None, which makes every check on it false, as in Falco.

This is the detector's hot path: a view is made per event and rules read few fields of most
events, so nothing is computed until asked for, and a field once computed is read back at the
speed of a dict lookup: the view is a dict of the fields computed so far whose ``get(key)``
(one argument, as the engine calls it) computes a missing one. Nothing writes to a view but
the tracker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from detector.sources.record import Record
from detector.state import render
from detector.state.containers import ContainerInfo
from detector.state.eventargs import event_args, raw_args
from detector.state.fds import Fd
from detector.state.processes import CAPS_OF_CONTAINER, LOGINUID_UNSET, Process

if TYPE_CHECKING:
    from detector.state.tracker import Tracker

_UNSET: Any = object()
_OPENS = frozenset({"open", "openat", "openat2", "creat"})


class View(dict[str, Any]):
    """One event's fields, computed on first read. ``fd``/``fdnum``/``nameraw``/
    ``name_changed`` are set by the tracker for events that use a file descriptor.

    ``get(key)`` is the dict's own lookup (C speed once a field is computed); a miss computes
    the field with ``__missing__`` and keeps it, None when it has no value. Only computed
    fields are stored, so iterate ``fields()`` rather than the view itself."""

    __slots__ = ("_ancestors", "_info", "fd", "fdnum", "name_changed", "nameraw", "num", "proc",
                 "rec", "tracker")

    def __init__(self, tracker: Tracker, rec: Record, proc: Process, num: int) -> None:
        self.tracker = tracker
        self.rec = rec
        self.proc = proc
        self.num = num
        self.fd: Fd | None = None
        self.fdnum: Any = None
        self.nameraw: str | None = None
        self.name_changed: bool | None = None
        self._ancestors: list[Process] | None = None
        self._info: Any = _UNSET
        # Every event is asked these first (Engine.process picks its rules by them).
        self["evt.type"] = rec.kind
        self["evt.source"] = None  # a syscall event

    def opened(self, fd: Fd, fdnum: int, nameraw: str, flags: int) -> None:
        """An open event's file. Its fields are set at once: nearly every rule on opens
        reads all of them, and computing them together is cheaper than one by one."""
        self.fd, self.fdnum, self.nameraw = fd, fdnum, nameraw
        access = flags & render.O_ACCMODE
        self.update({"fd.num": fdnum, "fd.name": fd.name, "fd.nameraw": nameraw,
                     "fd.type": fd.type, "fd.typechar": fd.typechar(),
                     "evt.is_open_read": access != 1, "evt.is_open_write": access != 0})

    def __missing__(self, key: str) -> Any:
        getter = _GETTERS.get(key)
        value = self[key] = None if getter is None else getter(self)
        return value

    get = dict.__getitem__  # type: ignore[assignment]

    def fields(self) -> dict[str, Any]:
        """Every field that has a value (computes them all: for recording, not rules)."""
        return {key: value for key in _GETTERS if (value := self[key]) is not None}

    # ---- shared by several fields ---------------------------------------------------------

    def ancestors(self) -> list[Process]:
        if self._ancestors is None:
            self._ancestors = self.tracker.table.ancestors(self.proc)
        return self._ancestors

    def parent(self) -> Process | None:
        chain = self.ancestors()
        return chain[0] if chain else None

    def container(self) -> ContainerInfo | None:
        """The runtime's metadata for the process's container, when it has arrived."""
        if self._info is _UNSET:
            ref = self.proc.container
            self._info = None if ref is None else self.tracker.containers.info(ref, self.proc.pid)
        return self._info


Getter = Callable[[View], Any]


def _proc(attr: str) -> Getter:
    return lambda v: getattr(v.proc, attr)


def _parent(attr: str) -> Getter:
    def get(v: View) -> Any:
        parent = v.parent()
        return None if parent is None else getattr(parent, attr)

    return get


def _chain(attr: str) -> Getter:
    return lambda v: [getattr(p, attr) for p in v.ancestors()]


def _fd(attr: str) -> Getter:
    def get(v: View) -> Any:
        fd = v.fd
        return None if fd is None else getattr(fd, attr)

    return get


def _socket(attr: str) -> Getter:
    def get(v: View) -> Any:
        fd = v.fd
        return None if fd is None or not fd.is_ip else getattr(fd, attr)

    return get


def _info(attr: str) -> Getter:
    def get(v: View) -> Any:
        info = v.container()
        return None if info is None else getattr(info, attr)

    return get


def _open_access(*modes: int) -> Getter:
    def get(v: View) -> Any:
        rec = v.rec
        if rec.kind not in _OPENS:
            return False
        if rec.kind == "creat":
            return 1 in modes  # creat() opens write-only
        flags = rec.args.get("flags")
        return None if not isinstance(flags, int) else flags & render.O_ACCMODE in modes

    return get


def _caps(attr: str) -> Getter:
    def get(v: View) -> Any:
        mask = getattr(v.proc, attr)
        if mask == CAPS_OF_CONTAINER:
            info = v.container()
            mask = None if info is None else info.bounding_caps
        return None if mask is None else render.cap_names(mask)

    return get


def _user(index: int) -> Getter:
    def get(v: View) -> Any:
        user = v.tracker.users.user(v.rec.uid, v.container())
        return None if user is None else user[index]

    return get


def _loginuid(v: View) -> Any:
    uid = v.proc.loginuid
    return -1 if uid == LOGINUID_UNSET else uid


def _loginname(v: View) -> Any:
    uid = v.proc.loginuid
    if uid == LOGINUID_UNSET:
        return None
    user = v.tracker.users.user(uid)
    return None if user is None else user[0]


def _group_name(v: View) -> Any:
    return v.tracker.users.group(v.rec.gid, v.container())


def _leader(pid_attr: str, attr: str) -> Getter:
    """proc.sname, proc.vpgid.name...: a field of the session or group leader."""

    def get(v: View) -> Any:
        leader_pid = getattr(v.proc, pid_attr)
        if leader_pid is None:
            return None
        if leader_pid == v.proc.pid:
            return getattr(v.proc, attr)
        leader = v.tracker.table.procs.get(leader_pid)
        if leader is None:  # it exited: its eldest ancestor still in the session stands in
            candidates = [p for p in v.ancestors() if getattr(p, pid_attr) == leader_pid]
            leader = candidates[-1] if candidates else None
        return None if leader is None else getattr(leader, attr)

    return get


def _pidns_init_start(v: View) -> Any:
    """The start of the process's pid namespace init: a container's first process, or the
    host's pid 1."""
    proc = v.proc
    if proc.container is None:
        init = v.tracker.table.procs.get(1)
        return None if init is None else init.start_ns
    top = proc
    for ancestor in v.ancestors():
        if ancestor.container != proc.container:
            break
        top = ancestor
    return top.start_ns


def _container_id(v: View) -> Any:
    ref = v.proc.container
    return "host" if ref is None else ref.short


def _container_name(v: View) -> Any:
    if v.proc.container is None:
        return "host"
    info = v.container()
    return None if info is None else info.name


def _container_type(v: View) -> Any:
    ref = v.proc.container
    return None if ref is None else ref.type


def _pod_uid(v: View) -> Any:
    ref = v.proc.container
    if ref is None:
        return None
    info = v.container()
    return ref.pod_uid if info is None or info.pod_uid is None else info.pod_uid


def _fd_name(v: View) -> Any:
    fd = v.fd
    return None if fd is None else fd.display_name()


def _fd_directory(v: View) -> Any:
    """Falco's fd.directory: a directory's own path, or a file's path up to its last "/"
    (a path ending in "/" whole)."""
    fd = v.fd
    if fd is None or fd.name is None or fd.type not in ("file", "directory"):
        return None
    name = fd.name
    if fd.type == "directory":
        return name
    cut = name.rfind("/")
    if cut <= 0:
        return "/"
    return name[:cut] if cut < len(name) - 1 else name


def _fd_filename(v: View) -> Any:
    fd = v.fd
    if fd is None or fd.name is None or fd.type != "file":
        return None
    name = fd.name
    cut = name.rfind("/")
    return name[cut + 1:] if -1 < cut < len(name) - 1 else name


def _fd_typechar(v: View) -> Any:
    fd = v.fd
    return None if fd is None or fd.type is None else fd.typechar()


def _name_changed(v: View) -> Any:
    fd = v.fd
    if fd is None or not fd.is_ip:
        return None
    return bool(v.name_changed)


def _arg(name: str) -> Getter:
    return lambda v: v.rec.args.get(name) if v.rec.kind in _OPENS else None


_GETTERS: dict[str, Getter] = {
    "evt.type": lambda v: v.rec.kind,
    "evt.num": lambda v: v.num,
    "evt.time": lambda v: v.rec.time_ns,
    "evt.cpu": lambda v: v.rec.cpu,
    "evt.rawres": lambda v: v.rec.res,
    "evt.args": event_args,
    "evt.rawargs": raw_args,
    "evt.is_open_read": _open_access(0, 2),
    "evt.is_open_write": _open_access(1, 2),
    "proc.name": _proc("name"),
    "proc.exe": _proc("exe"),
    "proc.exepath": _proc("exepath"),
    "proc.args": _proc("args"),
    "proc.cmdline": _proc("cmdline"),
    "proc.cwd": _proc("cwd"),
    "proc.tty": _proc("tty"),
    "proc.pid": _proc("pid"),
    "proc.vpid": _proc("vpid"),
    "proc.ppid": _proc("ppid"),
    "proc.sid": _proc("sid"),
    "proc.vpgid": _proc("pgid"),
    "proc.sname": _leader("sid", "name"),
    "proc.vpgid.name": _leader("pgid", "name"),
    "proc.vpgid.exe": _leader("pgid", "exe"),
    "proc.vpgid.exepath": _leader("pgid", "exepath"),
    "proc.pname": _parent("name"),
    "proc.pexe": _parent("exe"),
    "proc.pexepath": _parent("exepath"),
    "proc.pcmdline": _parent("cmdline"),
    "proc.pvpid": _parent("vpid"),
    "proc.ppid.ts": _parent("start_ns"),
    "proc.aname": _chain("name"),
    "proc.apid": _chain("pid"),
    "proc.aexe": _chain("exe"),
    "proc.aexepath": _chain("exepath"),
    "proc.acmdline": _chain("cmdline"),
    "proc.pid.ts": _proc("start_ns"),
    "proc.is_exe_writable": _proc("exe_writable"),
    "proc.is_exe_upper_layer": _proc("exe_upper"),
    "proc.is_exe_lower_layer": _proc("exe_lower"),
    "proc.is_exe_from_memfd": _proc("exe_memfd"),
    "proc.exe_ino": _proc("exe_ino"),
    "proc.exe_ino.ctime": _proc("exe_ctime"),
    "proc.exe_ino.mtime": _proc("exe_mtime"),
    "proc.pidns_init_start_ts": _pidns_init_start,
    "thread.tid": lambda v: v.rec.tid,
    "thread.cap_effective": _caps("cap_eff"),
    "thread.cap_permitted": _caps("cap_prm"),
    "thread.cap_inheritable": _caps("cap_inh"),
    "user.uid": lambda v: v.rec.uid,
    "user.name": _user(0),
    "user.homedir": _user(1),
    "user.shell": _user(2),
    "user.loginuid": _loginuid,
    "user.loginname": _loginname,
    "group.gid": lambda v: v.rec.gid,
    "group.name": _group_name,
    "fd.num": lambda v: v.fdnum,
    "fd.type": _fd("type"),
    "fd.typechar": _fd_typechar,
    "fd.name": _fd_name,
    "fd.nameraw": lambda v: v.nameraw,
    "fd.directory": _fd_directory,
    "fd.filename": _fd_filename,
    "fd.cip": _socket("cip"),
    "fd.sip": _socket("sip"),
    "fd.cport": _socket("cport"),
    "fd.sport": _socket("sport"),
    "fd.l4proto": _socket("l4proto"),
    "fd.is_server": _socket("is_server"),
    "fd.connected": _socket("connected"),
    "fd.name_changed": _name_changed,
    "fd.dev": _arg("dev"),
    "fd.ino": _arg("ino"),
    "container.id": _container_id,
    "container.name": _container_name,
    "container.type": _container_type,
    "container.image.repository": _info("image_repository"),
    "container.image.tag": _info("image_tag"),
    "container.image.id": _info("image_id"),
    "container.image.digest": _info("image_digest"),
    "container.privileged": _info("privileged"),
    "container.labels": _info("labels"),
    "container.mounts": _info("mounts"),
    "k8s.ns.name": _info("pod_namespace"),
    "k8s.pod.name": _info("pod_name"),
    "k8s.pod.uid": _pod_uid,
    "k8s.pod.labels": _info("pod_labels"),
}
FIELDS = frozenset(_GETTERS)
