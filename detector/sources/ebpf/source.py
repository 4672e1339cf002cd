"""EbpfSource: compile program.c for a set of event types, attach it, read Records back.

Only what is asked for is attached: the exit tracepoints of the syscalls the rules name plus
those that keep the state tracker's process and fd tables right (STATE_SYSCALLS), and the
three sched tracepoints. Each attached syscall costs a tracepoint hit per call, every other
syscall costs nothing. Struct offsets come from the running kernel's BTF (btf.py); the
program is compiled and attached by a short-lived child (loader.py), events are read straight
from the mapped ring buffer (ringbuf.py) and decoded by decode.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from detector.engine.pathtests import PathTest
from detector.sources.ebpf import loader, pathfilter, setup
from detector.sources.ebpf.btf import Btf, BtfError
from detector.sources.ebpf.decode import LAYOUTS, Decoder
from detector.sources.ebpf.ringbuf import RingReader
from detector.sources.record import Record

# ~110k events of ~150 bytes: a 500k events/s burst can outrun the reader for 0.2 s.
DEFAULT_RING_BYTES = 16 << 20
# Syscalls traced whatever the rules say, so the process/fd tables stay right.
STATE_SYSCALLS = frozenset({
    "execve", "execveat", "close", "chdir", "fchdir", "setsid", "setpgid", "dup", "dup2",
    "dup3", "socket", "bind", "connect", "accept", "accept4", "setuid", "setgid", "setreuid",
    "setregid", "setresuid", "setresgid", "capset",
})
# Event types that come from the sched tracepoints, always attached.
SCHED_KINDS = frozenset({"clone", "clone3", "fork", "vfork", "procexit"})
# The saved user registers the syscall arguments are read from (x86_64 calling convention).
_REGISTERS = ("di", "si", "dx", "r10", "r8", "r9", "orig_ax")
# Drop categories, as Falco's scap counters group them.
_CATEGORIES = {
    "clone": "clone_fork_exit", "procexit": "clone_fork_exit",
    "execve": "execve", "execveat": "execve",
    "connect": "connect",
    "open": "open", "openat": "open", "openat2": "open",
    "close": "close",
    "symlink": "dir_file", "symlinkat": "dir_file", "link": "dir_file", "linkat": "dir_file",
    "chdir": "dir_file", "fchdir": "dir_file",
}
# Struct fields the program reads, by the macro it knows them as. A tuple of several fields is
# a path whose offsets add up (file.f_path.dentry).
_OFFSETS: dict[str, tuple[tuple[str, str], ...]] = {
    "OFF_TASK_CRED": (("task_struct", "cred"),),
    "OFF_CRED_EUID": (("cred", "euid"),),
    "OFF_CRED_CAP_INHERITABLE": (("cred", "cap_inheritable"),),
    "OFF_CRED_CAP_PERMITTED": (("cred", "cap_permitted"),),
    "OFF_CRED_CAP_EFFECTIVE": (("cred", "cap_effective"),),
    "OFF_TASK_THREAD_PID": (("task_struct", "thread_pid"),),
    "OFF_TASK_FILES": (("task_struct", "files"),),
    "OFF_TASK_MM": (("task_struct", "mm"),),
    "OFF_TASK_SIGNAL": (("task_struct", "signal"),),
    "OFF_TASK_EXIT_CODE": (("task_struct", "exit_code"),),
    "OFF_MM_ARG_START": (("mm_struct", "arg_start"),),
    "OFF_MM_ARG_END": (("mm_struct", "arg_end"),),
    "OFF_MM_EXE_FILE": (("mm_struct", "exe_file"),),
    "OFF_SIGNAL_TTY": (("signal_struct", "tty"),),
    "OFF_SIGNAL_PIDS": (("signal_struct", "pids"),),
    "OFF_PID_LEVEL": (("pid", "level"),),
    "OFF_PID_NUMBERS": (("pid", "numbers"),),
    "OFF_UPID_NR": (("upid", "nr"),),
    "OFF_FILES_FDT": (("files_struct", "fdt"),),
    "OFF_FDT_MAX_FDS": (("fdtable", "max_fds"),),
    "OFF_FDT_FD": (("fdtable", "fd"),),
    "OFF_FILE_PRIVATE_DATA": (("file", "private_data"),),
    "OFF_SOCKET_SK": (("socket", "sk"),),
    "OFF_SK_FAMILY": (("sock", "__sk_common"), ("sock_common", "skc_family")),
    "OFF_SK_NUM": (("sock", "__sk_common"), ("sock_common", "skc_num")),
    "OFF_SK_RCV_SADDR": (("sock", "__sk_common"), ("sock_common", "skc_rcv_saddr")),
    "OFF_SK_V6_RCV_SADDR": (("sock", "__sk_common"), ("sock_common", "skc_v6_rcv_saddr")),
    "OFF_TTY_DRIVER": (("tty_struct", "driver"),),
    "OFF_TTY_INDEX": (("tty_struct", "index"),),
    "OFF_DRIVER_MAJOR": (("tty_driver", "major"),),
    "OFF_DRIVER_MINOR_START": (("tty_driver", "minor_start"),),
    "OFF_FILE_DENTRY": (("file", "f_path"), ("path", "dentry")),
    "OFF_FILE_INODE": (("file", "f_inode"),),
    "OFF_DENTRY_NAME": (("dentry", "d_name"), ("qstr", "name")),
    "OFF_INODE_SB": (("inode", "i_sb"),),
    "OFF_INODE_INO": (("inode", "i_ino"),),
    "OFF_SB_MAGIC": (("super_block", "s_magic"),),
}


class EbpfError(Exception):
    """eBPF cannot run; ``reasons`` says why, one precise sentence each."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass(frozen=True, slots=True)
class Plan:
    """What a program for a set of event types attaches."""

    traced: frozenset[str]  # syscalls with their arguments decoded
    result_only: frozenset[str]  # syscalls with no decoder written: kind, ids and result only
    unavailable: frozenset[str]  # asked for, but this kernel has no tracepoint for them


def plan(event_types: Iterable[str], *, state: bool, tracefs: Path) -> Plan:
    """Sort the wanted event types by how they can be traced. Names that are neither a
    syscall with an exit tracepoint nor a sched event (Falco's meta events such as
    ``container``, or syscalls compiled out of this kernel) are unavailable."""
    wanted = set(event_types) | (STATE_SYSCALLS if state else set())
    syscalls = tracefs / "events" / "syscalls"
    traced, result_only, unavailable = set(), set(), set()
    for name in wanted - SCHED_KINDS:
        if not (syscalls / f"sys_exit_{name}").is_dir():
            unavailable.add(name)
        else:
            (traced if name in LAYOUTS else result_only).add(name)
    return Plan(frozenset(traced), frozenset(result_only), frozenset(unavailable))


@dataclass(frozen=True, slots=True)
class Drops:
    """Events the kernel could not put in the ring buffer (it was full), since start."""

    per_cpu: tuple[int, ...]
    per_kind: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.per_cpu)

    @property
    def per_category(self) -> dict[str, int]:
        categories: dict[str, int] = {}
        for kind, count in self.per_kind.items():
            category = _CATEGORIES.get(kind, "other_interest")
            categories[category] = categories.get(category, 0) + count
        return categories


def kernel_offsets(btf: Btf) -> dict[str, int]:
    offsets = {macro: sum(btf.offset(*part) for part in path) for macro, path in _OFFSETS.items()}
    if btf.offset("cred", "egid") != offsets["OFF_CRED_EUID"] + 4:
        raise BtfError("struct cred: egid does not follow euid; the program reads them as one")
    with suppress(BtfError):  # no CONFIG_AUDIT: loginuid reported as -1
        offsets["OFF_TASK_LOGINUID"] = btf.offset("task_struct", "loginuid")
    offsets["UPID_SIZE"] = btf.size("upid")
    registers = {name: btf.offset("pt_regs", name) // 8 for name in _REGISTERS}
    offsets |= {f"REG_{name.upper()}": index for name, index in registers.items()}
    offsets["REGS_WORDS"] = max(registers.values()) + 1
    # Relative to the overlay inode's embedded VFS inode, which is what files point to. Absent
    # when overlayfs is a module (its BTF is split from vmlinux's): no exe layer flags then.
    with suppress(BtfError):
        offsets["OFF_OVL_UPPER"] = (btf.offset("ovl_inode", "__upperdentry")
                                    - btf.offset("ovl_inode", "vfs_inode"))
    return offsets


def boot_to_wall_offset() -> int:
    """ns to add to CLOCK_BOOTTIME (bpf_ktime_get_boot_ns) to get the wall clock."""
    samples = []
    for _ in range(5):  # the pair read closest together wins
        before = time.time_ns()
        boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        after = time.time_ns()
        samples.append((after - before, (before + after) // 2 - boot))
    return min(samples)[1]


class EbpfSource:
    """The kernel event source. ``poll()`` returns decoded Records in arrival order (one
    ring buffer, so one global order); ``drops()`` counts what the kernel could not queue.
    Not thread-safe: poll, drops and close from one thread (close after the last poll).

    Two kernel-side filters, both off by default: ``open_paths`` (the rules' path tests,
    detector.engine.pathtests) drops opens of paths no rule can match, and
    ``closes_for_state_only`` (no rule looks at close events) drops closes of fds the state
    tracker cannot hold (program.c, hold_fds)."""

    # Events not read yet wait in the ring: a reader may stop reading while it is busy.
    backlog_in_kernel = True

    def __init__(
        self,
        event_types: Iterable[str] = (),
        *,
        ring_bytes: int = DEFAULT_RING_BYTES,
        state: bool = True,
        headers: str | None = None,
        max_batch: int = 8192,
        idle_sleep: float = 0.01,
        open_paths: Sequence[PathTest] | None = None,
        closes_for_state_only: bool = False,
    ) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        if ring_bytes < page or ring_bytes & (ring_bytes - 1):
            raise ValueError(f"ring_bytes must be a power of two >= {page}, not {ring_bytes}")
        reasons = setup.diagnose(headers=headers, compile_check=False)
        if reasons:
            raise EbpfError(reasons)
        tracefs = setup.tracefs_root()
        if tracefs is None:  # unmounted since diagnose() looked
            raise EbpfError(["tracefs is not mounted: run `lanner detector setup`"])
        self._wanted = frozenset(event_types)
        self.plan = plan(self._wanted, state=state, tracefs=tracefs)
        try:
            offsets = kernel_offsets(Btf())
        except BtfError as exc:
            raise EbpfError([str(exc)]) from None
        kinds = [*LAYOUTS, *sorted(self.plan.result_only)]
        cflags = [f"-DRING_PAGES={ring_bytes // page}", f"-DN_KINDS={len(kinds)}"]
        cflags += [f"-DK_{kind}={number}" for number, kind in enumerate(kinds)]
        cflags += [f"-DTRACE_{name}" for name in self.plan.traced]
        cflags += [f"-D{macro}={value}" for macro, value in offsets.items()]
        if "group_dead" in (tracefs / "events/sched/sched_process_exit/format").read_text():
            cflags.append("-DHAVE_GROUP_DEAD")
        if closes_for_state_only:
            cflags.append("-DFILTER_CLOSE")
        path_tests = pathfilter.render(open_paths)
        self.filters_opens = path_tests is not None
        self._open_paths = frozenset(open_paths or ()) if self.filters_opens else None
        self._closes_filtered = closes_for_state_only
        if path_tests is not None:
            cflags.append("-DPATH_FILTER")
        here = Path(__file__).parent
        text = (here / "program.c").read_text() + (here / "syscalls.c").read_text()
        text += path_tests or ""
        text += "".join(f"RESULT_ONLY({name})\n" for name in sorted(self.plan.result_only))
        try:
            self._program = loader.load(text, cflags, headers)
        except loader.LoadError as exc:
            raise EbpfError([str(exc)]) from None
        try:
            self._ring = RingReader(self._program.maps["events"], ring_bytes)
        except OSError as exc:
            self._program.close()
            raise EbpfError([f"the ring buffer cannot be mapped: {exc}"]) from None
        self._cpus = loader.possible_cpus()
        self._decode = Decoder(kinds, boot_to_wall_offset())
        self._max_batch = max_batch
        self.idle_sleep = idle_sleep
        self._closed = False

    def cannot_serve(self, event_types: Iterable[str], open_paths: Sequence[PathTest] | None,
                     closes_for_state_only: bool) -> str | None:
        """Why this program would miss events of rules that need these (None: it would not),
        as ``open_source`` would build it for them; such rules need a new program."""
        more = set(event_types) - self._wanted
        if more:
            return f"need syscalls the program does not trace ({', '.join(sorted(more))})"
        if self._open_paths is not None and (
                open_paths is None or not set(open_paths) <= self._open_paths):
            return "need opens that the kernel's path filter drops"
        if self._closes_filtered and not closes_for_state_only:
            return "look at closes that the kernel's close filter drops"
        return None

    def attached(self) -> list[str]:
        """The tracepoints this program is attached to, as ``category:event``."""
        return sorted(self._program.tracepoints)

    def poll(self, timeout: float | None = None) -> list[Record]:
        """Records that arrived (at most ``max_batch``); if none have, wait up to ``timeout``
        seconds (None: until some do). The program never wakes the reader, so an idle reader
        looks every ``idle_sleep`` seconds: that is the latency of a lone event."""
        if self._closed:
            return []
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (raw := self._ring.read(self._max_batch)):
            pause = self.idle_sleep
            if deadline is not None:
                pause = min(pause, deadline - time.monotonic())
                if pause <= 0:
                    return []
            time.sleep(pause)
        decode = self._decode
        return [decode(event) for event in raw]

    def __iter__(self) -> Iterator[list[Record]]:
        while not self._closed:
            batch = self.poll(0.1)
            if batch:
                yield batch

    def drops(self) -> Drops:
        """Kernel drops so far, read from the per-CPU counters (a few hundred µs)."""
        per_cpu = [0] * self._cpus
        per_kind: dict[str, int] = {}
        for key, kind in enumerate(self._decode.kinds):
            counts = loader.lookup_percpu_u64(self._program.maps["drops"], key, self._cpus)
            for cpu, count in enumerate(counts):
                per_cpu[cpu] += count
            if total := sum(counts):
                per_kind[kind] = total
        return Drops(tuple(per_cpu), per_kind)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._ring.close()
            self._program.close()

    def __enter__(self) -> EbpfSource:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
