"""Helpers for the state tracker tests: Records built by hand as the eBPF source emits them,
and a tracker over a scratch node (an empty /proc, a cgroup tree and /etc in a tmp dir) whose
container metadata comes from a table instead of a runtime."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detector.sources.record import Record
from detector.state.containers import CgroupMap, ContainerInfo, ContainerRef, ContainerRegistry
from detector.state.processes import ProcessTable, ProcFs
from detector.state.tracker import Tracker
from detector.state.users import Users

T0 = 1_767_258_764_000_000_000
PASSWD = """root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
alice:x:1000:1000:Alice:/home/alice:/bin/bash
"""
GROUP = """root:x:0:
daemon:x:1:
www-data:x:33:
alice:x:1000:
"""


class Clock:
    """Event times that move forward by ``step`` ns per event."""

    def __init__(self, start: int = T0, step: int = 1000) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> int:
        self.now += self.step
        return self.now


def record(kind: str, pid: int, /, *, tid: int | None = None, res: int = 0, uid: int = 0,
           gid: int = 0, comm: str = "proc", cgroup_id: int = 0, time_ns: int = T0,
           cpu: int = 0, **args: Any) -> Record:
    return Record(kind, time_ns, pid, pid if tid is None else tid, uid, gid, comm, cgroup_id,
                  res, args, cpu)


class Node:
    """A scratch node: ``tracker`` sees no process until events create them."""

    def __init__(self, root: Path, metadata: dict[str, dict[str, Any]] | None = None) -> None:
        self.root = root
        (root / "proc").mkdir()
        (root / "etc").mkdir()
        (root / "etc/passwd").write_text(PASSWD)
        (root / "etc/group").write_text(GROUP)
        self.cgroups = root / "cgroup"
        self.cgroups.mkdir()
        self.metadata = metadata or {}
        self.clock = Clock()
        self.registry = ContainerRegistry(CgroupMap(str(self.cgroups)), [self._fetch],
                                          retry=0.05)
        self.tracker = Tracker(ProcessTable(ProcFs(str(root / "proc"))), self.registry,
                               Users(str(root / "etc")))
        self.registry.start()

    def _fetch(self, info: ContainerInfo, pid: int | None) -> bool:
        fields = self.metadata.get(info.id)
        if fields is None:
            return False
        for key, value in fields.items():
            setattr(info, key, value)
        return True

    def cgroup(self, relative: str) -> int:
        """Make a cgroup directory; its inode is the cgroup id events carry."""
        path = self.cgroups / relative.strip("/")
        path.mkdir(parents=True, exist_ok=True)
        return os.stat(path).st_ino

    def apply(self, kind: str, pid: int, /, **fields: Any) -> Any:
        fields.setdefault("time_ns", self.clock())
        return self.tracker.apply(record(kind, pid, **fields))

    def close(self) -> None:
        self.tracker.close()


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_for_info(registry: ContainerRegistry, ref: ContainerRef, pid: int | None = None,
                  timeout: float = 10.0) -> ContainerInfo:
    def found() -> ContainerInfo | None:
        info = registry.info(ref, pid)
        return info if info is not None and info.found else None

    return wait_for(found, timeout, f"metadata of container {ref.short}")
