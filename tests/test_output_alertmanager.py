"""The Alertmanager output against a real Alertmanager, a recording receiver and a real hub."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from outputs.alertmanager import (
    LABEL_VALUE_MAX,
    AlertmanagerConfig,
    AlertmanagerOutput,
    label_name,
)
from outputs.base import PartialFailure, PermanentError, RetryableError
from sidekick.alert import Alert, Priority, format_time_ns
from sidekick.config import ConfigError, load_config, redacted
from tests.alertmanager import AlertmanagerServer
from tests.hubproc import HubProcess, falco_alert
from tests.receiver import Receiver, Reply
from tests.support import free_port

PUBLIC = "http://lanner.example:2801"
HEADER_SECRET = "Bearer am-s3cret-9f2c"
DELIVERY = {"initialbackoff": "50ms", "maxbackoff": "1s"}


@pytest.fixture
def am(tmp_path: Path) -> Iterator[AlertmanagerServer]:
    server = AlertmanagerServer(tmp_path / "am")
    yield server
    server.stop()


def make_alert(n: int = 0, **changes: Any) -> Alert:
    """A recent event (Alertmanager lists only alerts that have not ended yet)."""
    now = time.time_ns()
    alert = Alert(
        rule="Terminal shell in container",
        priority=Priority.WARNING,
        time_ns=now,
        output_fields={
            "evt.time": now, "proc.pid": 4000 + n, "proc.ppid": 1, "thread.tid": 4000 + n,
            "proc.apid[2]": 7, "evt.num": n, "fd.num": 3, "proc.name": "bash",
            "container.id": "abc123", "k8s.ns.name": "default", "fd.name": None,
            "user.loginuid": -1, "proc.is_exe_upper_layer": False,
        },
        output=f"A shell was spawned in a container (pid={4000 + n}) é ✓",
        tags=["shell", "container"],
        hostname="node-1",
        uuid=f"00000000-0000-4000-8000-{n:012d}",
    )
    for key, value in changes.items():
        setattr(alert, key, value)
    return alert


EXPECTED_LABELS = {
    "proc_name": "bash", "container_id": "abc123", "k8s_ns_name": "default",
    "user_loginuid": "-1", "proc_is_exe_upper_layer": "false",
    "source": "falco", "eventsource": "syscalls", "rule": "Terminal shell in container",
    "alertname": "Terminal shell in container", "hostname": "node-1",
    "tags": "container,shell", "priority": "Warning", "severity": "warning",
}


def output(**keys: Any) -> AlertmanagerOutput:
    """The output; `async with` starts and closes it."""
    return AlertmanagerOutput(AlertmanagerConfig(**keys), PUBLIC)


def ms(text: str) -> int:
    """Milliseconds since the epoch of an RFC3339 time (Alertmanager answers in ms)."""
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def assert_clean(exc: BaseException) -> None:
    text = str(exc) + repr(exc) + "".join(traceback.format_exception(exc))
    assert HEADER_SECRET not in text


# -- against a real Alertmanager -----------------------------------------------------------


async def test_real_alertmanager_stores_labels_annotations_times(am: AlertmanagerServer) -> None:
    alert = make_alert(1)
    async with output(hostport=am.url, expiresafter=600, extralabels={"team": "sec"},
                      extraannotations={"runbook": "https://wiki/shell"}) as out:
        await out.send([alert])
    [stored] = am.wait_alerts(1)
    assert stored["labels"] == {**EXPECTED_LABELS, "team": "sec"}
    assert stored["annotations"] == {
        "info": alert.output, "description": alert.output,
        "summary": "Terminal shell in container", "runbook": "https://wiki/shell",
    }
    assert ms(stored["startsAt"]) == alert.time_ns // 1_000_000
    assert ms(stored["endsAt"]) == alert.time_ns // 1_000_000 + 600_000
    assert stored["generatorURL"] == f"{PUBLIC}/ui/?event={alert.uuid}"
    assert stored["status"]["state"] == "active"


async def test_repeats_of_an_event_are_one_alert(am: AlertmanagerServer) -> None:
    first, again = make_alert(1), make_alert(2)  # other evt.time, pids, uuid, output text
    assert first.output_fields != again.output_fields and first.uuid != again.uuid
    other = make_alert(3, output_fields={**first.output_fields, "proc.name": "sh"})
    async with output(hostport=am.url) as out:
        await out.send([first])
        await out.send([again])
        assert len(am.wait_alerts(1)) == 1
        await out.send([other])
    alerts = am.wait_alerts(2)
    assert sorted(a["labels"]["proc_name"] for a in alerts) == ["bash", "sh"]


async def test_every_alertmanager_gets_every_alert_in_one_request_each(
    tmp_path: Path, receiver: Receiver
) -> None:
    servers = [AlertmanagerServer(tmp_path / name) for name in ("am1", "am2")]
    try:
        batch = [make_alert(n, rule=f"Rule {n}") for n in range(3)]
        hosts = ",".join(s.url for s in servers) + f",{receiver.url}"
        async with output(hostport=hosts, batchsize=3) as out:
            await out.send(batch)
        for server in servers:
            got = server.wait_alerts(3)
            assert sorted(a["labels"]["rule"] for a in got) == ["Rule 0", "Rule 1", "Rule 2"]
        [request] = receiver.wait_for(1)
        assert [item["labels"]["rule"] for item in request.json] == ["Rule 0", "Rule 1", "Rule 2"]
    finally:
        for server in servers:
            server.stop()


async def test_one_host_down_still_delivers_and_is_logged_once(
    am: AlertmanagerServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lanner.output.alertmanager")
    dead = f"http://127.0.0.1:{free_port()}"
    async with output(hostport=[am.url, dead], timeout=2) as out:
        await out.send([make_alert(1)])
        await out.send([make_alert(2, rule="Other")])
    assert len(am.wait_alerts(2)) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert dead.removeprefix("http://") in warnings[0]
    assert "connection failed" in warnings[0]


# -- payload -------------------------------------------------------------------------------


def test_payload_matches_falcosidekick_plus_times() -> None:
    alert = make_alert(1)
    item = AlertmanagerOutput(AlertmanagerConfig(hostport="http://am:9093"), PUBLIC).payload(alert)
    assert item == {
        "labels": EXPECTED_LABELS,
        "annotations": {"info": alert.output, "description": alert.output,
                        "summary": alert.rule},
        "startsAt": format_time_ns(alert.time_ns),
        "generatorURL": f"{PUBLIC}/ui/?event={alert.uuid}",
    }


@pytest.mark.parametrize(
    ("field", "name"),
    [("k8s.ns.name", "k8s_ns_name"), ("proc.aname[2]", "proc_aname_2"),
     ("..a..b__c..", "a_b_c"), ("k8s.pod.label[app.kubernetes.io/name]",
                                 "k8s_pod_label_app_kubernetes_io_name"),
     ("é.x", "x"), ("1abc", None), ("...", None), ("é", None)],
)
def test_label_names(field: str, name: str | None) -> None:
    assert label_name(field) == name


def labels_of(fields: dict[str, Any], **keys: Any) -> dict[str, str]:
    out = AlertmanagerOutput(AlertmanagerConfig(hostport="http://am:9093", **keys))
    alert = make_alert(output_fields=fields, tags=[], hostname="")
    fixed = {"source", "eventsource", "rule", "alertname", "priority", "severity"}
    return {k: v for k, v in out.labels(alert).items() if k not in fixed}


def test_high_cardinality_fields_are_never_labels() -> None:
    noisy = {
        "evt.time": 1, "evt.time.iso8601": "x", "evt.rawtime.s": 1, "evt.datetime": "x",
        "evt.num": 9, "evt.cpu": 1, "evt.latency": 5, "evt.args": "fd=3", "evt.rawres": 3,
        "evt.arg.fd": 3, "evt.rawarg.pid": 5, "proc.pid": 1, "proc.ppid": 1, "proc.vpid": 1,
        "proc.pvpid": 1, "proc.apid[3]": 1, "proc.sid": 1, "proc.vpgid": 1, "proc.pid.ts": 1,
        "proc.duration": 1, "proc.exe_ino": 1, "proc.fdopencount": 1, "thread.tid": 1,
        "thread.vtid": 1, "thread.vmrss": 1, "fd.num": 3, "fd.ino": 1, "fd.uid": "3x",
        "fd.cport": 51234, "n_evts": 100, "nothing": None, "empty": "",
    }
    kept = {"proc.name": "a", "proc.sid.exe": "/bin/login", "fd.sport": 443, "proc.tty": 0}
    assert labels_of({**noisy, **kept}) == {
        "proc_name": "a", "proc_sid_exe": "/bin/login", "fd_sport": "443", "proc_tty": "0",
    }


def test_allow_and_deny_lists() -> None:
    fields = {"proc.name": "a", "proc.cmdline": "a -x", "k8s.ns.name": "ns", "proc.pid": 4,
              "k8s.pod.label[app]": "web", "k8s.pod.labelXappX": "other"}
    assert labels_of(fields, labeldenylist=["proc.cmd*", "k8s.pod.label[app]"]) == {
        "proc_name": "a", "k8s_ns_name": "ns", "k8s_pod_labelXappX": "other",
    }
    # brackets are literal, "?" is one character, and an exact name brings back a denied field
    assert labels_of(fields, labelallowlist=["k8s.pod.label[app]", "proc.nam?", "proc.pid"]) == {
        "k8s_pod_label_app": "web", "proc_name": "a", "proc_pid": "4",
    }
    assert labels_of(fields, labelallowlist=["proc.*"]) == {"proc_name": "a",
                                                            "proc_cmdline": "a -x"}
    # the user's deny list wins over an exact allow
    assert labels_of(fields, labelallowlist=["proc.pid"], labeldenylist=["proc.pid"]) == {}
    env = load_config(None, env={"ALERTMANAGER_HOSTPORT": "http://am:9093",
                                 "ALERTMANAGER_LABELDENYLIST": "proc.cmd*, k8s.*"})
    assert env.outputs["alertmanager"].labeldenylist == ["proc.cmd*", "k8s.*"]


def test_values_lists_bools_collisions_and_long_values() -> None:
    long = "x" * 5000
    labels = labels_of({"k8s.ns.name": "first", "k8s_ns_name": "second", "a.list": ["p", None, 2],
                        "flag": True, "cmd": long, "ratio": 0.5})
    assert labels["k8s_ns_name"] == "first"  # sorted field names: "." before "_"
    assert labels["a_list"] == "p,2"
    assert labels["flag"] == "true"
    assert labels["ratio"] == "0.5"
    assert len(labels["cmd"]) == LABEL_VALUE_MAX and labels["cmd"].endswith("…")
    # cut the same way every time, so repeats still group
    assert labels == labels_of({"k8s.ns.name": "first", "k8s_ns_name": "second",
                                "a.list": ["p", None, 2], "flag": True, "cmd": long,
                                "ratio": 0.5})


def test_fixed_labels_override_fields_and_extralabels_override_all() -> None:
    out = AlertmanagerOutput(AlertmanagerConfig(
        hostport="http://am:9093", extralabels={"severity": "page", "tags": "", "cluster": "prod"}
    ))
    alert = make_alert(output_fields={"rule": "spoofed", "priority": "x", "proc.name": "a"})
    labels = out.labels(alert)
    assert labels["rule"] == "Terminal shell in container"
    assert labels["priority"] == "Warning"
    assert labels["severity"] == "page"
    assert labels["cluster"] == "prod"
    assert "tags" not in labels  # an empty extra label removes it


@pytest.mark.parametrize(
    ("priority", "severity"),
    [(Priority.DEBUG, "information"), (Priority.INFORMATIONAL, "information"),
     (Priority.NOTICE, "information"), (Priority.WARNING, "warning"), (Priority.ERROR, "warning"),
     (Priority.CRITICAL, "critical"), (Priority.ALERT, "critical"),
     (Priority.EMERGENCY, "critical")],
)
def test_default_severity_map(priority: Priority, severity: str) -> None:
    out = AlertmanagerOutput(AlertmanagerConfig(hostport="http://am:9093"))
    labels = out.labels(make_alert(priority=priority))
    assert (labels["severity"], labels["priority"]) == (severity, priority.label)


def test_custom_severity_map() -> None:
    config = AlertmanagerConfig(hostport="http://am:9093",
                                customseveritymap="Critical:page, warning:ticket, INFO:log")
    assert config.customseveritymap == {Priority.CRITICAL: "page", Priority.WARNING: "ticket",
                                        Priority.INFORMATIONAL: "log"}
    out = AlertmanagerOutput(config)
    assert out.labels(make_alert(priority=Priority.WARNING))["severity"] == "ticket"
    assert out.labels(make_alert(priority=Priority.ERROR))["severity"] == "warning"
    assert config.model_dump(mode="json")["customseveritymap"] == {
        "critical": "page", "warning": "ticket", "informational": "log"}


def test_drop_event_bucketing_as_falcosidekick() -> None:
    out = AlertmanagerOutput(AlertmanagerConfig(hostport="http://am:9093"))
    drop = make_alert(priority=Priority.DEBUG, rule="Falco internal: syscall event drop",
                      output_fields={"n_drops": "815508", "n_drops_buffer": 0,
                                     "n_drops_pf": "5", "n_drops_bug": "abc", "n_evts": "9"})
    labels = out.labels(drop)
    assert (labels["n_drops"], labels["n_drops_buffer"], labels["n_drops_pf"]) == (
        ">10000", "0", ">1")
    assert "n_drops_bug" not in labels and "n_evts" not in labels
    assert labels["priority"] == "Critical" and labels["severity"] == "critical"
    # zero drops raise to warning at least; a count under every threshold keeps its value and
    # takes dropeventdefaultpriority
    quiet = make_alert(priority=Priority.DEBUG, output_fields={"n_drops": 0})
    assert out.labels(quiet)["priority"] == "Warning"
    custom = AlertmanagerOutput(AlertmanagerConfig(
        hostport="http://am:9093", dropeventthresholds="100:error",
        dropeventdefaultpriority="notice",
    ))
    assert custom.labels(make_alert(priority=Priority.DEBUG, output_fields={"n_drops": 50})) == {
        **custom.labels(make_alert(priority=Priority.NOTICE, output_fields={})),
        "n_drops": "50"}
    assert custom.labels(make_alert(priority=Priority.DEBUG,
                                    output_fields={"n_drops": 500}))["priority"] == "Error"


@pytest.mark.parametrize(
    "value",
    ["10000:critical, 1000:critical, 100:critical, 10:warning, 1:warning",
     "1:warning,10:warning,100:critical,1000:critical,10000:critical",
     {10000: "critical", "1000": "Critical", 100: "critical", 10: "warning", 1: "warning"}],
)
def test_drop_thresholds_parse_in_every_form(value: Any) -> None:
    config = AlertmanagerConfig(dropeventthresholds=value)
    assert config.dropeventthresholds == AlertmanagerConfig().dropeventthresholds
    assert sorted(config.dropeventthresholds.items(), reverse=True)[0] == (10000,
                                                                           Priority.CRITICAL)


# -- delivery and errors, against a recording receiver --------------------------------------


async def test_request_shape_endpoint_and_headers(receiver: Receiver) -> None:
    batch = [make_alert(n) for n in range(5)]
    async with output(hostport=f"{receiver.url}/prefix/", endpoint="/am/api/v2/alerts",
                      customheaders=f"Authorization:{HEADER_SECRET},X-Org:a:b") as out:
        await out.send(batch)
    [req] = receiver.wait_for(1)
    assert (req.method, req.path) == ("POST", "/prefix/am/api/v2/alerts")
    assert req.headers["content-type"] == "application/json; charset=utf-8"
    assert req.headers["authorization"] == HEADER_SECRET
    assert req.headers["x-org"] == "a:b"
    assert req.headers["user-agent"] == "Lanner"
    assert [item["generatorURL"] for item in req.json] == [
        f"{PUBLIC}/ui/?event={a.uuid}" for a in batch]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_retryable_statuses(receiver: Receiver, status: int) -> None:
    receiver.respond_with(status, {"Retry-After": "7"}, times=1)
    async with output(hostport=receiver.url, customheaders={"Authorization": HEADER_SECRET}) as out:
        with pytest.raises(RetryableError) as info:
            await out.send([make_alert()])
        await out.send([make_alert()])
    assert str(info.value) == f"alertmanager: HTTP {status}"
    assert info.value.retry_after == 7.0
    assert_clean(info.value)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 413, 422, 302])
async def test_permanent_statuses(receiver: Receiver, status: int) -> None:
    receiver.respond_with(status, {"Location": "/elsewhere"}, times=1)
    async with output(hostport=receiver.url, customheaders={"Authorization": HEADER_SECRET}) as out:
        with pytest.raises(PermanentError) as info:
            await out.send([make_alert()])
    assert str(info.value) == f"alertmanager: HTTP {status}"
    assert_clean(info.value)


async def test_timeout_and_connection_refused_are_retryable(receiver: Receiver) -> None:
    receiver.respond_with(200, delay=1.5, times=1)
    async with output(hostport=receiver.url, timeout=0.3) as out:
        started = time.monotonic()
        with pytest.raises(RetryableError, match=r"^alertmanager: timeout$"):
            await out.send([make_alert()])
        assert time.monotonic() - started < 1.4
    async with output(hostport=f"http://127.0.0.1:{free_port()}") as out:
        with pytest.raises(RetryableError, match=r"^alertmanager: connection failed$"):
            await out.send([make_alert()])


async def test_every_host_failing(receiver: Receiver) -> None:
    with Receiver() as other:
        hosts = [receiver.url, other.url]
        receiver.respond_with(429, {"Retry-After": "3"})
        other.respond_with(503, {"Retry-After": "1"})
        async with output(hostport=hosts) as out:
            with pytest.raises(RetryableError) as info:
                await out.send([make_alert()])
            # the first host that may take it again decides when to retry
            assert info.value.retry_after == 1.0
            assert f"127.0.0.1:{receiver.port} HTTP 429" in str(info.value)
            other.respond_with(400)  # one permanent, one retryable: retry
            with pytest.raises(RetryableError) as info:
                await out.send([make_alert()])
            assert info.value.retry_after == 3.0
            receiver.respond_with(404)
            with pytest.raises(PermanentError, match="every host failed"):
                await out.send([make_alert()])
        async with output(hostport=[receiver.url, f"http://127.0.0.1:{free_port()}"]) as out:
            receiver.respond_with(503, {"Retry-After": "3"})
            with pytest.raises(RetryableError) as info:
                await out.send([make_alert()])
            assert info.value.retry_after is None  # the refused host may be back any moment


async def test_refused_batch_is_retried_alert_by_alert(receiver: Receiver) -> None:
    def answer(req: Any) -> Reply | None:
        if len(req.json) > 1:
            return Reply(400)  # as Alertmanager does when one alert of a batch is invalid
        return Reply(422) if req.json[0]["labels"]["rule"] == "Bad" else None

    receiver.set_responder(answer)
    batch = [make_alert(0), make_alert(1, rule="Bad"), make_alert(2)]
    async with output(hostport=receiver.url, batchsize=3) as out:
        with pytest.raises(PartialFailure) as info:
            await out.send(batch)
        assert list(info.value.failures) == [batch[1].uuid]
        assert isinstance(info.value.failures[batch[1].uuid], PermanentError)
        receiver.reset()
        receiver.respond_with(413, times=1)  # too big together, fine one by one
        await out.send([batch[0], batch[2]])
    assert [r.status for r in receiver.requests] == [413, 200, 200]


# -- configuration --------------------------------------------------------------------------


def test_hostport_forms_and_enabled() -> None:
    assert not AlertmanagerOutput.enabled(AlertmanagerConfig())
    assert not AlertmanagerOutput.enabled(AlertmanagerConfig(hostport=" , "))
    config = AlertmanagerConfig(hostport="http://am-0:9093/, https://am-1:9093")
    assert config.hostport == ["http://am-0:9093", "https://am-1:9093"]
    assert AlertmanagerOutput.enabled(config)
    assert AlertmanagerConfig(hostport=["http://a:1", "http://b:1"]).hostport == [
        "http://a:1", "http://b:1"]
    assert AlertmanagerConfig(endpoint="").endpoint == "/api/v2/alerts"
    env = load_config(None, env={"ALERTMANAGER_HOSTPORT": "http://a:1,http://b:1",
                                 "ALERTMANAGER_EXTRALABELS": "a:b,c:d",
                                 "ALERTMANAGER_DROPEVENTTHRESHOLDS": "5:error, 50:critical",
                                 "ALERTMANAGER_EXPIRESAFTER": "300"})
    am = env.outputs["alertmanager"]
    assert am.hostport == ["http://a:1", "http://b:1"]
    assert am.extralabels == {"a": "b", "c": "d"}
    assert am.dropeventthresholds == {5: Priority.ERROR, 50: Priority.CRITICAL}
    assert am.expiresafter == 300


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ALERTMANAGER_EXTRALABELS": "bad-name:x"},
         "env ALERTMANAGER_EXTRALABELS: 'bad-name' is not a valid name"),
        ({"ALERTMANAGER_EXTRALABELS": "novalue"}, "env ALERTMANAGER_EXTRALABELS: 'novalue'"),
        ({"ALERTMANAGER_EXTRAANNOTATIONS": "9lives:x"}, "env ALERTMANAGER_EXTRAANNOTATIONS"),
        ({"ALERTMANAGER_ENDPOINT": "/api/v1/alerts"},
         "env ALERTMANAGER_ENDPOINT: Alertmanager removed the v1 API"),
        ({"ALERTMANAGER_ENDPOINT": "api/v2/alerts"}, "env ALERTMANAGER_ENDPOINT: must be a path"),
        ({"ALERTMANAGER_DROPEVENTTHRESHOLDS": "10000:critical: 1000:critical"},
         "env ALERTMANAGER_DROPEVENTTHRESHOLDS: separate the pairs with commas"),
        ({"ALERTMANAGER_DROPEVENTTHRESHOLDS": "many:critical"},
         "env ALERTMANAGER_DROPEVENTTHRESHOLDS: 'many' is not a whole number"),
        ({"ALERTMANAGER_DROPEVENTTHRESHOLDS": "10:loud"},
         "env ALERTMANAGER_DROPEVENTTHRESHOLDS: unknown priority 'loud'"),
        ({"ALERTMANAGER_DROPEVENTDEFAULTPRIORITY": "loud"},
         "env ALERTMANAGER_DROPEVENTDEFAULTPRIORITY: unknown priority"),
        ({"ALERTMANAGER_CUSTOMSEVERITYMAP": "urgent:page"},
         "env ALERTMANAGER_CUSTOMSEVERITYMAP: unknown priority 'urgent'"),
        ({"ALERTMANAGER_CUSTOMSEVERITYMAP": "critical:"},
         "env ALERTMANAGER_CUSTOMSEVERITYMAP: the severity for 'critical'"),
        ({"ALERTMANAGER_EXPIRESAFTER": "-1"}, "env ALERTMANAGER_EXPIRESAFTER"),
        ({"ALERTMANAGER_MINIMUMPRIORITY": "loud"}, "env ALERTMANAGER_MINIMUMPRIORITY"),
        ({"ALERTMANAGER_CUSTOMHEADERS": "Bad Name:x"}, "env ALERTMANAGER_CUSTOMHEADERS"),
        ({"ALERTMANAGER_HOSTPORT": "ftp://am:9093"},
         "env ALERTMANAGER_HOSTPORT: 'ftp://am:9093' is not an http:// or https:// URL"),
        ({"ALERTMANAGER_HOSTPORT": "http://am:99999"}, "env ALERTMANAGER_HOSTPORT"),
        ({"ALERTMANAGER_HOSTPORT": "http://am:1?token=x"}, "must not have a query"),
        ({"ALERTMANAGER_HOSTPORT": "http://am:1,http://am:1/"}, "is listed twice"),
    ],
)
def test_bad_values_are_config_errors_naming_the_key(env: dict[str, str], message: str) -> None:
    env = {"ALERTMANAGER_HOSTPORT": "http://am:9093", **env}
    with pytest.raises(ConfigError) as info:
        load_config(None, env=env)
    assert message in str(info.value)


def test_yaml_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("alertmanager:\n  hostport: http://am:9093\n  extralabels: {ok: 1, bad.x: y}\n")
    with pytest.raises(ConfigError, match=r"config.yaml:3: alertmanager.extralabels: 'bad.x'"):
        load_config(path, env={})
    path.write_text("alertmanager:\n  hostport: http://am:9093\n  extralabels: {n: 1, up: true}\n")
    assert load_config(path, env={}).outputs["alertmanager"].extralabels == {"n": "1", "up": "true"}


def test_credentials_in_hostport_are_refused_without_echo() -> None:
    with pytest.raises(ValidationError) as info:
        AlertmanagerConfig(hostport="http://admin:hunter2@am:9093")
    assert "hunter2" not in str(info.value)
    assert "customheaders" in str(info.value)


def test_secrets_stay_out_of_repr_and_dumps() -> None:
    config = AlertmanagerConfig(hostport="http://am:9093",
                                customheaders={"Authorization": HEADER_SECRET})
    for text in (repr(config), str(config), config.model_dump_json(), str(redacted(config))):
        assert HEADER_SECRET not in text
    assert config.model_dump(mode="json")["customheaders"] == {"Authorization": "**********"}
    with pytest.raises(ValidationError) as info:
        AlertmanagerConfig(customheaders={"X-Evil": f"{HEADER_SECRET}\r\nInjected: 1"})
    assert HEADER_SECRET not in str(info.value)


# -- through the real hub --------------------------------------------------------------------


def hub_alert(seq: int, **fields: Any) -> dict[str, Any]:
    """A recent Falco alert; ``seq`` changes only what differs between repeats of one event."""
    now = time.time_ns()
    alert = falco_alert(seq, time=format_time_ns(now))
    alert["output_fields"].update({"evt.time": now, "proc.pid": 4000 + seq, "n": 0, **fields})
    return alert


def test_hub_to_real_alertmanager(tmp_path: Path, am: AlertmanagerServer) -> None:
    config = {"publicurl": PUBLIC, "alertmanager": {"hostport": am.url, "expiresafter": 600},
              "delivery": DELIVERY}
    with HubProcess(tmp_path, config) as hub:
        first = hub_alert(1)
        for alert in (first, hub_alert(2)):  # repeats: other uuid, evt.time and pid
            assert httpx.post(f"{hub.url}/", json=alert).status_code == 200
        [stored] = am.wait_alerts(1)
        time.sleep(0.3)  # the repeat has had its chance to show up as a second alert
        assert len(am.alerts()) == 1
        test = httpx.post(f"{hub.url}/test").json()
        alerts = {a["labels"]["rule"]: a for a in am.wait_alerts(2)}
    stored = alerts["Terminal shell in container"]
    assert stored["labels"] == {
        "proc_name": "bash", "user_name": "root", "container_id": "abcdef123456",
        "k8s_ns_name": "default", "n": "0", "source": "falco", "eventsource": "syscall",
        "rule": "Terminal shell in container", "alertname": "Terminal shell in container",
        "hostname": "node-1", "tags": "container,mitre_execution,shell", "priority": "Warning",
        "severity": "warning",
    }
    assert stored["annotations"]["summary"] == "Terminal shell in container"
    assert stored["generatorURL"].startswith(f"{PUBLIC}/ui/?event=00000000-0000-4000-8000-")
    start = ms(stored["startsAt"])
    assert start == ms(first["time"])
    assert ms(stored["endsAt"]) - start in range(600_000, 600_000 + 1000)
    probe = alerts["Test rule"]
    assert probe["generatorURL"] == f"{PUBLIC}/ui/?event={test['uuid']}"
    assert probe["labels"]["eventsource"] == "internal"
    assert probe["labels"]["severity"] == "information"


def test_hub_fans_out_to_two_alertmanagers(tmp_path: Path) -> None:
    servers = [AlertmanagerServer(tmp_path / name) for name in ("am1", "am2")]
    try:
        config = {"alertmanager": {"hostport": f"{servers[0].url}, {servers[1].url}",
                                   "batchsize": 10}, "delivery": DELIVERY}
        with HubProcess(tmp_path, config) as hub:
            for n in range(3):
                assert httpx.post(f"{hub.url}/", json=hub_alert(n, n=n)).status_code == 200
            for server in servers:
                assert sorted(a["labels"]["n"] for a in server.wait_alerts(3)) == ["0", "1", "2"]
    finally:
        for server in servers:
            server.stop()


def delivered_to(receiver: Receiver, uuid: str) -> list[float]:
    """Arrival times of the 2xx-answered requests that carried the alert ``uuid``."""
    return [r.received_at for r in receiver.requests if r.ok
            for item in r.json if item["generatorURL"].endswith(f"event={uuid}")]


def test_hub_retries_429_and_5xx_then_delivers_once(tmp_path: Path, receiver: Receiver) -> None:
    receiver.respond_with(429, {"Retry-After": "1"}, times=1)
    receiver.respond_with(503, times=3)
    config = {"alertmanager": {"hostport": receiver.url}, "delivery": DELIVERY}
    with HubProcess(tmp_path, config) as hub:
        alert = hub_alert(1)
        assert httpx.post(f"{hub.url}/", json=alert).status_code == 200
        receiver.wait_for(1, ok=True)
        time.sleep(0.5)  # room for a duplicate to show up
    requests = receiver.requests
    assert [r.status for r in requests] == [429, 503, 503, 503, 200]
    assert requests[1].received_at - requests[0].received_at >= 0.95  # Retry-After: 1
    assert len(delivered_to(receiver, alert["uuid"])) == 1


def test_hub_dead_letters_a_permanent_error(tmp_path: Path, receiver: Receiver) -> None:
    receiver.respond_with(400, times=1)
    config = {"alertmanager": {"hostport": receiver.url}, "delivery": DELIVERY}
    with HubProcess(tmp_path, config) as hub:
        alert = hub_alert(1)
        assert httpx.post(f"{hub.url}/", json=alert).status_code == 200
        deadline = time.monotonic() + 10
        while not (dead := httpx.get(f"{hub.url}/api/v1/deadletters").json()["deadletters"]):
            assert time.monotonic() < deadline, "never dead-lettered"
            time.sleep(0.05)
    [letter] = dead
    assert (letter["output"], letter["reason"]) == ("alertmanager", "alertmanager: HTTP 400")
    assert letter["alert"]["uuid"] == alert["uuid"]
    assert receiver.count == 1


def test_hub_env_config_and_test_alert(tmp_path: Path, receiver: Receiver) -> None:
    env = {"ALERTMANAGER_HOSTPORT": receiver.url, "ALERTMANAGER_EXTRALABELS": "a:b,c:d",
           "ALERTMANAGER_MINIMUMPRIORITY": "critical"}
    with HubProcess(tmp_path, {"delivery": DELIVERY}, env=env) as hub:
        assert "alertmanager" in httpx.get(f"{hub.url}/api/v1/outputs").json()
        test = httpx.post(f"{hub.url}/test").json()
        [req] = receiver.wait_for(1)
    [item] = req.json
    assert item["labels"] == {
        "proc_name": "lanner", "user_name": "lanner", "source": "falco",
        "eventsource": "internal", "rule": "Test rule", "alertname": "Test rule",
        "tags": "example,test", "priority": "Debug", "severity": "information",
        "a": "b", "c": "d",
    }
    assert item["generatorURL"].endswith(f"/ui/?event={test['uuid']}")


def test_cli_bad_env_value_is_one_clear_line() -> None:
    env = {**os.environ, "ALERTMANAGER_HOSTPORT": "http://am:9093",
           "ALERTMANAGER_EXTRALABELS": "bad-name:x"}
    result = subprocess.run(
        [sys.executable, "-m", "sidekick.cli", "sidekick", "--check"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "lanner: configuration error: env ALERTMANAGER_EXTRALABELS: 'bad-name' is not a valid "
        "name ([a-zA-Z_][a-zA-Z0-9_]*)"
    )
