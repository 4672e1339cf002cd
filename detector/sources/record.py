"""What a kernel event source hands to the state tracker: one record per syscall (at its exit)
or scheduler event, decoded, with nothing looked up in /proc.

The eBPF source (``detector/sources/ebpf``) and the fallback source produce these; the state
tracker (``detector/state``) applies them to its process and fd tables and wraps each one in a
read-only field mapping for the rule engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Record:
    """One event as the kernel saw it.

    ``kind`` is the Falco event type: a syscall name (``openat``, ``execve``, ``connect``...)
    or, for scheduler tracepoints, ``clone`` (sched_process_fork: ``pid`` is the parent,
    ``args["child_pid"]``/``args["child_tid"]`` the new task) and ``procexit``
    (sched_process_exit). An execve that succeeded is reported once, at its exit, with the new
    image's ``args["filename"]`` and ``args["argv"]``.
    """

    kind: str
    time_ns: int  # wall clock, ns since the epoch (the source converts from boot time)
    pid: int  # thread group id (what users call the pid)
    tid: int
    uid: int  # effective ids of the task when the event happened
    gid: int
    comm: str  # the task's comm, at most 15 characters
    cgroup_id: int  # bpf_get_current_cgroup_id(): the inode of its cgroup v2 directory
    res: int = 0  # the syscall's return value (negative errno on failure)
    # Decoded arguments by Falco's parameter names (``fd``, ``dirfd``, ``name``, ``flags``,
    # ``mode``, ``tuple``/``addr`` for sockets as (family, address, port) tuples, ``argv`` as a
    # list of strings, ``target``/``linkpath``, ``oldpath``/``newpath``, ``request`` for ptrace,
    # ``domain``/``type``/``proto`` for socket, ``oldfd``/``newfd`` for dup...): raw values,
    # ints for flags; rendering (O_RDONLY|O_CLOEXEC, AF_PACKET) is the state tracker's job.
    args: dict[str, Any] = field(default_factory=dict)
    cpu: int = 0
