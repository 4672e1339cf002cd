"""proc.* and thread.* (the process behind the event, its ancestors), user.* and group.*."""

from __future__ import annotations

from operator import methodcaller
from typing import Any

from detector.engine.fielddefs_common import (
    Event,
    ancestry,
    computed,
    derived,
    equal,
    first_of,
    since,
)
from detector.engine.fields import Extractor, FieldClass, FieldSpec, FieldType

S = FieldType.STRING
N = FieldType.NUMBER
B = FieldType.BOOL
T = FieldType.ABSTIME
R = FieldType.RELTIME


def _joined(head_key: str) -> Extractor:
    """``<head> <args>``: proc.cmdline (name first) and proc.exeline (argv[0] first)."""

    def join(event: Event) -> Any:
        head = event.get(head_key)
        args = event.get("proc.args")
        if head is None or args is None:
            return None
        return f"{head} {args}" if args else head

    return join


def _recorded_or_first(key: str, chain_key: str) -> Extractor:
    first = first_of(chain_key)

    def parent(event: Event) -> Any:
        value = event.get(key)
        return first(event) if value is None else value

    return parent


def _env(arg: str | None) -> Extractor:
    if arg is None:

        def whole(event: Event) -> Any:
            env = event.get("proc.env")
            if env is None or isinstance(env, str):
                return env
            if isinstance(env, dict):
                return " ".join(f"{k}={v}" for k, v in env.items())
            return " ".join(env)

        return whole

    prefix = arg + "="

    def one(event: Event) -> Any:
        env = event.get("proc.env")
        if env is None:
            return None
        if isinstance(env, dict):
            return env.get(arg)
        for entry in env:
            if entry.startswith(prefix):
                return entry[len(prefix):]
        return None

    return one


def _exe_age_at_start(event: Event) -> Any:
    start = event.get("proc.pid.ts")
    ctime = event.get("proc.exe_ino.ctime")
    if start is None or ctime is None:
        return None
    return start - ctime


_name = methodcaller("get", "proc.name")
_pid = methodcaller("get", "proc.pid")
_exe = methodcaller("get", "proc.exe")
_exepath = methodcaller("get", "proc.exepath")
_cmdline_derived = _joined("proc.name")


def _cmdline(event: Event) -> Any:
    value = event.get("proc.cmdline")
    return _cmdline_derived(event) if value is None else value


_pname = _recorded_or_first("proc.pname", "proc.aname")
_ppid = _recorded_or_first("proc.ppid", "proc.apid")
_pexe = _recorded_or_first("proc.pexe", "proc.aexe")
_pexepath = _recorded_or_first("proc.pexepath", "proc.aexepath")
_pcmdline = _recorded_or_first("proc.pcmdline", "proc.acmdline")


def _ancestor(name: str, ftype: FieldType, what: str, self_extract: Extractor,
              parent_extract: Extractor) -> FieldSpec:
    return FieldSpec(
        name, ftype,
        f"{what} of an ancestor: {name}[1] is the parent, {name}[2] the grandparent, "
        f"{name}[0] the process itself. Without an index a check matches if any ancestor "
        "matches; an output prints all of them.",
        arg="optional", ancestors=True, transformers=False, rhs=False,
        factory=ancestry(name, name, self_extract, parent_extract),
    )


PROCESS = FieldClass(
    name="process",
    shortdesc="Processes",
    desc="The process (and thread) that made the system call, its parent and ancestors.",
    fields=(
        FieldSpec("proc.name", S, "Process name (the kernel's comm, at most 15 characters)."),
        FieldSpec("proc.exe", S,
                  "First command-line argument (argv[0]), usually the executable as invoked."),
        FieldSpec("proc.exepath", S, "Full path of the executable file."),
        FieldSpec("proc.args", S, "Command-line arguments after argv[0], joined by spaces."),
        FieldSpec("proc.cmdline", S, "proc.name followed by proc.args.",
                  factory=computed(_cmdline)),
        FieldSpec("proc.exeline", S, "proc.exe followed by proc.args.",
                  factory=derived("proc.exeline", _joined("proc.exe"))),
        FieldSpec("proc.env", S,
                  "Environment as NAME=value pairs separated by spaces; proc.env[NAME] is one "
                  "variable's value.", arg="optional", factory=_env),
        FieldSpec("proc.cwd", S, "Current working directory."),
        FieldSpec("proc.tty", N, "Controlling terminal device number; 0 when there is none."),
        FieldSpec("proc.pid", N, "Process id."),
        FieldSpec("proc.vpid", N, "Process id as seen inside its pid namespace (container)."),
        FieldSpec("proc.ppid", N, "Parent's process id.", factory=computed(_ppid)),
        FieldSpec("proc.pvpid", N, "Parent's process id inside its pid namespace."),
        FieldSpec("proc.sid", N, "Session id."),
        FieldSpec("proc.sname", S, "Name of the session leader."),
        FieldSpec("proc.vpgid", N, "Process group id inside the pid namespace."),
        FieldSpec("proc.vpgid.name", S, "Name of the process group leader."),
        FieldSpec("proc.vpgid.exe", S, "argv[0] of the process group leader."),
        FieldSpec("proc.vpgid.exepath", S, "Executable path of the process group leader."),
        FieldSpec("proc.is_sid_leader", B, "True if the process leads its session.",
                  factory=derived("proc.is_sid_leader", equal("proc.sid", "proc.vpid"))),
        FieldSpec("proc.is_vpgid_leader", B, "True if the process leads its process group.",
                  factory=derived("proc.is_vpgid_leader", equal("proc.vpgid", "proc.vpid"))),
        FieldSpec("proc.pname", S, "Parent's name.", factory=computed(_pname)),
        FieldSpec("proc.pexe", S, "Parent's argv[0].", factory=computed(_pexe)),
        FieldSpec("proc.pexepath", S, "Parent's executable path.",
                  factory=computed(_pexepath)),
        FieldSpec("proc.pcmdline", S, "Parent's command line.", factory=computed(_pcmdline)),
        _ancestor("proc.aname", S, "Name", _name, _pname),
        _ancestor("proc.apid", N, "Process id", _pid, _ppid),
        _ancestor("proc.aexe", S, "argv[0]", _exe, _pexe),
        _ancestor("proc.aexepath", S, "Executable path", _exepath, _pexepath),
        _ancestor("proc.acmdline", S, "Command line", _cmdline, _pcmdline),
        FieldSpec("proc.pid.ts", T, "When the process started, in ns since the epoch."),
        FieldSpec("proc.ppid.ts", T, "When the parent started, in ns since the epoch."),
        FieldSpec("proc.duration", R, "Nanoseconds since the process started.",
                  factory=derived("proc.duration", since("proc.pid.ts"))),
        FieldSpec("proc.ppid.duration", R, "Nanoseconds since the parent started.",
                  factory=derived("proc.ppid.duration", since("proc.ppid.ts"))),
        FieldSpec("proc.is_exe_writable", B,
                  "True if the executable is writable by the user that started the process."),
        FieldSpec("proc.is_exe_upper_layer", B,
                  "True if the executable lives in the writable upper layer of an overlay "
                  "filesystem (a file added or changed in the container)."),
        FieldSpec("proc.is_exe_lower_layer", B,
                  "True if the executable comes from a lower (image) layer of an overlay."),
        FieldSpec("proc.is_exe_from_memfd", B,
                  "True if the executable is an anonymous in-memory file (memfd_create)."),
        FieldSpec("proc.exe_ino", N, "Inode number of the executable."),
        FieldSpec("proc.exe_ino.ctime", T, "Last status change of the executable's inode."),
        FieldSpec("proc.exe_ino.mtime", T, "Last modification of the executable's inode."),
        FieldSpec("proc.exe_ino.ctime_duration_proc_start", R,
                  "Nanoseconds between the executable's last status change and the process "
                  "start: small values mean a freshly dropped binary.",
                  factory=derived("proc.exe_ino.ctime_duration_proc_start", _exe_age_at_start)),
        FieldSpec("proc.pidns_init_start_ts", T,
                  "When the init process of the pid namespace started, in ns since the epoch."),
        FieldSpec("proc.is_container_healthcheck", B,
                  "True if the process runs as a container health check."),
        FieldSpec("proc.is_container_liveness_probe", B,
                  "True if the process runs as a Kubernetes liveness probe."),
        FieldSpec("proc.is_container_readiness_probe", B,
                  "True if the process runs as a Kubernetes readiness probe."),
        FieldSpec("thread.tid", N, "Thread id."),
        FieldSpec("thread.vtid", N, "Thread id inside the pid namespace."),
        FieldSpec("thread.ismain", B, "True for the main thread of the process.",
                  factory=derived("thread.ismain", equal("thread.tid", "proc.pid"))),
        FieldSpec("thread.cap_effective", S,
                  "Effective capabilities, CAP_* names separated by spaces."),
        FieldSpec("thread.cap_permitted", S, "Permitted capabilities (CAP_* names)."),
        FieldSpec("thread.cap_inheritable", S, "Inheritable capabilities (CAP_* names)."),
    ),
)

USER = FieldClass(
    name="user",
    shortdesc="Users",
    desc="The user the process runs as, and the user that logged in.",
    fields=(
        FieldSpec("user.uid", N, "Effective user id."),
        FieldSpec("user.name", S, "Name of the effective user (as the container sees it)."),
        FieldSpec("user.homedir", S, "Home directory of the user."),
        FieldSpec("user.shell", S, "Login shell of the user."),
        FieldSpec("user.loginuid", N, "Audit login user id; -1 when nobody logged in."),
        FieldSpec("user.loginname", S, "Name of the login user."),
    ),
)

GROUP = FieldClass(
    name="group",
    shortdesc="Groups",
    desc="The group the process runs as.",
    fields=(
        FieldSpec("group.gid", N, "Effective group id."),
        FieldSpec("group.name", S, "Name of the effective group."),
    ),
)

CLASSES = (PROCESS, USER, GROUP)
