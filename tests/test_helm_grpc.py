"""The chart's gRPC between detectors and hub: TLS and mutual TLS, the spill file and
publish buffer, and the hub's exceptions for the detectors.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helm_support import (
    AUDIT,
    CHART,
    CI_VALUES,
    FULLNAME,
    NAMESPACE,
    SCENARIOS,
    Helm,
    audit_args,
    container,
    detect_args,
    load_hub_config,
    pod_spec,
)

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
    for workload, name, args in ((m.detector, "detector", detect_args(m)),
                                 (m.audit, "k8saudit", audit_args(m))):
        assert _grpc_tls_volume(workload, name) == client_files, name
        assert (args.hub_cacert, args.hub_cert, args.hub_key) == \
            (f"{GRPC_TLS}/ca.crt", f"{GRPC_TLS}/tls.crt", f"{GRPC_TLS}/tls.key"), name
        assert _hub_link(args).tls == PublisherTls(f"{GRPC_TLS}/ca.crt", f"{GRPC_TLS}/tls.crt",
                                                   f"{GRPC_TLS}/tls.key")
        assert args.output[0] == f"grpc://{FULLNAME}-hub-headless.{NAMESPACE}.svc:5060"
    assert audit_args(m).spill_file is None  # the spill file is the node's, the detectors'
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
    for workload, name, args in ((m.detector, "detector", detect_args(m)),
                                 (m.audit, "k8saudit", audit_args(m))):
        assert _grpc_tls_volume(workload, name) == {"ca.crt": ("hub-grpc", "ca.pem")}
        assert (args.hub_cacert, args.hub_cert, args.hub_key) == \
            (f"{GRPC_TLS}/ca.crt", None, None)
    # Mutual TLS with no client publishing needs no client certificate.
    m = helm.render(*tls, "--set", "hub.grpcTls.clientAuth=true",
                    "--set", "detector.hubOutput=false")
    assert load_hub_config(m, tmp_path).grpc.cacertfile == f"{GRPC_TLS}/ca.crt"
    for workload, name, args in ((m.detector, "detector", detect_args(m)),
                                 (m.audit, "k8saudit", audit_args(m))):
        assert args.hub_cacert is None and not any(o.startswith("grpc://") for o in args.output)
        assert "grpc-tls" not in {v["name"] for v in pod_spec(workload)["volumes"]}, name

    # Off (the default): no TLS anywhere.
    m = helm.render("--set", "k8saudit.enabled=true")
    assert load_hub_config(m, tmp_path).grpc.certfile == ""
    for workload in (m.hub, m.detector, m.audit):
        assert "grpc-tls" not in {v["name"] for v in pod_spec(workload)["volumes"]}
    assert (detect_args(m).hub_cacert, audit_args(m).hub_cacert) == (None, None)

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
    args = detect_args(m)
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
    args = detect_args(m)
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
    audit = audit_args(m)
    assert (audit.spill_file, audit.publish_buffer) == (None, BUFFER_LIMIT)
    assert not [v for v in pod_spec(m.audit)["volumes"] if "hostPath" in v]

    m = helm.render("--set", "detector.spill.enabled=true",
                    "--set", "detector.spill.hostPath=/data/lanner-spill",
                    "--set", "detector.updateStrategy.type=OnDelete")
    volumes = {v["name"]: v for v in pod_spec(m.detector)["volumes"]}
    assert volumes["spill"]["hostPath"]["path"] == "/data/lanner-spill"
    assert detect_args(m).spill_file == "/var/lib/lanner/spill/alerts.spill"

    # off (the default): the detector's own defaults
    m = helm.render()
    args = detect_args(m)
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
    for workload, name, args in ((m.detector, "detector", detect_args(m)),
                                 (m.audit, "k8saudit", audit_args(m))):
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
        for workload, args in ((m.detector, detect_args(m)), (m.audit, audit_args(m))):
            assert args.hub_rules is None, off
            assert "hub-rules" not in {v["name"] for v in pod_spec(workload)["volumes"]}, off

    error = helm.fails("--set", "detector.hubExceptions=maybe")
    assert "/detector/hubExceptions" in error
