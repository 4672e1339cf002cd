"""Containers: which container a process is in (from its cgroup), and what that container is
(name, image, privilege, pod: from the runtime, fetched in the background).

The id is known synchronously: an event carries ``cgroup_id``, the inode of the task's cgroup v2
directory; :class:`CgroupMap` maps it to the directory's path by walking the v2 hierarchy
(cached, walked again on a miss) and :func:`parse_cgroup_path` finds the container id in the
path. Everything else comes from the runtime's API, which may be slow or down, so
:class:`ContainerRegistry` asks for it on a worker thread and the event path only ever reads
what has arrived: the first events of a new container may lack its name and image, and checks
on those fields are then false, as in Falco.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"[0-9a-f]{64}")
# Leaf components naming a container, most specific first; the id is group 1. Monitor
# processes (crio-conmon-<id>, libpod-conmon-<id>) are deliberately not matched: they run on
# the host side of the container.
_COMPONENT = (
    (re.compile(r"cri-containerd-([0-9a-f]{64})\.scope"), "containerd"),
    (re.compile(r"crio-([0-9a-f]{64})(?:\.scope)?"), "cri-o"),
    (re.compile(r"docker-([0-9a-f]{64})\.scope"), "docker"),
    (re.compile(r"libpod-(?:payload-)?([0-9a-f]{64})(?:\.scope)?"), "podman"),
    (re.compile(r"nerdctl-([0-9a-f]{64})\.scope"), "containerd"),
    (re.compile(r".*:cri-containerd:([0-9a-f]{64})"), "containerd"),
)
# A bare 64-hex component is a container under these parents (cgroupfs drivers).
_BARE_PARENTS = {"docker": "docker", "actions_job": "docker", "libpod_parent": "podman"}
_POD = re.compile(r"(?:kubepods(?:-[a-z]+)?-)?pod([0-9a-f_-]{36})")


@dataclass(frozen=True, slots=True)
class ContainerRef:
    """A container as its cgroup names it. ``id`` is the runtime's full id."""

    id: str
    type: str  # docker, podman, containerd, cri-o
    pod_uid: str | None = None  # Kubernetes pod uid, when the path has a kubepods pod slice

    @property
    def short(self) -> str:
        return self.id[:12]


def parse_cgroup_path(path: str) -> ContainerRef | None:
    """The container a cgroup path belongs to, or None for a host cgroup.

    Components are scanned from the leaf up, so nested layouts (``libpod-<id>.scope/container``,
    a container's own sub-cgroups) resolve to the container that holds them."""
    parts = [p for p in path.split("/") if p]
    pod_uid = None
    for part in parts:
        match = _POD.match(part)
        if match is not None:
            pod_uid = match.group(1).replace("_", "-")
    for at in range(len(parts) - 1, -1, -1):
        part = parts[at]
        for pattern, kind in _COMPONENT:
            match = pattern.fullmatch(part)
            if match is not None:
                return ContainerRef(match.group(1), kind, pod_uid)
        if _HEX64.fullmatch(part):
            parent = parts[at - 1] if at else ""
            if parent in _BARE_PARENTS:
                return ContainerRef(part, _BARE_PARENTS[parent], pod_uid)
            if pod_uid is not None:  # /kubepods/<qos>/pod<uid>/<id>: a CRI runtime
                return ContainerRef(part, "containerd", pod_uid)
    return None


def parse_proc_cgroup(text: str) -> ContainerRef | None:
    """The container of a /proc/PID/cgroup: the v2 line first, then each v1 hierarchy (a
    hybrid host may keep the container in v1 only)."""
    lines = text.splitlines()
    lines.sort(key=lambda line: not line.startswith("0::"))
    for line in lines:
        path = line.split(":", 2)[-1]
        ref = parse_cgroup_path(path)
        if ref is not None:
            return ref
    return None


def default_cgroup_root() -> str:
    """The cgroup v2 mount: /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on a
    hybrid one."""
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "/sys/fs/cgroup"
    return "/sys/fs/cgroup/unified"


class CgroupMap:
    """cgroup id (the v2 directory's inode) -> path relative to the v2 root."""

    def __init__(self, root: str, min_rewalk: float = 0.05, forget_missing: float = 5.0) -> None:
        self.root = root.rstrip("/") or "/"
        self.min_rewalk = min_rewalk  # a burst of unknown ids costs one walk, not one each
        self.forget_missing = forget_missing  # an id no walk found is not walked for again
        self._paths: dict[int, str] = {}
        self._missing: dict[int, float] = {}
        self._walked = float("-inf")
        self.walks = 0

    def path(self, cgroup_id: int) -> str | None:
        found = self._paths.get(cgroup_id)
        if found is not None:
            return found
        now = time.monotonic()
        if now - self._missing.get(cgroup_id, float("-inf")) < self.forget_missing:
            return None
        if now - self._walked >= self.min_rewalk:
            self.walk()
            found = self._paths.get(cgroup_id)
        if found is None:
            self._missing[cgroup_id] = now
        return found

    def walk(self) -> None:
        paths: dict[int, str] = {}
        try:
            paths[os.stat(self.root).st_ino] = "/"
        except OSError:
            log.warning("cgroup v2 root %s is not readable: container ids unknown", self.root)
        stack = [(self.root, "")]
        while stack:
            directory, rel = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError:  # removed while walking
                continue
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    sub = f"{rel}/{entry.name}"
                    paths[entry.inode()] = sub
                    stack.append((entry.path, sub))
        self._paths = paths
        self._missing.clear()
        self._walked = time.monotonic()
        self.walks += 1


@dataclass(slots=True)
class ContainerInfo:
    """What the runtime (and the node) say about a container. Fields stay None when unknown."""

    id: str
    type: str
    name: str | None = None
    image_repository: str | None = None
    image_tag: str | None = None
    image_id: str | None = None
    image_digest: str | None = None
    privileged: bool | None = None
    bounding_caps: int | None = None  # what root holds inside (thread.cap_effective)
    labels: dict[str, str] = field(default_factory=dict)
    mounts: list[dict[str, Any]] | None = None
    start_ns: int | None = None
    pod_name: str | None = None
    pod_namespace: str | None = None
    pod_uid: str | None = None
    pod_labels: dict[str, str] | None = None
    upperdir: str | None = None  # the overlay's writable layer, for proc.is_exe_upper_layer
    passwd: str | None = None  # the container's /etc/passwd and /etc/group text
    group: str | None = None
    found: bool = False  # a runtime answered


# A fetcher fills what it knows into the info; it returns whether it found the container.
Fetcher = Callable[[ContainerInfo, int | None], bool]


class ContainerRegistry:
    """Container ids for cgroup ids (synchronous, cached) and container metadata (fetched on
    a worker thread; readers see it once it has arrived).

    ``fetchers`` run in order for each new container until one finds it (a runtime API, the
    podman CLI...); ``enrichers`` always run after them (kubelet log directories, the
    container's root filesystem). A container no runtime knew is asked about again after
    ``retry`` seconds, doubling up to a minute, when its processes keep producing events.
    """

    def __init__(self, cgroups: CgroupMap, fetchers: Sequence[Fetcher] = (),
                 enrichers: Sequence[Fetcher] = (), retry: float = 2.0) -> None:
        self.cgroups = cgroups
        self.fetchers = tuple(fetchers)
        self.enrichers = tuple(enrichers)
        self.retry = retry
        self._refs: dict[int, ContainerRef | None] = {}
        self._by_path: dict[str, ContainerRef | None] = {}
        self._infos: dict[str, ContainerInfo] = {}
        self._asked: dict[str, tuple[float, float]] = {}  # id -> (asked at, next delay)
        self._queue: queue.SimpleQueue[tuple[ContainerRef, int | None] | None] = \
            queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.fetched = 0
        self.failed = 0

    def ref(self, cgroup_id: int) -> ContainerRef | None:
        """The container of a cgroup id, None for the host (or an id no walk has found)."""
        try:
            return self._refs[cgroup_id]
        except KeyError:
            pass
        path = self.cgroups.path(cgroup_id)
        if path is None:
            return None  # not cached: the directory may appear in the next walk
        ref = self._by_path.get(path)
        if ref is None and path not in self._by_path:
            ref = self._by_path[path] = parse_cgroup_path(path)
        self._refs[cgroup_id] = ref
        return ref

    def info(self, ref: ContainerRef, pid: int | None = None) -> ContainerInfo | None:
        """What is known about the container so far; never waits. The first call for a
        container asks the worker to fetch it (``pid``: one of its processes, for the
        fetchers that look at the container through /proc)."""
        info = self._infos.get(ref.id)
        if info is not None and info.found:
            return info
        asked = self._asked.get(ref.id)
        now = time.monotonic()
        if asked is None or now - asked[0] >= asked[1]:
            delay = self.retry if asked is None else min(asked[1] * 2, 60.0)
            self._asked[ref.id] = (now, delay)
            self._queue.put((ref, pid))
        return info

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="lanner-containers",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
            self._thread = None

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            ref, pid = item
            try:
                self._infos[ref.id] = self.fetch(ref, pid)
            except Exception:  # a fetcher bug must not stop metadata for every container
                log.exception("container %s: metadata fetch failed", ref.short)

    def fetch(self, ref: ContainerRef, pid: int | None = None) -> ContainerInfo:
        """Ask the fetchers and enrichers now (the worker's job; also usable directly)."""
        info = ContainerInfo(ref.id, ref.type, pod_uid=ref.pod_uid)
        for fetcher in self.fetchers:
            if fetcher(info, pid):
                info.found = True
                break
        for enricher in self.enrichers:
            enricher(info, pid)
        if info.found:
            self.fetched += 1
        else:
            self.failed += 1
        return info
