"""`lanner detect --hub-rules PATH`: the exceptions saved in the hub's UI reach the detectors.

A real hub (`lanner sidekick`, gRPC with a token) and a real `lanner detect` replaying a
recording slowly: the detector keeps PATH equal to the hub's local rules file (asked over gRPC,
LocalRules) and its rules watcher swaps the exception in, without a restart.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent import futures
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
import yaml

from detector.cli_detect import detect_main
from detector.hub_rules import EMPTY, OLD_HUB_POLL_S, HubRules
from tests.detect_process import DetectProcess
from tests.hubproc import HubProcess, falco_alert
from tests.state_support import record

TOKEN = "detectors-token-0123456789"
RULE, CONTROL = "Read marker", "Read marker (control)"
RULES = "".join(f"""\
- rule: {name}
  desc: a file under /srv/marker opened
  condition: evt.type in (open, openat) and fd.name startswith /srv/marker/
  output: "marker read (file=%fd.name proc=%proc.name)"
  priority: WARNING
""" for name in (RULE, CONTROL))  # the exceptions are for RULE; CONTROL shows events still flow
LONG = 6000  # records: a minute at 100 a second, stopped as soon as the test has seen enough


def write_recording(path: Path, count: int) -> Path:
    """`cat` opening /srv/marker/<n>, ``count`` times."""
    rows = [record("execve", 7, comm="cat", time_ns=1, filename="/usr/bin/cat", argv=["cat"])]
    rows += [record("openat", 7, comm="cat", time_ns=2 + n, res=3, dirfd=-100,
                    name=f"/srv/marker/{n}", flags=0) for n in range(count)]
    path.write_text("".join(orjson.dumps(asdict(r)).decode() + "\n" for r in rows))
    return path


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubProcess]:
    """A hub (not started) whose gRPC port wants TOKEN, which the detectors' env holds."""
    hub = HubProcess(tmp_path, {"grpc": {"token": TOKEN}}, grpc=True)
    monkeypatch.setenv("LANNER_HUB_TOKEN", TOKEN)  # DetectProcess passes its env on
    try:
        yield hub
    finally:
        hub.stop()


def detect(scratch: Path, hub: HubProcess, local: Path, count: int = LONG) -> DetectProcess:
    scratch.mkdir()
    (scratch / "proc").mkdir()  # the recording's pids are not this machine's
    rules = scratch / "rules.yaml"
    rules.write_text(RULES)
    records = write_recording(scratch / "opens.jsonl", count)
    return DetectProcess(
        scratch, "--rules", str(rules), "--output", f"grpc://127.0.0.1:{hub.grpcport}",
        "--hub-rules", str(local), "--source", f"records:{records}", "--replay-rate", "100",
        "--proc-root", str(scratch / "proc"), "--runtime-socket", str(scratch / "none.sock"),
        ready="")


def api(hub: HubProcess) -> httpx.Client:
    return httpx.Client(base_url=hub.base_url, headers={"authorization": f"Bearer {hub.token}"})


def hub_event(hub: HubProcess, detector: DetectProcess) -> dict[str, Any]:
    """An event of RULE that the detector published, once the hub has one."""
    found: list[dict[str, Any]] = []

    def arrived() -> bool:
        with api(hub) as client:
            found[:] = client.get("/api/v1/events", params={"rule": RULE}).json()["events"]
        return bool(found)

    detector.wait_for(arrived, "alert at the hub", 60)
    return found[0]


def save_exception(hub: HubProcess, uuid: str) -> dict[str, Any]:
    with api(hub) as client:
        saved = client.post("/api/v1/exceptions", json={"uuid": uuid, "fields": ["proc.name"]})
    assert saved.status_code == 200, saved.text
    return saved.json()


def numbers(detector: DetectProcess, rule: str) -> list[int]:
    return [int(a["output_fields"]["fd.name"].rsplit("/", 1)[1])
            for a in detector.alerts() if a["rule"] == rule]


def assert_silenced_once_reloaded(detector: DetectProcess) -> None:
    """The detector reloads its rules; from then on RULE stops firing while CONTROL goes on
    (events read before the swap may still fire: one batch, 10 ms of the replay)."""
    detector.wait_for(lambda: "rules reloaded: 2 rules run" in detector.stderr(), "reload", 60)
    before = numbers(detector, RULE)
    detector.wait_for(lambda: numbers(detector, CONTROL)[-1] > before[-1] + 200,
                      "200 more events after the reload", 30)
    after = numbers(detector, RULE)
    assert len(after) - len(before) <= 2, detector.stderr()


def test_an_exception_saved_in_the_ui_reaches_a_running_detector(
    tmp_path: Path, hub: HubProcess
) -> None:
    hub.start()
    local = tmp_path / "hub-rules" / "lanner_local_rules.yaml"  # made by the detector
    detector = detect(tmp_path / "node", hub, local)
    try:
        detector.wait_for(lambda: numbers(detector, RULE), "first alert")
        assert local.read_text() == EMPTY  # the hub has no exception yet
        event = hub_event(hub, detector)
        assert event["output_fields"]["proc.name"] == "cat"
        saved = save_exception(hub, event["uuid"])
        assert_silenced_once_reloaded(detector)
        assert local.read_text() == saved["yaml"]  # the hub's file, as it is
    finally:
        log = detector.stop()
    assert "the hub's exceptions changed (version 1): written to" in log
    assert "restarting" not in log and "cannot" not in log, log
    assert TOKEN not in log


def test_a_hub_unreachable_at_the_start_is_said_once_and_followed_when_it_comes(
    tmp_path: Path, hub: HubProcess
) -> None:
    local = tmp_path / "lanner_local_rules.yaml"
    detector = detect(tmp_path / "node", hub, local)  # the hub is not started yet
    try:
        unreachable = "the hub's exceptions cannot be fetched from grpc://127.0.0.1:"
        detector.wait_for(lambda: unreachable in detector.stderr(), "the hub unreachable")
        assert local.read_text() == EMPTY
        detector.wait_for(lambda: numbers(detector, RULE), "alerts without the hub")
        hub.start()
        saved = save_exception(hub, hub_event(hub, detector)["uuid"])
        assert_silenced_once_reloaded(detector)
        assert local.read_text() == saved["yaml"]
    finally:
        log = detector.stop()
    [line] = [line for line in log.splitlines() if unreachable in line]  # said once
    assert f"{local} keeps what it has; asking again every 5s" in line
    assert "the hub's exceptions are fetched again, from 127.0.0.1:" in log
    assert TOKEN not in log and "Traceback" not in log


def test_a_detector_started_after_the_exception_starts_with_it(
    tmp_path: Path, hub: HubProcess
) -> None:
    hub.start()
    with api(hub) as client:  # the alert an earlier detector would have sent
        alert = falco_alert(1, rule=RULE, output_fields={"proc.name": "cat", "fd.name": "/x"})
        assert client.post("/", json=alert).status_code == 200
    saved = save_exception(hub, alert["uuid"])
    local = tmp_path / "lanner_local_rules.yaml"
    local.write_text("- rule: Gone\n  condition: [\n")  # an earlier run's, stale: replaced
    detector = detect(tmp_path / "node", hub, local, count=300)
    assert detector.proc.wait(timeout=60) == 0, detector.stderr()
    assert local.read_text() == saved["yaml"]
    assert numbers(detector, CONTROL) == list(range(300))
    assert numbers(detector, RULE) == []  # not one: the exception was there from the start
    log = detector.stderr()
    assert "reloaded" not in log and "cannot" not in log, log


def post_alert(hub: HubProcess, rule: str, fields: dict[str, Any]) -> str:
    """An alert as another sender (a Falco, the audit webhook) posts it; its uuid."""
    alert = falco_alert(1, rule=rule, output_fields=fields)
    with api(hub) as client:
        assert client.post("/", json=alert).status_code == 200
    return str(alert["uuid"])


def test_exceptions_for_rules_this_detector_does_not_load_are_left_out(
    tmp_path: Path, hub: HubProcess
) -> None:
    """One file for every detector: an exception for another detector's rule (an audit rule,
    say) would keep the whole file from loading here, as in Falco. It is left out, and said."""
    hub.start()
    local = tmp_path / "lanner_local_rules.yaml"
    save_exception(hub, post_alert(hub, "Rule of another detector", {"proc.name": "cat"}))
    detector = detect(tmp_path / "node", hub, local)
    try:
        detector.wait_for(lambda: numbers(detector, RULE), "first alert")
        saved = save_exception(hub, hub_event(hub, detector)["uuid"])
        assert "Rule of another detector" in saved["yaml"]
        assert_silenced_once_reloaded(detector)
        kept = yaml.safe_load(local.read_text())
        assert [item["rule"] for item in kept] == [RULE]
        assert kept[0] == next(i for i in yaml.safe_load(saved["yaml"]) if i["rule"] == RULE)
    finally:
        log = detector.stop()
    assert log.count("the hub's exceptions for rules this detector does not load are left "
                     "out: Rule of another detector") == 1, log
    assert "cannot be loaded" not in log


def test_a_hub_file_that_does_not_load_leaves_the_rules_running(
    tmp_path: Path, hub: HubProcess
) -> None:
    """An exception on a field this detector does not know (a Falco plugin's, posted by a
    Falco) fails to load: the running detector keeps its rules, a new one starts without it."""
    hub.start()
    local = tmp_path / "lanner_local_rules.yaml"
    detector = detect(tmp_path / "node", hub, local)
    try:
        detector.wait_for(lambda: numbers(detector, RULE), "first alert")
        uuid = post_alert(hub, RULE, {"k8smeta.pod.name": "web-1"})
        with api(hub) as client:
            saved = client.post("/api/v1/exceptions",
                                json={"uuid": uuid, "fields": ["k8smeta.pod.name"]})
        assert saved.status_code == 200, saved.text
        detector.wait_for(lambda: "cannot be loaded" in detector.stderr(), "reload error", 60)
        seen = numbers(detector, RULE)[-1]
        detector.wait_for(lambda: numbers(detector, RULE)[-1] > seen + 100, "alerts go on")
    finally:
        log = detector.stop()
    assert "previous rules go on running" in log and "unknown field 'k8smeta.pod.name'" in log
    assert "Traceback" not in log

    second = detect(tmp_path / "node2", hub, tmp_path / "node2.yaml", count=200)
    assert second.proc.wait(timeout=60) == 0, second.stderr()
    assert numbers(second, RULE) == list(range(200))
    assert "the hub's exceptions cannot be loaded, so the detector runs without them until " \
        f"{tmp_path / 'node2.yaml'} changes" in second.stderr()


# ---- the client on its own -----------------------------------------------------------------


def test_the_file_is_written_only_when_the_hub_has_another(
    tmp_path: Path, hub: HubProcess, caplog: pytest.LogCaptureFixture
) -> None:
    hub.start()
    local = tmp_path / "rules" / "local.yaml"
    wrong = HubRules(local, f"127.0.0.1:{hub.grpcport}", token="not-the-token-at-all")
    with caplog.at_level(logging.WARNING, "lanner.hub_rules"):
        assert not wrong.fetch(3)
    wrong.close()
    assert "authentication failed: the hub refused the detector (wrong token)" in caplog.text
    assert "not-the-token-at-all" not in caplog.text
    assert local.read_text() == EMPTY  # made at once, a valid (empty) rules file

    rules = HubRules(local, f"localhost:{hub.grpcport}", token=TOKEN)  # a name, resolved
    try:
        assert rules.fetch(3)
        made = local.stat()
        assert rules.fetch(3) and local.stat().st_ino == made.st_ino  # unchanged: not written
        with api(hub) as client:
            alert = falco_alert(2, rule=RULE, output_fields={"proc.name": "cat"})
            assert client.post("/", json=alert).status_code == 200
        saved = save_exception(hub, alert["uuid"])
        assert rules.fetch(3)
        assert local.read_text() == saved["yaml"] and local.stat().st_ino != made.st_ino
        assert [p.name for p in local.parent.iterdir()] == ["local.yaml"]  # no temp file left
    finally:
        rules.close()


def test_a_hub_without_local_rules_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))  # serves no method at all
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    rules = HubRules(tmp_path / "local.yaml", f"127.0.0.1:{port}")
    try:
        with caplog.at_level(logging.INFO, "lanner.hub_rules"):
            assert rules.fetch(3) and rules.fetch(3)
    finally:
        rules.close()
        server.stop(None)
    [record] = caplog.records
    assert "cannot serve exceptions (a version without LocalRules)" in record.getMessage()
    assert f"asking again every {OLD_HUB_POLL_S:g}s" in record.getMessage()
    assert (tmp_path / "local.yaml").read_text() == EMPTY


def test_hub_rules_needs_a_grpc_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    assert detect_main(["--hub-rules", str(tmp_path / "x.yaml"), "--output", "stdout",
                        "--source", "k8saudit"]) == 2
    assert "--hub-rules needs a grpc:// output" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.yaml")


def test_tls_and_mutual_tls_as_the_publisher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from detector.publish_hubs import PublisherTls
    from tests.certs import make_pki

    pki = make_pki(tmp_path / "pki")
    grpc_config = {"token": TOKEN, "certfile": pki.server_cert, "keyfile": pki.server_key,
                   "cacertfile": pki.ca_cert}
    with HubProcess(tmp_path, {"grpc": grpc_config}, grpc=True) as hub:
        with api(hub) as client:
            alert = falco_alert(3, rule=RULE, output_fields={"proc.name": "cat"})
            assert client.post("/", json=alert).status_code == 200
        saved = save_exception(hub, alert["uuid"])
        # "localhost" may also resolve to ::1, where the hub does not listen: the next address.
        target = f"localhost:{hub.grpcport}"
        ours = HubRules(tmp_path / "ours.yaml", target, token=TOKEN, tls=PublisherTls(
            pki.ca_cert, pki.client_cert, pki.client_key))
        other = HubRules(tmp_path / "other.yaml", target, token=TOKEN, tls=PublisherTls(
            pki.ca_cert, pki.other_client_cert, pki.other_client_key))
        try:
            assert ours.fetch(5)
            with caplog.at_level(logging.WARNING, "lanner.hub_rules"):
                assert not other.fetch(5)  # a certificate the hub's CA did not sign
        finally:
            ours.close()
            other.close()
    assert (tmp_path / "ours.yaml").read_text() == saved["yaml"]
    assert (tmp_path / "other.yaml").read_text() == EMPTY
    assert "the hub's exceptions cannot be fetched from grpc://localhost:" in caplog.text
