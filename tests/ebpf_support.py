"""What the eBPF test modules share: the prepared node, raw syscalls through ctypes, and
running code in a child to collect the records it caused."""

from __future__ import annotations

import ctypes
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from detector.sources.ebpf import setup
from detector.sources.ebpf.source import EbpfSource
from detector.sources.record import Record

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def sys_call(number: int, *args: object) -> int:
    """syscall(2) with ints passed as longs (ctypes would truncate them to int)."""
    converted = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return libc.syscall(ctypes.c_long(number), *converted)


def cannot_run(reasons: list[str]) -> None:
    """Fail (as root, or in CI: the node should be ready); skip only a plain user's run."""
    message = "the eBPF source cannot run here: " + "; ".join(reasons)
    if os.environ.get("CI") or os.geteuid() == 0:
        pytest.fail(message)
    pytest.skip(message)


def prepared_node() -> None:
    """This node, prepared as `lanner detector setup` does (a reboot loses the tracefs mount).
    The test modules make it their module-scoped ``node`` fixture."""
    if os.geteuid() != 0:
        cannot_run(["not root"])
    steps = setup.prepare_node()
    reasons = [str(step) for step in steps if not step.ok] + setup.diagnose(compile_check=False)
    if reasons:
        cannot_run(reasons)


def drain(src: EbpfSource) -> None:
    while src.poll(0):
        pass


def collect(src: EbpfSource, done: Callable[[list[Record]], bool],
            timeout: float = 5.0) -> list[Record]:
    got: list[Record] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got += src.poll(0.05)
        if done(got):
            return got
    raise AssertionError(f"timed out after {timeout}s with {len(got)} records")


def exited(pid: int) -> Callable[[list[Record]], bool]:
    return lambda records: any(r.kind == "procexit" and r.tid == pid for r in records)


def in_child(src: EbpfSource, body: Callable[[], object]) -> tuple[int, list[Record]]:
    """Run ``body`` in a forked child; its records (and the clone creating it) once it exited."""
    drain(src)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            body()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    records = collect(src, exited(pid))
    return pid, [r for r in records if r.pid == pid or r.args.get("child_pid") == pid]


def only(records: list[Record], kind: str, **args: object) -> Record:
    found = [r for r in records if r.kind == kind
             and all(r.args.get(key) == value for key, value in args.items())]
    assert len(found) == 1, (kind, args, [r for r in records if r.kind == kind])
    return found[0]


def cgroup2_root() -> Path:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] == "cgroup2":
            return Path(fields[4])
    raise AssertionError("no cgroup2 hierarchy mounted")
