"""The tracker: applies each kernel Record to the process and fd tables and wraps it in the
field view the rule engine reads.

    tracker = Tracker.for_host()        # seeds from /proc, starts the metadata worker
    for record in source:
        alerts = engine.process(tracker.apply(record))

Records are applied in order and each view is read before the next record is applied (the
view reads the tables lazily). What each event kind contributes, by Falco's parameter names
in ``Record.args`` (all optional unless said; ``res`` is the syscall's return value):

- clone: ``child_pid`` (required), ``child_tid``, ``flags`` (clone flags), ``child_vpid``.
  A child whose pid equals the parent's is a thread: no new process.
- execve/execveat (res 0): ``filename`` (execveat: ``dirfd``; an empty filename runs the
  dirfd itself, AT_EMPTY_PATH), ``argv`` and, when the source can read them, ``flags`` (the
  kernel's exe flags, PPM_EXE_* bits), ``tty``, ``loginuid`` (-1: unset), ``exepath`` (the
  kernel's path of the executable), ``cap_effective``/``cap_permitted``/``cap_inheritable``
  (masks), ``sid``, ``pgid``, ``vpid``, ``cwd``, ``exe_ino``, ``exe_ino_ctime``,
  ``exe_ino_mtime``. Without them the tracker derives what it can (see ``_execve``).
- procexit: ``group_dead`` (1: the last thread exited; -1 or absent: unknown, then the main
  thread's exit, tid == pid, ends the process).
- open/openat/openat2/creat: ``name``, ``flags``, ``mode``, ``dirfd``; ``dev``/``ino``.
- socket: ``domain``, ``type``, ``proto``. connect: ``fd``, ``addr`` (the peer,
  ``(family, address, port)``) and ``local`` (the local end, when known); sendto/sendmsg:
  ``fd``, ``tuple`` (the destination), ``local``. accept/accept4: ``tuple`` (the peer),
  ``local``, ``flags``. bind: ``fd``, ``addr``.
- dup/dup2/dup3: ``oldfd``, ``flags``. close: ``fd``.
- memfd_create: ``name``, ``flags``. chdir: ``path``; fchdir: ``fd``; setsid; setpgid: ``pid``,
  ``pgid``; capset: ``cap_effective``, ``cap_permitted``, ``cap_inheritable``.

An fd no event created (pipes, eventfds, anything opened before the detector started or while
events were lost) is read from /proc/PID/fd once, when an event uses it.
"""

from __future__ import annotations

import errno
import os
import posixpath

from detector.sources.record import Record
from detector.state import render
from detector.state.containers import (
    CgroupMap,
    ContainerRegistry,
    default_cgroup_root,
)
from detector.state.fds import (
    Endpoint,
    Fd,
    absolute,
    directory_of,
    endpoint,
    family_type,
    from_proc,
    resolve,
    socket_fd,
)
from detector.state.processes import (
    CAPS_OF_CONTAINER,
    LOGINUID_UNSET,
    Process,
    ProcessTable,
    ProcFs,
)
from detector.state.runtime import DEFAULT_SOCKETS, KubeletLogs, PodmanCli, RootFs, RuntimeApi
from detector.state.users import Users
from detector.state.view import View

_OPENS = frozenset({"open", "openat", "openat2", "creat"})
_CREAT_FLAGS = render.O_CREAT | 0o1 | render.O_TRUNC  # creat() is open(O_CREAT|O_WRONLY|O_TRUNC)
_CLONE_NEWPID = 0x20000000
_MFD_CLOEXEC = 1
_SELF_FD_PREFIXES = ("/proc/self/fd/", "/dev/fd/")


class Tracker:
    def __init__(self, table: ProcessTable, containers: ContainerRegistry, users: Users) -> None:
        self.table = table
        self.containers = containers
        self.users = users
        self.proc_root = table.procfs.root
        self.num = 0  # evt.num of the last event
        self.fd_lookups = 0  # fds read from /proc because no event had shown them
        self._handlers = {
            "clone": self._clone, "clone3": self._clone, "fork": self._clone,
            "vfork": self._clone, "execve": self._execve, "execveat": self._execve,
            "procexit": self._procexit, "socket": self._socket, "connect": self._connect,
            "accept": self._accept, "accept4": self._accept, "bind": self._bind,
            "sendto": self._sendto, "sendmsg": self._sendto, "dup": self._dup,
            "dup2": self._dup, "dup3": self._dup, "close": self._close,
            "memfd_create": self._memfd, "chdir": self._chdir, "fchdir": self._fchdir,
            "setsid": self._setsid, "setpgid": self._setpgid, "capset": self._capset,
            **dict.fromkeys(_OPENS, self._open),
        }

    @classmethod
    def for_host(cls, *, proc_root: str = "/proc", cgroup_root: str | None = None,
                 sockets: tuple[str, ...] = DEFAULT_SOCKETS, podman: str | None = "podman",
                 pods_dir: str = "/var/log/pods", containers_dir: str = "/var/log/containers",
                 etc: str = "/etc", seed: bool = True) -> Tracker:
        """A tracker for this node: runtime sockets, then the podman CLI, for container
        metadata; kubelet log directories for pods. Call ``close()`` when done."""
        fetchers = [RuntimeApi(path) for path in sockets]
        if podman:
            fetchers.append(PodmanCli(podman))
        registry = ContainerRegistry(
            CgroupMap(cgroup_root or default_cgroup_root()), fetchers,
            [KubeletLogs(pods_dir, containers_dir), RootFs(proc_root)],
        )
        tracker = cls(ProcessTable(ProcFs(proc_root)), registry, Users(etc))
        if seed:
            tracker.table.seed()
        registry.start()
        return tracker

    def close(self) -> None:
        self.containers.stop()

    # ---- the hot path ------------------------------------------------------------------

    def apply(self, rec: Record) -> View:
        table = self.table
        if table.exiting:
            table.reap()
        self.num += 1
        proc = table.procs.get(rec.pid)
        if proc is None:
            proc = table.lookup(rec.pid, rec.comm, rec.uid, rec.gid, rec.time_ns)
        if rec.cgroup_id and rec.cgroup_id != proc.cgroup_id:
            proc.cgroup_id = rec.cgroup_id
            proc.container = self.containers.ref(rec.cgroup_id)
        if rec.uid != proc.uid:
            _uid_changed(proc, rec.uid)
        proc.gid = rec.gid
        view = View(self, rec, proc, self.num)
        handler = self._handlers.get(rec.kind)
        if handler is not None:
            handler(rec, proc, view)
        return view

    def fd(self, proc: Process, num: object, *, remember: bool = True) -> Fd | None:
        """The fd ``num`` of ``proc``; one it never saw opened is read from /proc once (each
        time without ``remember``: for an event that does not name the fd to the kernel's
        close filter, whose close the tracker may then never see)."""
        if not isinstance(num, int) or num < 0:
            return None
        fd = proc.fds.get(num)
        if fd is None and not proc.exited:
            self.fd_lookups += 1
            fd = from_proc(self.proc_root, proc.pid, num) or Fd(None)
            if remember:
                proc.fds[num] = fd
        return fd

    # ---- processes -------------------------------------------------------------------------

    def _clone(self, rec: Record, proc: Process, view: View) -> None:
        child_pid = rec.args.get("child_pid")
        if not isinstance(child_pid, int) or child_pid == rec.pid or child_pid <= 0:
            return
        child = self.table.fork(proc, child_pid, rec.time_ns)
        vpid = rec.args.get("child_vpid")
        if isinstance(vpid, int):
            child.vpid = vpid
        elif rec.args.get("flags", 0) & _CLONE_NEWPID:
            child.vpid = 1
        elif proc.vpid == proc.pid:  # the parent is in the host's pid namespace
            child.vpid = child_pid
        else:
            child.vpid = None

    def _procexit(self, rec: Record, proc: Process, view: View) -> None:
        group_dead = rec.args.get("group_dead", -1)
        if group_dead == 1 or (group_dead == -1 and rec.tid == rec.pid):
            self.table.exit(proc)

    def _execve(self, rec: Record, proc: Process, view: View) -> None:
        if rec.res != 0:
            return  # a failed exec changes nothing
        a = rec.args
        argv = [str(x) for x in a.get("argv") or ()]
        filename = a.get("filename")
        if not isinstance(filename, str):  # "" is meaningful: execveat of the dirfd itself
            filename = argv[0] if argv else ""
        proc.name = rec.comm or posixpath.basename(filename)[:15]
        proc.exe = argv[0] if argv else filename
        proc.args = " ".join(argv[1:])
        for key in ("tty", "sid", "pgid", "vpid"):
            if isinstance(a.get(key), int):
                setattr(proc, key, a[key])
        loginuid = a.get("loginuid")
        if isinstance(loginuid, int):
            proc.loginuid = LOGINUID_UNSET if loginuid < 0 else loginuid
        if isinstance(a.get("cwd"), str):
            proc.cwd = a["cwd"] if a["cwd"].endswith("/") else a["cwd"] + "/"
        self._executable(rec, proc, filename)
        self._exec_caps(rec, proc)
        proc.fds = {num: fd for num, fd in proc.fds.items() if not fd.cloexec}

    def _executable(self, rec: Record, proc: Process, filename: str) -> None:
        """proc.exepath and the exe flags: the kernel's when the source gives them; else the
        path the process passed, with memfd and overlay-layer status worked out here."""
        a = rec.args
        target = self._exec_fd(rec, proc, filename)
        exepath = a.get("exepath")
        if not isinstance(exepath, str):
            if target is not None:
                exepath = target.name
            else:
                base = directory_of(proc.fds, a.get("dirfd"), proc.cwd) \
                    if rec.kind == "execveat" else proc.cwd
                exepath = resolve(filename, base)
        proc.exepath = exepath
        for key, slot in (("exe_ino", "exe_ino"), ("exe_ino_ctime", "exe_ctime"),
                          ("exe_ino_mtime", "exe_mtime")):
            setattr(proc, slot, a.get(key))
        flags = a.get("flags")
        flags = flags if isinstance(flags, int) else 0
        # A bit the kernel set is the truth; a clear one may only mean it could not tell
        # (no overlayfs BTF, say), so those are derived here.
        proc.exe_writable = True if flags & render.EXE_WRITABLE else None
        proc.exe_memfd = bool(flags & render.EXE_FROM_MEMFD) or \
            (target is not None and target.type == "memfd") or \
            (exepath is not None and exepath.startswith("memfd:"))
        if flags & (render.EXE_UPPER_LAYER | render.EXE_LOWER_LAYER):
            proc.exe_upper = bool(flags & render.EXE_UPPER_LAYER)
            proc.exe_lower = not proc.exe_upper
            return
        if proc.container is None:
            proc.exe_upper = proc.exe_lower = False  # the host's root is not an overlay
            return
        proc.exe_upper = proc.exe_lower = None
        info = self.containers.info(proc.container, proc.pid)
        if info is None or not info.upperdir or not exepath or proc.exe_memfd:
            return
        # A file in the writable layer was added or changed in the container.
        try:
            st = os.lstat(info.upperdir + absolute(exepath, "/"))
        except OSError:
            proc.exe_upper, proc.exe_lower = False, True
            return
        proc.exe_upper, proc.exe_lower = True, False
        if proc.exe_ino is None:
            proc.exe_ino, proc.exe_ctime, proc.exe_mtime = st.st_ino, st.st_ctime_ns, \
                st.st_mtime_ns

    def _exec_fd(self, rec: Record, proc: Process, filename: str) -> Fd | None:
        """The fd an exec ran, if it ran one: execveat(fd, "", AT_EMPTY_PATH) or a path
        through /proc/self/fd (fexecve): how a memfd is executed."""
        if rec.kind == "execveat" and not filename:
            return self.fd(proc, rec.args.get("dirfd"), remember=False)
        for prefix in _SELF_FD_PREFIXES:
            if filename.startswith(prefix) and filename[len(prefix):].isdigit():
                return self.fd(proc, int(filename[len(prefix):]), remember=False)
        return None

    def _exec_caps(self, rec: Record, proc: Process) -> None:
        """After exec, as the kernel computes them for the common case: root gets its
        bounding set (in a container, the container's), anyone else none. File
        capabilities and ambient sets need the source's masks, which win when present."""
        a = rec.args
        if isinstance(a.get("cap_effective"), int):
            self._capset(rec, proc, None)
            return
        if rec.uid == 0:
            caps = CAPS_OF_CONTAINER if proc.container is not None else proc.cap_bnd
        else:
            caps = 0
        proc.cap_eff = proc.cap_prm = caps

    def _capset(self, rec: Record, proc: Process, view: View | None) -> None:
        if rec.res != 0:
            return
        a = rec.args
        for key, slot in (("cap_effective", "cap_eff"), ("cap_permitted", "cap_prm"),
                          ("cap_inheritable", "cap_inh")):
            if isinstance(a.get(key), int):
                setattr(proc, slot, a[key])

    def _chdir(self, rec: Record, proc: Process, view: View) -> None:
        path = rec.args.get("path")
        if rec.res == 0 and isinstance(path, str):
            cwd = resolve(path, proc.cwd)
            if cwd is not None:
                proc.cwd = cwd if cwd.endswith("/") else cwd + "/"

    def _fchdir(self, rec: Record, proc: Process, view: View) -> None:
        view.fdnum = rec.args.get("fd")
        fd = view.fd = self.fd(proc, view.fdnum)
        if rec.res == 0 and fd is not None and fd.name and fd.name.startswith("/"):
            proc.cwd = fd.name if fd.name.endswith("/") else fd.name + "/"

    def _setsid(self, rec: Record, proc: Process, view: View) -> None:
        if rec.res >= 0:  # a new session: it leads it and has no controlling terminal
            proc.sid = proc.pgid = proc.pid
            proc.tty = 0

    def _setpgid(self, rec: Record, proc: Process, view: View) -> None:
        a = rec.args
        if rec.res != 0 or "pid" not in a or "pgid" not in a:
            return
        # Only the caller's own group is tracked: another pid may be in another namespace.
        if a["pid"] in (0, proc.vpid, proc.pid):
            proc.pgid = proc.pid if a["pgid"] in (0, proc.vpid) else a["pgid"]

    # ---- files and sockets -----------------------------------------------------------------

    def _open(self, rec: Record, proc: Process, view: View) -> None:
        a = rec.args
        name = a.get("name")
        flags = _CREAT_FLAGS if rec.kind == "creat" else a.get("flags", 0)
        if not isinstance(name, str) or not isinstance(flags, int):
            return
        dirfd = a.get("dirfd", render.AT_FDCWD)
        if name.startswith("/") or dirfd == render.AT_FDCWD:
            base = proc.cwd
        else:
            directory = self.fd(proc, dirfd)
            base = None if directory is None else directory.name
        kind = "directory" if flags & render.O_DIRECTORY else "file"
        fd = Fd(kind, resolve(name, base) or name, cloexec=bool(flags & render.O_CLOEXEC))
        if rec.res >= 0:
            proc.fds[rec.res] = fd
        view.opened(fd, rec.res if rec.res >= 0 else -1, name, flags)

    def _close(self, rec: Record, proc: Process, view: View) -> None:
        num = view.fdnum = rec.args.get("fd")
        if not isinstance(num, int):
            return
        view.fd = proc.fds.pop(num, None) if rec.res == 0 else proc.fds.get(num)

    def _dup(self, rec: Record, proc: Process, view: View) -> None:
        self._duplicate(rec, proc, view, rec.args.get("oldfd"),
                        bool(rec.args.get("flags", 0) & render.O_CLOEXEC))

    def _duplicate(self, rec: Record, proc: Process, view: View, old: object,
                   cloexec: bool) -> None:
        fd = self.fd(proc, old)
        view.fd, view.fdnum = fd, old
        if fd is not None and rec.res >= 0 and rec.res != old:
            proc.fds[rec.res] = fd.copy(cloexec=cloexec)

    def _socket(self, rec: Record, proc: Process, view: View) -> None:
        a = rec.args
        if rec.res < 0:
            return
        fd = socket_fd(a.get("domain", 0), a.get("type", 0), a.get("proto", 0))
        proc.fds[rec.res] = view.fd = fd
        view.fdnum = rec.res

    def _socket_of(self, proc: Process, num: object, fam: int) -> Fd | None:
        """The socket at ``num``, typed by the address family an event used it with."""
        sock = self.fd(proc, num)
        if sock is None or not isinstance(num, int):
            return None
        kind = family_type(fam)
        if sock.type is None or (kind is not None and sock.type != kind
                                 and sock.type not in ("ipv4", "ipv6", "unix")):
            sock = proc.fds[num] = Fd(kind, l4proto=sock.l4proto, cloexec=sock.cloexec)
        elif sock.type != kind and kind in ("ipv4", "ipv6"):
            sock.type = kind  # an AF_INET6 socket connecting to a v4-mapped address
        return sock

    def _connect(self, rec: Record, proc: Process, view: View) -> None:
        a = rec.args
        view.fdnum = a.get("fd")
        peer = endpoint(a.get("addr", a.get("tuple")))
        if peer is None:
            view.fd = self.fd(proc, view.fdnum)
            return
        sock = view.fd = self._socket_of(proc, view.fdnum, peer[0])
        if sock is None:
            return
        _set_peer(sock, peer, endpoint(a.get("local")))
        if rec.res == 0 or rec.res == -errno.EINPROGRESS:
            sock.connected = True

    def _accept(self, rec: Record, proc: Process, view: View) -> None:
        a = rec.args
        if rec.res < 0:
            return
        peer = endpoint(a.get("tuple", a.get("addr")))
        # accept() only takes connections on stream (or seqpacket) sockets.
        sock = Fd(None if peer is None else family_type(peer[0]), l4proto="tcp",
                  cloexec=bool(a.get("flags", 0) & render.SOCK_CLOEXEC))
        sock.is_server = sock.connected = True
        local = endpoint(a.get("local"))
        if peer is not None and peer[0] == render.AF_UNIX:
            sock.name, sock.l4proto = str(peer[1]) or None, None
        else:
            if peer is not None:
                sock.cip, sock.cport = peer[1], peer[2]
            if local is not None:
                sock.sip, sock.sport = local[1], local[2]
        proc.fds[rec.res] = view.fd = sock
        view.fdnum = rec.res

    def _bind(self, rec: Record, proc: Process, view: View) -> None:
        a = rec.args
        view.fdnum = a.get("fd")
        local = endpoint(a.get("addr"))
        if local is None:
            view.fd = self.fd(proc, view.fdnum)
            return
        sock = view.fd = self._socket_of(proc, view.fdnum, local[0])
        if sock is None or rec.res != 0:
            return
        if local[0] == render.AF_UNIX:
            sock.name = local[1]
        else:
            sock.sip, sock.sport, sock.is_server = local[1], local[2], True

    def _sendto(self, rec: Record, proc: Process, view: View) -> None:
        a = rec.args
        view.fdnum = a.get("fd")
        dest = endpoint(a.get("addr", a.get("tuple")))
        if dest is None or dest[0] == render.AF_UNIX:
            view.fd = self.fd(proc, view.fdnum)
            return
        sock = view.fd = self._socket_of(proc, view.fdnum, dest[0])
        if sock is None:
            return
        # An unconnected datagram socket names its peer per packet (Falco's fd.name_changed).
        view.name_changed = (sock.sip, sock.sport) != (dest[1], dest[2])
        if view.name_changed and not sock.connected:
            _set_peer(sock, dest, endpoint(a.get("local")))

    def _memfd(self, rec: Record, proc: Process, view: View) -> None:
        if rec.res >= 0:
            name = rec.args.get("name", "")
            fd = Fd("memfd", f"memfd:{name}",
                    cloexec=bool(rec.args.get("flags", 0) & _MFD_CLOEXEC))
            proc.fds[rec.res] = view.fd = fd
            view.fdnum = rec.res



def _set_peer(sock: Fd, peer: Endpoint, local: Endpoint | None) -> None:
    if peer[0] == render.AF_UNIX:
        sock.name = str(peer[1])
        return
    sock.sip, sock.sport, sock.is_server = peer[1], peer[2], False
    if local is not None:
        sock.cip, sock.cport = local[1], local[2]


def _uid_changed(proc: Process, uid: int) -> None:
    """setuid's capability rules (cap_emulate_setxuid): leaving root clears the effective
    set, becoming root again restores it from the permitted set."""
    if proc.uid == 0 and uid != 0:
        proc.cap_eff = 0
    elif proc.uid != 0 and uid == 0:
        proc.cap_eff = proc.cap_prm
    proc.uid = uid
