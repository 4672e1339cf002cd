"""The chart's secrets, rules and values: credentials only in Secrets, rules that load
in every scenario, impossible values that fail the render with the documented message.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel, SecretStr

from tests.helm_support import (
    AUDIT,
    CHART,
    CI_VALUES,
    FULLNAME,
    ROOT,
    SCENARIOS,
    Helm,
    Manifests,
    container,
    detect_args,
    load_hub_config,
    load_rules,
    pod_spec,
)

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


# ---- rules ----------------------------------------------------------------------------------


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
    assert "/etc/lanner/rules.d" in [str(p) for p in detect_args(m).rules]
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

    assert detect_args(helm.render("--set", "falco.priority=error")).min_priority == \
        Priority.ERROR
    assert detect_args(helm.render()).min_priority == Priority.DEBUG  # every rule runs


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
