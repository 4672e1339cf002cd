"""A corpus of Kubernetes audit events, as an API server's webhook backend sends them, with the
rules each must fire (Falco's k8s_audit_rules.yaml and rules/lanner_k8s_audit_rules.yaml, all
matching rules reported) and output fields those alerts must carry.

Events are written the way kube-apiserver 1.31 writes them for the kubectl command named in
each case (stages, verbs, URIs, objectRef, annotations, request and response objects as the
audit policy of docs/k8s-audit.md logs them). Each has its own stageTimestamp second, so an
alert's ``evt.time`` tells which event raised it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

T0_SECONDS = 1_767_258_000  # 2026-01-01T09:00:00Z
ADMIN = "kubernetes-admin"  # in Falco's allowed_k8s_users: no "Disallowed K8s User" noise


def stamp(n: int, micros: int = 250_000) -> str:
    seconds = T0_SECONDS + n
    hh, mm, ss = (seconds // 3600) % 24, (seconds // 60) % 60, seconds % 60
    return f"2026-01-01T{hh:02d}:{mm:02d}:{ss:02d}.{micros:06d}Z"


def time_ns(n: int, micros: int = 250_000) -> int:
    return (T0_SECONDS + n) * 1_000_000_000 + micros * 1000


def audit_event(n: int, verb: str, resource: str | None = None, *, name: str | None = None,
                ns: str | None = "default", subresource: str | None = None, group: str = "",
                user: str = ADMIN, groups: tuple[str, ...] = ("system:masters",
                                                             "system:authenticated"),
                stage: str = "ResponseComplete", code: int = 200, uri: str | None = None,
                request: dict[str, Any] | None = None, response: dict[str, Any] | None = None,
                decision: str = "allow", impersonated: str | None = None,
                reason: str | None = None) -> dict[str, Any]:
    """One audit.k8s.io/v1 Event."""
    if uri is None:
        base = f"/apis/{group}/v1" if group else "/api/v1"
        parts = [base] + ([f"namespaces/{ns}"] if ns else []) + [resource or ""]
        if (name and verb != "create") or subresource:
            parts.append(name or "")
        if subresource:
            parts.append(subresource)
        uri = "/".join(parts)
    event: dict[str, Any] = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1",
        "level": "RequestResponse" if request or response else "Metadata",
        "auditID": f"6a1c2e4f-0000-4000-8000-{n:012d}", "stage": stage, "requestURI": uri,
        "verb": verb,
        "user": {"username": user, "groups": list(groups)},
        "sourceIPs": ["10.0.0.15"],
        "userAgent": "kubectl/v1.31.2 (linux/amd64) kubernetes/5864a46",
        "requestReceivedTimestamp": stamp(n, 100_000),
        "stageTimestamp": stamp(n),
        "annotations": {"authorization.k8s.io/decision": decision,
                        "authorization.k8s.io/reason": reason if reason is not None else (
                            'RBAC: allowed by ClusterRoleBinding "cluster-admin" of ClusterRole '
                            '"cluster-admin" to Group "system:masters"')},
    }
    if resource is not None:
        ref: dict[str, Any] = {"resource": resource, "apiVersion": "v1"}
        if group:
            ref["apiGroup"] = group
        if ns:
            ref["namespace"] = ns
        if name:
            ref["name"] = name
        if subresource:
            ref["subresource"] = subresource
        event["objectRef"] = ref
    if stage != "ResponseStarted" and stage != "RequestReceived":
        status: dict[str, Any] = {"metadata": {}, "code": code}
        if code >= 400:
            status.update(status="Failure", reason="Forbidden" if code == 403 else "NotFound")
        event["responseStatus"] = status
    if request is not None:
        event["requestObject"] = request
    if response is not None:
        event["responseObject"] = response
    if impersonated is not None:
        event["impersonatedUser"] = {"username": impersonated, "groups": ["developers"]}
    return event


def pod(name: str, *containers: dict[str, Any], init: tuple[dict[str, Any], ...] = (),
        **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"containers": list(containers), **spec}
    if init:
        body["initContainers"] = list(init)
    return {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": name}, "spec": body}


def container(name: str, image: str, **security: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": image,
                         "resources": {}, "imagePullPolicy": "IfNotPresent"}
    if security:
        c["securityContext"] = security
    return c


def created(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": f"uid-{name}"}}


@dataclass
class Case:
    title: str  # the kubectl command, or what happened
    event: dict[str, Any]
    fires: set[str]  # exactly the rules that must fire
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)  # rule -> output fields


def _pod_create(n: int, title: str, spec: dict[str, Any], fires: set[str],
                fields: dict[str, dict[str, Any]] | None = None, ns: str = "default",
                user: str = ADMIN) -> Case:
    name = spec["metadata"]["name"]
    ev = audit_event(n, "create", "pods", name=name, ns=ns, code=201, request=spec,
                     response=created(name), user=user)
    return Case(title, ev, fires, fields or {})


def cases() -> list[Case]:
    """Every case, numbered from 1 (the event's second after T0)."""
    nginx = container("web", "nginx:1.27")
    role_rules = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]
    out: list[Case] = [
        _pod_create(1, "kubectl run priv --image=nginx --privileged",
                    pod("priv", container("priv", "nginx:1.27", privileged=True)),
                    {"Create Privileged Pod"},
                    {"Create Privileged Pod": {
                        "ka.user.name": ADMIN, "ka.resp.name": "priv",
                        "ka.target.namespace": "default", "ka.target.resource": "pods",
                        "ka.req.pod.containers.image": ["nginx:1.27"],
                        "ka.req.pod.initContainers.image": None}}),
        _pod_create(2, "pod whose init container is privileged",
                    pod("init-priv", nginx,
                        init=(container("setup", "busybox:1.36", privileged=True),)),
                    {"Create Privileged Pod"},
                    {"Create Privileged Pod": {
                        "ka.req.pod.initContainers.image": ["busybox:1.36"],
                        "ka.req.pod.containers.image": ["nginx:1.27"]}}),
        _pod_create(3, "privileged pod of an allowed image (Falco itself)",
                    pod("falco", container("falco", "docker.io/falcosecurity/falco:0.39.2",
                                           privileged=True)),
                    set()),
        _pod_create(4, "pod mounting the Docker socket",
                    pod("dind", nginx, volumes=[
                        {"name": "sock", "hostPath": {"path": "/var/run/docker.sock",
                                                      "type": "Socket"}},
                        {"name": "tmp", "emptyDir": {}}]),
                    {"Create Sensitive Mount Pod"},
                    {"Create Sensitive Mount Pod": {
                        "ka.resp.name": "dind",
                        "jevt.value[/requestObject/spec/volumes]":
                            '[{"name":"sock","hostPath":{"path":"/var/run/docker.sock",'
                            '"type":"Socket"}},{"name":"tmp","emptyDir":{}}]'}}),
        _pod_create(5, "pod mounting the host's /etc",
                    pod("etc", nginx, volumes=[{"name": "etc", "hostPath": {"path": "/etc"}}]),
                    {"Create Sensitive Mount Pod"}),
        _pod_create(6, "pod mounting a harmless host path",
                    pod("logs", nginx, volumes=[{"name": "l", "hostPath": {"path": "/var/log"}}]),
                    set()),
        _pod_create(7, "pod on the host network",
                    pod("hostnet", nginx, hostNetwork=True),
                    {"Create HostNetwork Pod"},
                    {"Create HostNetwork Pod": {"ka.resp.name": "hostnet",
                                                "ka.req.pod.containers.image": ["nginx:1.27"]}}),
        _pod_create(8, "pod in the host pid namespace", pod("hostpid", nginx, hostPID=True),
                    {"Create HostPid Pod"}),
        _pod_create(9, "pod in the host ipc namespace", pod("hostipc", nginx, hostIPC=True),
                    {"Create HostIPC Pod"}),
        _pod_create(10, "kubectl run web --image=nginx (nothing special)", pod("web", nginx),
                    set()),
        _pod_create(11, "pod in kube-system of an unknown image",
                    pod("miner", container("m", "docker.io/xmrig/xmrig:6.21")),
                    {"Pod Created in Kube Namespace"},
                    {"Pod Created in Kube Namespace": {
                        "ka.target.namespace": "kube-system",
                        "ka.req.pod.containers.image": ["docker.io/xmrig/xmrig:6.21"]}},
                    ns="kube-system"),
        _pod_create(12, "metrics-server pod created in kube-system by its replicaset",
                    pod("metrics-server-x", container(
                        "metrics-server", "registry.k8s.io/metrics-server-amd64:v0.3.6")),
                    set(), ns="kube-system",
                    user="system:serviceaccount:kube-system:replicaset-controller"),
        Case("kubectl create service nodeport web --tcp=80:8080",
             audit_event(13, "create", "services", name="web", code=201, request={
                 "kind": "Service", "apiVersion": "v1", "metadata": {"name": "web"},
                 "spec": {"type": "NodePort", "ports": [
                     {"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}]}},
                 response=created("web")),
             {"Create NodePort Service", "K8s Service Created"},
             {"Create NodePort Service": {
                 "ka.target.name": "web", "ka.target.namespace": "default",
                 "ka.req.service.ports": ['{"name":"80-8080","protocol":"TCP","port":80,'
                                          '"targetPort":8080}']},
              "K8s Service Created": {"ka.response.code": "201", "ka.auth.decision": "allow"}}),
        Case("kubectl create configmap aws --from-literal=aws_access_key_id=AKIA...",
             audit_event(14, "create", "configmaps", name="aws", code=201, request={
                 "kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "aws"},
                 "data": {"aws_access_key_id": "AKIAIOSFODNN7EXAMPLE"}},
                 response=created("aws")),
             {"Create/Modify Configmap With Private Credentials", "K8s ConfigMap Created"},
             {"Create/Modify Configmap With Private Credentials": {
                 "ka.req.configmap.name": "aws", "ka.verb": "create",
                 "ka.target.resource": "configmaps"}}),
        Case("kubectl edit configmap app (adds a password)",
             audit_event(15, "update", "configmaps", name="app", request={
                 "kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "app"},
                 "data": {"db.conf": "user=app\npassword=hunter2\n"}}),
             {"Create/Modify Configmap With Private Credentials"},
             {"Create/Modify Configmap With Private Credentials": {"ka.verb": "update"}}),
        Case("kubectl create configmap settings --from-literal=color=blue",
             audit_event(16, "create", "configmaps", name="settings", code=201, request={
                 "kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "settings"},
                 "data": {"color": "blue"}}, response=created("settings")),
             {"K8s ConfigMap Created"}),
        Case("curl -k https://apiserver/api/v1/namespaces/default/pods (anonymous, allowed)",
             audit_event(17, "list", "pods", user="system:anonymous",
                         groups=("system:unauthenticated",),
                         reason='RBAC: allowed by RoleBinding "open/default" of ClusterRole '
                                '"view" to User "system:anonymous"'),
             {"Anonymous Request Allowed"},
             {"Anonymous Request Allowed": {
                 "ka.user.name": "system:anonymous", "ka.verb": "list",
                 "ka.uri": "/api/v1/namespaces/default/pods",
                 "ka.auth.reason": 'RBAC: allowed by RoleBinding "open/default" of ClusterRole '
                                   '"view" to User "system:anonymous"'}}),
        Case("anonymous health check (GET /healthz)",
             audit_event(18, "get", None, uri="/healthz", user="system:anonymous",
                         groups=("system:unauthenticated",), reason=""),
             set()),
        Case("kubectl exec -it web -- sh -c id",
             audit_event(19, "create", "pods", name="web", subresource="exec",
                         stage="ResponseStarted",
                         uri="/api/v1/namespaces/default/pods/web/exec?command=sh&command=-c"
                             "&command=id&container=web&stdin=true&stdout=true&tty=true"),
             {"Attach/Exec Pod"},
             {"Attach/Exec Pod": {"ka.target.name": "web", "ka.target.subresource": "exec",
                                  "ka.uri.param[command]": "sh",
                                  "ka.target.namespace": "default"}}),
        Case("kubectl exec (websocket GET) with an encoded command",
             audit_event(20, "get", "pods", name="api", ns="shop", subresource="exec",
                         stage="ResponseStarted",
                         uri="/api/v1/namespaces/shop/pods/api/exec?command=cat%20%2Fetc%2F"
                             "shadow&stdout=true"),
             {"Attach/Exec Pod"},
             {"Attach/Exec Pod": {"ka.uri.param[command]": "cat /etc/shadow",
                                  "ka.target.namespace": "shop"}}),
        Case("kubectl attach -it web",
             audit_event(21, "create", "pods", name="web", subresource="attach",
                         stage="ResponseStarted",
                         uri="/api/v1/namespaces/default/pods/web/attach?container=web"
                             "&stdin=true&stdout=true&tty=true"),
             {"Attach/Exec Pod"},
             {"Attach/Exec Pod": {"ka.target.subresource": "attach",
                                  "ka.uri.param[command]": None}}),
        Case("the ResponseComplete record of that exec (rules use ResponseStarted)",
             audit_event(22, "create", "pods", name="web", subresource="exec",
                         uri="/api/v1/namespaces/default/pods/web/exec?command=id"),
             set()),
        Case("kubectl port-forward pod/web 8080:80",
             audit_event(23, "create", "pods", name="web", subresource="portforward",
                         stage="ResponseStarted"),
             {"port-forward"},
             {"port-forward": {"ka.target.name": "web", "ka.target.subresource": "portforward"}}),
        Case("kubectl debug -it web --image=busybox (ephemeral container)",
             audit_event(24, "patch", "pods", name="web", subresource="ephemeralcontainers",
                         request={"kind": "EphemeralContainers", "apiVersion": "v1",
                                  "ephemeralContainers": [
                                      {"name": "debugger-x7k", "image": "busybox:1.36",
                                       "stdin": True, "tty": True}]}),
             {"EphemeralContainers Created"},
             {"EphemeralContainers Created": {
                 "ka.target.name": "web",
                 "jevt.value[/requestObject/ephemeralContainers/0/name]": "debugger-x7k",
                 "jevt.value[/requestObject/ephemeralContainers/0/image]": "busybox:1.36"}}),
        Case("kubectl create namespace crypto",
             audit_event(25, "create", "namespaces", name="crypto", ns=None, code=201,
                         request={"kind": "Namespace", "apiVersion": "v1",
                                  "metadata": {"name": "crypto"}},
                         response=created("crypto")),
             {"Create Disallowed Namespace", "K8s Namespace Created"},
             {"Create Disallowed Namespace": {"ka.target.name": "crypto",
                                              "ka.target.resource": "namespaces"}}),
        Case("kubectl create serviceaccount backdoor -n kube-system",
             audit_event(26, "create", "serviceaccounts", name="backdoor", ns="kube-system",
                         code=201, response=created("backdoor")),
             {"Service Account Created in Kube Namespace", "K8s Serviceaccount Created"},
             {"Service Account Created in Kube Namespace": {
                 "ka.target.name": "backdoor", "ka.target.namespace": "kube-system"}}),
        Case("coredns service account created in kube-system (a known one)",
             audit_event(27, "create", "serviceaccounts", name="coredns", ns="kube-system",
                         code=201, response=created("coredns")),
             {"K8s Serviceaccount Created"}),
        Case("kubectl patch clusterrole system:aggregate-to-edit",
             audit_event(28, "patch", "clusterroles", name="system:aggregate-to-edit", ns=None,
                         group="rbac.authorization.k8s.io",
                         request={"rules": [{"apiGroups": ["*"], "resources": ["*"],
                                             "verbs": ["*"]}]}),
             {"System ClusterRole Modified/Deleted"},
             {"System ClusterRole Modified/Deleted": {
                 "ka.target.name": "system:aggregate-to-edit", "ka.verb": "patch"}}),
        Case("kubectl create clusterrolebinding pwn --clusterrole=cluster-admin "
             "--serviceaccount=default:default",
             audit_event(29, "create", "clusterrolebindings", name="pwn", ns=None, code=201,
                         group="rbac.authorization.k8s.io", request={
                             "kind": "ClusterRoleBinding",
                             "apiVersion": "rbac.authorization.k8s.io/v1",
                             "metadata": {"name": "pwn"},
                             "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                         "kind": "ClusterRole", "name": "cluster-admin"},
                             "subjects": [{"kind": "ServiceAccount", "name": "default",
                                           "namespace": "default"}]},
                         response=created("pwn")),
             {"Attach to cluster-admin Role", "K8s ClusterRoleBinding Created"},
             {"Attach to cluster-admin Role": {
                 "ka.req.binding.subjects": ['{"kind":"ServiceAccount","name":"default",'
                                             '"namespace":"default"}']},
              "K8s ClusterRoleBinding Created": {"ka.req.binding.role": "cluster-admin"}}),
        Case("kubectl create clusterrole everything --verb='*' --resource='*'",
             audit_event(30, "create", "clusterroles", name="everything", ns=None, code=201,
                         group="rbac.authorization.k8s.io", request={
                             "kind": "ClusterRole", "metadata": {"name": "everything"},
                             "rules": [{"apiGroups": [""], "resources": ["*"],
                                        "verbs": ["*"]}]},
                         response=created("everything")),
             {"ClusterRole With Wildcard Created", "K8s ClusterRole Created"},
             {"ClusterRole With Wildcard Created": {
                 "ka.target.name": "everything",
                 "ka.req.role.rules": ['{"apiGroups":[""],"resources":["*"],"verbs":["*"]}']}}),
        Case("kubectl create clusterrole exec --verb=create,get --resource=pods/exec",
             audit_event(31, "create", "clusterroles", name="exec", ns=None, code=201,
                         group="rbac.authorization.k8s.io", request={
                             "kind": "ClusterRole", "metadata": {"name": "exec"},
                             "rules": [{"apiGroups": [""], "resources": ["pods/exec"],
                                        "verbs": ["create", "get"]}]},
                         response=created("exec")),
             {"ClusterRole With Pod Exec Created", "ClusterRole With Write Privileges Created",
              "K8s ClusterRole Created"},
             {"ClusterRole With Pod Exec Created": {"ka.target.name": "exec",
                                                    "ka.target.resource": "clusterroles"}}),
        Case("kubectl create role deployer --verb=update,patch --resource=deployments",
             audit_event(32, "create", "roles", name="deployer", code=201,
                         group="rbac.authorization.k8s.io", request={
                             "kind": "Role", "metadata": {"name": "deployer"},
                             "rules": [{"apiGroups": ["apps"], "resources": ["deployments"],
                                        "verbs": ["update", "patch"]}]},
                         response=created("deployer")),
             {"ClusterRole With Write Privileges Created", "K8s Role Created"},
             {"K8s Role Created": {"ka.target.name": "deployer",
                                   "ka.target.namespace": "default"}}),
        Case("kubectl create role reader --verb=get,list --resource=pods",
             audit_event(33, "create", "roles", name="reader", code=201,
                         group="rbac.authorization.k8s.io", request={
                             "kind": "Role", "metadata": {"name": "reader"},
                             "rules": role_rules}, response=created("reader")),
             {"K8s Role Created"}),
        Case("kubectl create deployment web --image=nginx",
             audit_event(34, "create", "deployments", name="web", group="apps", code=201,
                         response=created("web")),
             {"K8s Deployment Created"},
             {"K8s Deployment Created": {"ka.target.name": "web", "ka.response.code": "201"}}),
        Case("kubectl delete deployment web",
             audit_event(35, "delete", "deployments", name="web", group="apps"),
             {"K8s Deployment Deleted"}),
        Case("kubectl get secret db-password -o yaml",
             audit_event(36, "get", "secrets", name="db-password"),
             {"K8s Secret Get Successfully"},
             {"K8s Secret Get Successfully": {"ka.target.name": "db-password",
                                              "ka.response.code": "200"}}),
        Case("a developer tries to read a secret and is forbidden",
             audit_event(37, "get", "secrets", name="db-password", code=403, user="dev",
                         groups=("developers",), decision="forbid", reason=""),
             {"K8s Secret Get Unsuccessfully Tried", "Disallowed K8s User"},
             {"K8s Secret Get Unsuccessfully Tried": {"ka.response.code": "403",
                                                      "ka.auth.decision": "forbid"}}),
        Case("kubectl create secret generic api-key --from-literal=key=s3cr3t",
             audit_event(38, "create", "secrets", name="api-key", code=201,
                         response=created("api-key")),
             {"K8s Secret Created"}),
        Case("kubectl apply -f ingress.yaml (no tls)",
             audit_event(39, "create", "ingresses", name="shop", group="networking.k8s.io",
                         code=201, request={"kind": "Ingress", "metadata": {"name": "shop"},
                                            "spec": {"rules": [{"host": "shop.example"}]}},
                         response=created("shop")),
             {"Ingress Object without TLS Certificate Created"},
             {"Ingress Object without TLS Certificate Created": {"ka.target.name": "shop"}}),
        Case("ingress with tls",
             audit_event(40, "create", "ingresses", name="secure", group="networking.k8s.io",
                         code=201, request={"kind": "Ingress", "metadata": {"name": "secure"},
                                            "spec": {"tls": [{"hosts": ["secure.example"],
                                                              "secretName": "secure-tls"}]}},
                         response=created("secure")),
             set()),
        Case("a user outside the allowed list lists pods",
             audit_event(41, "list", "pods", user="mallory", groups=("system:authenticated",)),
             {"Disallowed K8s User"},
             {"Disallowed K8s User": {"ka.user.name": "mallory", "ka.verb": "list",
                                      "ka.target.name": None}}),
        Case("kubectl create rolebinding view --clusterrole=view --user=alice",
             audit_event(42, "create", "rolebindings", name="view", code=201,
                         group="rbac.authorization.k8s.io", request={
                             "kind": "RoleBinding", "metadata": {"name": "view"},
                             "roleRef": {"kind": "ClusterRole", "name": "view"},
                             "subjects": [{"kind": "User", "name": "alice"}]},
                         response=created("view")),
             {"K8s RoleBinding Created"},
             {"K8s RoleBinding Created": {"ka.req.binding.role": "view"}}),
        Case("kubectl delete namespace crypto",
             audit_event(43, "delete", "namespaces", name="crypto", ns=None),
             {"K8s Namespace Deleted"}),
        Case("replicaset controller creates a pod (system user)",
             audit_event(44, "create", "pods", name="web-7d9c", code=201,
                         user="system:serviceaccount:kube-system:replicaset-controller",
                         request=pod("web-7d9c", nginx), response=created("web-7d9c")),
             set()),
        Case("privileged pod, RequestReceived stage (rules wait for the response)",
             audit_event(45, "create", "pods", name="priv2", stage="RequestReceived",
                         request=pod("priv2", container("p", "nginx:1.27", privileged=True))),
             set()),
        Case("kubelet updates a pod's status",
             audit_event(46, "patch", "pods", name="web", subresource="status",
                         user="system:node:worker-1", groups=("system:nodes",)),
             set()),
        Case("a node registers itself",
             audit_event(47, "create", "nodes", name="worker-3", ns=None, code=201,
                         user="system:node:worker-3", groups=("system:nodes",),
                         response=created("worker-3")),
             set()),
        # rules/lanner_k8s_audit_rules.yaml
        Case("kubectl create clusterrolebinding open --clusterrole=view "
             "--group=system:unauthenticated",
             audit_event(48, "create", "clusterrolebindings", name="open", ns=None, code=201,
                         group="rbac.authorization.k8s.io", request={
                             "kind": "ClusterRoleBinding", "metadata": {"name": "open"},
                             "roleRef": {"kind": "ClusterRole", "name": "view"},
                             "subjects": [{"kind": "Group", "name": "system:unauthenticated",
                                           "apiGroup": "rbac.authorization.k8s.io"}]},
                         response=created("open")),
             {"K8s role bound to anonymous users", "K8s ClusterRoleBinding Created"},
             {"K8s role bound to anonymous users": {"ka.target.name": "open",
                                                    "ka.req.binding.role": "view"}}),
        Case("kubectl create token deployer -n ci",
             audit_event(49, "create", "serviceaccounts", name="deployer", ns="ci",
                         subresource="token", code=201),
             {"K8s service account token created by a user", "K8s Serviceaccount Created"},
             {"K8s service account token created by a user": {
                 "ka.target.name": "deployer", "ka.target.namespace": "ci",
                 "ka.sourceips": ["10.0.0.15"]}}),
        Case("kubectl apply -f mutating-webhook.yaml",
             audit_event(50, "create", "mutatingwebhookconfigurations", name="inject", ns=None,
                         group="admissionregistration.k8s.io", code=201,
                         response=created("inject")),
             {"K8s admission webhook configuration changed"},
             {"K8s admission webhook configuration changed": {
                 "ka.target.resource": "mutatingwebhookconfigurations", "ka.verb": "create"}}),
        Case("kubectl get --raw /api/v1/nodes/worker-1/proxy/pods",
             audit_event(51, "get", "nodes", name="worker-1", ns=None, subresource="proxy"),
             {"K8s kubelet API reached through the API server"},
             {"K8s kubelet API reached through the API server": {
                 "ka.target.name": "worker-1", "ka.uri": "/api/v1/nodes/worker-1/proxy"}}),
        Case("kubectl certificate approve alice-csr",
             audit_event(52, "update", "certificatesigningrequests", name="alice-csr", ns=None,
                         subresource="approval", group="certificates.k8s.io"),
             {"K8s certificate signing request approved by a user"},
             {"K8s certificate signing request approved by a user": {
                 "ka.target.name": "alice-csr"}}),
        Case("kubectl get pods --as=alice",
             audit_event(53, "list", "pods", impersonated="alice"),
             {"K8s request made by impersonation"},
             {"K8s request made by impersonation": {"ka.impuser.name": "alice",
                                                    "ka.user.name": ADMIN}}),
        Case("kubectl get pods (an administrator, nothing to report)",
             audit_event(54, "list", "pods"),
             set()),
    ]
    return out
