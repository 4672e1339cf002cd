"""Every output configured on one hub, each against its real local service: `/test` reaches
them all, and a real alert goes to each output whose filter takes it."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.alertmanager import AlertmanagerServer
from tests.aws import ACCESS_KEY, REGION, SECRET_KEY, MotoServer
from tests.hubproc import HubProcess, falco_alert
from tests.pubsub_server import PubsubServer
from tests.receiver import Receiver

TOPIC = "projects/lanner/topics/alerts"


@pytest.fixture
def services(tmp_path: Path) -> Iterator[dict[str, Any]]:
    alertmanager = AlertmanagerServer(tmp_path / "alertmanager")
    try:
        with Receiver() as receiver, MotoServer() as moto, PubsubServer() as pubsub:
            pubsub.add_topic(TOPIC)
            moto.create_bucket("alerts")
            yield {"receiver": receiver, "alertmanager": alertmanager, "moto": moto,
                   "pubsub": pubsub, "queue": moto.create_queue("alerts"), "bucket": "alerts"}
    finally:
        alertmanager.stop()


def hub_config(svc: dict[str, Any]) -> dict[str, Any]:
    url = svc["receiver"].url
    return {
        "slack": {"webhookurl": f"{url}/slack"},
        "discord": {"webhookurl": f"{url}/discord", "minimumpriority": "critical"},
        "webhook": {"address": f"{url}/webhook"},
        "alertmanager": {"hostport": svc["alertmanager"].url},
        "aws": {
            "region": REGION, "accesskeyid": ACCESS_KEY, "secretaccesskey": SECRET_KEY,
            "sqs": {"url": svc["queue"], "endpoint": svc["moto"].url},
            "s3": {"bucket": svc["bucket"], "endpoint": svc["moto"].url, "batchsize": 5,
                   "batchwindow": "200ms"},
        },
        "gcp": {"pubsub": {"projectid": "lanner", "topic": "alerts"}},
        "delivery": {"initialbackoff": "50ms", "maxbackoff": "1s"},
    }


def uuids_everywhere(svc: dict[str, Any], count_http: dict[str, int]) -> dict[str, list[str]]:
    """What each service holds, as alert uuids, once each has the expected count."""
    receiver, moto = svc["receiver"], svc["moto"]
    receiver.wait_for(sum(count_http.values()), ok=True)
    by_path: dict[str, list[str]] = {}
    for request in receiver.requests:
        by_path.setdefault(request.path, []).append(request.body.decode())
    found = {path.strip("/"): bodies for path, bodies in by_path.items()}
    found["sqs"] = [json.loads(m["Body"])["uuid"] for m in moto.messages(svc["queue"], 1)]
    found["pubsub"] = [json.loads(m.data)["uuid"] for m in svc["pubsub"].wait_messages(TOPIC, 1)]
    found["alertmanager"] = [a["generatorURL"] for a in svc["alertmanager"].wait_alerts(1)]
    key = moto.wait_keys(svc["bucket"], 1)[0]
    body = moto.get(svc["bucket"], key)["Body"]
    lines = (gzip.decompress(body) if key.endswith(".gz") else body).splitlines()
    found["s3"] = [json.loads(line)["uuid"] for line in lines]
    return found


def test_test_endpoint_reaches_every_output(tmp_path: Path, services: dict[str, Any]) -> None:
    env = {"PUBSUB_EMULATOR_HOST": services["pubsub"].host}
    with HubProcess(tmp_path, hub_config(services), env=env) as hub:
        shown = httpx.get(f"{hub.url}/api/v1/outputs").json()
        assert set(shown) == {"slack", "discord", "webhook", "alertmanager", "awssqs", "awss3",
                         "gcppubsub"}
        uuid = httpx.post(f"{hub.url}/test").json()["uuid"]
        found = uuids_everywhere(services, {"slack": 1, "discord": 1, "webhook": 1})
    for name in ("sqs", "pubsub", "s3"):
        assert found[name] == [uuid], name
    assert found["alertmanager"][0].endswith(f"?event={uuid}")
    assert uuid in found["webhook"][0]
    assert "This is a test" in found["slack"][0] and "This is a test" in found["discord"][0]


def test_priority_filters_apply_per_output(tmp_path: Path, services: dict[str, Any]) -> None:
    env = {"PUBSUB_EMULATOR_HOST": services["pubsub"].host}
    with HubProcess(tmp_path, hub_config(services), env=env) as hub:
        warning = falco_alert(1)  # below discord's minimumpriority
        assert httpx.post(f"{hub.url}/", json=warning).status_code == 200
        found = uuids_everywhere(services, {"slack": 1, "webhook": 1})
        time.sleep(0.5)  # would discord's copy have arrived by now, it is there
        paths = [request.path for request in services["receiver"].requests]
    assert sorted(paths) == ["/slack", "/webhook"]
    for name in ("sqs", "pubsub", "s3"):
        assert found[name] == [warning["uuid"]], name
