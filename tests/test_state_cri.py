"""Container metadata over CRI, against a gRPC server on a unix socket that answers
``runtime.v1.RuntimeService/ContainerStatus`` the way containerd and cri-o do."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from detector.state import cri, render
from detector.state.containers import CgroupMap, ContainerInfo, ContainerRef, ContainerRegistry
from detector.state.runtime import DEFAULT_SOCKETS, RuntimeApi
from tests.state_support import Node, wait_for, wait_for_info

CONTAINERD_ID = "a1" * 32
CRIO_ID = "b2" * 32
UID = "8e2c1b2a-5b6e-4c1d-9a8b-2f1e0d3c4b5a"
IMAGE_ID = "sha256:" + "c3" * 32
STARTED_NS = 1_767_323_045_123_456_789
POD_LABELS = {
    "io.kubernetes.pod.name": "shop-7d9f", "io.kubernetes.pod.namespace": "shop",
    "io.kubernetes.pod.uid": UID, "io.kubernetes.container.name": "web",
}
# containerd's verbose info: its ContainerInfo with the CRI ContainerConfig under "config"
# (Go's encoding/json on the protobuf struct: snake_case keys, false booleans omitted).
CONTAINERD_INFO = {
    "sandboxID": "d4" * 32, "pid": 4242, "removing": False, "snapshotter": "overlayfs",
    "runtimeType": "io.containerd.runc.v2",
    "config": {"metadata": {"name": "web"}, "image": {"image": IMAGE_ID},
               "linux": {"security_context": {"privileged": True,
                                              "namespace_options": {"pid": 1}}}},
    "runtimeSpec": {"process": {"capabilities": {"bounding": ["CAP_CHOWN"]}}},
}
# cri-o's: a top-level "privileged" next to the OCI spec.
CRIO_INFO = {
    "sandboxID": "e5" * 32, "pid": 77, "privileged": False,
    "runtimeSpec": {"process": {"capabilities": {
        "bounding": ["CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_KILL"]}}},
}


class FakeCri:
    """containerd (or cri-o) as far as ContainerStatus goes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.requests: list[tuple[str, bool]] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.unary_unary_rpc_method_handler(
            self._status, request_deserializer=cri.ContainerStatusRequest.FromString,
            response_serializer=cri.ContainerStatusResponse.SerializeToString)
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "runtime.v1.RuntimeService", {"ContainerStatus": handler})])
        self.server.add_insecure_port(f"unix://{path}")
        self.server.start()

    def _status(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.requests.append((request.container_id, request.verbose))
        if request.container_id == CONTAINERD_ID:
            status = cri.ContainerStatus(
                id=CONTAINERD_ID, metadata=cri.ContainerMetadata(name="web", attempt=2),
                state=1, created_at=STARTED_NS - 10**9, started_at=STARTED_NS,
                image=cri.ImageSpec(image="registry.example/shop/web:3.1"),
                image_ref="registry.example/shop/web@sha256:" + "f0" * 32,
                labels=POD_LABELS, annotations={"io.kubernetes.container.hash": "1"},
                log_path="/var/log/pods/shop_shop-7d9f_x/web/2.log")
            info = CONTAINERD_INFO
        elif request.container_id == CRIO_ID:
            status = cri.ContainerStatus(  # an image known by id only; no metadata name
                id=CRIO_ID, image=cri.ImageSpec(image=IMAGE_ID), image_ref=IMAGE_ID,
                labels={**POD_LABELS, "io.kubernetes.container.name": "sidecar"})
            info = CRIO_INFO
        else:
            context.abort(grpc.StatusCode.NOT_FOUND, f"container {request.container_id!r}")
        return cri.ContainerStatusResponse(
            status=status, info={"info": json.dumps(info)} if request.verbose else {})

    def close(self) -> None:
        self.server.stop(None).wait()


@pytest.fixture
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeCri]:
    # A short directory: a unix socket path must fit in 108 bytes.
    fake = FakeCri(str(tmp_path_factory.mktemp("cri") / "containerd.sock"))
    try:
        yield fake
    finally:
        fake.close()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_field_numbers_match_the_cri_api() -> None:
    """Bytes laid out by hand with api.proto's numbers (k8s.io/cri-api, runtime.v1) decode
    into the fields this module reads, and a request encodes as containerd expects it."""
    status = (_field(1, b"abc") + _field(2, _field(1, b"web") + _field(2, 3))
              + _field(3, 1) + _field(5, STARTED_NS) + _field(8, _field(1, b"nginx:1.25"))
              + _field(9, b"nginx@sha256:00") + _field(12, _field(1, b"k") + _field(2, b"v"))
              + _field(13, _field(1, b"a") + _field(2, b"b")) + _field(17, IMAGE_ID.encode())
              + _field(14, b"\x0a\x02/x"))  # a Mount: a field left out here, skipped
    wire = _field(1, status) + _field(2, _field(1, b"info") + _field(2, b"{}"))
    response = cri.ContainerStatusResponse.FromString(wire)
    got = response.status
    assert (got.id, got.metadata.name, got.metadata.attempt, got.state) == ("abc", "web", 3, 1)
    assert (got.started_at, got.image.image, got.image_ref) == \
        (STARTED_NS, "nginx:1.25", "nginx@sha256:00")
    assert (dict(got.labels), dict(got.annotations), got.image_id) == \
        ({"k": "v"}, {"a": "b"}, IMAGE_ID)
    assert dict(response.info) == {"info": "{}"}
    request = cri.ContainerStatusRequest(container_id="abc", verbose=True)
    assert request.SerializeToString() == _field(1, b"abc") + _field(2, 1)
    assert cri.METHOD == "/runtime.v1.RuntimeService/ContainerStatus"


def test_a_containerd_container(runtime: FakeCri, tmp_path: Path) -> None:
    registry = ContainerRegistry(CgroupMap(str(tmp_path)), [RuntimeApi(runtime.path)])
    registry.start()
    try:
        ref = ContainerRef(CONTAINERD_ID, "containerd", UID)
        assert registry.info(ref) is None  # asked for, not waited for
        info = wait_for_info(registry, ref)
    finally:
        registry.stop()
    assert runtime.requests == [(CONTAINERD_ID, True)]
    assert info.name == "web"
    assert (info.image_repository, info.image_tag, info.image_digest) == \
        ("registry.example/shop/web", "3.1", "sha256:" + "f0" * 32)
    assert (info.pod_name, info.pod_namespace, info.pod_uid) == ("shop-7d9f", "shop", UID)
    assert info.labels == POD_LABELS
    assert info.privileged is True
    assert info.bounding_caps == render.ALL_CAPS  # privileged overrides the spec's set
    assert info.start_ns == STARTED_NS


def test_a_cri_o_container(runtime: FakeCri, tmp_path: Path) -> None:
    crio = str(Path(runtime.path).with_name("crio.sock"))
    os.symlink(runtime.path, crio)  # the same server under cri-o's socket name
    info = ContainerRegistry(CgroupMap(str(tmp_path)), [RuntimeApi(crio)]).fetch(
        ContainerRef(CRIO_ID, "cri-o"))
    assert info.found
    assert info.name == "sidecar"  # from io.kubernetes.container.name
    assert (info.image_id, info.image_repository) == ("c3" * 6, None)
    assert (info.pod_name, info.pod_namespace, info.pod_uid) == ("shop-7d9f", "shop", UID)
    assert info.privileged is False
    assert render.cap_names(info.bounding_caps or 0) == "CAP_CHOWN CAP_KILL CAP_NET_BIND_SERVICE"
    assert info.start_ns is None  # 0 on the wire: not started


def test_through_the_tracker(runtime: FakeCri, tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.registry.fetchers = (RuntimeApi(runtime.path),)
    try:
        cgroup_id = node.cgroup(
            f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"
            f"{UID.replace('-', '_')}.slice/cri-containerd-{CONTAINERD_ID}.scope")

        def event() -> Any:
            return node.apply("openat", 500, cgroup_id=cgroup_id, res=-2, dirfd=-100,
                              name="/x", flags=0)

        wait_for(lambda: event().get("container.name"), what="the container's name")
        view = event()
        assert view.get("container.id") == CONTAINERD_ID[:12]
        assert view.get("container.type") == "containerd"
        assert view.get("container.name") == "web"
        assert view.get("container.image.repository") == "registry.example/shop/web"
        assert view.get("container.privileged") is True
        assert (view.get("k8s.pod.name"), view.get("k8s.ns.name")) == ("shop-7d9f", "shop")
    finally:
        node.close()


def test_unknown_containers_and_dead_sockets_degrade(runtime: FakeCri, tmp_path: Path) -> None:
    stale = tmp_path / "containerd.sock"
    with socket.socket(socket.AF_UNIX) as listener:  # a socket file nobody listens on
        listener.bind(str(stale))
    fetchers = [RuntimeApi(runtime.path), RuntimeApi(str(stale)),
                RuntimeApi(str(tmp_path / "crio.sock"))]  # absent
    registry = ContainerRegistry(CgroupMap(str(tmp_path)), fetchers)
    started = time.monotonic()
    unknown = registry.fetch(ContainerRef("9" * 64, "containerd", UID))
    assert time.monotonic() - started < 5
    assert not unknown.found
    assert (unknown.name, unknown.image_repository, unknown.privileged, unknown.pod_name) == \
        (None, None, None, None)
    assert unknown.pod_uid == UID  # what the cgroup path said stays
    assert (registry.fetched, registry.failed) == (0, 1)
    # Docker's and podman's containers are not asked about over CRI.
    assert not RuntimeApi(runtime.path)(ContainerInfo(CONTAINERD_ID, "docker"), None)
    assert runtime.requests == [("9" * 64, True)]


def test_a_status_without_verbose_info_leaves_privilege_unknown() -> None:
    info = ContainerInfo(CONTAINERD_ID, "containerd")
    status = cri.ContainerStatus(metadata=cri.ContainerMetadata(name="web"),
                                 image=cri.ImageSpec(image=IMAGE_ID),
                                 image_ref="docker.io/library/nginx@sha256:" + "0a" * 32)
    cri.apply_status(info, status, {"info": "not json"})
    assert (info.name, info.privileged, info.bounding_caps) == ("web", None, None)
    # An image id names no repository: the digest reference does.
    assert (info.image_repository, info.image_tag, info.image_digest, info.image_id) == \
        ("docker.io/library/nginx", None, "sha256:" + "0a" * 32, "c3" * 6)
    cri.apply_status(info, status, {"info": json.dumps({"config": {"linux": {}}})})
    assert info.privileged is False  # containerd omits a false privileged


def test_cri_sockets_are_tried_first() -> None:
    found = [path for path in DEFAULT_SOCKETS if cri.is_cri_socket(path)]
    assert found == list(DEFAULT_SOCKETS[:4])
    assert all(isinstance(RuntimeApi(path).cri, cri.CriRuntime) for path in found)
    assert RuntimeApi("/run/podman/podman.sock").cri is None
