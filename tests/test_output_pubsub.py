"""The gcppubsub output against a server speaking the real google.pubsub.v1 gRPC protocol,
read back with the real subscriber client; and the real hub, with ``PUBSUB_EMULATOR_HOST`` or
over TLS with a service account key, as in production."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt
from google.cloud import pubsub_v1
from google.pubsub_v1 import types
from pydantic import ValidationError

from outputs.base import PartialFailure, PermanentError, RetryableError
from outputs.pubsub import PubsubConfig, PubsubOutput
from sidekick.alert import Alert, Priority
from sidekick.config import load_config
from tests.certs import make_pki
from tests.hubproc import HubProcess, falco_alert
from tests.pubsub_server import PubsubServer

TOPIC = "projects/p/topics/t"
SUBSCRIPTION = "projects/p/subscriptions/s"
CUSTOM = {"team": "secops", "env": "test:1"}
HUB_DELIVERY = {"initialbackoff": "50ms", "maxbackoff": "1s"}
DENIED = "User not authorized to perform this action."  # the service's words


@functools.cache
def service_account() -> tuple[dict[str, str], bytes]:
    """A service account key made here (info, public key PEM); no Google account involved."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = serialization.Encoding.PEM
    private = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account", "project_id": "p", "private_key_id": "key-1",
        "private_key": private, "client_email": "lanner@p.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token",
    }
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return info, key.public_key().public_bytes(pem, spki)


def b64json(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def encoded_credentials() -> str:
    return b64json(service_account()[0])


def make_alert(n: int = 0, **changes: Any) -> Alert:
    keys: dict[str, Any] = {
        "rule": "Terminal shell in container", "priority": Priority.WARNING,
        "time_ns": 1_700_000_000_123_456_789 + n, "tags": ["container", "shell"],
        "output_fields": {"proc.name": "bash", "container.id": "abc123", "n": n},
        "output": "A shell was spawned in a container (user=root) é ✓", "hostname": "node-1",
        "uuid": f"00000000-0000-4000-8000-{n:012d}",
    }
    return Alert(**{**keys, **changes})


@pytest.fixture
def server() -> Iterator[PubsubServer]:
    with PubsubServer() as srv:
        yield srv


@pytest.fixture
def emulator(server: PubsubServer, monkeypatch: pytest.MonkeyPatch) -> PubsubServer:
    """The test server as PUBSUB_EMULATOR_HOST, with the topic made by the real admin client."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", server.host)
    with pubsub_v1.PublisherClient() as admin:
        admin.create_topic(name=TOPIC)
    return server


@pytest.fixture
def subscriber(emulator: PubsubServer) -> Iterator[pubsub_v1.SubscriberClient]:
    with pubsub_v1.SubscriberClient() as client:
        client.create_subscription(name=SUBSCRIPTION, topic=TOPIC)
        yield client


def pull(client: pubsub_v1.SubscriberClient, count: int) -> list[types.PubsubMessage]:
    """Pull and acknowledge ``count`` messages (all published already: one Pull gets them)."""
    received = client.pull(subscription=SUBSCRIPTION, max_messages=count).received_messages
    assert len(received) == count
    client.acknowledge(subscription=SUBSCRIPTION, ack_ids=[r.ack_id for r in received])
    return [r.message for r in received]


def pubsub(**keys: Any) -> PubsubOutput:
    """The output; `async with` starts and closes it."""
    return PubsubOutput(PubsubConfig(**{"projectid": "p", "topic": "t", **keys}))


def assert_no_secret(text: str) -> None:
    info, _ = service_account()
    for secret in (encoded_credentials()[:40], info["private_key"][40:80], "PRIVATE KEY"):
        assert secret not in text, f"a secret leaked into {text[:300]!r}"


# -- delivery, read back with the real subscriber ------------------------------------------
async def test_message_data_and_attributes(subscriber: pubsub_v1.SubscriberClient) -> None:
    alert = make_alert(1)
    before = dt.datetime.now(dt.UTC)
    async with pubsub(customattributes=CUSTOM) as out:
        await out.send([alert])
    [message] = pull(subscriber, 1)
    assert message.data == alert.to_json()
    assert Alert.from_json(message.data) == alert
    assert dict(message.attributes) == {
        "priority": "Warning", "rule": "Terminal shell in container", "source": "syscalls",
        "hostname": "node-1", **CUSTOM,
    }
    assert message.message_id  # the server's
    assert before - dt.timedelta(seconds=1) <= message.publish_time <= dt.datetime.now(dt.UTC)
    assert message.ordering_key == ""


async def test_empty_attributes_skipped_long_ones_cut_custom_wins(
    subscriber: pubsub_v1.SubscriberClient,
) -> None:
    long_rule = "Règle " + "é" * 2000  # 4006 bytes: cut to 1024 at a character boundary
    alert = make_alert(2, hostname="", rule=long_rule)
    async with pubsub(customattributes={"source": "falco", "level": 3}) as out:
        await out.send([alert])
    [message] = pull(subscriber, 1)
    attributes = dict(message.attributes)
    assert "hostname" not in attributes
    assert attributes["source"] == "falco"  # the custom value won
    assert attributes["level"] == "3"
    rule = attributes["rule"]
    assert len(rule.encode()) in (1023, 1024) and long_rule.startswith(rule)
    assert json.loads(message.data)["rule"] == long_rule  # the data is whole


async def test_a_batch_is_one_publish_call_in_order(
    subscriber: pubsub_v1.SubscriberClient, emulator: PubsubServer
) -> None:
    batch = [make_alert(n) for n in range(50)]
    async with pubsub(batchsize=50) as out:
        await out.send(batch)
        await out.send([make_alert(99)])
    # One RPC for the 50 as a rule; the library cuts by time, so a loaded machine may split it
    # (never reorder it): asserting the exact count would be asserting a timing.
    calls = [(c.count, c.status.name) for c in emulator.calls]
    assert calls[-1] == (1, "OK") and sum(count for count, _ in calls[:-1]) == 50
    assert len(calls) <= 4 and all(status == "OK" for _, status in calls)
    uuids = [json.loads(m.data)["uuid"] for m in emulator.messages(TOPIC)]
    assert uuids == [a.uuid for a in [*batch, make_alert(99)]]
    assert len({m.message_id for m in pull(subscriber, 51)}) == 51


async def test_streaming_pull_receives(subscriber: pubsub_v1.SubscriberClient) -> None:
    received: list[bytes] = []
    stream = subscriber.subscribe(SUBSCRIPTION, lambda m: (received.append(m.data), m.ack()))
    try:
        async with pubsub(batchsize=3) as out:
            await out.send([make_alert(n) for n in range(3)])
        for _ in range(200):
            if len(received) == 3:
                break
            await asyncio.sleep(0.05)
    finally:
        stream.cancel()
        stream.result(timeout=10)
    assert sorted(received) == sorted(make_alert(n).to_json() for n in range(3))


async def test_ordering_key_template(subscriber: pubsub_v1.SubscriberClient) -> None:
    async with pubsub(orderingkey="{hostname}/{priority}{{x}}") as out:
        await out.send([make_alert(1)])
    async with pubsub(orderingkey="falco") as out:
        await out.send([make_alert(2)])
    async with pubsub(orderingkey="{hostname}") as out:
        await out.send([make_alert(3, hostname="")])  # empty key: published unordered
    keys = [m.ordering_key for m in pull(subscriber, 3)]
    assert sorted(keys) == ["", "falco", "node-1/Warning{x}"]


# -- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("code", ["UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED",
                                  "ABORTED", "INTERNAL", "UNKNOWN", "CANCELLED"])
async def test_retryable_codes(emulator: PubsubServer, code: str) -> None:
    wait = 2.5 if code == "RESOURCE_EXHAUSTED" else None  # sent as a RetryInfo detail
    emulator.fail_publish(grpc.StatusCode[code], message="try later", retry_after=wait)
    async with pubsub() as out:
        with pytest.raises(RetryableError) as info:
            await out.send([make_alert()])
        assert str(info.value) == f"gcppubsub: {code}: try later"
        assert info.value.retry_after == wait
        await out.send([make_alert()])  # the fault is used up: published now
    assert [c.status.name for c in emulator.calls] == [code, "OK"]


@pytest.mark.parametrize(
    "code", ["INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "FAILED_PRECONDITION"]
)
async def test_permanent_codes(emulator: PubsubServer, code: str) -> None:
    emulator.fail_publish(grpc.StatusCode[code], message="no\nway")
    async with pubsub() as out:
        with pytest.raises(PermanentError) as info:
            await out.send([make_alert()])
    assert str(info.value) == f"gcppubsub: {code}: no way"
    assert emulator.messages(TOPIC) == []


async def test_library_retries_are_off(emulator: PubsubServer) -> None:
    emulator.fail_publish(grpc.StatusCode.UNAVAILABLE, times=100)
    async with pubsub(timeout=5, batchsize=3) as out:
        started = time.monotonic()
        with pytest.raises(RetryableError):
            await out.send([make_alert(n) for n in range(3)])
        assert time.monotonic() - started < 1
    assert len(emulator.calls) == 1  # one attempt, not the library's minute of retries


@pytest.mark.parametrize("orderingkey", ["", "{rule}"])  # ordering: the library's is 2**32 s
async def test_timeout_bounds_a_call(emulator: PubsubServer, orderingkey: str) -> None:
    emulator.fail_publish(grpc.StatusCode.UNAVAILABLE, delay=2)
    async with pubsub(timeout=0.5, orderingkey=orderingkey) as out:
        started = time.monotonic()
        with pytest.raises(RetryableError) as info:
            await out.send([make_alert()])
        assert time.monotonic() - started < 1.5
    assert str(info.value).startswith("gcppubsub: DEADLINE_EXCEEDED")


async def test_unauthenticated_is_retried_once(emulator: PubsubServer) -> None:
    emulator.fail_publish(grpc.StatusCode.UNAUTHENTICATED, times=2, message="token expired")
    async with pubsub() as out:
        with pytest.raises(RetryableError):
            await out.send([make_alert()])
        with pytest.raises(PermanentError) as info:
            await out.send([make_alert()])
        assert str(info.value) == "gcppubsub: UNAUTHENTICATED: token expired"
        await out.send([make_alert()])  # a success resets it
        emulator.fail_publish(grpc.StatusCode.UNAUTHENTICATED)
        with pytest.raises(RetryableError):
            await out.send([make_alert()])


async def test_oversized_alert_fails_alone(emulator: PubsubServer) -> None:
    big = make_alert(1, output_fields={"blob": "x" * 10_500_000})
    batch = [make_alert(0), big, make_alert(2)]
    async with pubsub(batchsize=3) as out:
        with pytest.raises(PartialFailure) as info:
            await out.send(batch)
        failures = info.value.failures
        assert list(failures) == [big.uuid]
        assert isinstance(failures[big.uuid], PermanentError)
        assert "10 MB" in str(failures[big.uuid])
        with pytest.raises(PermanentError):  # alone: the error itself
            await out.send([big])
    assert [json.loads(m.data)["output_fields"]["n"] for m in emulator.messages(TOPIC)] == [0, 2]


async def test_failed_ordering_key_is_resumed(emulator: PubsubServer) -> None:
    def host_a(request: types.PublishRequest) -> bool:
        return request.messages[0].ordering_key == "a"

    emulator.fail_publish(grpc.StatusCode.UNAVAILABLE, match=host_a)
    batch = [make_alert(n, hostname=host) for n, host in enumerate("abab")]
    async with pubsub(batchsize=4, orderingkey="{hostname}") as out:
        with pytest.raises(PartialFailure) as info:
            await out.send(batch)
        assert sorted(info.value.failures) == [batch[0].uuid, batch[2].uuid]
        assert all(isinstance(e, RetryableError) for e in info.value.failures.values())
        # the library paused key "a" after the failure; the output resumed it
        await out.send([batch[0], batch[2]])
    stored = emulator.messages(TOPIC)
    assert [(m.ordering_key, json.loads(m.data)["output_fields"]["n"]) for m in stored] == [
        ("b", 1), ("b", 3), ("a", 0), ("a", 2)
    ]


async def test_no_credentials_is_retryable_and_logged(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with caplog.at_level(logging.ERROR):
        async with pubsub() as out:  # starts: the hub must not fail for it
            with pytest.raises(RetryableError) as info:
                await out.send([make_alert()])
    assert str(info.value).startswith("gcppubsub: no Google credentials (DefaultCredentialsError)")
    assert "no Google credentials" in caplog.text
    assert str(tmp_path) not in str(info.value) + caplog.text


# -- config --------------------------------------------------------------------------------
@pytest.mark.parametrize("keys, loc, words", [
    ({"topic": ""}, (), "topic is required"),
    ({"projectid": " "}, (), "projectid is required"),
    ({"topic": "projects/p/topics/t"}, ("topic",), "not its path"),
    ({"topic": "goog-alerts"}, ("topic",), "goog"),
    ({"topic": "a b"}, ("topic",), "letters"),
    ({"projectid": "My Project"}, ("projectid",), "project id"),
    ({"customattributes": {"goog-x": "1"}}, ("customattributes",), "'goog'"),
    ({"customattributes": {"": "1"}}, ("customattributes",), "1 to 256 bytes"),
    ({"customattributes": {"k" * 257: "1"}}, ("customattributes",), "1 to 256 bytes"),
    ({"customattributes": {"k": "v" * 1025}}, ("customattributes",), "over 1024 bytes"),
    ({"customattributes": {"topic": "x"}}, ("customattributes",), "reserved"),
    ({"customattributes": {f"k{i}": "v" for i in range(97)}}, ("customattributes",), "100"),
    ({"orderingkey": "{nope}"}, ("orderingkey",), "unknown field {nope}"),
    ({"orderingkey": "a{b"}, ("orderingkey",), "lone brace"),
    ({"orderingkey": "k" * 1025}, ("orderingkey",), "1024 bytes"),
    ({"endpoint": "https://pubsub.googleapis.com"}, ("endpoint",), "without a scheme"),
])
def test_invalid_config(keys: dict[str, Any], loc: tuple[str, ...], words: str) -> None:
    with pytest.raises(ValidationError) as info:
        PubsubConfig(**{"projectid": "p", "topic": "t", **keys})
    [error] = info.value.errors()
    assert error["loc"] == loc
    assert words in error["msg"]


def test_valid_config() -> None:
    assert not PubsubOutput.enabled(PubsubConfig())
    config = PubsubConfig(projectid="example.com:my-proj", topic="falco_alerts-1")
    assert PubsubOutput.enabled(config) and config.timeout == 10.0
    assert PubsubOutput(config).topic_path == "projects/example.com:my-proj/topics/falco_alerts-1"
    PubsubConfig(customattributes={f"k{i}": "v" for i in range(96)})  # + 4 per-event = 100
    PubsubConfig(customattributes={f"k{i}": "v" for i in range(95)} | {"rule": "x"})
    PubsubConfig(customattributes={"k" * 256: "v" * 1024, "Goog": "ok"}, endpoint="[::1]:8085")


def bad_credentials() -> list[str]:
    info, _ = service_account()
    broken_key = {**info, "private_key": info["private_key"][:200] + "\n-----END PRIVATE KEY-----"}
    return [
        "not base64 at all!", b64json("a string")[:-1] + "!",
        base64.b64encode(b"\xff\xfe not json").decode(), b64json(["a list"]),
        b64json({"type": "other"}), b64json({k: v for k, v in info.items() if k != "private_key"}),
        b64json(broken_key),
    ]


@pytest.mark.parametrize("value", bad_credentials())
def test_bad_credentials_are_named_never_echoed(value: str) -> None:
    with pytest.raises(ValidationError) as info:
        PubsubConfig(credentials=value)
    [error] = info.value.errors()
    assert error["loc"] == ("credentials",)
    text = str(info.value)
    assert value[:24] not in text
    assert_no_secret(text)


def test_credentials_from_env_and_secret() -> None:
    wrapped = "\n".join(encoded_credentials()[i:i + 76] for i in range(0, 4000, 76))
    config = PubsubConfig(projectid="p", topic="t", credentials=wrapped)  # `base64` wraps lines
    dumped = config.model_dump(mode="json")
    assert dumped["credentials"] == "**********"
    for text in (repr(config), str(config), repr(dumped), config.model_dump_json()):
        assert_no_secret(text)
    assert PubsubConfig().model_dump(mode="json")["credentials"] == ""
    env = {"GCP_PUBSUB_PROJECTID": "p", "GCP_PUBSUB_TOPIC": "t", "GCP_CREDENTIALS": wrapped}
    output = load_config(env=env).outputs["gcppubsub"]  # the YAML form: the TLS hub test
    assert isinstance(output, PubsubConfig) and output.credentials == config.credentials


# -- through the real hub ------------------------------------------------------------------
def hub_config(**pubsub_keys: Any) -> dict[str, Any]:
    keys = {"projectid": "p", "topic": "t", "customattributes": CUSTOM, **pubsub_keys}
    return {"gcp": {"pubsub": keys}, "delivery": HUB_DELIVERY}


def dead_letters(hub: HubProcess, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while len(letters := httpx.get(f"{hub.url}/api/v1/deadletters").json()["deadletters"]) < count:
        assert time.monotonic() < deadline, f"{len(letters)} of {count} dead letters"
        time.sleep(0.05)
    return letters


def test_hub_retries_until_delivered_once(tmp_path: Path, server: PubsubServer) -> None:
    server.add_topic(TOPIC)
    server.fail_publish(grpc.StatusCode.UNAVAILABLE, times=3)
    server.fail_publish(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after=0.4)
    with HubProcess(tmp_path, hub_config(), env={"PUBSUB_EMULATOR_HOST": server.host}) as hub:
        alert = falco_alert(1)
        assert httpx.post(f"{hub.url}/", json=alert).status_code == 200
        [message] = server.wait_messages(TOPIC, 1)
        time.sleep(0.3)  # room for a duplicate to show up
        assert len(server.messages(TOPIC)) == 1
        assert json.loads(message.data) == alert
        assert dict(message.attributes) == {
            "priority": "Warning", "rule": alert["rule"], "source": "syscall",
            "hostname": "node-1", **CUSTOM,
        }
        statuses = [c.status.name for c in server.calls]
        assert statuses == ["UNAVAILABLE"] * 3 + ["RESOURCE_EXHAUSTED", "OK"]
        assert server.calls[-1].at - server.calls[-2].at >= 0.38  # RetryInfo honoured
        metrics = httpx.get(f"{hub.url}/metrics").text
        assert 'lanner_delivery_retries_total{destination="gcppubsub"} 4.0' in metrics


def test_hub_env_config_dead_letters_and_test(tmp_path: Path, server: PubsubServer) -> None:
    server.add_topic(TOPIC)
    server.fail_publish(grpc.StatusCode.PERMISSION_DENIED, message=DENIED)
    env = {
        "PUBSUB_EMULATOR_HOST": server.host, "GCP_PUBSUB_PROJECTID": "p",
        "GCP_PUBSUB_TOPIC": "t", "GCP_PUBSUB_CUSTOMATTRIBUTES": "team:secops,env:test:1",
        "GCP_PUBSUB_MINIMUMPRIORITY": "warning",
    }
    with HubProcess(tmp_path, {"delivery": HUB_DELIVERY}, env=env) as hub:
        assert httpx.post(f"{hub.url}/", json=falco_alert(1)).status_code == 200
        [first] = dead_letters(hub, 1)
        assert first["reason"] == f"gcppubsub: PERMISSION_DENIED: {DENIED}"
        assert first["output"] == "gcppubsub" and first["attempts"] == 1
        server.remove_topic(TOPIC)
        assert httpx.post(f"{hub.url}/", json=falco_alert(2)).status_code == 200
        newest, _ = dead_letters(hub, 2)
        assert newest["alert"]["uuid"] == falco_alert(2)["uuid"]
        assert newest["reason"] == "gcppubsub: NOT_FOUND: Resource not found (resource=t)."
        server.add_topic(TOPIC)
        redriven = httpx.post(f"{hub.url}/api/v1/deadletters/redrive", json={})
        assert redriven.json() == {"redriven": 2}
        server.wait_messages(TOPIC, 2)
        # /test reaches the output, below its minimumpriority (as in Falcosidekick)
        uuid = httpx.post(f"{hub.url}/test").json()["uuid"]
        *redriven_messages, test = server.wait_messages(TOPIC, 3)
    expected = {falco_alert(n)["uuid"] for n in (1, 2)}
    assert {json.loads(m.data)["uuid"] for m in redriven_messages} == expected
    assert json.loads(test.data)["uuid"] == uuid
    assert dict(test.attributes) == {
        "priority": "Debug", "rule": "Test rule", "source": "internal", **CUSTOM,
    }  # the /test alert has no hostname


def test_hub_service_account_over_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Production's path: TLS, and a self-signed JWT from the service account key."""
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    pki = make_pki(tmp_path / "pki")
    with PubsubServer(tls=(pki.server_cert, pki.server_key)) as server:
        server.add_topic(TOPIC)
        config = hub_config(endpoint=server.host)
        config["gcp"]["credentials"] = encoded_credentials()
        env = {"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": pki.ca_cert}
        with HubProcess(tmp_path, config, env=env) as hub:
            assert httpx.post(f"{hub.url}/", json=falco_alert(3)).status_code == 200
            server.wait_messages(TOPIC, 1)
            shown = httpx.get(f"{hub.url}/api/v1/outputs").json()["gcppubsub"]["config"]
            assert shown["credentials"] == "**********"
            log = hub.log()
    scheme, token = server.calls[0].metadata["authorization"].split()
    assert scheme == "Bearer"
    info, public_key = service_account()
    claims = jwt.decode(token, certs=public_key, audience="https://pubsub.googleapis.com/")
    assert claims["iss"] == info["client_email"]
    assert_no_secret(log)


@pytest.mark.parametrize("env, config, expected", [
    ({"GCP_PUBSUB_PROJECTID": "p", "GCP_PUBSUB_TOPIC": "t", "GCP_CREDENTIALS": "c2VjcmV0!"}, "",
     "env GCP_CREDENTIALS: is not valid base64"),
    ({}, "gcp:\n  pubsub:\n    projectid: p\n    topic: t\n    customattributes: {goog-a: x}\n",
     ":5: gcp.pubsub.customattributes: attribute names must not start with 'goog'"),
])
def test_cli_config_error_names_the_key(
    tmp_path: Path, env: dict[str, str], config: str, expected: str
) -> None:
    path = tmp_path / "hub.yaml"
    path.write_text(config)
    result = subprocess.run(
        [sys.executable, "-m", "sidekick.cli", "sidekick", "--check", "-c", str(path)],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert "c2VjcmV0" not in result.stderr
