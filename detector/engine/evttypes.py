"""Event-type names and the derivation of the set of event types a condition can match.

The set is the key of the engine's index (a rule is only evaluated for events of its types) and
the list of syscalls the eBPF source must trace, so it follows Falco's algorithm exactly: leaves
``evt.type =|==|in S`` give S, ``!=`` its complement, anything else every type; ``and`` is an
intersection, ``or`` a union, and ``not`` is pushed down to the leaves with De Morgan's laws.
Each leaf is described by two sets: the types for which it can be true and those for which it
can be false, so a negation is just a swap.

``evt.num`` starts at 1 for every event, so checks that no such number can pass (``evt.num = 0``,
the upstream ``never_true`` macro) match no type, and their negation matches every type.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from detector.engine import ast
from detector.engine.macros import BoolAnd, BoolNot, BoolOr, Expanded, Tree

# x86_64 syscall names (the kernel's syscall table), as Falco names their events.
_SYSCALLS = """
read write open close stat fstat lstat poll lseek mmap mprotect munmap brk rt_sigaction
rt_sigprocmask rt_sigreturn ioctl pread64 pwrite64 readv writev access pipe select sched_yield
mremap msync mincore madvise shmget shmat shmctl dup dup2 pause nanosleep getitimer alarm
setitimer getpid sendfile socket connect accept sendto recvfrom sendmsg recvmsg shutdown bind
listen getsockname getpeername socketpair setsockopt getsockopt clone fork vfork execve exit wait4
kill uname semget semop semctl shmdt msgget msgsnd msgrcv msgctl fcntl flock fsync fdatasync
truncate ftruncate getdents getcwd chdir fchdir rename mkdir rmdir creat link unlink symlink
readlink chmod fchmod chown fchown lchown umask gettimeofday getrlimit getrusage sysinfo times
ptrace getuid syslog getgid setuid setgid geteuid getegid setpgid getppid getpgrp setsid setreuid
setregid getgroups setgroups setresuid getresuid setresgid getresgid getpgid setfsuid setfsgid
getsid capget capset rt_sigpending rt_sigtimedwait rt_sigqueueinfo rt_sigsuspend sigaltstack
utime mknod uselib personality ustat statfs fstatfs sysfs getpriority setpriority sched_setparam
sched_getparam sched_setscheduler sched_getscheduler sched_get_priority_max
sched_get_priority_min sched_rr_get_interval mlock munlock mlockall munlockall vhangup
modify_ldt pivot_root _sysctl prctl arch_prctl adjtimex setrlimit chroot sync acct settimeofday
mount umount2 swapon swapoff reboot sethostname setdomainname iopl ioperm create_module
init_module delete_module get_kernel_syms query_module quotactl nfsservctl getpmsg putpmsg
afs_syscall tuxcall security gettid readahead setxattr lsetxattr fsetxattr getxattr lgetxattr
fgetxattr listxattr llistxattr flistxattr removexattr lremovexattr fremovexattr tkill time futex
sched_setaffinity sched_getaffinity set_thread_area io_setup io_destroy io_getevents io_submit
io_cancel get_thread_area lookup_dcookie epoll_create epoll_ctl_old epoll_wait_old
remap_file_pages getdents64 set_tid_address restart_syscall semtimedop fadvise64 timer_create
timer_settime timer_gettime timer_getoverrun timer_delete clock_settime clock_gettime
clock_getres clock_nanosleep exit_group epoll_wait epoll_ctl tgkill utimes vserver mbind
set_mempolicy get_mempolicy mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify
mq_getsetattr kexec_load waitid add_key request_key keyctl ioprio_set ioprio_get inotify_init
inotify_add_watch inotify_rm_watch migrate_pages openat mkdirat mknodat fchownat futimesat
newfstatat unlinkat renameat linkat symlinkat readlinkat fchmodat faccessat pselect6 ppoll
unshare set_robust_list get_robust_list splice tee sync_file_range vmsplice move_pages utimensat
epoll_pwait signalfd timerfd_create eventfd fallocate timerfd_settime timerfd_gettime accept4
signalfd4 eventfd2 epoll_create1 dup3 pipe2 inotify_init1 preadv pwritev rt_tgsigqueueinfo
perf_event_open recvmmsg fanotify_init fanotify_mark prlimit64 name_to_handle_at
open_by_handle_at clock_adjtime syncfs sendmmsg setns getcpu process_vm_readv process_vm_writev
kcmp finit_module sched_setattr sched_getattr renameat2 seccomp getrandom memfd_create
kexec_file_load bpf execveat userfaultfd membarrier mlock2 copy_file_range preadv2 pwritev2
pkey_mprotect pkey_alloc pkey_free statx io_pgetevents rseq pidfd_send_signal io_uring_setup
io_uring_enter io_uring_register open_tree move_mount fsopen fsconfig fsmount fspick pidfd_open
clone3 close_range openat2 pidfd_getfd faccessat2 process_madvise epoll_pwait2 mount_setattr
quotactl_fd landlock_create_ruleset landlock_add_rule landlock_restrict_self memfd_secret
process_mrelease futex_waitv set_mempolicy_home_node cachestat fchmodat2 map_shadow_stack
futex_wake futex_wait futex_requeue statmount listmount lsm_get_self_attr lsm_set_self_attr
lsm_list_modules mseal
"""

# Falco's own event names: generic and 32-bit-era syscall events, and the meta events
# (process exit, context switch, container and plugin events...) that rules may name.
_FALCO_EVENTS = """
syscall send recv pread pwrite prlimit llseek mmap2 stat64 lstat64 fstat64 socketcall umount
procexit switch drop container sysdigevent signaldeliver procinfo cpu_hotplug k8s tracer mesos
notification infra page_fault pluginevent asyncevent scapevent
"""

ALL_EVENT_TYPES: frozenset[str] = frozenset((_SYSCALLS + _FALCO_EVENTS).split())

_INT = re.compile(r"([+-]?)(?:0[xX]([0-9a-fA-F]+)|([0-9]+))")
EVTTYPE_FIELDS = ("evt.type", "syscall.type")
_EVTTYPE_OPS = ("=", "!=", "in")

# A leaf's (can be true, can be false) sets of event types.
_Sets = tuple[frozenset[str], frozenset[str]]
_NONE: frozenset[str] = frozenset()
_NEUTRAL: _Sets = (ALL_EVENT_TYPES, ALL_EVENT_TYPES)


def is_event_type(name: str) -> bool:
    return name in ALL_EVENT_TYPES


def evtnum_truth(op: str, numbers: Iterable[int]) -> bool | None:
    """What ``evt.num op N`` (or ``in (N...)``) is for every event, knowing evt.num >= 1.

    None when it depends on the event. Non-numeric literals never get here (they fail typing).
    """
    values = list(numbers)
    if op in ("=", "in", "intersects"):
        return False if all(v < 1 for v in values) else None
    if len(values) != 1:
        return None
    n = values[0]
    decided = {
        "!=": True if n < 1 else None,
        "<": False if n <= 1 else None,
        "<=": False if n < 1 else None,
        ">": True if n < 1 else None,
        ">=": True if n <= 1 else None,
    }
    return decided.get(op)


def derive(node: Tree) -> frozenset[str] | None:
    """The event types ``node`` can match; None means every type (the "all types" bucket)."""
    true_types, _ = _sets(node)
    return None if true_types == ALL_EVENT_TYPES else true_types


def _sets(node: Tree) -> _Sets:
    if isinstance(node, Expanded):
        return _sets(node.body)
    if isinstance(node, BoolNot):
        can_true, can_false = _sets(node.operand)
        return can_false, can_true
    if isinstance(node, BoolAnd):
        parts = [_sets(item) for item in node.items]
        return _intersect(p[0] for p in parts), _union(p[1] for p in parts)
    if isinstance(node, BoolOr):
        parts = [_sets(item) for item in node.items]
        return _union(p[0] for p in parts), _intersect(p[1] for p in parts)
    return leaf_types(node)


def leaf_types(node: ast.Compare) -> _Sets:
    """The event types for which one comparison can be true, and those it can be false for."""
    left = node.left
    if not isinstance(left, ast.Field) or left.arg is not None:
        return _NEUTRAL
    if left.name in EVTTYPE_FIELDS:
        if node.op == "exists":
            return ALL_EVENT_TYPES, _NONE
        if node.op not in _EVTTYPE_OPS or node.modifier is not None:
            return _NEUTRAL
        names = frozenset(literal_texts(node.right)) & ALL_EVENT_TYPES
        rest = ALL_EVENT_TYPES - names
        return (rest, names) if node.op == "!=" else (names, rest)
    if left.name == "evt.num" and node.modifier is None:
        numbers = _literal_ints(node.right)
        truth = None if numbers is None else evtnum_truth(node.op, numbers)
        if truth is True:
            return ALL_EVENT_TYPES, _NONE
        if truth is False:
            return _NONE, ALL_EVENT_TYPES
    return _NEUTRAL


def literal_texts(right: ast.RightHand | None) -> list[str]:
    if isinstance(right, ast.Value):
        return [right.text]
    if isinstance(right, ast.ListValue):
        return [item.text for item in right.items]
    return []


def _literal_ints(right: ast.RightHand | None) -> list[int] | None:
    if not isinstance(right, ast.Value | ast.ListValue):
        return None
    numbers = [parse_int(text) for text in literal_texts(right)]
    return None if None in numbers else [n for n in numbers if n is not None]


def parse_int(text: str) -> int | None:
    """A decimal or ``0x`` hex integer literal, as Falco's numeric fields accept; else None."""
    m = _INT.fullmatch(text.strip())
    if m is None:
        return None
    sign = -1 if m.group(1) == "-" else 1
    return sign * (int(m.group(2), 16) if m.group(2) else int(m.group(3), 10))


def _intersect(sets: Iterable[frozenset[str]]) -> frozenset[str]:
    result = ALL_EVENT_TYPES
    for s in sets:
        result = result & s
    return result


def _union(sets: Iterable[frozenset[str]]) -> frozenset[str]:
    result = _NONE
    for s in sets:
        result = result | s
    return result
