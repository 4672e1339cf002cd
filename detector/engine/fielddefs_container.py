"""container.* and k8s.*: the container (and Kubernetes pod) the process runs in."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from detector.engine.fielddefs_common import (
    Event,
    alias,
    computed,
    derived,
    index_arg,
    is_index,
    key_lookup,
)
from detector.engine.fields import Extractor, Factory, FieldClass, FieldSpec, FieldType

S = FieldType.STRING


def _image(event: Event) -> Any:
    repository = event.get("container.image.repository")
    if repository is None:
        return None
    tag = event.get("container.image.tag")
    return f"{repository}:{tag}" if tag else repository


def _start(event: Event) -> Any:
    start = event.get("container.start_ts")
    # The container plugin takes the start of the container's pid namespace init task.
    return event.get("proc.pidns_init_start_ts") if start is None else start


def _duration(event: Event) -> Any:
    start = _start(event)
    now = event.get("evt.time")
    return None if start is None or now is None else now - start


def _mounts(event: Event) -> Any:
    mounts = event.get("container.mounts")
    if mounts is None or isinstance(mounts, str):
        return mounts
    return ",".join(
        f"{m.get('source', '')}:{m.get('dest', '')}:{m.get('mode', '')}:"
        f"{str(m.get('rdwr', '')).lower()}:{m.get('propagation', '')}"
        for m in mounts
    )


def _mount(field: str, wanted: str, matched_on: str) -> Factory:
    """container.mount.dest[/src/glob] (the dest of the first mount whose source matches the
    glob) or container.mount.dest[N] (of the Nth mount); .source the other way round."""

    def factory(arg: str | None) -> Extractor:
        assert arg is not None  # the spec requires an argument
        if is_index(arg):
            at = index_arg(field, arg)

            def nth(event: Event) -> Any:
                mounts = event.get("container.mounts")
                if not isinstance(mounts, list) or at >= len(mounts):
                    return None
                return mounts[at].get(wanted)

            return nth

        def matching(event: Event) -> Any:
            mounts = event.get("container.mounts")
            if not isinstance(mounts, list):
                return None
            for mount in mounts:
                if fnmatchcase(mount.get(matched_on, ""), arg):
                    return mount.get(wanted)
            return None

        return matching

    return factory


CONTAINER = FieldClass(
    name="container",
    shortdesc="Containers",
    desc="The container the process runs in; host processes have container.id 'host'.",
    fields=(
        FieldSpec("container.id", S,
                  "Short (12 character) container id, or 'host' for processes on the host."),
        FieldSpec("container.name", S, "Container name, or 'host'."),
        FieldSpec("container.image", S, "Image the container runs, repository:tag.",
                  factory=derived("container.image", _image)),
        FieldSpec("container.image.id", S, "Image id."),
        FieldSpec("container.image.repository", S,
                  "Image repository, e.g. docker.io/library/nginx."),
        FieldSpec("container.image.tag", S, "Image tag, e.g. latest."),
        FieldSpec("container.image.digest", S, "Image digest (sha256:...)."),
        FieldSpec("container.type", S, "Container runtime: docker, containerd, cri-o, podman."),
        FieldSpec("container.privileged", FieldType.BOOL,
                  "True for a privileged container."),
        FieldSpec("container.start_ts", FieldType.ABSTIME,
                  "When the container started (its first process), in ns since the epoch.",
                  factory=computed(_start)),
        FieldSpec("container.duration", FieldType.RELTIME,
                  "Nanoseconds since the container started.",
                  factory=derived("container.duration", _duration)),
        FieldSpec("container.mounts", S,
                  "All mounts as source:dest:mode:rdwr:propagation, separated by commas.",
                  factory=computed(_mounts)),
        FieldSpec("container.mount.dest", S,
                  "Destination of one mount, chosen by index ([0]) or by a glob on its "
                  "source ([/var/run/docker.sock]).", arg="required",
                  factory=_mount("container.mount.dest", "dest", "source")),
        FieldSpec("container.mount.source", S,
                  "Source of one mount, chosen by index or by a glob on its destination.",
                  arg="required", factory=_mount("container.mount.source", "source", "dest")),
        FieldSpec("container.label", S,
                  "One container label: container.label[key] or container.label.key.",
                  arg="required", dot_arg=True, factory=key_lookup("container.labels")),
        FieldSpec("container.labels", S, "All container labels as key:value, key:value.",
                  factory=key_lookup("container.labels")),
    ),
)

K8S = FieldClass(
    name="k8s",
    shortdesc="Kubernetes pods",
    desc="The Kubernetes pod of the container, from the runtime's pod labels.",
    fields=(
        FieldSpec("k8s.ns.name", S, "Namespace of the pod."),
        FieldSpec("k8s.pod.name", S, "Name of the pod."),
        FieldSpec("k8s.pod.uid", S, "UID of the pod."),
        FieldSpec("k8s.pod.id", S, "UID of the pod (older name of k8s.pod.uid).",
                  factory=alias("k8s.pod.uid")),
        FieldSpec("k8s.pod.label", S, "One pod label: k8s.pod.label[key] or k8s.pod.label.key.",
                  arg="required", dot_arg=True, factory=key_lookup("k8s.pod.labels")),
        FieldSpec("k8s.pod.labels", S, "All pod labels as key:value, key:value.",
                  factory=key_lookup("k8s.pod.labels")),
    ),
)

CLASSES = (CONTAINER, K8S)
