"""The detector's view of the node: processes, their fds, containers and users, kept from
kernel events, and the per-event field mapping the rule engine reads.

- ``processes``: the process table (seeded from /proc, kept by clone/execve/exit...)
- ``fds``: what each fd is (file, socket tuple, pipe...)
- ``containers`` and ``runtime``: container ids from cgroups; metadata from the runtime
- ``users``: uid/gid names
- ``tracker``: applies Records to all of the above; ``view``: the fields of one event

``required_event_types`` tells a source what to trace: the rules' event types plus those that
keep the tables right.
"""

from __future__ import annotations

from collections.abc import Iterable

# Always traced: without them the process table (names, parents, cwd, ids) goes stale.
PROCESS_EVENT_TYPES = frozenset({
    "clone", "clone3", "fork", "vfork", "execve", "execveat", "procexit", "chdir", "fchdir",
    "setsid", "setpgid", "capset",
})
# Traced when a rule looks at fds (fd.* fields are only right if opens and closes are seen).
FD_EVENT_TYPES = frozenset({
    "open", "openat", "openat2", "creat", "close", "dup", "dup2", "dup3", "socket",
    "connect", "accept", "accept4", "bind", "memfd_create",
})
_FD_USERS = FD_EVENT_TYPES | {
    "read", "write", "sendto", "sendmsg", "recvfrom", "recvmsg", "symlinkat", "linkat",
    "unlinkat", "renameat", "renameat2", "mkdirat", "finit_module", "fchmod", "fchown",
}


def required_event_types(rule_types: Iterable[str]) -> frozenset[str]:
    """What a source must trace for rules of ``rule_types`` (``Engine.event_types``)."""
    wanted = frozenset(rule_types)
    if wanted & _FD_USERS:
        return wanted | PROCESS_EVENT_TYPES | FD_EVENT_TYPES
    return wanted | PROCESS_EVENT_TYPES
