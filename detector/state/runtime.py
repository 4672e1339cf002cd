"""Where container metadata comes from: the runtime's API, its CLI, the kubelet's log
directories and the container's own root filesystem. Each is a fetcher for
:class:`detector.state.containers.ContainerRegistry`: ``fetch(info, pid) -> found``. They run
on the registry's worker thread, never on the event path, so they may block (with timeouts).

- :class:`RuntimeApi`: Docker's Engine API or podman's (``podman system service``) over a unix
  socket: podman's native inspect first (it names the exact capability sets), then the
  Docker-compatible one. A containerd or cri-o socket is asked over CRI instead
  (:mod:`detector.state.cri`).
- :class:`PodmanCli`: ``podman inspect``, for a node where podman runs without its service.
- :class:`KubeletLogs`: pod name and namespace from ``/var/log/pods/<ns>_<pod>_<uid>/`` and the
  container name from ``/var/log/containers/<pod>_<ns>_<container>-<id>.log``: Kubernetes
  metadata without the API server (and without CRI, which a later change adds).
- :class:`RootFs`: through /proc/PID of one of the container's processes, the overlay upper
  directory (for ``proc.is_exe_upper_layer``) and the container's /etc/passwd and /etc/group
  (``user.name`` as the container sees it).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from typing import Any

from detector.state import render
from detector.state.containers import ContainerInfo, Fetcher
from sidekick.alert import parse_time_ns

log = logging.getLogger(__name__)

# CRI sockets first: on a Kubernetes node they know the pods' containers, and they are not
# asked about the containers that cgroup paths name as Docker's or podman's.
DEFAULT_SOCKETS = (
    "/run/containerd/containerd.sock", "/run/crio/crio.sock",
    "/var/run/containerd/containerd.sock", "/var/run/crio/crio.sock",
    "/run/podman/podman.sock", "/var/run/docker.sock", "/run/docker.sock",
)
# Docker's default capability set for a container that is not privileged (moby's
# oci/caps/defaults.go); CapAdd and CapDrop apply on top.
DOCKER_DEFAULT_CAPS = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)
_MAX_FILE = 1 << 20  # a passwd file bigger than this is not one


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


class RuntimeApi:
    """Inspect containers through a Docker-compatible API socket (Docker or podman), or
    through CRI when the socket is containerd's or cri-o's."""

    def __init__(self, path: str, timeout: float = 2.0) -> None:
        self.path = path
        self.timeout = timeout
        self.cri: Fetcher | None = None
        # Imported here: detector.state.cri builds on this module (split_image).
        from detector.state import cri
        if cri.is_cri_socket(path):
            self.cri = cri.CriRuntime(path, timeout)

    def __call__(self, info: ContainerInfo, pid: int | None) -> bool:
        if self.cri is not None:
            return self.cri(info, pid)
        if not os.path.exists(self.path):
            return False
        # podman's native endpoint needs a version prefix; Docker answers it with an error.
        for url in (f"/v4.0.0/libpod/containers/{info.id}/json",
                    f"/containers/{info.id}/json"):
            data = self._get(url)
            if isinstance(data, dict):
                apply_inspect(info, data)
                return True
        return False

    def _get(self, url: str) -> Any:
        conn = _UnixConnection(self.path, self.timeout)
        try:
            conn.request("GET", url)
            response = conn.getresponse()
            body = response.read()
            return json.loads(body) if response.status == 200 else None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            log.debug("runtime socket %s: %s failed: %s", self.path, url, exc)
            return None
        finally:
            conn.close()


class PodmanCli:
    def __init__(self, binary: str = "podman", timeout: float = 10.0) -> None:
        self.binary = binary
        self.timeout = timeout

    def __call__(self, info: ContainerInfo, pid: int | None) -> bool:
        path = shutil.which(self.binary)
        if path is None:
            return False
        try:
            done = subprocess.run([path, "inspect", "--type", "container", info.id],
                                  capture_output=True, timeout=self.timeout, check=False)
            data = json.loads(done.stdout) if done.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, ValueError):
            return False
        if not isinstance(data, list) or not data or not isinstance(data[0], dict):
            return False
        apply_inspect(info, data[0])
        return True


def split_image(ref: str) -> tuple[str, str | None, str | None]:
    """``registry/repo:tag@sha256:...`` -> (repository, tag, digest); the tag is "latest"
    when the reference names neither a tag nor a digest, as the runtimes resolve it."""
    ref, _, digest = ref.partition("@")
    colon, slash = ref.rfind(":"), ref.rfind("/")
    if colon > slash:
        return ref[:colon], ref[colon + 1:], digest or None
    return ref, None if digest else "latest", digest or None


def apply_inspect(info: ContainerInfo, data: dict[str, Any]) -> None:
    """Fill ``info`` from an inspect document: podman's native shape or Docker's."""
    config = data.get("Config") or {}
    host = data.get("HostConfig") or {}
    info.name = str(data.get("Name") or "").lstrip("/") or None
    image = data.get("ImageName") or config.get("Image")
    if image:
        info.image_repository, info.image_tag, info.image_digest = split_image(image)
    info.image_digest = data.get("ImageDigest") or info.image_digest
    image_id = str(data.get("Image") or "").removeprefix("sha256:")
    info.image_id = image_id[:12] or None
    info.privileged = bool(host.get("Privileged"))
    info.labels = dict(config.get("Labels") or {})
    info.bounding_caps = _bounding_caps(data, host, info.privileged)
    info.mounts = [
        {"source": m.get("Source", ""), "dest": m.get("Destination", ""),
         "mode": m.get("Mode", ""), "rdwr": bool(m.get("RW")),
         "propagation": m.get("Propagation", "")}
        for m in data.get("Mounts") or [] if isinstance(m, dict)
    ]
    started = (data.get("State") or {}).get("StartedAt")
    if isinstance(started, str):
        try:
            info.start_ns = parse_time_ns(started) or None
        except ValueError:  # Docker's "0001-01-01T00:00:00Z" for a container never started
            info.start_ns = None
    upper = ((data.get("GraphDriver") or {}).get("Data") or {}).get("UpperDir")
    info.upperdir = upper or info.upperdir
    labels = info.labels
    info.pod_name = info.pod_name or labels.get("io.kubernetes.pod.name")
    info.pod_namespace = info.pod_namespace or labels.get("io.kubernetes.pod.namespace")
    info.pod_uid = info.pod_uid or labels.get("io.kubernetes.pod.uid")


def _bounding_caps(data: dict[str, Any], host: dict[str, Any], privileged: bool) -> int:
    if privileged:
        return render.ALL_CAPS
    if "EffectiveCaps" in data:  # podman says exactly
        return render.cap_mask(data.get("EffectiveCaps"))
    if "BoundingCaps" in data:
        return render.cap_mask(data.get("BoundingCaps"))
    caps = render.cap_mask(DOCKER_DEFAULT_CAPS) | render.cap_mask(host.get("CapAdd"))
    return caps & ~render.cap_mask(host.get("CapDrop"))


class KubeletLogs:
    """Pod and container names from the kubelet's log directory layout."""

    def __init__(self, pods_dir: str = "/var/log/pods",
                 containers_dir: str = "/var/log/containers", relist: float = 1.0) -> None:
        self.pods_dir = pods_dir
        self.containers_dir = containers_dir
        self.relist = relist
        self._pods: dict[str, tuple[str, str]] = {}  # pod uid -> (namespace, pod)
        self._listed = float("-inf")

    def __call__(self, info: ContainerInfo, pid: int | None) -> bool:
        found = False
        if info.pod_uid and (info.pod_name is None or info.pod_namespace is None):
            pod = self._pod(info.pod_uid)
            if pod is not None:
                info.pod_namespace, info.pod_name = pod
                found = True
        if info.name is None:
            found = self._container(info) or found
        return found

    def _pod(self, uid: str) -> tuple[str, str] | None:
        if uid not in self._pods and time.monotonic() - self._listed >= self.relist:
            self._listed = time.monotonic()
            try:
                names = os.listdir(self.pods_dir)
            except OSError:
                names = []
            for name in names:
                parts = name.split("_")
                if len(parts) == 3:  # <namespace>_<pod>_<uid>; none of them holds a "_"
                    self._pods[parts[2]] = (parts[0], parts[1])
        return self._pods.get(uid)

    def _container(self, info: ContainerInfo) -> bool:
        suffix = f"-{info.id}.log"
        try:
            names = os.listdir(self.containers_dir)
        except OSError:
            return False
        for name in names:
            if name.endswith(suffix):
                parts = name[:-len(suffix)].split("_")
                if len(parts) == 3:  # <pod>_<namespace>_<container>
                    info.pod_name = info.pod_name or parts[0]
                    info.pod_namespace = info.pod_namespace or parts[1]
                    info.name = parts[2]
                    return True
        return False


class RootFs:
    """The container seen from inside, through one of its processes."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root

    def __call__(self, info: ContainerInfo, pid: int | None) -> bool:
        if pid is None:
            return False
        base = f"{self.proc_root}/{pid}"
        if info.upperdir is None:
            info.upperdir = _overlay_upper(f"{base}/mountinfo")
        info.passwd = _small_file(f"{base}/root/etc/passwd")
        info.group = _small_file(f"{base}/root/etc/group")
        return info.upperdir is not None or info.passwd is not None


def _overlay_upper(mountinfo: str) -> str | None:
    """The upperdir of the overlay mounted on "/" in that process's mount namespace."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    upper = None
    for line in lines:  # the last mount on "/" is the one the process sees
        head, _, tail = line.partition(" - ")
        fields = head.split()
        rest = tail.split()
        if len(fields) >= 5 and fields[4] == "/" and len(rest) >= 3:
            upper = None
            if rest[0] == "overlay":
                for option in rest[2].split(","):
                    if option.startswith("upperdir="):
                        upper = option[len("upperdir="):]
    return upper


def _small_file(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_FILE)
    except OSError:
        return None
    return data.decode("utf-8", "surrogateescape")
