"""The Helm chart (helm/lanner): lint, render and validate; the detector, the hub, UI access,
network policies and monitoring, and the helm test hook.

Rendered with the real `helm`, linted with `helm lint --strict`, validated offline with
`kubernetes-validate --strict` for Kubernetes 1.28 and 1.33, and read back by the real code
(tests/helm_support.py). The helm test hook's script runs against a real hub. The chart's
secrets, rules and values, the audit webhook, the gRPC between detectors and hub, and the
images have modules of their own (test_helm_*.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helm_support import (
    CHART,
    CI_VALUES,
    FULLNAME,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    ROOT,
    SCENARIOS,
    Helm,
    Manifests,
    check_monitoring,
    container,
    detect_args,
    load_hub_config,
    pod_spec,
    tool,
)

# ---- lint, render, validate -----------------------------------------------------------------


def test_helm_lint_strict(helm: Helm) -> None:
    for values in [[], *SCENARIOS.values()]:
        args = [a for path in values for a in ("-f", str(path))]
        done = helm.run("lint", "--strict", str(CHART), *args)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_renders_valid_kubernetes(helm: Helm, scenario: str, kube: str,
                                  tmp_path: Path) -> None:
    text = helm.template_text(kube=kube, values=SCENARIOS[scenario])
    rendered = tmp_path / f"{scenario}.yaml"
    rendered.write_text(text)
    done = subprocess.run([tool("kubernetes-validate"), "--strict", "--quiet", "-k", kube,
                           str(rendered)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ERROR" not in done.stdout + done.stderr
    docs = Manifests(text).docs
    custom = [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com")]
    for doc in custom:
        check_monitoring(doc)
    # every other object had a schema, so it was really validated
    unknown = [line for line in (done.stdout + done.stderr).splitlines()
               if "Couldn't find schema" in line and "monitoring.coreos.com" not in line]
    assert not unknown, unknown
    if scenario == "monitoring":
        assert {d["kind"] for d in custom} == {"ServiceMonitor", "PrometheusRule"}
        assert len(Manifests(text).kinds("NetworkPolicy")) == 3
    if scenario in ("k8saudit", "seed"):  # the seed's load_plugins: [k8saudit, json]
        assert Manifests(text).audit
    if scenario in ("k8saudit", "grpc-tls"):
        assert len(Manifests(text).kinds("NetworkPolicy")) == 4


def test_validator_rejects_unknown_fields(tmp_path: Path) -> None:
    """The strict validation above is not a no-op: a misspelt field fails it."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"apiVersion": "apps/v1", "kind": "Deployment",
                                   "metadata": {"name": "x"},
                                   "spec": {"replica": 2, "selector": {}, "template": {}}}))
    done = subprocess.run([tool("kubernetes-validate"), "--strict", "--quiet", "-k", "1.28.0",
                           str(bad)], capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "replica" in done.stdout + done.stderr


# ---- detector -------------------------------------------------------------------------------


def test_detector_least_privilege(helm: Helm) -> None:
    m = helm.render()
    ds = m.detector
    spec = pod_spec(ds)
    assert spec["hostPID"] is True and spec["hostNetwork"] is False
    assert spec["automountServiceAccountToken"] is False
    assert spec["priorityClassName"] == "system-node-critical"
    keys = {t["key"] for t in spec["tolerations"]}
    assert "node-role.kubernetes.io/control-plane" in keys
    for c in (container(ds, "detector"), container(ds, "setup", init=True)):
        sc = c["securityContext"]
        assert sc["privileged"] is False
        assert sc["capabilities"] == {"drop": ["ALL"],
                                      "add": ["BPF", "PERFMON", "SYS_RESOURCE", "SYS_PTRACE"]}
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["runAsUser"] == 0
        assert sc["appArmorProfile"] == {"type": "Unconfined"}  # field since 1.30
    detector = container(ds, "detector")
    assert detector["resources"]["limits"] and detector["resources"]["requests"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert detector[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"

    # Only these host paths, each read-only where the detector mounts it.
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert sorted(host.values()) == sorted([
        "/proc", "/sys/kernel/tracing", "/sys/fs/cgroup", "/etc/passwd", "/etc/group",
        "/var/log/pods", "/var/log/containers"])
    mounts = {mt["name"]: mt for mt in detector["volumeMounts"]}
    for name in host:
        assert mounts[name]["readOnly"] is True, name
    assert mounts["host-proc"]["mountPath"] == "/host/proc"
    assert mounts["tracefs"]["mountPath"] == "/sys/kernel/tracing"
    assert mounts["modules"]["mountPath"] == "/lib/modules"  # headers linked by setup
    assert not any("sock" in p for p in host.values())  # runtime sockets are opt-in

    setup = container(ds, "setup", init=True)
    assert setup["command"] == ["lanner"] and setup["args"] == ["detector", "setup"]
    assert {mt["name"] for mt in setup["volumeMounts"]} >= {"modules", "tracefs"}

    # The flags are the real CLI's, and point at what is mounted.
    args = detect_args(m)
    assert args.proc_root == "/host/proc"
    assert args.cgroup_root == mounts["host-cgroup"]["mountPath"]
    assert args.pods_log_dir == mounts["pod-logs"]["mountPath"]
    assert args.source == "ebpf" and args.metrics == "0.0.0.0:8765"
    assert [str(p) for p in args.rules] == ["/etc/lanner/rules/lanner_rules.yaml"]
    grpc = [o for o in args.output if o.startswith("grpc://")]
    assert grpc == [f"grpc://{FULLNAME}-hub-headless.{NAMESPACE}.svc:5060"]
    headless = m.get("Service", f"{FULLNAME}-hub-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert [p["port"] for p in headless["spec"]["ports"]] == [5060]
    env = {e["name"]: e for e in detector["env"]}
    assert env["LANNER_HUB_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == f"{FULLNAME}-auth"
    assert env["FALCO_HOSTNAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_detector_apparmor_annotation_before_1_30(helm: Helm) -> None:
    ds = helm.render(kube="1.28.0").detector
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["container.apparmor.security.beta.kubernetes.io/detector"] == "unconfined"
    assert "appArmorProfile" not in container(ds, "detector")["securityContext"]


def test_detector_options(helm: Helm) -> None:
    m = helm.render("--set", "detector.runtimeSockets={/run/containerd/containerd.sock}",
                    "--set", "detector.extraCapabilities={SYS_ADMIN}",
                    "--set", "detector.setup.mountTracefs=true",
                    "--set", "detector.hostKernelHeaders=true")
    ds = m.detector
    detector = container(ds, "detector")
    assert "SYS_ADMIN" in detector["securityContext"]["capabilities"]["add"]
    args = detect_args(m)
    assert args.runtime_socket == ["/host/run/containerd/containerd.sock"]
    mounts = {mt["mountPath"]: mt for mt in detector["volumeMounts"]}
    assert mounts["/host/run/containerd/containerd.sock"]["readOnly"] is True
    assert mounts["/lib/modules"]["readOnly"] is True and mounts["/usr/src"]["readOnly"] is True
    setup = container(ds, "setup", init=True)
    assert setup["securityContext"]["privileged"] is True  # it mounts tracefs on the node
    tracefs = next(mt for mt in setup["volumeMounts"] if mt["name"] == "tracefs")
    assert tracefs["mountPropagation"] == "Bidirectional"
    assert detector["securityContext"]["privileged"] is False

    privileged = helm.render("--set", "detector.privileged=true").detector
    assert container(privileged, "detector")["securityContext"]["privileged"] is True


# ---- hub ------------------------------------------------------------------------------------


def test_hub_replicated_and_restricted(helm: Helm) -> None:
    m = helm.render()
    hub = m.hub
    assert hub["spec"]["replicas"] == 2
    assert hub["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    labels = hub["spec"]["template"]["metadata"]["labels"]
    assert hub["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pdb = m.get("PodDisruptionBudget", f"{FULLNAME}-hub")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    spec = pod_spec(hub)
    spread = spec["topologySpreadConstraints"]
    assert {t["topologyKey"] for t in spread} >= {"kubernetes.io/hostname"}
    assert all(t["labelSelector"]["matchLabels"].items() <= labels.items() for t in spread)
    anti = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(hub, "hub")
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/ping", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/ping"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 2801, "grpc": 5060}
    svc = m.get("Service", f"{FULLNAME}-hub")
    assert {(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == \
        {("http", 2801, "http"), ("grpc", 5060, "grpc")}
    assert svc["spec"]["selector"].items() <= labels.items()
    # Redis for the replicas: a StatefulSet with persistence, restricted too.
    redis = m.get("StatefulSet", f"{FULLNAME}-redis")
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    rc = container(redis, "redis")
    assert rc["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_spec(redis)["securityContext"]["runAsNonRoot"] is True
    # Every workload: no root filesystem writes, nothing but the detector as root.
    for workload in m.kinds("Deployment") + m.kinds("StatefulSet"):
        for c in pod_spec(workload)["containers"]:
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_hub_config_loads(helm: Helm, scenario: str, tmp_path: Path) -> None:
    m = helm.render(values=SCENARIOS[scenario])
    config = load_hub_config(m, tmp_path)
    assert config.store == "redis"
    assert config.listenport == 2801 and config.grpcport == 5060
    assert config.replica == "sec-lanner-hub-0"
    assert len(config.grpc.token.get_secret_value()) >= 32
    assert len(config.ui.token.get_secret_value()) >= 32
    url = config.redis.url.get_secret_value()
    if scenario == "external-redis":
        assert url == "redis://:s3cret-redis@redis.shared.svc:6379/2"
        assert m.find("StatefulSet", f"{FULLNAME}-redis") is None
    else:
        password = m.secret_data(f"{FULLNAME}-redis")["redis-password"]
        assert url == f"redis://:{password}@{FULLNAME}-redis.{NAMESPACE}.svc:6379/0"
        assert m.find("Service", f"{FULLNAME}-redis")
    expected = {
        "default": set(), "monitoring": set(), "external-redis": set(), "k8saudit": set(),
        "grpc-tls": set(),
        "seed": {"slack"},
        "all-outputs": {"slack", "discord", "alertmanager", "awssqs", "awss3", "gcppubsub",
                        "webhook"},
    }[scenario]
    assert set(config.outputs) == expected


def test_seed_slack_settings_reach_the_hub(helm: Helm, tmp_path: Path) -> None:
    from outputs.slack import compile_template, template_context
    from sidekick.alert import Alert, Priority

    seed = yaml.safe_load((CI_VALUES / "seed-values.yaml").read_text())
    given = seed["falcosidekick"]["config"]["slack"]
    m = helm.render(values=SCENARIOS["seed"])
    assert m.hub["spec"]["replicas"] == seed["falcosidekick"]["replicaCount"]
    slack = load_hub_config(m, tmp_path).outputs["slack"]
    assert slack.webhookurl.get_secret_value() == given["webhookurl"]
    assert (slack.username, slack.footer, slack.icon, slack.outputformat) == \
        (given["username"], given["footer"], given["icon"], given["outputformat"])
    assert slack.minimumpriority == Priority.WARNING
    # Falcosidekick's Go template, converted: it says what the seed's author wrote.
    alert = Alert(rule="Terminal shell in container", priority=Priority.WARNING,
                  time_ns=1_700_000_000 * 10**9, output_fields={"user.name": "root"})
    text = compile_template(slack.messageformat).render(template_context(alert))
    assert text == "Alert : rule *Terminal shell in container* triggered by user *root*"


def test_seed_values_read_as_meant(helm: Helm) -> None:
    m = helm.render(values=SCENARIOS["seed"])
    args = detect_args(m)
    # httpOutput to "falcosidekick": this release's hub, over gRPC; no second copy over HTTP
    assert args.output == [f"grpc://{FULLNAME}-hub-headless.{NAMESPACE}.svc:5060", "stdout"]
    assert args.format == "json"  # jsonOutput: true
    # rulesFile: Falco's default rules -> Lanner's; rules.d kept (empty: left out)
    assert [str(p) for p in args.rules] == ["/etc/lanner/rules/lanner_rules.yaml"]
    sc = container(m.detector, "detector")["securityContext"]
    assert sc["privileged"] is False  # kind: module is not a reason to run privileged
    notes = helm.notes("-f", str(CI_VALUES / "seed-values.yaml"))
    for hint in ("driver.kind=module", "falco.rulesFile (Falco chart 1.x)", "falco.jsonOutput",
                 "falco.httpOutput", "load_plugins: k8saudit", "load_plugins: json",
                 "/etc/falco/k8s_audit_rules.yaml (Falco's audit rules) is Lanner's audit rules",
                 "messageformat: Falcosidekick's Go template"):
        assert hint in notes, hint
    assert "not part of this chart version" not in notes


@pytest.mark.parametrize(("url", "kept"), [
    ("https://sidekick.example.com:2801/", True),
    ("http://falcosidekick.other-namespace.svc:2801/", True),  # not this release's
    (f"http://falcosidekick.{NAMESPACE}.svc.cluster.local:2801/", False),
    (f"http://{FULLNAME}-hub:2801/", False),
])
def test_falco_http_output_elsewhere_is_kept(helm: Helm, url: str, kept: bool) -> None:
    m = helm.render("--set", "falco.http_output.enabled=true",
                    "--set", f"falco.http_output.url={url}")
    args = detect_args(m)
    assert (url in args.output) == kept
    assert any(o.startswith("grpc://") for o in args.output)


# ---- UI access ------------------------------------------------------------------------------


def test_ui_token_generated_not_default(helm: Helm) -> None:
    tokens = []
    for _ in range(2):
        m = helm.render()
        auth = m.get("Secret", f"{FULLNAME}-auth")
        assert auth["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        tokens.append(m.secret_data(f"{FULLNAME}-auth")["ui-token"])
        env = {e["name"]: e for e in container(m.hub, "hub")["env"]}
        assert env["LANNER_UI_TOKEN"]["valueFrom"]["secretKeyRef"] == \
            {"name": f"{FULLNAME}-auth", "key": "ui-token"}
    assert tokens[0] != tokens[1]  # random (an upgrade keeps the live one: lookup)
    for token in tokens:
        assert re.fullmatch(r"[A-Za-z0-9]{40}", token)
        assert token.lower() not in {"admin", "admin:admin", "changeme", "password", "lanner"}
    template = (CHART / "templates" / "_helpers.tpl").read_text()
    assert 'lookup "v1" "Secret"' in template  # kept across upgrades
    given = helm.render("--set", "ui.auth.token=my-own-token-0123456789")
    assert given.secret_data(f"{FULLNAME}-auth")["ui-token"] == "my-own-token-0123456789"


def test_ui_ingress(helm: Helm, tmp_path: Path) -> None:
    m = helm.render(values=SCENARIOS["monitoring"])
    ingress = m.get("Ingress", f"{FULLNAME}-hub")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{FULLNAME}-hub", "port": {"name": "http"}}
    assert load_hub_config(m, tmp_path).publicurl == "https://lanner.example.com"


# ---- network policies, monitoring -----------------------------------------------------------


def test_network_policies(helm: Helm) -> None:
    m = helm.render(values=SCENARIOS["monitoring"])
    sel = {"app.kubernetes.io/name": "lanner", "app.kubernetes.io/instance": RELEASE}
    detector = m.get("NetworkPolicy", f"{FULLNAME}-detector")
    assert detector["spec"]["policyTypes"] == ["Ingress", "Egress"]
    egress = detector["spec"]["egress"]
    to_hub = [e for e in egress if "to" in e]
    assert len(to_hub) == 1
    assert to_hub[0]["to"][0]["podSelector"]["matchLabels"] == \
        {**sel, "app.kubernetes.io/component": "hub"}
    assert {p["port"] for p in to_hub[0]["ports"]} == {5060, 2801}
    open_ports = {p["port"] for e in egress if "to" not in e for p in e["ports"]}
    assert open_ports == {53, 2801}  # DNS, and the extra http output's port
    hub = m.get("NetworkPolicy", f"{FULLNAME}-hub")
    first = hub["spec"]["ingress"][0]
    assert first["from"][0]["podSelector"]["matchLabels"] == \
        {**sel, "app.kubernetes.io/component": "detector"}
    redis = m.get("NetworkPolicy", f"{FULLNAME}-redis")
    assert redis["spec"]["egress"] == []
    assert redis["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == \
        {**sel, "app.kubernetes.io/component": "hub"}


@pytest.mark.parametrize("scenario", ["monitoring", "k8saudit"])
def test_prometheus_rules_use_real_metric_names(helm: Helm, scenario: str) -> None:
    from sidekick.metrics import Metrics

    m = helm.render(values=SCENARIOS[scenario])
    rule = m.get("PrometheusRule", FULLNAME)
    exprs = " ".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    names = set(re.findall(r"\b([a-z_]+)\{", exprs)) - {"up"}
    exposition = Metrics().exposition().decode()
    hub_names = set(re.findall(r"^# TYPE (\S+) (\w+)", exposition, re.M))
    known = {n for n, kind in hub_names} | {f"{n}_total" for n, kind in hub_names
                                           if kind == "counter"}
    detect_source = (ROOT / "detector" / "detect.py").read_text()
    for name in names:
        if name.startswith("lanner_detector_"):
            base = name.removeprefix("lanner_detector_").removesuffix("_total")
            assert f'("{base}",' in detect_source, name
        else:
            assert name in known, name
    monitors = m.kinds("ServiceMonitor")
    assert {sm["spec"]["endpoints"][0]["port"] for sm in monitors} == {"http", "metrics"}
    for sm in monitors:
        svc = [s for s in m.kinds("Service")
               if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
               and any(p["name"] == sm["spec"]["endpoints"][0]["port"]
                       for p in s["spec"]["ports"])]
        assert svc, sm["metadata"]["name"]


# ---- helm test hook -------------------------------------------------------------------------


def test_helm_test_hook_against_a_real_hub(helm: Helm, tmp_path: Path) -> None:
    from tests.hubproc import HubProcess

    m = helm.render()
    pods = [d for d in m.kinds("Pod")
            if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    assert len(pods) == 1
    pod = pods[0]
    assert "hook-succeeded" in pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    c = pod["spec"]["containers"][0]
    assert c["command"] == ["python", "-c"]
    env = {e["name"]: e for e in c["env"]}
    assert env["HUB"]["value"] == f"http://{FULLNAME}-hub.{NAMESPACE}.svc:2801"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    hub = HubProcess(tmp_path, {"store": "sqlite"}).start()
    try:
        done = subprocess.run(
            [sys.executable, "-c", c["args"][0]], capture_output=True, text=True, timeout=60,
            env={**os.environ, "HUB": hub.base_url, "LANNER_UI_TOKEN": hub.token,
                 "TEST_OUTPUTS": "true"}, check=False)
    finally:
        hub.stop()
    assert done.returncode == 0, done.stdout + done.stderr + hub.log()
    assert "the test alert is stored and served by the API" in done.stdout
    assert "POST /test -> 200" in done.stdout
    assert helm.render("--set", "tests.enabled=false").kinds("Pod") == []
