"""The chart's Kubernetes audit webhook: its Deployment, TLS, token, rules and policies, and
its container run as rendered.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.helm_support import (
    AUDIT,
    CHART,
    CI_VALUES,
    FULLNAME,
    NAMESPACE,
    RELEASE,
    ROOT,
    SCENARIOS,
    Helm,
    Manifests,
    audit_args,
    container,
    detect_args,
    load_rules,
    pod_spec,
    rules_files,
)

# ---- Kubernetes audit webhook ---------------------------------------------------------------


AUDIT_RULES = "/etc/lanner/rules/lanner_k8s_audit_rules.yaml"
DEFAULT_RULES = "/etc/lanner/rules/lanner_rules.yaml"


def test_k8saudit_off_by_default(helm: Helm) -> None:
    m = helm.render()
    assert not [d for d in m.docs if d["metadata"]["name"].startswith(AUDIT)]
    assert set(m.get("ConfigMap", f"{FULLNAME}-rules")["data"]) == {"lanner_rules.yaml"}


def test_k8saudit_deployment(helm: Helm, tmp_path: Path) -> None:
    from detector import cli_k8saudit
    from detector.sources.k8saudit import DEFAULT_PATH, DEFAULT_PORT, TOKEN_ENV

    m = helm.render("--set", "k8saudit.enabled=true")
    dep = m.audit
    assert dep["spec"]["replicas"] == 1
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "k8saudit"
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()

    # Least privilege: non-root, nothing of the host, no Kubernetes API token.
    spec = pod_spec(dep)
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == AUDIT
    assert m.get("ServiceAccount", AUDIT)["automountServiceAccountToken"] is False
    assert not any(spec.get(k) for k in ("hostPID", "hostNetwork", "hostIPC"))
    assert not [v for v in spec["volumes"] if "hostPath" in v]
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] not in (0, None)
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(dep, "k8saudit")
    assert c["securityContext"] == {"allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True, "privileged": False,
                                    "capabilities": {"drop": ["ALL"]}}
    assert c["resources"]["requests"] and c["resources"]["limits"]
    # the detector's image (it has `lanner detect`), unless k8saudit.image says otherwise
    assert c["image"] == container(m.detector, "detector")["image"]

    # The real CLI's flags: the webhook alone, where the Service and the probes point.
    args = audit_args(m)
    assert args.source == "k8saudit" and cli_k8saudit.wanted(args)
    assert args.k8s_audit == ("0.0.0.0", DEFAULT_PORT)
    assert args.k8s_audit_path == DEFAULT_PATH == "/k8s-audit"
    assert args.k8s_audit_cert is None and args.k8s_audit_client_ca is None
    assert [str(p) for p in args.rules] == [DEFAULT_RULES, AUDIT_RULES]
    assert args.output == [f"grpc://{FULLNAME}-hub-headless.{NAMESPACE}.svc:5060", "stdout"]
    assert args.output == detect_args(m).output  # published exactly as the detectors do
    assert args.metrics == "0.0.0.0:8765"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"webhook": DEFAULT_PORT, "metrics": 8765}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "webhook", "scheme": "HTTP"}

    # The Service the API server's webhook kubeconfig names.
    svc = m.get("Service", AUDIT)
    assert svc["spec"]["type"] == "ClusterIP"
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == \
        [("webhook", 9765, "webhook")]
    assert svc["spec"]["selector"].items() <= labels.items()

    # Tokens: the webhook's own (generated), and the detectors' gRPC token for the hub.
    env = {e["name"]: e for e in c["env"]}
    assert env[TOKEN_ENV]["valueFrom"]["secretKeyRef"] == {"name": AUDIT, "key": "token"}
    detector_env = {e["name"]: e for e in container(m.detector, "detector")["env"]}
    assert env["LANNER_HUB_TOKEN"] == detector_env["LANNER_HUB_TOKEN"]
    assert not [e for e in c["env"] if "value" in e and e["name"] != "PYTHONUNBUFFERED"]
    secret = m.get("Secret", AUDIT)
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    token = m.secret_data(AUDIT)["token"]
    assert re.fullmatch(r"[A-Za-z0-9]{40}", token)
    assert helm.render("--set", "k8saudit.enabled=true").secret_data(AUDIT)["token"] != token
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert re.search(r'lookup "v1" "Secret" [^\n]*"lanner\.k8saudit\.fullname"', helpers)
    for doc in m.docs:
        if doc["kind"] != "Secret":
            assert token not in yaml.safe_dump(doc), doc["metadata"]["name"]

    # The rules: the project's audit rules file, shipped in the rules ConfigMap, loads with the
    # syscall rules (whose macros custom rules may use).
    shipped = m.get("ConfigMap", f"{FULLNAME}-rules")["data"]
    assert shipped["lanner_k8s_audit_rules.yaml"].strip() == \
        (ROOT / "rules" / "lanner_k8s_audit_rules.yaml").read_text().strip()
    engine = load_rules(m, tmp_path, "k8saudit")
    audit_rules = {r.name for r in engine.rules if r.source == "k8s_audit"}
    assert "K8s role bound to anonymous users" in audit_rules
    # the detectors do not load them
    assert [str(p) for p in detect_args(m).rules] == [DEFAULT_RULES]


def _post(url: str, body: bytes, token: str | None) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


_ANONYMOUS_BINDING = {
    "kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [{
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "auditID": "chart-1",
        "stage": "ResponseComplete", "verb": "create",
        "requestURI": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        "user": {"username": "kubernetes-admin", "groups": ["system:masters"]},
        "objectRef": {"resource": "clusterrolebindings", "name": "anon",
                      "apiGroup": "rbac.authorization.k8s.io", "apiVersion": "v1"},
        "responseStatus": {"code": 201}, "stageTimestamp": "2026-01-01T09:00:00.000000Z",
        "requestObject": {
            "kind": "ClusterRoleBinding", "apiVersion": "rbac.authorization.k8s.io/v1",
            "metadata": {"name": "anon"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "view"},
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io",
                          "name": "system:anonymous"}]}}]}


def test_k8saudit_container_runs_as_rendered(helm: Helm, tmp_path: Path) -> None:
    """`lanner detect` with the Deployment's own arguments, rules and token: the probes' path
    answers, the token is required, and an audit event raises the chart's audit rule."""
    import json
    import queue
    import threading
    import urllib.request

    from detector.sources.k8saudit import TOKEN_ENV

    m = helm.render("--set", "k8saudit.enabled=true")
    argv = list(container(m.audit, "k8saudit")["args"][1:])
    # Only what cannot work outside the pod changes: the address (a free local port), the hub
    # (no DNS name here; stdout stays) and its exceptions, the metrics port, the rules' paths
    # (local copies).
    argv[argv.index("--k8s-audit") + 1] = "127.0.0.1:0"
    del argv[argv.index("--metrics"):argv.index("--metrics") + 2]
    grpc = next(i for i, a in enumerate(argv) if a.startswith("grpc://"))
    del argv[grpc - 1:grpc + 1]
    del argv[argv.index("--hub-rules"):argv.index("--hub-rules") + 2]
    files = rules_files(m, tmp_path, "k8saudit")
    start = argv.index("--rules") + 1
    argv[start:start + len(files)] = [str(f) for f in files]
    token = m.secret_data(AUDIT)["token"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANNER_")}
    proc = subprocess.Popen([sys.executable, "-m", "sidekick.cli", "detect", *argv], cwd=ROOT,
                            env={**env, TOKEN_ENV: token}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[tuple[str, str]] = queue.Queue()

    def pump(name: str, stream: Any) -> None:
        for line in stream:
            lines.put((name, line))

    for name, stream in (("out", proc.stdout), ("err", proc.stderr)):
        threading.Thread(target=pump, args=(name, stream), daemon=True).start()
    seen: list[str] = []

    def wait_for(pattern: str, stream: str) -> re.Match[str]:
        while True:
            try:
                name, line = lines.get(timeout=30)
            except queue.Empty:
                raise AssertionError(f"no {pattern!r} in {seen}") from None
            seen.append(line)
            if name == stream and (found := re.search(pattern, line)):
                return found

    try:
        url = wait_for(r"listening on (http://127\.0\.0\.1:\d+/k8s-audit) \(bearer token "
                       r"required\)", "err")[1]
        base = url.rsplit("/", 1)[0]
        with urllib.request.urlopen(f"{base}/healthz", timeout=10) as answer:  # the probes
            assert answer.status == 200
        body = json.dumps(_ANONYMOUS_BINDING).encode()
        assert _post(url, body, None)[0] == 401
        assert _post(url, body, "wrong-token")[0] == 401
        assert _post(url, body, token) == (200, b'{"accepted":1}')
        alert = json.loads(wait_for(r"^\{.*K8s role bound to anonymous users", "out").string)
        assert alert["source"] == "k8s_audit" and alert["priority"] == "Critical"
        assert alert["output_fields"]["ka.user.name"] == "kubernetes-admin"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_k8saudit_tls(helm: Helm) -> None:
    tls = ("--set", "k8saudit.enabled=true", "--set", "k8saudit.tls.enabled=true",
           "--set", "k8saudit.tls.secretName=audit-tls")
    m = helm.render(*tls)
    args = audit_args(m)
    assert (args.k8s_audit_cert, args.k8s_audit_key, args.k8s_audit_client_ca) == \
        ("/etc/lanner/tls/tls.crt", "/etc/lanner/tls/tls.key", None)
    c = container(m.audit, "k8saudit")
    mounts = {mt["name"]: mt for mt in c["volumeMounts"]}
    assert mounts["tls"] == {"name": "tls", "mountPath": "/etc/lanner/tls", "readOnly": True}
    volumes = {v["name"]: v for v in pod_spec(m.audit)["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "audit-tls"
    assert volumes["tls"]["secret"]["defaultMode"] == 0o440  # group: the pod's fsGroup
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert m.get("Service", AUDIT)["spec"]["ports"][0]["appProtocol"] == "https"

    # Mutual TLS: the kubelet has no client certificate, so the probes use the metrics port.
    m = helm.render(*tls, "--set", "k8saudit.tls.clientCA.configMapName=kube-root-ca.crt")
    assert audit_args(m).k8s_audit_client_ca == "/etc/lanner/client-ca/ca.crt"
    volumes = {v["name"]: v for v in pod_spec(m.audit)["volumes"]}
    assert volumes["client-ca"]["configMap"]["name"] == "kube-root-ca.crt"
    c = container(m.audit, "k8saudit")
    assert c["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    m = helm.render(*tls, "--set", "k8saudit.tls.clientCA.secretName=ca",
                    "--set", "k8saudit.metrics.enabled=false")
    c = container(m.audit, "k8saudit")
    assert c["readinessProbe"]["tcpSocket"] == {"port": "webhook"}
    assert audit_args(m).metrics is None
    assert {v["name"]: v for v in pod_spec(m.audit)["volumes"]}["client-ca"]["secret"] == \
        {"secretName": "ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}


def test_k8saudit_token_and_service_options(helm: Helm) -> None:
    from detector.sources.k8saudit import TOKEN_ENV

    on = ("--set", "k8saudit.enabled=true")
    m = helm.render(*on, "--set", "k8saudit.token.existingSecret=mine",
                    "--set", "k8saudit.token.existingSecretKey=t")
    env = {e["name"]: e for e in container(m.audit, "k8saudit")["env"]}
    assert env[TOKEN_ENV]["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "t"}
    assert m.find("Secret", AUDIT) is None
    m = helm.render(*on, "--set", "k8saudit.token.enabled=false")
    assert TOKEN_ENV not in {e["name"] for e in container(m.audit, "k8saudit")["env"]}
    assert m.find("Secret", AUDIT) is None

    m = helm.render(*on, "--set", "k8saudit.replicaCount=3",
                    "--set", "k8saudit.service.type=NodePort",
                    "--set", "k8saudit.service.nodePort=30765",
                    "--set", "k8saudit.service.clusterIP=10.96.0.100",
                    "--set", "k8saudit.path=/audit", "--set", "hub.enabled=false",
                    "--set", "falco.priority=warning")
    assert m.audit["spec"]["replicas"] == 3
    svc = m.get("Service", AUDIT)["spec"]
    assert (svc["type"], svc["clusterIP"], svc["ports"][0]["nodePort"]) == \
        ("NodePort", "10.96.0.100", 30765)
    args = audit_args(m)
    assert args.k8s_audit_path == "/audit"
    assert args.output == ["stdout"]  # no hub
    assert "LANNER_HUB_TOKEN" not in {e["name"] for e in container(m.audit, "k8saudit")["env"]}
    assert args.min_priority == detect_args(m).min_priority  # falco.priority: both


def test_k8saudit_from_the_seed_values(helm: Helm, tmp_path: Path) -> None:
    """The seed's `falco.load_plugins: [k8saudit, json]` and its rulesFile's
    k8s_audit_rules.yaml: the audit webhook runs, with the audit rules, and NOTES says how to
    point the API server at it."""
    m = helm.render(values=SCENARIOS["seed"])
    args = audit_args(m)
    assert [str(p) for p in args.rules] == [DEFAULT_RULES, AUDIT_RULES]
    assert args.output == [f"grpc://{FULLNAME}-hub-headless.{NAMESPACE}.svc:5060", "stdout"]
    assert args.format == "json"
    assert [str(p) for p in detect_args(m).rules] == [DEFAULT_RULES]
    assert "K8s role bound to anonymous users" in \
        {r.name for r in load_rules(m, tmp_path, "k8saudit").rules}
    notes = helm.notes("-f", str(CI_VALUES / "seed-values.yaml"))
    for hint in (f"server: http://{AUDIT}.{NAMESPACE}.svc:9765/k8s-audit",
                 f"kubectl -n {NAMESPACE} get secret {AUDIT} -o jsonpath='{{.data.token}}'",
                 "--audit-policy-file", "--audit-webhook-config-file", "docs/k8s-audit.md",
                 f"falco.load_plugins: k8saudit - the Kubernetes audit webhook runs as "
                 f"Deployment {AUDIT}"):
        assert hint in notes, hint
    # without k8saudit in load_plugins, nothing runs, and Falco's audit rules are left out
    m = helm.render("--set", "falco.load_plugins={json}",
                    "--set", "falco.rules_files={/etc/falco/falco_rules.yaml,"
                             "/etc/falco/k8s_audit_rules.yaml}")
    assert m.find("Deployment", AUDIT) is None
    assert "k8s_audit_rules.yaml is left out: the audit webhook is off" in \
        helm.notes("--set", "falco.rules_files={/etc/falco/k8s_audit_rules.yaml,"
                            "/etc/falco/falco_rules.yaml}")


def test_k8saudit_falco_plugin_settings(helm: Helm, tmp_path: Path) -> None:
    """The Falco chart's k8saudit setup (plugins, services) means what it meant there."""
    values = tmp_path / "falco-k8saudit.yaml"
    values.write_text(yaml.safe_dump({
        "falco": {
            "load_plugins": ["k8saudit", "json"],
            "plugins": [
                {"name": "k8saudit", "library_path": "libk8saudit.so",
                 "init_config": {"maxEventSize": 1048576, "webhookMaxBatchSize": 20000000},
                 "open_params": "http://:9766/audit"},
                {"name": "json", "library_path": "libjson.so", "init_config": ""}]},
        "services": [{"name": "k8saudit-webhook", "type": "NodePort",
                      "ports": [{"port": 9766, "nodePort": 30007, "protocol": "TCP"}]}]}))
    m = helm.render(values=[values])
    args = audit_args(m)
    assert (args.k8s_audit_path, args.k8s_audit_max_event_bytes,
            args.k8s_audit_max_batch_bytes) == ("/audit", 1048576, 20000000)
    port = m.get("Service", AUDIT)["spec"]["ports"][0]
    assert (port["port"], port["nodePort"]) == (9766, 30007)
    assert m.get("Service", AUDIT)["spec"]["type"] == "NodePort"
    notes = helm.notes("-f", str(values))
    assert "services[k8saudit-webhook] (a Falco chart key): read as the audit webhook's" in notes
    # init_config as JSON text, as falco.yaml allows
    values.write_text(yaml.safe_dump({"falco": {
        "load_plugins": ["k8saudit"],
        "plugins": [{"name": "k8saudit", "init_config": '{"maxEventSize": 4096}'}]}}))
    assert audit_args(helm.render(values=[values])).k8s_audit_max_event_bytes == 4096


def test_k8saudit_loads_falcos_audit_rules_from_custom_rules(helm: Helm, tmp_path: Path) -> None:
    from tests.upstream import upstream_file

    upstream = upstream_file("k8s_audit_rules.yaml")
    m = helm.render("--set", "falco.load_plugins={k8saudit}",
                    "--set", "falco.rules_files={/etc/falco/falco_rules.yaml,"
                             "/etc/falco/k8s_audit_rules.yaml}",
                    "--set-file", f"customRules.k8s_audit_rules\\.yaml={upstream}")
    args = audit_args(m)
    assert [str(p) for p in args.rules] == \
        [DEFAULT_RULES, AUDIT_RULES, "/etc/lanner/rules.d/k8s_audit_rules.yaml"]
    names = {r.name for r in load_rules(m, tmp_path, "k8saudit").rules}
    assert {"Create Privileged Pod", "K8s role bound to anonymous users"} <= names


def test_k8saudit_rules_options(helm: Helm) -> None:
    on = ("--set", "k8saudit.enabled=true")
    one = helm.render(*on, "--set", "customRules.a\\.yaml=- list: one\n  items: [a]")
    two = helm.render(*on, "--set", "customRules.a\\.yaml=- list: one\n  items: [b]")
    assert [str(p) for p in audit_args(one).rules] == \
        [DEFAULT_RULES, AUDIT_RULES, "/etc/lanner/rules.d"]
    assert "/etc/lanner/rules.d" in \
        {mt["mountPath"] for mt in container(one.audit, "k8saudit")["volumeMounts"]}

    def checksum(m: Manifests) -> str:
        return m.audit["spec"]["template"]["metadata"]["annotations"]["checksum/rules"]

    assert checksum(one) != checksum(two)  # a rules change rolls the webhook too
    # only the detector's default rules off: the webhook still gets its audit rules
    m = helm.render(*on, "--set", "detector.defaultRules=false",
                    "--set", "detector.rulesFiles={/etc/lanner/rules.d}",
                    "--set", "customRules.a\\.yaml=- list: one\n  items: [a]")
    assert [str(p) for p in audit_args(m).rules] == [AUDIT_RULES, "/etc/lanner/rules.d"]
    assert set(m.get("ConfigMap", f"{FULLNAME}-rules")["data"]) == \
        {"lanner_k8s_audit_rules.yaml"}
    # the webhook without the detectors
    m = helm.render(*on, "--set", "detector.enabled=false")
    assert m.find("DaemonSet", f"{FULLNAME}-detector") is None
    assert [str(p) for p in audit_args(m).rules] == [DEFAULT_RULES, AUDIT_RULES]
    assert set(m.get("ConfigMap", f"{FULLNAME}-rules")["data"]) == \
        {"lanner_rules.yaml", "lanner_k8s_audit_rules.yaml"}
    # an explicit list
    m = helm.render(*on, "--set", f"k8saudit.rulesFiles={{{AUDIT_RULES}}}")
    assert [str(p) for p in audit_args(m).rules] == [AUDIT_RULES]
    # a path only the detector mounts is left out, with a note
    extra = ("--set", "detector.rulesFiles={/etc/lanner/rules/lanner_rules.yaml,"
                      "/opt/mine/rules.yaml}")
    assert [str(p) for p in audit_args(helm.render(*on, *extra)).rules] == \
        [DEFAULT_RULES, AUDIT_RULES]
    assert "k8saudit: /opt/mine/rules.yaml (in the detectors' rules list) is not mounted" in \
        helm.notes(*on, *extra)


def test_k8saudit_network_policy(helm: Helm) -> None:
    m = helm.render(values=SCENARIOS["k8saudit"])
    sel = {"app.kubernetes.io/name": "lanner", "app.kubernetes.io/instance": RELEASE}
    policy = m.get("NetworkPolicy", AUDIT)["spec"]
    assert policy["podSelector"]["matchLabels"] == \
        {**sel, "app.kubernetes.io/component": "k8saudit"}
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    webhook = policy["ingress"][0]
    assert webhook["ports"] == [{"port": 9765, "protocol": "TCP"}]
    assert webhook["from"] == [{"ipBlock": {"cidr": "10.0.0.0/24"}}]  # k8sauditClients
    metrics = policy["ingress"][1]
    assert metrics["ports"] == [{"port": 8765, "protocol": "TCP"}]
    to_hub = [e for e in policy["egress"] if "to" in e]
    assert to_hub == [{"to": [{"podSelector": {"matchLabels": {
        **sel, "app.kubernetes.io/component": "hub"}}}], "ports": [{"port": 5060,
                                                                   "protocol": "TCP"}]}]
    assert {p["port"] for e in policy["egress"] if "to" not in e for p in e["ports"]} == {53}
    hub = m.get("NetworkPolicy", f"{FULLNAME}-hub")["spec"]["ingress"]
    from_audit = [r for r in hub if r["from"][0].get("podSelector", {}).get("matchLabels") ==
                  {**sel, "app.kubernetes.io/component": "k8saudit"}]
    assert [r["ports"] for r in from_audit] == [[{"port": 5060, "protocol": "TCP"}]]
    # without k8sauditClients: any source may reach the port (the API server is on the host
    # network); the token guards it
    m = helm.render("--set", "k8saudit.enabled=true", "--set", "networkPolicy.enabled=true")
    assert m.get("NetworkPolicy", AUDIT)["spec"]["ingress"] == \
        [{"ports": [{"port": 9765, "protocol": "TCP"}]}]
    assert helm.render("--set", "k8saudit.enabled=true").find("NetworkPolicy", AUDIT) is None


def test_k8saudit_monitoring(helm: Helm) -> None:
    m = helm.render(values=SCENARIOS["k8saudit"])
    monitor = m.get("ServiceMonitor", AUDIT)
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    svc = m.get("Service", f"{AUDIT}-metrics")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    groups = {g["name"]: g for g in m.get("PrometheusRule", FULLNAME)["spec"]["groups"]}
    alerts = {r["alert"] for r in groups["lanner-k8saudit"]["rules"]}
    assert alerts == {"LannerAuditWebhookDown", "LannerAuditEventsRefused"}
    assert f'service="{AUDIT}-metrics"' in groups["lanner-k8saudit"]["rules"][0]["expr"]
