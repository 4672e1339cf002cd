"""Containers: ids from cgroup paths, metadata from real podman, pods from kubelet logs."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from detector.state import render
from detector.state.containers import (
    CgroupMap,
    ContainerInfo,
    ContainerRef,
    ContainerRegistry,
    default_cgroup_root,
    parse_cgroup_path,
    parse_proc_cgroup,
)
from detector.state.runtime import (
    KubeletLogs,
    PodmanCli,
    RootFs,
    RuntimeApi,
    apply_inspect,
    split_image,
)
from detector.state.tracker import Tracker
from tests.podman_support import Podman, v2_path
from tests.state_support import record, wait_for, wait_for_info

ID = "3f5e0c2a9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f"
UID = "8e2c1b2a-5b6e-4c1d-9a8b-2f1e0d3c4b5a"
UID_ = UID.replace("-", "_")

SHAPES = [
    # cgroup v2, systemd driver, Kubernetes with containerd (burstable and guaranteed pods)
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
     f"cri-containerd-{ID}.scope", "containerd", UID),
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope", "containerd", UID),
    # cgroupfs driver: a bare id under the pod directory
    (f"/kubepods/besteffort/pod{UID}/{ID}", "containerd", UID),
    (f"/kubepods/pod{UID}/{ID}", "containerd", UID),
    # containerd without SystemdCgroup under systemd
    (f"/system.slice/containerd.service/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{ID}",
     "containerd", UID),
    # CRI-O, systemd and cgroupfs
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
     f"crio-{ID}.scope", "cri-o", UID),
    (f"/kubepods/burstable/pod{UID}/crio-{ID}", "cri-o", UID),
    # Docker: systemd, cgroupfs, a container's own sub-cgroup, GitHub Actions
    (f"/system.slice/docker-{ID}.scope", "docker", None),
    (f"/docker/{ID}", "docker", None),
    (f"/docker/{ID}/init", "docker", None),
    (f"/actions_job/{ID}", "docker", None),
    # podman: systemd, its nested "container" cgroup, cgroupfs (this machine), rootless
    (f"/machine.slice/libpod-{ID}.scope", "podman", None),
    (f"/machine.slice/libpod-{ID}.scope/container", "podman", None),
    (f"/libpod_parent/libpod-{ID}", "podman", None),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope", "podman",
     None),
    (f"/machine.slice/libpod-payload-{ID}", "podman", None),
    (f"/system.slice/nerdctl-{ID}.scope", "containerd", None),
]
HOST_PATHS = [
    "/", "/init.scope", "/user.slice/user-0.slice/session-3.scope",
    "/system.slice/containerd.service", "/system.slice/docker.service",
    f"/machine.slice/libpod-conmon-{ID}.scope",  # podman's monitor, on the host side
    f"/kubepods/burstable/pod{UID}/crio-conmon-{ID}",
    f"/kubepods/burstable/pod{UID}",  # the pod's own cgroup holds no container process
    "/libpod_parent/conmon",
]


@pytest.mark.parametrize(("path", "kind", "pod"), SHAPES)
def test_container_ids_from_cgroup_paths(path: str, kind: str, pod: str | None) -> None:
    ref = parse_cgroup_path(path)
    assert ref == ContainerRef(ID, kind, pod)
    assert ref.short == ID[:12]


@pytest.mark.parametrize("path", HOST_PATHS)
def test_host_cgroup_paths(path: str) -> None:
    assert parse_cgroup_path(path) is None


def test_proc_cgroup_files_v1_v2_and_hybrid() -> None:
    v2 = f"0::/system.slice/docker-{ID}.scope\n"
    v1 = "".join(f"{n}:{c}:/docker/{ID}\n" for n, c in ((12, "pids"), (4, "memory"),
                                                         (1, "name=systemd")))
    hybrid_v1_only = v1 + "0::/\n"  # runtime that joined v1 hierarchies only
    hybrid_both = "4:memory:/\n" + f"0::/libpod_parent/libpod-{ID}\n"
    assert parse_proc_cgroup(v2) == ContainerRef(ID, "docker")
    assert parse_proc_cgroup(v1) == ContainerRef(ID, "docker")
    assert parse_proc_cgroup(hybrid_v1_only) == ContainerRef(ID, "docker")
    assert parse_proc_cgroup(hybrid_both) == ContainerRef(ID, "podman")
    assert parse_proc_cgroup("0::/user.slice\n4:memory:/user.slice\n") is None


def test_cgroup_map_walks_again_on_a_miss(tmp_path: Path) -> None:
    (tmp_path / "a/b").mkdir(parents=True)
    cgroups = CgroupMap(str(tmp_path), min_rewalk=0.0, forget_missing=0.2)
    assert cgroups.path(os.stat(tmp_path / "a/b").st_ino) == "/a/b"
    assert cgroups.path(os.stat(tmp_path).st_ino) == "/"
    walks = cgroups.walks
    (tmp_path / "a/c").mkdir()
    assert cgroups.path(os.stat(tmp_path / "a/c").st_ino) == "/a/c"
    assert cgroups.walks == walks + 1
    assert cgroups.path(987654321) is None
    assert cgroups.path(987654321) is None  # a known miss is not walked for again at once
    assert cgroups.walks == walks + 2


def test_metadata_is_fetched_in_the_background(tmp_path: Path) -> None:
    calls: list[str] = []
    release = threading.Event()

    def slow_runtime(info: ContainerInfo, pid: int | None) -> bool:
        calls.append(f"slow:{pid}")
        release.wait(10)  # a runtime that hangs must not hold up the caller
        info.name = "web"
        return True

    def enricher(info: ContainerInfo, pid: int | None) -> bool:
        calls.append("enrich")
        info.pod_name = "from-logs"
        return True

    registry = ContainerRegistry(CgroupMap(str(tmp_path)), [slow_runtime], [enricher])
    registry.start()
    try:
        ref = ContainerRef(ID, "docker")
        started = time.monotonic()
        assert registry.info(ref, 42) is None
        assert registry.info(ref, 42) is None
        assert time.monotonic() - started < 0.5
        release.set()
        info = wait_for_info(registry, ref)
        assert (info.name, info.pod_name, calls) == ("web", "from-logs", ["slow:42", "enrich"])
    finally:
        registry.stop()


def test_a_container_no_runtime_knows_is_asked_again_later(tmp_path: Path) -> None:
    answers = iter([False, RuntimeError("socket broke"), True])

    def flaky(info: ContainerInfo, pid: int | None) -> bool:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        info.name = "late"
        return answer

    registry = ContainerRegistry(CgroupMap(str(tmp_path)), [flaky], retry=0.05)
    registry.start()
    try:
        ref = ContainerRef(ID, "cri-o")
        info = wait_for_info(registry, ref, timeout=5)
        assert info.name == "late"
        assert (registry.fetched, registry.failed) == (1, 1)  # the exception counts as neither
    finally:
        registry.stop()


@pytest.mark.parametrize(("ref", "expected"), [
    ("nginx", ("nginx", "latest", None)),
    ("docker.io/library/nginx:1.25", ("docker.io/library/nginx", "1.25", None)),
    ("localhost:5000/app", ("localhost:5000/app", "latest", None)),
    ("localhost:5000/app:v1", ("localhost:5000/app", "v1", None)),
    ("repo/app@sha256:abc", ("repo/app", None, "sha256:abc")),
    ("repo/app:v2@sha256:abc", ("repo/app", "v2", "sha256:abc")),
])
def test_image_references(ref: str, expected: tuple[str, str | None, str | None]) -> None:
    assert split_image(ref) == expected


def test_docker_inspect_documents() -> None:
    data = {
        "Name": "/k8s_web_shop-7d9f_shop_uid_0",
        "Image": "sha256:0123456789abcdef0123",
        "Config": {"Image": "registry.example/shop/web:3.1", "Labels": {
            "io.kubernetes.pod.name": "shop-7d9f", "io.kubernetes.pod.namespace": "shop",
            "io.kubernetes.pod.uid": UID}},
        "HostConfig": {"Privileged": False, "CapAdd": ["NET_ADMIN"], "CapDrop": ["CHOWN"]},
        "Mounts": [{"Source": "/var/run/docker.sock", "Destination": "/var/run/docker.sock",
                    "Mode": "", "RW": True, "Propagation": "rprivate"}],
        "State": {"StartedAt": "2026-01-02T03:04:05.123456789Z"},
        "GraphDriver": {"Data": {"UpperDir": "/var/lib/docker/overlay2/abc/diff"}},
    }
    info = ContainerInfo(ID, "docker")
    apply_inspect(info, data)
    assert (info.name, info.image_repository, info.image_tag, info.image_id) == \
        ("k8s_web_shop-7d9f_shop_uid_0", "registry.example/shop/web", "3.1", "0123456789ab")
    assert (info.pod_name, info.pod_namespace, info.pod_uid) == ("shop-7d9f", "shop", UID)
    assert info.privileged is False
    caps = render.cap_names(info.bounding_caps or 0).split()
    assert "CAP_NET_ADMIN" in caps and "CAP_CHOWN" not in caps and "CAP_NET_RAW" in caps
    assert info.mounts == [{"source": "/var/run/docker.sock", "dest": "/var/run/docker.sock",
                            "mode": "", "rdwr": True, "propagation": "rprivate"}]
    assert info.start_ns == 1767323045123456789
    assert info.upperdir == "/var/lib/docker/overlay2/abc/diff"
    apply_inspect(info, {**data, "HostConfig": {"Privileged": True}})
    assert info.bounding_caps == render.ALL_CAPS


def test_root_filesystem_through_proc(tmp_path: Path) -> None:
    (tmp_path / "77/root/etc").mkdir(parents=True)
    (tmp_path / "77/root/etc/passwd").write_text("app:x:10:10::/:/bin/sh\n")
    (tmp_path / "77/mountinfo").write_text(
        "20 1 0:20 / / rw - ext4 /dev/sda1 rw\n"
        "79 51 0:40 / / rw,relatime - overlay overlay rw,lowerdir=/l/A:/l/B,"
        "upperdir=/var/lib/containers/storage/overlay/9f/diff,workdir=/w\n"
        "80 79 0:41 / /proc rw - proc proc rw\n")
    info = ContainerInfo(ID, "podman")
    assert RootFs(str(tmp_path))(info, 77)
    assert info.upperdir == "/var/lib/containers/storage/overlay/9f/diff"
    assert info.passwd == "app:x:10:10::/:/bin/sh\n" and info.group is None
    assert not RootFs(str(tmp_path))(ContainerInfo(ID, "podman"), 78)


def test_kubelet_log_directories(tmp_path: Path) -> None:
    (tmp_path / f"pods/shop_web-7d9f_{UID}/nginx").mkdir(parents=True)
    (tmp_path / "pods/kube-system_coredns-1_other").mkdir()
    (tmp_path / "containers").mkdir()
    (tmp_path / f"containers/web-7d9f_shop_nginx-{ID}.log").symlink_to("/dev/null")
    logs = KubeletLogs(str(tmp_path / "pods"), str(tmp_path / "containers"))
    info = ContainerInfo(ID, "containerd", pod_uid=UID)
    assert logs(info, None)
    assert (info.pod_namespace, info.pod_name, info.name) == ("shop", "web-7d9f", "nginx")
    unknown = ContainerInfo("f" * 64, "containerd", pod_uid="0" * 36)
    assert not logs(unknown, None)


# ---- real containers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    env = Podman(tmp_path_factory.mktemp("podman"))
    try:
        yield env
    finally:
        env.close()


def test_a_real_podman_container(podman: Podman) -> None:
    plain = podman.start()
    privileged = podman.start("--privileged")
    root = default_cgroup_root()
    registry = ContainerRegistry(CgroupMap(root), [RuntimeApi(podman.socket)], [RootFs()])
    registry.start()
    try:
        for box, is_privileged in ((plain, False), (privileged, True)):
            pid = int(str(box["pid"]))
            path = v2_path(pid)
            assert parse_proc_cgroup(Path(f"/proc/{pid}/cgroup").read_text()) == \
                ContainerRef(str(box["id"]), "podman")
            ref = registry.ref(os.stat(root + path).st_ino)
            assert ref == ContainerRef(str(box["id"]), "podman")
            assert registry.info(ref, pid) is None  # asked for, not waited for
            info = wait_for_info(registry, ref, pid)
            assert info.name == box["name"]
            assert (info.image_repository, info.image_tag) == \
                ("localhost/lanner-test-busybox", podman.tag)
            assert info.privileged is is_privileged
            caps = render.cap_names(info.bounding_caps or 0).split()
            assert ("CAP_SYS_ADMIN" in caps) is is_privileged
            assert "CAP_CHOWN" in caps
            assert info.upperdir and os.path.isdir(info.upperdir)
            assert info.passwd is not None and "web:x:4242" in info.passwd
            assert info.start_ns and abs(info.start_ns - time.time_ns()) < 600 * 10**9
    finally:
        registry.stop()
    # Without the API service, the podman command answers the same.
    cli = ContainerRegistry(CgroupMap(root), [PodmanCli()])
    info = cli.fetch(ContainerRef(str(privileged["id"]), "podman"))
    assert (info.found, info.name, info.privileged) == (True, privileged["name"], True)


def test_a_real_container_through_the_tracker(podman: Podman) -> None:
    box = podman.start()
    pid = int(str(box["pid"]))
    tracker = Tracker.for_host(sockets=(podman.socket,), podman=None)
    try:
        seeded = tracker.table.procs[pid]
        assert seeded.container == ContainerRef(str(box["id"]), "podman")  # from /proc
        assert seeded.name == "sleep"
        cgroup_id = os.stat(default_cgroup_root() + v2_path(pid)).st_ino

        def view_as(uid: int) -> object:
            return tracker.apply(record("openat", pid, uid=uid, gid=uid, cgroup_id=cgroup_id,
                                        res=-2, dirfd=-100, name="/x", flags=0))

        wait_for(lambda: view_as(4242).get("container.name"), what="the container's name")
        view = view_as(4242)
        assert view.get("container.id") == str(box["id"])[:12]
        assert view.get("container.name") == box["name"]
        assert view.get("container.image.repository") == "localhost/lanner-test-busybox"
        assert view.get("container.type") == "podman"
        assert view.get("container.privileged") is False
        assert (view.get("user.name"), view.get("group.name")) == ("web", "web")
        assert view.get("proc.pidns_init_start_ts") == seeded.start_ns  # sleep is its init
    finally:
        tracker.close()


def test_a_kubernetes_style_cgroup(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("creating cgroups needs root")
    root = Path(default_cgroup_root())
    cid = uuid.uuid4().hex * 2
    uid = str(uuid.uuid4())
    chain = ["kubepods.slice", "kubepods-besteffort.slice",
             f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice",
             f"cri-containerd-{cid}.scope"]
    dirs = [root.joinpath(*chain[:n]) for n in range(1, len(chain) + 1)]
    (tmp_path / f"pods/payments_api-5c6d_{uid}/api").mkdir(parents=True)
    (tmp_path / "containers").mkdir()
    (tmp_path / f"containers/api-5c6d_payments_api-{cid}.log").symlink_to("/dev/null")
    sleeper = subprocess.Popen(["sleep", "60"])
    created = [d for d in dirs if not d.exists()]
    try:
        dirs[-1].mkdir(parents=True, exist_ok=True)
        (dirs[-1] / "cgroup.procs").write_text(str(sleeper.pid))
        expected = ContainerRef(cid, "containerd", uid)
        assert parse_proc_cgroup(Path(f"/proc/{sleeper.pid}/cgroup").read_text()) == expected
        registry = ContainerRegistry(
            CgroupMap(str(root)), [],
            [KubeletLogs(str(tmp_path / "pods"), str(tmp_path / "containers"))])
        ref = registry.ref(os.stat(dirs[-1]).st_ino)
        assert ref == expected
        info = registry.fetch(ref, sleeper.pid)
        assert (info.pod_namespace, info.pod_name, info.name, info.pod_uid) == \
            ("payments", "api-5c6d", "api", uid)
    finally:
        sleeper.kill()
        sleeper.wait()
        for directory in reversed(created):
            wait_for(lambda d=directory: _rmdir(d), 5, f"removing {directory}")


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
    except OSError:  # the killed process may take a moment to leave the cgroup
        return False
    return True
