"""The Kubernetes audit source: ka.*/jevt.* fields, Falco's k8s_audit_rules.yaml loaded unchanged,
the webhook (in-process for its answers, and inside a real `lanner detect` for the corpus)."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from detector.detect import Detector
from detector.engine.build import compile_condition
from detector.engine.engine import Engine
from detector.engine.errors import RuleError
from detector.engine.fields import REGISTRY, describe_fields
from detector.sources.k8saudit import (
    AuditWebhook,
    PayloadError,
    WebhookConfig,
    WebhookError,
    parse_events,
)
from detector.sources.opener import NoKernelSource
from tests.certs import make_pki
from tests.engine_support import HOSTS
from tests.k8saudit_corpus import Case, audit_event, cases, container, pod, time_ns
from tests.receiver import Receiver
from tests.upstream import upstream_file

ROOT = Path(__file__).resolve().parents[1]
OUR_RULES = ROOT / "rules" / "lanner_k8s_audit_rules.yaml"
LANNER = str(Path(sys.executable).with_name("lanner"))
FALCO_KEYS = ["hostname", "output", "output_fields", "priority", "rule", "source", "tags",
              "time"]


def wrap(event: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"evt.source": "k8s_audit", "evt.time": 1, "ka.event": event, **extra}


def get(name: str, event: dict[str, Any], arg: str | None = None) -> Any:
    spec, arg = REGISTRY.resolve(name, arg)
    return spec.extractor(arg)(wrap(event))


def matches(condition: str, event: dict[str, Any]) -> bool:
    compiled, _ = compile_condition(condition, registry=REGISTRY, hosts=HOSTS)
    return bool(compiled.match(wrap(event)))


@pytest.fixture(scope="module")
def audit_engine() -> Engine:
    engine, warnings = Engine.from_files([upstream_file("k8s_audit_rules.yaml"), OUR_RULES])
    assert warnings == []
    return engine


# ---- the upstream rules ------------------------------------------------------------------------


def test_upstream_audit_rules_load_unchanged_and_every_rule_is_compiled() -> None:
    engine, warnings = Engine.from_files([upstream_file("k8s_audit_rules.yaml")])
    assert warnings == []
    assert len(engine.rules) == 48
    assert {r.source for r in engine.rules} == {"k8s_audit"}
    assert sum(r.enabled for r in engine.rules) == 48


def test_lanner_rules_validate_upstream_audit_rules_exits_0() -> None:
    done = subprocess.run([LANNER, "rules", "validate", str(upstream_file("k8s_audit_rules.yaml")),
                           str(OUR_RULES)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{upstream_file('k8s_audit_rules.yaml')}: Ok",
                                        f"{OUR_RULES}: Ok"]
    assert done.stderr == ""


def test_corpus_fires_exactly_the_expected_rules_in_the_engine(audit_engine: Engine) -> None:
    """The same corpus the webhook test posts, straight into the engine: a failure here points
    at a rule or a field, not at the transport."""
    corpus = cases()
    assert len(corpus) >= 30 and sum(not c.fires for c in corpus) >= 10
    for case in corpus:
        alerts = audit_engine.process(wrap(case.event))
        assert {a.rule for a in alerts} == case.fires, case.title
        check_fields(case, {a.rule: a.output_fields for a in alerts})


def check_fields(case: Case, by_rule: dict[str, dict[str, Any]]) -> None:
    for rule, expected in case.fields.items():
        got = by_rule[rule]
        for key, value in expected.items():
            assert key in got and got[key] == value, (case.title, rule, key, got.get(key))


# ---- fields -----------------------------------------------------------------------------------

PRIV = audit_event(1, "create", "pods", name="p", code=201, request=pod(
    "p", container("a", "reg.example:5000/team/app:1.2", privileged=True, runAsUser=1000),
    {"name": "b", "image": "nginx@sha256:abc", "ports": [{"containerPort": 80},
                                                          {"containerPort": 53, "hostPort": 5353}]},
    init=({"name": "i", "image": "busybox"},),
    hostNetwork=True, securityContext={"runAsUser": 2000},
    volumes=[{"name": "d", "hostPath": {"path": "/etc"}}, {"name": "e", "emptyDir": {}}]))


def test_non_string_json_values_read_as_their_json_text() -> None:
    assert get("ka.response.code", PRIV) == "201"
    assert get("ka.req.pod.host_network", PRIV) == "true"
    assert get("ka.req.pod.containers.privileged", PRIV) == ["true"]  # b sets nothing: skipped
    assert get("ka.req.pod.volumes.hostpath", PRIV) == ["/etc"]
    assert get("jevt.value", PRIV, "/requestObject/spec/securityContext") == '{"runAsUser":2000}'
    assert get("ka.target.subresource", {**PRIV, "objectRef": {"subresource": None}}) == "null"
    assert get("ka.user.groups", PRIV) == ["system:masters", "system:authenticated"]


def test_images_repositories_ports_and_effective_ids() -> None:
    assert get("ka.req.pod.containers.image", PRIV) == ["reg.example:5000/team/app:1.2",
                                                        "nginx@sha256:abc"]
    # The plugin cuts at the first ':' and '@', so a registry port goes too.
    assert get("ka.req.pod.containers.image.repository", PRIV) == ["reg.example", "nginx"]
    assert get("ka.req.pod.containers.image", PRIV, "1") == ["nginx@sha256:abc"]
    assert get("ka.req.pod.containers.image", PRIV, "5") is None
    assert get("ka.req.container.image", PRIV) == "reg.example:5000/team/app:1.2"
    assert get("ka.req.pod.initContainers.image", PRIV) == ["busybox"]
    assert get("ka.req.pod.ephemeralContainers.image", PRIV) is None
    assert get("ka.req.pod.containers.host_port", PRIV) == ["80", "5353"]
    assert get("ka.req.pod.containers.eff_run_as_user", PRIV) == ["1000", "2000"]
    assert get("ka.req.pod.containers.run_as_user", PRIV) == ["1000"]
    assert get("ka.req.container.privileged", PRIV) == "true"
    assert get("ka.req.pod.volumes.volume_type", PRIV) == ["hostPath", "emptyDir"]
    assert get("ka.req.volume.hostpath", PRIV, "/etc") == "true"
    assert get("ka.req.volume.hostpath", PRIV, "/et*") == "true"
    assert get("ka.req.volume.hostpath", PRIV, "/proc") == "false"
    # One container without an image and the image fields have no value, as in the plugin.
    imageless = audit_event(2, "create", "pods", request=pod("x", {"name": "a"}))
    assert get("ka.req.pod.containers.image", imageless) is None
    assert get("ka.req.pod.containers.name", imageless) == ["a"]


def test_list_fields_in_intersects_and_exists() -> None:
    assert matches("ka.req.pod.containers.image.repository in (reg.example, nginx, x)", PRIV)
    assert not matches("ka.req.pod.containers.image.repository in (nginx)", PRIV)  # subset
    assert matches("ka.req.pod.containers.image.repository intersects (nginx)", PRIV)
    assert matches("ka.req.pod.containers.privileged intersects (true)", PRIV)
    assert not matches("ka.req.pod.initContainers.privileged exists", PRIV)  # no element
    assert matches("not ka.req.pod.initContainers.privileged intersects (true)", PRIV)
    assert matches("ka.req.pod.containers.image[1] in (nginx@sha256:abc)", PRIV)
    with pytest.raises(RuleError, match="'=' operator not supported for list filters"):
        matches("ka.req.pod.containers.image = nginx", PRIV)


def test_without_an_audit_id_there_is_no_ka_value_but_json_still_reads() -> None:
    event = {k: v for k, v in PRIV.items() if k != "auditID"}
    assert get("ka.verb", event) is None
    assert get("ka.req.pod.containers.image", event) is None
    assert get("ka.req.binding.subject.has_name", event, "x") is None
    assert get("jevt.value", event, "/verb") == "create"


def test_uri_params_as_go_parses_them() -> None:
    def param(uri: str, key: str = "command") -> Any:
        return get("ka.uri.param", {**PRIV, "requestURI": uri}, key)

    assert param("/api/v1/namespaces/d/pods/w/exec?command=sh&command=-c&tty=true") == "sh"
    assert param("/x?command=cat+%2Fetc%2Fshadow") == "cat /etc/shadow"
    assert param("/x?tty=true") is None
    assert param("/x?command=") == ""
    assert param("/x?command=a&bad=%zz") is None  # Go refuses the whole query
    assert param("/x?command=a;b=c") is None
    assert param("/x?command=a#command=b") == "a"


def test_json_pointer_obj_and_rawtime() -> None:
    event = {**PRIV, "annotations": {"a/b": "slash", "t~x": "tilde"}}
    assert get("jevt.value", event, "/annotations/a~1b") == "slash"
    assert get("json.value", event, "/annotations/t~0x") == "tilde"
    assert get("jevt.value", event, "/requestObject/spec/containers/1/name") == "b"
    assert get("jevt.value", event, "stage") == "ResponseComplete"  # the plugin allows no '/'
    assert get("jevt.value", event, "/requestObject/spec/containers/9") is None
    assert get("jevt.value", event, "/verb/x") is None
    obj = get("jevt.obj", {"auditID": "a", "n": [1], "o": {}})
    assert obj == '{\n  "auditID": "a",\n  "n": [\n    1\n  ],\n  "o": {}\n}'
    assert get("jevt.rawtime", PRIV) == "1"  # evt.time of wrap()
    spec, _ = REGISTRY.resolve("jevt.rawtime")
    assert spec.extractor(None)({"ka.event": PRIV}) == str(time_ns(1))
    assert matches("jevt.rawtime exists and not jevt.rawtime=0", PRIV)


def test_binding_subjects_role_rules_and_target_pod() -> None:
    binding = audit_event(3, "create", "clusterrolebindings", name="b", ns=None, request={
        "roleRef": {"name": "edit"},
        "subjects": [{"kind": "User", "name": "alice"}, {"kind": "Group", "name": "devs"},
                     {"kind": "ServiceAccount", "name": "ci", "namespace": "build"}]})
    assert get("ka.req.binding.subjects.user_names", binding) == ["alice"]
    assert get("ka.req.binding.subjects.group_names", binding) == ["devs"]
    assert get("ka.req.binding.subjects.serviceaccount_ns_names", binding) == ["build:ci"]
    assert get("ka.req.binding.role", binding) == "edit"
    role = audit_event(4, "create", "roles", name="r", request={"rules": [
        {"resources": ["pods", "pods/exec"], "verbs": ["get"]}, {"verbs": ["*"]}]})
    assert get("ka.req.role.rules.resources", role) == ["pods", "pods/exec"]
    assert get("ka.req.role.rules.verbs", role) == ["get", "*"]
    assert get("ka.req.role.rules.verbs", role, "1") == ["*"]
    assert get("ka.req.role.rules", role)[1] == '{"verbs":["*"]}'
    exec_ = audit_event(5, "create", "pods", name="web", subresource="exec")
    assert get("ka.target.pod.name", exec_) == "web"
    assert get("ka.target.pod.name", role) is None


def test_rules_of_a_source_only_use_its_fields(tmp_path: Path) -> None:
    def load(condition: str, output: str = "o", source: str = "k8s_audit",
             skip: bool = False) -> tuple[Engine, list[Any]]:
        path = tmp_path / "r.yaml"
        path.write_text(f"- rule: R\n  desc: d\n  condition: {condition}\n  output: \"{output}\"\n"
                        f"  priority: INFO\n  source: {source}\n"
                        + ("  skip-if-unknown-filter: true\n" if skip else ""))
        return Engine.from_files([path])

    with pytest.raises(RuleError, match=r"unknown field 'proc.name' for source k8s_audit \(it "
                                        r"is a field of syscall events\)"):
        load("proc.name = x")
    with pytest.raises(RuleError, match=r"unknown field 'ka\.verb' for source syscall"):
        load("evt.type = open and ka.verb = get", source="syscall")
    with pytest.raises(RuleError, match=r"unknown field 'fd\.name' for source k8s_audit"):
        load("ka.verb = get", output="%ka.verb %fd.name")
    engine, warnings = load("proc.name = x", skip=True)
    assert engine.rules == [] and [w.code for w in warnings] == ["LOAD_UNKNOWN_FILTER"]
    engine, _ = load("ka.verb = get and evt.num > 0", output="%evt.time %ka.verb")
    assert engine.process(wrap(PRIV, **{"evt.num": 1})) == []
    assert engine.process(wrap({**PRIV, "verb": "get"}, **{"evt.num": 1}))


def test_comparing_an_audit_field_with_na_warns(tmp_path: Path) -> None:
    path = tmp_path / "na.yaml"
    path.write_text('- rule: R\n  desc: d\n  condition: ka.user.name != "<NA>"\n  output: o\n'
                    "  priority: INFO\n  source: k8s_audit\n")
    _, warnings = Engine.from_files([path])
    assert [w.code for w in warnings] == ["LOAD_UNSAFE_NA_CHECK"]


def test_fields_listing_has_the_audit_classes() -> None:
    classes = {c["name"]: c for c in json.loads(describe_fields("json"))["fieldclasses"]}
    assert classes["k8saudit"]["event_sources"] == ["k8s_audit"]
    names = {f["name"] for f in classes["k8saudit"]["fields"]}
    assert {"ka.req.pod.ephemeralContainers.privileged", "ka.uri.param", "ka.sourceips"} <= names
    assert len(names) >= 95
    assert {f["name"] for f in classes["json"]["fields"]} >= {"jevt.value", "json.obj"}


# ---- payloads ----------------------------------------------------------------------------------


def body(*events: dict[str, Any], kind: str = "EventList") -> bytes:
    if kind == "Event":
        return orjson.dumps(events[0])
    return orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1",
                         "metadata": {}, "items": list(events)})


def test_payloads_event_list_single_event_and_arrays() -> None:
    one, two = audit_event(1, "get", "pods"), audit_event(2, "list", "pods")
    parsed = parse_events(body(one, two))
    assert [e["evt.time"] for e in parsed.events] == [time_ns(1), time_ns(2)]
    assert parsed.events[0] == {"evt.source": "k8s_audit", "evt.time": time_ns(1),
                                "ka.event": one}
    assert len(parse_events(body(one, kind="Event")).events) == 1
    assert len(parse_events(orjson.dumps([orjson.loads(body(one)), two])).events) == 2
    for bad, message in ((b"{", "not JSON"), (b'"x"', "got kind 'str'"),
                         (b'{"kind": "Pod"}', "got kind 'Pod'")):
        with pytest.raises(PayloadError, match=message):
            parse_events(bad)


def test_bad_events_are_listed_and_the_others_kept() -> None:
    good = audit_event(1, "get", "pods")
    core = {**audit_event(2, "get", "pods"), "apiVersion": "v1"}
    undated = {k: v for k, v in audit_event(3, "get", "pods").items() if k != "stageTimestamp"}
    big = {**audit_event(4, "get", "pods"), "requestObject": {"x": "y" * 300_000}}
    parsed = parse_events(body(good, core, undated, 7, {**good, "stageTimestamp": "yesterday"},
                               big))
    assert [e["ka.event"] for e in parsed.events] == [good]
    assert parsed.too_large
    assert parsed.errors == [
        "items[1]: apiVersion 'v1' is not audit.k8s.io (a core v1 Event is not an audit event)",
        "items[2]: no valid stageTimestamp (RFC 3339), got None",
        "items[3]: not a JSON object",
        "items[4]: no valid stageTimestamp (RFC 3339), got 'yesterday'",
        f"items[5]: {len(orjson.dumps(big))} bytes, over the 262144-byte limit per event",
    ]
    deep: Any = good
    for _ in range(12):
        deep = [deep]
    assert "nested more than 8 deep" in parse_events(orjson.dumps(deep)).errors[0]


def test_a_crafted_deeply_nested_event_is_read_without_errors(audit_engine: Engine) -> None:
    event = audit_event(1, "create", "configmaps", name="x", code=201,
                        request={"data": "@1", "spec": {"containers": "@2"}})
    text = json.dumps({"kind": "EventList", "items": [event]})
    text = text.replace('"@1"', "[" * 1000 + "]" * 1000).replace('"@2"', "[" * 900 + "]" * 900)
    parsed = parse_events(text.encode())
    assert parsed.errors == []
    errors = audit_engine.errors
    assert [a.rule for a in audit_engine.process(parsed.events[0])] == ["K8s ConfigMap Created"]
    assert audit_engine.errors == errors
    deep = parsed.events[0]["ka.event"]
    for name in ("ka.req.configmap.obj", "jevt.obj"):
        spec, _ = REGISTRY.resolve(name)
        assert spec.extractor(None)({"ka.event": deep}) == "[nested too deeply]"
    assert get("ka.req.pod.containers.image", deep) is None
    assert parse_events(text.encode(), max_event_bytes=100).errors == [
        "items[0]: nested too deeply (over 254 levels)"]


# ---- the webhook, in-process ---------------------------------------------------------------------


class Collected:
    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.refuse = False

    def __call__(self, events: list[dict[str, Any]]) -> bool:
        if self.refuse:
            return False
        self.batches.append(events)
        return True


@pytest.fixture
def hook() -> Iterator[tuple[AuditWebhook, Collected]]:
    collected = Collected()
    webhook = AuditWebhook(WebhookConfig(host="127.0.0.1", port=0, max_body_bytes=1 << 20),
                           collected)
    webhook.start()
    yield webhook, collected
    webhook.close()


def post(port: int, data: bytes, *, path: str = "/k8s-audit", method: str = "POST",
         headers: dict[str, str] | None = None,
         context: ssl.SSLContext | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    if context is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", port,
                                                                      timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    conn.request(method, path, body=data,
                 headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    return resp.status, (orjson.loads(payload) if payload else {}), dict(resp.getheaders())


def test_webhook_accepts_an_event_list(hook: tuple[AuditWebhook, Collected]) -> None:
    webhook, collected = hook
    status, answer, _ = post(webhook.port, body(audit_event(1, "get", "pods"),
                                                audit_event(2, "list", "pods")))
    assert (status, answer) == (200, {"accepted": 2})
    assert [e["evt.time"] for e in collected.batches[0]] == [time_ns(1), time_ns(2)]
    assert webhook.stats["events"] == 2


@pytest.mark.parametrize(("data", "kwargs", "status", "message"), [
    (b"{not json", {}, 400, "the body is not JSON"),
    (b'{"kind": "Pod", "apiVersion": "v1"}', {}, 400, "not Kubernetes audit events"),
    (b"[]", {"headers": {"Content-Type": "text/plain"}}, 415,
     "Content-Type must be application/json, not 'text/plain'"),
    (b"[]", {"headers": {"Content-Encoding": "gzip"}}, 415, "compressed bodies"),
    (b"[]", {"path": "/audit"}, 404, "the audit webhook is /k8s-audit"),
    (b"", {"method": "GET"}, 405, "method 'GET' not allowed"),
    (b"[" * 10 + b"]" * 10, {}, 400, "nested more than 8 deep"),
])
def test_webhook_refuses_with_a_clear_4xx(hook: tuple[AuditWebhook, Collected], data: bytes,
                                          kwargs: dict[str, Any], status: int,
                                          message: str) -> None:
    webhook, collected = hook
    got, answer, _ = post(webhook.port, data, **kwargs)
    assert got == status
    assert message in (answer["error"] + " ".join(answer.get("rejected", [])))
    assert collected.batches == []
    # ... and keeps serving.
    assert post(webhook.port, body(audit_event(1, "get", "pods")))[0] == 200


def raw(port: int, request: bytes) -> bytes:
    """What the server answers to ``request``, sent as is (a body announced but not sent: the
    server must answer from the headers alone)."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        while chunk := sock.recv(65536):  # the server closes the connection after answering
            answer += chunk
    return answer


def announced(length: int) -> bytes:
    return (b"POST /k8s-audit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n[" % length)


def test_webhook_limits_bodies_and_events(hook: tuple[AuditWebhook, Collected]) -> None:
    webhook, collected = hook
    answer = raw(webhook.port, announced((1 << 20) + 1))
    assert answer.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in answer
    assert b"body of 1048577 bytes is over the 1048576-byte limit" in answer
    big = {**audit_event(2, "get", "pods"), "requestObject": {"x": "y" * 300_000}}
    status, answer, _ = post(webhook.port, body(audit_event(1, "get", "pods"), big))
    assert status == 413
    assert answer["accepted"] == 1 and answer["error"] == "1 event(s) rejected, 1 accepted"
    assert "items[1]: " in answer["rejected"][0]
    assert len(collected.batches) == 1
    # No Content-Length: refused before anything is read.
    with socket.create_connection(("127.0.0.1", webhook.port), timeout=5) as sock:
        sock.sendall(b"POST /k8s-audit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 411 ")


def test_webhook_says_busy_when_the_detector_queue_is_full(
        hook: tuple[AuditWebhook, Collected]) -> None:
    webhook, collected = hook
    collected.refuse = True
    status, answer, headers = post(webhook.port, body(audit_event(1, "get", "pods")))
    assert status == 429 and headers["Retry-After"] == "1" and answer["accepted"] == 0


def test_webhook_keeps_the_connection_alive_and_survives_garbage(
        hook: tuple[AuditWebhook, Collected]) -> None:
    webhook, collected = hook
    conn = http.client.HTTPConnection("127.0.0.1", webhook.port, timeout=10)
    for n in range(5):
        conn.request("POST", "/k8s-audit", body=body(audit_event(n, "get", "pods")),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        response.read()
    conn.close()
    for garbage in (b"\x00\xff\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"POST /k8s-audit"):
        with socket.create_connection(("127.0.0.1", webhook.port), timeout=5) as sock:
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
            sock.recv(4096)
    assert post(webhook.port, body(audit_event(9, "get", "pods")))[0] == 200
    assert len(collected.batches) == 6


def test_webhook_token_and_health() -> None:
    collected = Collected()
    webhook = AuditWebhook(WebhookConfig(host="127.0.0.1", port=0, token="s3cret"), collected)
    webhook.start()
    try:
        data = body(audit_event(1, "get", "pods"))
        status, answer, headers = post(webhook.port, data)
        assert status == 401 and answer["error"] == "missing or wrong bearer token"
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert post(webhook.port, data, headers={"Authorization": "Bearer nope"})[0] == 401
        assert post(webhook.port, data, headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert post(webhook.port, b"", path="/healthz", method="GET")[:2] == \
            (200, {"status": "ok"})
    finally:
        webhook.close()
    assert len(collected.batches) == 1


def test_webhook_over_tls_with_client_certificates(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    collected = Collected()
    webhook = AuditWebhook(WebhookConfig(host="127.0.0.1", port=0, certfile=pki.server_cert,
                                         keyfile=pki.server_key, client_ca=pki.ca_cert),
                           collected)
    webhook.start()
    try:
        assert webhook.url.startswith("https://127.0.0.1:")
        client = ssl.create_default_context(cafile=pki.ca_cert)
        client.load_cert_chain(pki.client_cert, pki.client_key)
        assert post(webhook.port, body(audit_event(1, "get", "pods")), context=client)[0] == 200
        stranger = ssl.create_default_context(cafile=pki.ca_cert)
        stranger.load_cert_chain(pki.other_client_cert, pki.other_client_key)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            post(webhook.port, body(audit_event(2, "get", "pods")), context=stranger)
        assert post(webhook.port, body(audit_event(3, "get", "pods")), context=client)[0] == 200
    finally:
        webhook.close()
    assert len(collected.batches) == 2


def test_webhook_errors_are_one_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(WebhookError, match=f"cannot listen on 127.0.0.1:{port}"):
            AuditWebhook(WebhookConfig(host="127.0.0.1", port=port), Collected())
    with pytest.raises(WebhookError, match="cannot use the certificate"):
        AuditWebhook(WebhookConfig(port=0, certfile=str(tmp_path / "none.pem")), Collected())


class Sink:
    name = "memory"

    def __init__(self) -> None:
        self.alerts: list[Any] = []

    def write(self, alert: Any) -> None:
        self.alerts.append(alert)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_detector_evaluates_webhook_events_next_to_its_kernel_source(
        audit_engine: Engine) -> None:
    sink = Sink()
    source = NoKernelSource()
    detector = Detector(audit_engine, None, source, [sink],  # type: ignore[arg-type]
                        queue_records=4, purge_interval=float("inf"))  # audit needs no tracker
    webhook = AuditWebhook(WebhookConfig(host="127.0.0.1", port=0), detector.submit,
                           detector.has_room)
    webhook.start()
    runner = threading.Thread(target=detector.run)
    runner.start()
    try:
        priv = cases()[0]
        assert post(webhook.port, body(priv.event))[0] == 200
        deadline = time.monotonic() + 10
        while not sink.alerts and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [(a.rule, a.source) for a in sink.alerts] == [("Create Privileged Pod",
                                                              "k8s_audit")]
    finally:
        detector.stop()
        runner.join(10)
        webhook.close()
        source.close()
    assert detector.audit.audit_events == 1 and detector.metrics.errors == 0
    # A full queue refuses (the API server resends): it never drops silently.
    idle = Detector(audit_engine, None, NoKernelSource(), [sink],  # type: ignore[arg-type]
                    queue_records=4)
    event = wrap(cases()[0].event)
    assert idle.submit([event] * 3) and idle.has_room()
    assert not idle.submit([event] * 3)
    assert idle.submit([event]) and not idle.has_room()
    assert (idle.audit.audit_events, idle.audit.audit_refused) == (4, 3)


# ---- the corpus through a real `lanner detect` -------------------------------------------------


class Lanner:
    """`lanner detect --source k8saudit` on a free loopback port, alerts to a file and to an
    HTTP receiver (Falco's http_output path)."""

    def __init__(self, tmp: Path, receiver_url: str) -> None:
        self.alerts_file = tmp / "alerts.json"
        self.stderr_file = tmp / "stderr.txt"
        self.stderr = self.stderr_file.open("w")
        self.proc = subprocess.Popen(
            [LANNER, "detect", "--source", "k8saudit", "--k8s-audit", "127.0.0.1:0",
             "--rules", str(upstream_file("k8s_audit_rules.yaml")), str(OUR_RULES),
             "--output", f"file:{self.alerts_file}", "--output", receiver_url],
            stdout=subprocess.DEVNULL, stderr=self.stderr)
        self.port = self._port()

    def _port(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = self.stderr_file.read_text()
            for line in text.splitlines():
                if "k8s audit webhook listening on http://127.0.0.1:" in line:
                    return int(line.rsplit(":", 1)[1].split("/")[0])
            if self.proc.poll() is not None:
                raise RuntimeError(f"lanner detect exited: {text}")
            time.sleep(0.05)
        raise TimeoutError("lanner detect did not start its webhook")

    def alerts(self, n: int, timeout: float = 15) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.alerts_file.read_bytes().splitlines() if self.alerts_file.exists() \
                else []
            if len(lines) >= n or time.monotonic() > deadline:
                return [orjson.loads(line) for line in lines]
            time.sleep(0.05)

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.stderr.close()
        return code, self.stderr_file.read_text()


def test_corpus_through_the_running_webhook(tmp_path: Path) -> None:
    corpus = cases()
    expected = sum(len(c.fires) for c in corpus)
    with Receiver() as receiver:
        lanner = Lanner(tmp_path, receiver.url + "/")
        try:
            # As the API server batches them: several EventLists on one keep-alive connection.
            conn = http.client.HTTPConnection("127.0.0.1", lanner.port, timeout=10)
            for start in range(0, len(corpus), 20):
                batch = body(*(c.event for c in corpus[start:start + 20]))
                conn.request("POST", "/k8s-audit", body=batch,
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                assert (response.status, orjson.loads(response.read())) == \
                    (200, {"accepted": len(corpus[start:start + 20])})
            conn.close()
            alerts = lanner.alerts(expected)
            assert len(alerts) == expected
            by_time: dict[int, list[dict[str, Any]]] = {}
            for alert in alerts:
                assert list(alert) == FALCO_KEYS and alert["source"] == "k8s_audit"
                by_time.setdefault(alert["output_fields"]["evt.time"], []).append(alert)
            for n, case in enumerate(corpus, start=1):
                fired = by_time.get(time_ns(n), [])
                assert {a["rule"] for a in fired} == case.fires, case.title
                check_fields(case, {a["rule"]: a["output_fields"] for a in fired})
            first = by_time[time_ns(1)][0]
            assert first["time"] == "2026-01-01T09:00:01.250000000Z"
            assert first["output"] == (
                "09:00:01.250000000: Warning Pod started with privileged container "
                "(user=kubernetes-admin pod=priv resource=pods ns=default images=(nginx:1.27) "
                "init_images=<NA> ephemeral_images=<NA>)")
            # The same alerts went out through the HTTP publisher.
            received = receiver.wait_for(expected, timeout=15)
            assert sorted(r.json["rule"] for r in received) == sorted(a["rule"] for a in alerts)

            # Malformed, oversized and mistyped posts: clear 4xx, and the source keeps going.
            assert post(lanner.port, b"{oops")[0] == 400
            assert post(lanner.port, b"[]", headers={"Content-Type": "text/plain"})[0] == 415
            assert raw(lanner.port, announced(12 * 1024 * 1024 + 1)).startswith(
                b"HTTP/1.1 413 ")
            big = {**audit_event(90, "get", "pods"), "requestObject": {"x": "y" * 262_144}}
            status, answer, _ = post(lanner.port, body(big, corpus[0].event | {
                "stageTimestamp": "2026-01-01T10:00:00.000001Z"}))
            assert (status, answer["accepted"]) == (413, 1)
            assert [a["rule"] for a in lanner.alerts(expected + 1)[expected:]] == \
                ["Create Privileged Pod"]
        finally:
            code, stderr = lanner.stop()
    assert code == 0, stderr
    assert f"audit_events={len(corpus) + 1}, audit_refused=0" in stderr
    assert "Traceback" not in stderr
