"""Container metadata from a CRI runtime (containerd, cri-o, cri-dockerd) over its gRPC socket.

Only ``runtime.v1.RuntimeService/ContainerStatus`` is spoken, with ``verbose=true``. Its
messages are built here from descriptors rather than generated from a .proto: the subset is
small, and its field numbers are the contract, so they sit in one readable table below. They
are those of k8s.io/cri-api ``pkg/apis/runtime/v1/api.proto`` (package ``runtime.v1``): a wrong
number would not fail, it would silently read nothing. Fields of the real messages that are
left out here arrive as unknown fields and are ignored.

What is read, for :class:`detector.state.containers.ContainerInfo`:

- ``status.metadata.name`` (the container's name in the pod spec), else the
  ``io.kubernetes.container.name`` label;
- ``status.image.image`` (containerd: the first repo tag, or the image id when the image has
  none; cri-o: the name it was pulled by), ``status.image_ref`` (a repo digest, or an id) and
  ``status.image_id``: repository, tag, digest and short image id;
- ``status.labels``, and from them ``io.kubernetes.pod.{name,namespace,uid}``;
- ``status.started_at`` (ns since the epoch);
- ``info["info"]``, the verbose JSON, for privilege and capabilities:
  containerd marshals its ``ContainerInfo`` with the CRI ``ContainerConfig`` under ``config``,
  so privilege is ``config.linux.security_context.privileged`` (omitted when false); cri-o
  writes a top-level ``privileged``. Both put the OCI spec under ``runtimeSpec``, whose
  ``process.capabilities.bounding`` is what root holds inside the container.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from detector.state import render
from detector.state.containers import ContainerInfo
from detector.state.runtime import split_image

log = logging.getLogger(__name__)

# Socket names that speak CRI rather than Docker's HTTP API (k3s keeps containerd.sock under
# /run/k3s/containerd/, cri-dockerd fronts Docker for Kubernetes).
CRI_SOCKET_NAMES = frozenset({"containerd.sock", "crio.sock", "cri-dockerd.sock"})
METHOD = "/runtime.v1.RuntimeService/ContainerStatus"
# Container types from the cgroup path that no CRI runtime manages: asking would only cost a
# round trip to a NOT_FOUND.
NOT_CRI = frozenset({"docker", "podman"})

_F = descriptor_pb2.FieldDescriptorProto
_STRING, _BOOL, _INT64, _INT32, _UINT32 = (
    _F.TYPE_STRING, _F.TYPE_BOOL, _F.TYPE_INT64, _F.TYPE_INT32, _F.TYPE_UINT32)
_MAP = "map"  # map<string, string>
# message -> (field, number, type); a str type names another message or enum of the package.
# Numbers: k8s.io/cri-api pkg/apis/runtime/v1/api.proto.
_SCHEMA: dict[str, list[tuple[str, int, Any]]] = {
    "ContainerStatusRequest": [("container_id", 1, _STRING), ("verbose", 2, _BOOL)],
    "ContainerStatusResponse": [("status", 1, "ContainerStatus"), ("info", 2, _MAP)],
    "ContainerStatus": [
        ("id", 1, _STRING), ("metadata", 2, "ContainerMetadata"),
        ("state", 3, "ContainerState"), ("created_at", 4, _INT64), ("started_at", 5, _INT64),
        ("finished_at", 6, _INT64), ("exit_code", 7, _INT32), ("image", 8, "ImageSpec"),
        ("image_ref", 9, _STRING), ("reason", 10, _STRING), ("message", 11, _STRING),
        ("labels", 12, _MAP), ("annotations", 13, _MAP), ("log_path", 15, _STRING),
        ("image_id", 17, _STRING),
    ],
    "ContainerMetadata": [("name", 1, _STRING), ("attempt", 2, _UINT32)],
    "ImageSpec": [
        ("image", 1, _STRING), ("annotations", 2, _MAP), ("user_specified_image", 18, _STRING),
        ("runtime_handler", 19, _STRING), ("image_ref", 20, _STRING),
    ],
}
_ENUMS = {"ContainerState": ["CONTAINER_CREATED", "CONTAINER_RUNNING", "CONTAINER_EXITED",
                             "CONTAINER_UNKNOWN"]}


def _camel(name: str) -> str:
    return "".join(part.title() for part in name.split("_"))


def _build() -> dict[str, type[Message]]:
    proto = descriptor_pb2.FileDescriptorProto(
        name="lanner/cri_subset.proto", package="runtime.v1", syntax="proto3")
    for name, values in _ENUMS.items():
        enum = proto.enum_type.add(name=name)
        for number, value in enumerate(values):
            enum.value.add(name=value, number=number)
    for name, fields in _SCHEMA.items():
        message = proto.message_type.add(name=name)
        for field_name, number, kind in fields:
            field = message.field.add(name=field_name, number=number,
                                      label=_F.LABEL_OPTIONAL)
            if kind == _MAP:  # proto3's map<string,string> is a repeated nested entry message
                entry = message.nested_type.add(name=_camel(field_name) + "Entry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_STRING, label=_F.LABEL_OPTIONAL)
                entry.field.add(name="value", number=2, type=_STRING, label=_F.LABEL_OPTIONAL)
                field.label = _F.LABEL_REPEATED
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".runtime.v1.{name}.{entry.name}"
            elif isinstance(kind, str):
                field.type = _F.TYPE_ENUM if kind in _ENUMS else _F.TYPE_MESSAGE
                field.type_name = f".runtime.v1.{kind}"
            else:
                field.type = kind
    # A private pool: another library registering its own runtime.v1 must not collide.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(
        f"runtime.v1.{name}")) for name in _SCHEMA}


_MESSAGES = _build()
ContainerStatusRequest = _MESSAGES["ContainerStatusRequest"]
ContainerStatusResponse = _MESSAGES["ContainerStatusResponse"]
ContainerStatus = _MESSAGES["ContainerStatus"]
ContainerMetadata = _MESSAGES["ContainerMetadata"]
ImageSpec = _MESSAGES["ImageSpec"]

_IMAGE_ID = re.compile(r"(?:sha256:)?([0-9a-f]{64})")


def is_cri_socket(path: str) -> bool:
    return os.path.basename(path) in CRI_SOCKET_NAMES


class CriRuntime:
    """A fetcher asking a CRI runtime's socket for ``ContainerStatus``."""

    def __init__(self, path: str, timeout: float = 2.0) -> None:
        self.path = path
        self.timeout = timeout
        self._call: Any = None

    def __call__(self, info: ContainerInfo, pid: int | None) -> bool:
        if info.type in NOT_CRI or not os.path.exists(self.path):
            return False
        request = ContainerStatusRequest(container_id=info.id, verbose=True)
        try:
            response = self._stub()(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            # NOT_FOUND is the usual answer for a container of another runtime on the node;
            # UNIMPLEMENTED, from a containerd whose CRI plugin is off (Docker's own).
            log.debug("CRI socket %s: container %s: %s", self.path, info.id[:12],
                      exc.code() if isinstance(exc, grpc.Call) else exc)
            return False
        if not response.HasField("status"):
            return False
        apply_status(info, response.status, response.info)
        return True

    def _stub(self) -> Any:
        if self._call is None:
            channel = grpc.insecure_channel(f"unix://{os.path.abspath(self.path)}", options=[
                # A runtime restarting must not leave containers unnamed for gRPC's default
                # two-minute reconnect backoff.
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 5000),
            ])
            self._call = channel.unary_unary(
                METHOD, request_serializer=ContainerStatusRequest.SerializeToString,
                response_deserializer=ContainerStatusResponse.FromString)
        return self._call


def apply_status(info: ContainerInfo, status: Any, extra: Any) -> None:
    """Fill ``info`` from a CRI ``ContainerStatus`` and the verbose ``info`` map."""
    labels = dict(status.labels)
    info.labels = labels
    info.name = status.metadata.name or labels.get("io.kubernetes.container.name") or None
    image, ref = status.image.image, status.image_ref
    ids = [m.group(1) for m in map(_IMAGE_ID.fullmatch, (status.image_id, image, ref)) if m]
    info.image_id = ids[0][:12] if ids else None
    # An image id names no repository: fall back on the digest reference for one.
    named = image if image and not _IMAGE_ID.fullmatch(image) else ""
    if not named and ref and not _IMAGE_ID.fullmatch(ref):
        named = ref
    if named:
        info.image_repository, info.image_tag, info.image_digest = split_image(named)
    if "@" in ref:
        info.image_digest = ref.partition("@")[2]
    info.start_ns = status.started_at or None
    info.pod_name = info.pod_name or labels.get("io.kubernetes.pod.name")
    info.pod_namespace = info.pod_namespace or labels.get("io.kubernetes.pod.namespace")
    info.pod_uid = info.pod_uid or labels.get("io.kubernetes.pod.uid")
    _apply_verbose(info, extra.get("info"))


def _apply_verbose(info: ContainerInfo, text: str | None) -> None:
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return  # not verbose, or a runtime with another shape: privilege stays unknown
    if isinstance(data.get("privileged"), bool):  # cri-o
        info.privileged = data["privileged"]
    elif isinstance(data.get("config"), dict):  # containerd: false is omitted
        context = _path(data["config"], "linux", "security_context")
        info.privileged = bool(context.get("privileged"))
    caps = _path(data, "runtimeSpec", "process", "capabilities").get("bounding")
    if info.privileged:
        info.bounding_caps = render.ALL_CAPS
    elif isinstance(caps, list):
        info.bounding_caps = render.cap_mask(caps)


def _path(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    for key in keys:
        data = data.get(key) if isinstance(data.get(key), dict) else {}
    return data
