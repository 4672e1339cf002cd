"""evt.*: the event itself (type, time, return value, parameters)."""

from __future__ import annotations

import errno
import re
import time
from functools import lru_cache
from itertools import islice
from operator import methodcaller
from typing import Any

from detector.engine.fielddefs_common import Event, computed, derived, index_arg, is_index
from detector.engine.fields import ANY_SOURCE, Extractor, FieldClass, FieldSpec, FieldType

S = FieldType.STRING
N = FieldType.NUMBER


def clock(ns: int) -> str:
    """``%evt.time`` in text: HH:MM:SS.nnnnnnnnn, in UTC so alerts do not depend on the host."""
    seconds, frac = divmod(ns, 1_000_000_000)
    minutes, sec = divmod(seconds % 86400, 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}:{sec:02d}.{frac:09d}"


def iso8601(ns: int) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:09d}+0000"


def _time_iso(event: Event) -> Any:
    ns = event.get("evt.time")
    return None if ns is None else iso8601(ns)


def _res(event: Event) -> Any:
    raw = event.get("evt.rawres")
    if raw is None:
        return None
    if raw >= 0:
        return "SUCCESS"
    return errno.errorcode.get(-raw, str(raw))


def _failed(event: Event) -> Any:
    raw = event.get("evt.rawres")
    if raw is None:
        res = event.get("evt.res")
        return None if res is None else res != "SUCCESS"
    return raw < 0


def _all_args(event: Event) -> Any:
    args = event.get("evt.args")
    if args is None or isinstance(args, str):
        return args
    return " ".join(f"{name}={value}" for name, value in args.items())


def _text(value: Any) -> Any:
    # A JSON writer may have kept a rendered number as a number; rules compare text.
    return value if value is None or value.__class__ is str else str(value)


def _arg(arg: str | None) -> Extractor:
    if arg is not None and is_index(arg):
        at = index_arg("evt.arg", arg)

        def nth(event: Event) -> Any:
            args = event.get("evt.args")
            if args is None:
                return None
            return _text(next(islice(args.values(), at, None), None))

        return nth

    def named(event: Event) -> Any:
        args = event.get("evt.args")
        return None if args is None else _text(args.get(arg))

    return named


# Parameters whose raw value is text (paths, names); every other raw parameter is a number.
_TEXT_PARAMS = frozenset({
    "name", "path", "pathname", "target", "linkpath", "oldpath", "newpath", "filename",
    "exe", "args", "cwd", "comm", "env", "cgroups", "trusted_exepath", "uargs",
})


_LEADING_INT = re.compile(r"-?(?:0[xX][0-9a-fA-F]+|[0-9]+)")


def _rawarg_type(arg: str) -> FieldType:
    return S if arg in _TEXT_PARAMS else N


def _rawarg(arg: str | None) -> Extractor:
    text = arg in _TEXT_PARAMS

    def raw(event: Event) -> Any:
        rawargs = event.get("evt.rawargs")
        value = None if rawargs is None else rawargs.get(arg)
        if value is not None:
            return value
        args = event.get("evt.args")
        rendered = None if args is None else args.get(arg)
        if text or not isinstance(rendered, str):
            return rendered
        # Rendered numbers may carry their meaning after them: an fd prints as 3(<f>/etc/x).
        number = _LEADING_INT.match(rendered)
        if number is None:
            return None
        digits = number.group()
        return int(digits, 16) if "x" in digits.lower() else int(digits)

    return raw


@lru_cache(maxsize=1024)
def _flag_names(flags: str) -> frozenset[str]:
    # Every open event asks; the same few flag combinations come back again and again.
    return frozenset(flags.split("|"))


_OPEN_EVENTS = frozenset({"open", "openat", "openat2", "open_by_handle_at", "creat"})


def _open_flag(*names: str) -> Extractor:
    """evt.is_open_read and friends: false for events that are not opens, as in Falco."""
    wanted = frozenset(names)

    def check(event: Event) -> Any:
        kind = event.get("evt.type")
        if kind not in _OPEN_EVENTS:
            return None if kind is None else False
        args = event.get("evt.args")
        flags = None if args is None else args.get("flags")
        if flags is None:
            return None
        return not wanted.isdisjoint(_flag_names(flags))

    return check


def _buffer(event: Event) -> Any:
    value = event.get("evt.buffer")
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return value


_CATEGORIES = {
    **dict.fromkeys(
        ("open", "openat", "openat2", "creat", "close", "link", "linkat", "symlink",
         "symlinkat", "unlink", "unlinkat", "rename", "renameat", "renameat2", "mkdir",
         "mkdirat", "rmdir", "chmod", "fchmod", "fchmodat", "chown", "fchown", "fchownat",
         "mount", "umount", "umount2", "chdir", "fchdir", "chroot", "open_by_handle_at",
         "memfd_create"), "file"),
    **dict.fromkeys(
        ("socket", "connect", "accept", "accept4", "bind", "listen", "sendto", "sendmsg",
         "recvfrom", "recvmsg", "shutdown", "getsockopt", "setsockopt", "socketpair"), "net"),
    **dict.fromkeys(
        ("execve", "execveat", "clone", "clone3", "fork", "vfork", "procexit", "ptrace",
         "prctl", "capset", "setsid", "setpgid", "unshare", "setns"), "process"),
    **dict.fromkeys(("setuid", "setgid", "setresuid", "setresgid"), "user"),
    **dict.fromkeys(("init_module", "finit_module", "delete_module", "bpf"), "system"),
    **dict.fromkeys(("dup", "dup2", "dup3", "pipe", "pipe2", "eventfd", "eventfd2"), "io_other"),
    **dict.fromkeys(("read", "pread", "readv", "preadv"), "io_read"),
    **dict.fromkeys(("write", "pwrite", "writev", "pwritev"), "io_write"),
    **dict.fromkeys(("kill", "tkill", "tgkill", "signalfd", "signalfd4"), "signal"),
}


def _category(event: Event) -> Any:
    kind = event.get("evt.type")
    return None if kind is None else _CATEGORIES.get(kind, "other")


EVT = FieldClass(
    name="evt",
    shortdesc="All event types",
    desc="What happened: the system call, when, its parameters and its result.",
    fields=(
        # Falco's generic event fields: events of every source have them.
        FieldSpec("evt.num", N, "Sequence number of the event, starting at 1.",
                  source=ANY_SOURCE),
        FieldSpec("evt.time", FieldType.ABSTIME,
                  "When the event happened, in nanoseconds since the epoch; printed in "
                  "outputs as HH:MM:SS.nnnnnnnnn (UTC).", text=clock, source=ANY_SOURCE),
        FieldSpec("evt.time.iso8601", S, "Event time as an ISO-8601 UTC string.",
                  factory=computed(_time_iso), source=ANY_SOURCE),
        FieldSpec("evt.rawtime", FieldType.ABSTIME,
                  "Event time in nanoseconds since the epoch, printed as a number.",
                  factory=computed(methodcaller("get", "evt.time")), source=ANY_SOURCE),
        FieldSpec("evt.type", S, "Name of the event, e.g. openat or execve."),
        FieldSpec("evt.category", S,
                  "Broad kind of event: file, net, process, user, system, signal, io_read, "
                  "io_write, io_other or other.", factory=derived("evt.category", _category)),
        FieldSpec("evt.dir", S,
                  "Direction of the event; always '<' (exit) since Falco dropped enter events.",
                  deprecated=True, factory=derived("evt.dir", lambda _event: "<")),
        FieldSpec("evt.latency", FieldType.RELTIME,
                  "Time spent in the system call; unknown without enter events.",
                  deprecated=True),
        FieldSpec("evt.cpu", N, "Number of the CPU the event happened on."),
        FieldSpec("evt.res", S,
                  "Result of the call: SUCCESS, or the error name such as ENOENT or EACCES.",
                  factory=derived("evt.res", _res)),
        FieldSpec("evt.rawres", N,
                  "Raw return value of the call (a file descriptor, a count, or -errno)."),
        FieldSpec("evt.failed", FieldType.BOOL, "True if the call returned an error.",
                  factory=derived("evt.failed", _failed)),
        FieldSpec("evt.args", S,
                  "All parameters of the event as name=value pairs separated by spaces.",
                  factory=computed(_all_args)),
        FieldSpec("evt.arg", S,
                  "One parameter of the event as text, by name (evt.arg.flags or "
                  "evt.arg[flags]) or by position (evt.arg[0]). Flags read as names joined "
                  "by '|', e.g. O_WRONLY|O_TRUNC.",
                  arg="required", dot_arg=True, factory=_arg),
        FieldSpec("evt.rawarg", N,
                  "One parameter of the event as its raw value, by name (evt.rawarg.res): "
                  "a number, or text for path and name parameters.",
                  arg="required", dot_arg=True, factory=_rawarg, arg_type=_rawarg_type),
        FieldSpec("evt.buffer", FieldType.BYTES,
                  "The data buffer of read/write-like events.", factory=computed(_buffer)),
        FieldSpec("evt.is_open_read", FieldType.BOOL,
                  "True for open events that open a file for reading.",
                  factory=derived("evt.is_open_read", _open_flag("O_RDONLY", "O_RDWR"))),
        FieldSpec("evt.is_open_write", FieldType.BOOL,
                  "True for open events that open a file for writing.",
                  factory=derived("evt.is_open_write", _open_flag("O_WRONLY", "O_RDWR"))),
        FieldSpec("evt.is_open_create", FieldType.BOOL,
                  "True for open events that created the file.",
                  factory=derived("evt.is_open_create", _open_flag("O_F_CREATED"))),
        FieldSpec("evt.is_open_exec", FieldType.BOOL,
                  "True for open events that created a file with execute permission "
                  "(recorded by the source)."),
    ),
)

CLASSES = (EVT,)
