"""ka.*: Kubernetes audit events (source k8s_audit), read as Falco's k8saudit plugin reads
them (json.* and jevt.*, its companion json plugin's fields, are in ``fielddefs_json``).

An audit event reaches the engine as a mapping with ``evt.source`` = ``k8s_audit``, ``evt.time``
(its stageTimestamp, ns) and the audit Event itself, decoded from JSON, under ``ka.event``
(EVENT_KEY). Every field here reads that object. A field may also be recorded under its own name
(a hand-written recording), and a recorded value wins over the one read from the event.

Values are the plugins' values, so that upstream rules mean the same thing here:

- every field is a string or a list of strings; a JSON value that is not a string reads as its
  compact JSON text: ``ka.response.code`` is ``"201"``, ``ka.req.pod.host_network`` is
  ``"true"`` (hence ``startswith 2`` and ``intersects (true)`` in the rules), an object is
  ``{"k":"v"}`` and JSON null is ``"null"``;
- ka.* fields have no value on an object without ``auditID``;
- a list field with no element has no value (``exists`` is false, ``in`` too); container fields
  read every container and skip those without the setting (``privileged``), except images:
  one container without ``image`` and the image fields have no value;
- ``[N]`` on a list field keeps only the Nth container (volume, rule, port...);
- ``ka.req.pod.containers.image.repository`` cuts the image at its first ``:`` and ``@``, as the
  plugin does (so a registry port is cut too: ``reg:5000/app`` reads ``reg``);

Event strings come from the API server's clients (names, commands, URIs): they are data, only
ever compared or printed, never interpreted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from detector.engine.auditjson import (
    ABSENT,
    at,
    child,
    each,
    elements,
    query,
    text,
    texts,
)
from detector.engine.fielddefs_common import Event, index_arg
from detector.engine.fields import (
    Extractor,
    Factory,
    FieldArgError,
    FieldClass,
    FieldSpec,
    FieldType,
)

SOURCE = "k8s_audit"
EVENT_KEY = "ka.event"
S = FieldType.STRING
L = FieldType.LIST
Compute = Callable[[dict[str, Any], int | None], Any]  # (audit event, index or None) -> value


def _audit(event: Event) -> dict[str, Any] | None:
    obj = event.get(EVENT_KEY)
    return obj if obj.__class__ is dict and "auditID" in obj else None


def _field(name: str, compute: Compute) -> Factory:
    """The extractor of a ka.* field: its recorded value, else ``compute`` on the audit event."""

    def factory(arg: str | None) -> Extractor:
        index = None if arg is None else index_arg(name, arg)

        def extract(event: Event) -> Any:
            recorded = event.get(name) if index is None else None
            if recorded is not None:
                return recorded
            obj = _audit(event)
            return None if obj is None else compute(obj, index)

        return extract

    return factory


def _scalar(*keys: str) -> Compute:
    def compute(obj: dict[str, Any], _index: int | None) -> Any:
        value = at(obj, keys)
        return None if value is ABSENT else text(value)

    return compute


def _array(*keys: str) -> Compute:
    """A JSON array field as a list, each element as text."""

    def compute(obj: dict[str, Any], index: int | None) -> Any:
        value = at(obj, keys)
        if value.__class__ is not list:
            return None
        items = value if index is None else value[index:index + 1]
        return [text(v) for v in items] or None

    return compute


def _spread(*keys: str) -> Compute:
    """Values under every element of the first array on the path, skipping those without."""
    return lambda obj, index: texts(each(obj, index, keys))


def _flat(*keys: str) -> Compute:
    """Arrays under every element of the first array on the path, joined into one list."""

    def compute(obj: dict[str, Any], index: int | None) -> Any:
        found = each(obj, index, keys)
        if found is None:
            return None
        out = [text(v) for array in found if array.__class__ is list for v in array]
        return out or None

    return compute


# ---- pods ------------------------------------------------------------------------------------

def _images(kind: str) -> Compute:
    def compute(obj: dict[str, Any], index: int | None) -> Any:
        found = each(obj, index, ("requestObject", "spec", kind, "image"))
        if not found or any(v is ABSENT for v in found):
            return None
        return [text(v) for v in found]

    return compute


_container_images = _images("containers")


def _repository(image: str) -> str:
    return image.split(":", 1)[0].split("@", 1)[0]


def _repositories(kind: str) -> Compute:
    images = _images(kind)

    def compute(obj: dict[str, Any], index: int | None) -> Any:
        found = images(obj, index)
        return None if found is None else [_repository(i) for i in found]

    return compute


def _first_image(obj: dict[str, Any], _index: int | None) -> Any:
    found = _container_images(obj, 0)
    return None if found is None else found[0]


def _first_repository(obj: dict[str, Any], _index: int | None) -> Any:
    found = _first_image(obj, None)
    return None if found is None else _repository(found)


def _host_ports(kind: str) -> Compute:
    """hostPort of every declared port, else its containerPort (the same with hostNetwork)."""

    def compute(obj: dict[str, Any], index: int | None) -> Any:
        found = each(obj, index, ("requestObject", "spec", kind, "ports"))
        if found is None:
            return None
        out = []
        for ports in found:
            if ports is ABSENT:
                continue
            if ports.__class__ is not list:
                return None
            for port in ports:
                value = child(port, "hostPort")
                if value is ABSENT:
                    value = child(port, "containerPort")
                if value is not ABSENT:
                    out.append(text(value))
        return out or None

    return compute


def _effective(kind: str, key: str) -> Compute:
    """The id each container starts with: its own securityContext's, else the pod's, else 0."""

    def compute(obj: dict[str, Any], index: int | None) -> Any:
        pod = at(obj, ("requestObject", "spec", "securityContext", key))
        default = "0" if pod is ABSENT else text(pod)
        containers = elements(obj, index, "requestObject", "spec", kind)
        if not containers:
            return None
        own = (at(c, ("securityContext", key)) for c in containers)
        return [default if v is ABSENT else text(v) for v in own]

    return compute


def _any_privileged(obj: dict[str, Any], _index: int | None) -> Any:
    found = each(obj, None, ("requestObject", "spec", "containers", "securityContext",
                              "privileged"))
    if found is None:
        return None
    return "true" if any(v is True for v in found) else "false"


def _volume_types(obj: dict[str, Any], index: int | None) -> Any:
    """The keys of each volume but its name: the volume's type, as the plugin reads it."""
    volumes = elements(obj, index, "requestObject", "spec", "volumes")
    if volumes is None:
        return None
    out = [key for volume in volumes if volume.__class__ is dict for key in volume
           if key != "name"]
    return out or None


def _host_paths(obj: dict[str, Any]) -> list[str] | None:
    volumes = elements(obj, None, "requestObject", "spec", "volumes")
    if volumes is None:
        return None
    paths = (at(volume, ("hostPath", "path")) for volume in volumes)
    return [text(p) for p in paths if p is not ABSENT]


def _uses_host_path(name: str) -> Factory:
    """ka.req.volume.hostpath[/path] ('true' or 'false'; a trailing * matches a prefix)."""

    def factory(arg: str | None) -> Extractor:
        if not arg:
            raise FieldArgError(f"field '{name}' needs a host path, e.g. {name}[/var/run/*]")
        prefix = arg[:-1] if arg.endswith("*") else None

        def extract(event: Event) -> Any:
            obj = _audit(event)
            paths = None if obj is None else _host_paths(obj)
            if paths is None:
                return None
            hit = any(p == arg or (prefix is not None and p.startswith(prefix)) for p in paths)
            return "true" if hit else "false"

        return extract

    return factory


def _always_true(arg: str | None) -> Extractor:
    return lambda event: None if _audit(event) is None else "true"


def _subjects(kind: str, namespaced: bool = False) -> Compute:
    def compute(obj: dict[str, Any], _index: int | None) -> Any:
        subjects = at(obj, ("requestObject", "subjects"))
        if subjects.__class__ is not list:
            return None
        out = []
        for subject in subjects:
            if subject.__class__ is dict and subject.get("kind") == kind \
                    and isinstance(subject.get("name"), str):
                name = subject["name"]
                out.append(f"{subject.get('namespace', '')}:{name}" if namespaced else name)
        return out or None

    return compute


def _target_pod(obj: dict[str, Any], _index: int | None) -> Any:
    ref = obj.get("objectRef")
    if ref.__class__ is not dict or ref.get("resource") != "pods":
        return None
    name = ref.get("name", ABSENT)
    return None if name is ABSENT else text(name)


# ---- ka.uri.param -----------------------------------------------------------------------------

def _uri_param(arg: str | None) -> Extractor:
    assert arg is not None  # the spec requires an argument

    def extract(event: Event) -> Any:
        obj = _audit(event)
        uri = None if obj is None else obj.get("requestURI", ABSENT)
        if uri is None or uri is ABSENT:
            return None
        params = query(text(uri))
        values = None if params is None else params.get(arg)
        return values[0] if values else None

    return extract


# ---- the field list ------------------------------------------------------------------------------

def _spec(name: str, typ: FieldType, desc: str, compute: Compute, index: bool = False) -> FieldSpec:
    return FieldSpec(name, typ, desc, arg="optional" if index else "none", source=SOURCE,
                     factory=_field(name, compute))


_CONTAINER_SETTINGS = (  # field suffix, securityContext path, what it is
    ("privileged", ("privileged",), "privileged flag"),
    ("allow_privilege_escalation", ("allowPrivilegeEscalation",),
     "allowPrivilegeEscalation flag"),
    ("read_only_fs", ("readOnlyRootFilesystem",), "readOnlyRootFilesystem flag"),
    ("run_as_user", ("runAsUser",), "runAsUser uid"),
    ("run_as_group", ("runAsGroup",), "runAsGroup gid"),
    ("proc_mount", ("procMount",), "procMount type"),
    ("add_capabilities", ("capabilities", "add"),
     "capabilities added (each container's list as JSON text)"),
)


def _containers(kind: str, label: str) -> tuple[FieldSpec, ...]:
    """The same fields for spec.containers, spec.initContainers and spec.ephemeralContainers."""
    base = f"ka.req.pod.{kind}"
    path = ("requestObject", "spec", kind)
    specs = [
        _spec(f"{base}.name", L, f"Names of the pod's {label}.", _spread(*path, "name"), True),
        _spec(f"{base}.image", L, f"Images of the pod's {label}.", _images(kind), True),
        _spec(f"{base}.image.repository", L,
              f"Images of the pod's {label} without tag or digest (e.g. falcosecurity/falco).",
              _repositories(kind), True),
        _spec(f"{base}.command", L, f"Command of each of the pod's {label} (as JSON text).",
              _spread(*path, "command"), True),
        _spec(f"{base}.args", L, f"Arguments of each of the pod's {label} (as JSON text).",
              _spread(*path, "args"), True),
        _spec(f"{base}.host_port", L,
              f"Ports of the pod's {label}: the hostPort, else the containerPort.",
              _host_ports(kind), True),
        _spec(f"{base}.eff_run_as_user", L,
              f"The uid each of the pod's {label} starts with: its runAsUser, else the pod's, "
              "else 0.", _effective(kind, "runAsUser"), True),
        _spec(f"{base}.eff_run_as_group", L,
              f"The gid each of the pod's {label} starts with: its runAsGroup, else the pod's, "
              "else 0.", _effective(kind, "runAsGroup"), True),
    ]
    specs += [_spec(f"{base}.{suffix}", L, f"The {what} of the pod's {label} that set it.",
                    _spread(*path, "securityContext", *keys), True)
              for suffix, keys, what in _CONTAINER_SETTINGS]
    return tuple(specs)


def _annotation(key: str) -> Compute:
    return _scalar("annotations", key)


K8SAUDIT = FieldClass(
    name="k8saudit",
    shortdesc="Kubernetes audit events",
    desc="The audit events the Kubernetes API server sends to the webhook (source k8s_audit), "
         "read as Falco's k8saudit plugin reads them: values are text, non-string JSON values "
         "their JSON text.",
    source=SOURCE,
    fields=(
        _spec("ka.auditid", S, "Unique id of the audit event.", _scalar("auditID")),
        _spec("ka.stage", S, "Stage of the request: RequestReceived, ResponseStarted, "
              "ResponseComplete or Panic.", _scalar("stage")),
        _spec("ka.auth.decision", S, "Authorization decision (allow or forbid).",
              _annotation("authorization.k8s.io/decision")),
        _spec("ka.auth.reason", S, "Why the request was authorized or not.",
              _annotation("authorization.k8s.io/reason")),
        _spec("ka.validations.admission.policy.failure", S,
              "Failure reported by a ValidatingAdmissionPolicy (annotation "
              "validation.policy.admission.k8s.io/validation_failure).",
              _annotation("validation.policy.admission.k8s.io/validation_failure")),
        _spec("ka.security.pod.violations", S,
              "Pod Security admission violations (annotation "
              "pod-security.kubernetes.io/audit-violations).",
              _annotation("pod-security.kubernetes.io/audit-violations")),
        _spec("ka.user.name", S, "User who made the request.", _scalar("user", "username")),
        _spec("ka.user.groups", L, "Groups of the user.", _array("user", "groups")),
        _spec("ka.impuser.name", S, "User the request impersonated.",
              _scalar("impersonatedUser", "username")),
        _spec("ka.verb", S, "Verb: get, list, watch, create, update, patch, delete...",
              _scalar("verb")),
        _spec("ka.uri", S, "Request URI as the client sent it.", _scalar("requestURI")),
        FieldSpec("ka.uri.param", S,
                  "One query parameter of the request URI: ka.uri.param[command] is the "
                  "first command= value of an exec.", arg="required", source=SOURCE,
                  factory=_uri_param),
        _spec("ka.target.name", S, "Name of the object acted on.", _scalar("objectRef", "name")),
        _spec("ka.target.namespace", S, "Namespace of the object acted on.",
              _scalar("objectRef", "namespace")),
        _spec("ka.target.resource", S, "Resource acted on (pods, secrets, clusterroles...).",
              _scalar("objectRef", "resource")),
        _spec("ka.target.subresource", S, "Subresource acted on (exec, attach, log...).",
              _scalar("objectRef", "subresource")),
        _spec("ka.target.pod.name", S, "Name of the pod acted on (pods and their "
              "subresources).", _target_pod),
        _spec("ka.req.binding.subjects", L, "Subjects a (cluster) role binding binds, each as "
              "JSON text.", _array("requestObject", "subjects")),
        _spec("ka.req.binding.subjects.user_names", L, "Users a binding binds.",
              _subjects("User")),
        _spec("ka.req.binding.subjects.serviceaccount_names", L,
              "Service accounts a binding binds.", _subjects("ServiceAccount")),
        _spec("ka.req.binding.subjects.serviceaccount_ns_names", L,
              "Service accounts a binding binds, as namespace:name.",
              _subjects("ServiceAccount", namespaced=True)),
        _spec("ka.req.binding.subjects.group_names", L, "Groups a binding binds.",
              _subjects("Group")),
        _spec("ka.req.binding.role", S, "Role a binding binds to.",
              _scalar("requestObject", "roleRef", "name")),
        FieldSpec("ka.req.binding.subject.has_name", S,
                  "Deprecated: always 'true', kept for old rules.", arg="required",
                  source=SOURCE, factory=_always_true),
        _spec("ka.req.configmap.name", S, "Name of the configmap acted on.",
              _scalar("objectRef", "name")),
        _spec("ka.req.configmap.obj", S, "Data of the configmap in the request, as JSON text.",
              _scalar("requestObject", "data")),
        *_containers("containers", "containers"),
        _spec("ka.req.container.image", S, "Deprecated: image of the pod's first container.",
              _first_image),
        _spec("ka.req.container.image.repository", S,
              "Deprecated: image repository of the pod's first container.", _first_repository),
        _spec("ka.req.container.privileged", S,
              "Deprecated: 'true' if any container of the pod is privileged, else 'false'.",
              _any_privileged),
        _spec("ka.req.pod.host_ipc", S, "The pod's hostIPC flag.",
              _scalar("requestObject", "spec", "hostIPC")),
        _spec("ka.req.pod.host_network", S, "The pod's hostNetwork flag.",
              _scalar("requestObject", "spec", "hostNetwork")),
        _spec("ka.req.container.host_network", S, "Deprecated name of ka.req.pod.host_network.",
              _scalar("requestObject", "spec", "hostNetwork")),
        _spec("ka.req.pod.host_pid", S, "The pod's hostPID flag.",
              _scalar("requestObject", "spec", "hostPID")),
        _spec("ka.req.pod.run_as_user", S, "runAsUser of the pod's securityContext.",
              _scalar("requestObject", "spec", "securityContext", "runAsUser")),
        _spec("ka.req.pod.run_as_group", S, "runAsGroup of the pod's securityContext.",
              _scalar("requestObject", "spec", "securityContext", "runAsGroup")),
        _spec("ka.req.pod.fs_group", S, "fsGroup of the pod's securityContext.",
              _scalar("requestObject", "spec", "securityContext", "fsGroup")),
        _spec("ka.req.pod.supplemental_groups", L,
              "supplementalGroups of the pod's securityContext.",
              _array("requestObject", "spec", "securityContext", "supplementalGroups")),
        _spec("ka.req.pod.volumes.hostpath", L, "Host paths of the pod's hostPath volumes.",
              _spread("requestObject", "spec", "volumes", "hostPath", "path"), True),
        FieldSpec("ka.req.volume.hostpath", S,
                  "Deprecated: 'true' if a hostPath volume is this path (or starts with it, "
                  "when the argument ends with *), else 'false'.", arg="required",
                  source=SOURCE, factory=_uses_host_path("ka.req.volume.hostpath")),
        _spec("ka.req.pod.volumes.flexvolume_driver", L, "Drivers of the pod's flexVolumes.",
              _spread("requestObject", "spec", "volumes", "flexVolume", "driver"), True),
        _spec("ka.req.pod.volumes.volume_type", L,
              "Types of the pod's volumes (hostPath, configMap, emptyDir...).",
              _volume_types, True),
        _spec("ka.req.role.rules", L, "Rules of the (cluster) role, each as JSON text.",
              _array("requestObject", "rules")),
        _spec("ka.req.role.rules.apiGroups", L, "API groups the role's rules name.",
              _flat("requestObject", "rules", "apiGroups"), True),
        _spec("ka.req.role.rules.nonResourceURLs", L, "Non-resource URLs the role's rules name.",
              _flat("requestObject", "rules", "nonResourceURLs"), True),
        _spec("ka.req.role.rules.verbs", L, "Verbs the role's rules grant.",
              _flat("requestObject", "rules", "verbs"), True),
        _spec("ka.req.role.rules.resources", L, "Resources the role's rules name.",
              _flat("requestObject", "rules", "resources"), True),
        _spec("ka.req.service.type", S, "Type of the service (ClusterIP, NodePort...).",
              _scalar("requestObject", "spec", "type")),
        _spec("ka.req.service.ports", L, "Ports of the service, each as JSON text.",
              _array("requestObject", "spec", "ports"), True),
        _spec("ka.resp.name", S, "Name of the object in the response (the name a create gave).",
              _scalar("responseObject", "metadata", "name")),
        _spec("ka.response.code", S, "HTTP status of the response, e.g. 201.",
              _scalar("responseStatus", "code")),
        _spec("ka.response.reason", S, "Reason of the response (mostly for failures).",
              _scalar("responseStatus", "reason")),
        _spec("ka.useragent", S, "User agent of the client.", _scalar("userAgent")),
        _spec("ka.sourceips", L, "IP addresses the request came from.",
              _array("sourceIPs"), True),
        _spec("ka.cluster.name", S, "Name of the cluster (annotation cluster_name).",
              _annotation("cluster_name")),
        *_containers("initContainers", "init containers"),
        *_containers("ephemeralContainers", "ephemeral containers"),
    ),
)


CLASSES = (K8SAUDIT,)
