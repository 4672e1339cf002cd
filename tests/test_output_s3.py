"""The awss3 output against moto's real S3 server, directly and through the running hub."""

from __future__ import annotations

import gzip
import hashlib
import random
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from outputs.base import PartialFailure, PermanentError, RetryableError
from outputs.s3 import S3Config, S3Output, batch_key, key_time, object_key
from sidekick.alert import Alert, Priority
from sidekick.config import ConfigError, load_config
from tests.aws import ACCESS_KEY, REGION, SECRET_KEY, MotoServer
from tests.hubproc import HubProcess, falco_alert
from tests.receiver import Receiver, Reply, Request

BUCKET = "lanner-alerts"


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    moto_server.reset()
    moto_server.create_bucket(BUCKET)
    return moto_server


@pytest.fixture
def proxy(moto: MotoServer) -> Iterator[Receiver]:
    """A recording receiver in front of moto, to inject answers and see each request."""
    with Receiver(forward_to=moto.url) as rx:
        yield rx


def make_alert(n: int = 0, **changes: Any) -> Alert:
    alert = Alert(
        rule="Write below etc",
        priority=Priority.ERROR,
        time_ns=1_795_946_400_123_456_789 + n * 1_000_000_000,
        output_fields={"fd.name": "/etc/shadow", "evt.num": n},
        output=f"File below /etc opened for writing (n={n}) é",
        source="syscall",
        tags=["filesystem"],
        hostname="node-1",
        uuid=f"00000000-0000-4000-8000-{n:012d}",
    )
    for key, value in changes.items():
        setattr(alert, key, value)
    return alert


def keys(endpoint: str, **more: Any) -> dict[str, Any]:
    return {
        "bucket": BUCKET,
        "endpoint": endpoint,
        "region": REGION,
        "accesskeyid": ACCESS_KEY,
        "secretaccesskey": SECRET_KEY,
        **more,
    }


def s3_output(**config: Any) -> S3Output:
    """The output; `async with` starts and closes it."""
    return S3Output(S3Config(**config))


def puts(rx: Receiver) -> list[Request]:
    return [r for r in rx.requests if r.method == "PUT"]


def assert_clean(exc: BaseException, *extra: str) -> None:
    text = str(exc) + repr(exc) + "".join(traceback.format_exception(exc))
    if isinstance(exc, PartialFailure):
        text += "".join(str(e) for e in exc.failures.values())
    for secret in (ACCESS_KEY, SECRET_KEY, "127.0.0.1", "http", BUCKET, *extra):
        assert secret not in text, f"{secret!r} leaked into {text!r}"


# -- objects -------------------------------------------------------------------------------


async def test_one_object_per_alert_keyed_by_event_time_and_uuid(moto: MotoServer) -> None:
    alerts = [make_alert(1), make_alert(2)]
    async with s3_output(**keys(moto.url)) as out:
        await out.send(alerts)
    assert moto.keys(BUCKET) == [
        "falco/2026-11-29/20261129T100001.123456789Z_00000000-0000-4000-8000-000000000001.json",
        "falco/2026-11-29/20261129T100002.123456789Z_00000000-0000-4000-8000-000000000002.json",
    ]
    for alert in alerts:
        stored = moto.get(BUCKET, object_key("falco", alert))
        assert stored["Body"] == alert.to_json()
        assert stored["ContentType"] == "application/json"
        assert "ContentEncoding" not in stored


async def test_a_retry_or_another_replica_overwrites_the_same_object(moto: MotoServer) -> None:
    alert = make_alert(7)
    async with s3_output(**keys(moto.url)) as first, s3_output(**keys(moto.url)) as second:
        await first.send([alert])
        await first.send([alert])
        await second.send([alert])
    assert moto.keys(BUCKET) == [object_key("falco", alert)]


def test_key_layout() -> None:
    alert = make_alert(0, time_ns=1_700_000_000_000_000_001)
    assert key_time(alert.time_ns) == "20231114T221320.000000001Z"
    assert object_key("falco", alert) == (
        "falco/2023-11-14/20231114T221320.000000001Z_00000000-0000-4000-8000-000000000000.json"
    )
    assert object_key("", alert).startswith("2023-11-14/20231114T")
    assert object_key("a/b", alert).startswith("a/b/2023-11-14/")
    weird = make_alert(0, uuid="../not a/uuid é", time_ns=0)
    digest = hashlib.sha256("../not a/uuid é".encode()).hexdigest()[:32]
    expected = f"falco/1970-01-01/19700101T000000.000000000Z_{digest}.json"
    assert object_key("falco", weird) == expected
    assert ":" not in object_key("falco", alert)


async def test_prefix_acl_and_path_style(moto: MotoServer, proxy: Receiver) -> None:
    alert = make_alert(3)
    async with s3_output(**keys(proxy.url, prefix="/team/falco/", objectcannedacl="")) as out:
        await out.send([alert])
    [put] = puts(proxy)
    name = f"{key_time(alert.time_ns)}_{alert.uuid}.json"
    assert put.path == f"/{BUCKET}/team/falco/2026-11-29/{name}"  # path-style addressing
    assert "x-amz-acl" not in put.headers  # "" sends no ACL, for buckets without ACLs
    assert put.headers["content-type"] == "application/json"
    for acl in ("bucket-owner-full-control", "private"):
        proxy.reset()
        config = keys(proxy.url) if acl == "bucket-owner-full-control" else keys(
            proxy.url, objectcannedacl=acl
        )
        async with s3_output(**config) as out:
            await out.send([alert])
        [put] = puts(proxy)
        assert put.headers["x-amz-acl"] == acl


async def test_batches_are_gzipped_ndjson_with_a_deterministic_key(moto: MotoServer) -> None:
    alerts = [make_alert(n) for n in range(20)]
    shuffled = random.Random(4).sample(alerts, len(alerts))
    async with s3_output(**keys(moto.url, batchsize=20)) as out:
        await out.send(shuffled[:12])
        await out.send(shuffled[12:])
        await out.send(list(reversed(shuffled[12:])))  # the same batch again: same object
    stored = moto.keys(BUCKET)
    assert len(stored) == 2
    assert sorted(stored) == sorted([batch_key("falco", shuffled[:12]),
                                     batch_key("falco", shuffled[12:])])
    seen: list[str] = []
    for key in stored:
        assert key.startswith("falco/2026-11-29/20261129T1000") and key.endswith(".ndjson.gz")
        obj = moto.get(BUCKET, key)
        assert obj["ContentType"] == "application/x-ndjson"
        assert obj["ContentEncoding"] == "gzip"
        lines = gzip.decompress(obj["Body"]).splitlines()
        parsed = [Alert.from_json(line) for line in lines]
        assert [a.time_ns for a in parsed] == sorted(a.time_ns for a in parsed)
        assert key_time(parsed[0].time_ns) in key  # the earliest event names the object
        for alert in parsed:
            assert alert.to_json() == next(a for a in alerts if a.uuid == alert.uuid).to_json()
        seen += [a.uuid for a in parsed]
    assert Counter(seen) == Counter(a.uuid for a in alerts)
    key = batch_key("falco", shuffled[12:])
    assert key.split("_")[-1] == hashlib.sha256(
        "\n".join(sorted(a.uuid for a in shuffled[12:])).encode()
    ).hexdigest()[:32] + ".ndjson.gz"


# -- errors --------------------------------------------------------------------------------


async def test_missing_bucket_is_permanent(moto: MotoServer) -> None:
    async with s3_output(**keys(moto.url, bucket="no-such-bucket-here")) as out:
        with pytest.raises(PermanentError) as info:
            await out.send([make_alert()])
    assert str(info.value) == "awss3: NoSuchBucket (HTTP 404)"
    assert_clean(info.value, "no-such-bucket-here")


S3_ERROR = b"<Error><Code>%s</Code><Message>bucket lanner-alerts, key falco/x</Message></Error>"


@pytest.mark.parametrize(
    ("status", "headers", "body", "error", "message", "retry_after"),
    [
        (503, {}, S3_ERROR % b"SlowDown", RetryableError, "awss3: SlowDown (HTTP 503)", None),
        (429, {"Retry-After": "3"}, b"", RetryableError, "awss3: HTTP 429", 3.0),
        (500, {}, S3_ERROR % b"InternalError", RetryableError,
         "awss3: InternalError (HTTP 500)", None),
        (400, {}, S3_ERROR % b"RequestTimeout", RetryableError,
         "awss3: RequestTimeout (HTTP 400)", None),
        (403, {}, S3_ERROR % b"AccessDenied", PermanentError,
         "awss3: AccessDenied (HTTP 403)", None),
        (400, {}, S3_ERROR % b"InvalidArgument", PermanentError,
         "awss3: InvalidArgument (HTTP 400)", None),
    ],
)
async def test_answers_are_classified(
    moto: MotoServer, proxy: Receiver, status: int, headers: dict[str, str], body: bytes,
    error: type[Exception], message: str, retry_after: float | None,
) -> None:
    proxy.respond_with(status, {"Content-Type": "application/xml", **headers}, body, times=1)
    async with s3_output(**keys(proxy.url)) as out:
        with pytest.raises(error) as info:
            await out.send([make_alert()])
        await out.send([make_alert()])
    assert type(info.value) is error
    assert str(info.value) == message
    assert getattr(info.value, "retry_after", None) == retry_after
    assert [r.status for r in puts(proxy)] == [status, 200]
    assert_clean(info.value, "falco/")


async def test_several_alerts_fail_one_by_one(moto: MotoServer, proxy: Receiver) -> None:
    alerts = [make_alert(n) for n in range(4)]

    def answer(request: Request) -> Reply | None:
        if alerts[1].uuid in request.path:
            return Reply(403, {"Content-Type": "application/xml"}, S3_ERROR % b"AccessDenied")
        if alerts[2].uuid in request.path:
            return Reply(503, {"Content-Type": "application/xml"}, S3_ERROR % b"SlowDown")
        return None

    proxy.set_responder(answer)
    async with s3_output(**keys(proxy.url)) as out:
        with pytest.raises(PartialFailure) as info:
            await out.send(alerts)
    failures = info.value.failures
    assert set(failures) == {alerts[1].uuid, alerts[2].uuid, alerts[3].uuid}
    assert isinstance(failures[alerts[1].uuid], PermanentError)
    # a retryable failure leaves the rest to the retry instead of pressing on
    assert isinstance(failures[alerts[2].uuid], RetryableError)
    assert failures[alerts[3].uuid] is failures[alerts[2].uuid]
    assert moto.keys(BUCKET) == [object_key("falco", alerts[0])]
    assert len(puts(proxy)) == 3


# -- config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("bucket", "s3://lanner-alerts"),
        ("bucket", "x"),
        ("prefix", "bad\nprefix"),
        ("prefix", "p" * 600),
        ("objectcannedacl", "bucket-owner-full"),
        ("endpoint", "minio:9000"),
        ("stsendpoint", "ftp://sts.example.com"),
        ("externalid", "a"),
        ("batchsize", "many"),
    ],
)
def test_bad_values_name_the_key(key: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        S3Config(**{key: value})
    [error] = info.value.errors()
    assert error["loc"] == (key,)


def test_defaults_secrets_and_enabled() -> None:
    config = S3Config(**keys(""))
    assert (config.prefix, config.objectcannedacl) == ("falco", "bucket-owner-full-control")
    assert S3Config(prefix="/logs/").prefix == "logs"
    dumped = config.model_dump(mode="json")
    for text in (repr(config), str(config), repr(dumped), config.model_dump_json()):
        assert ACCESS_KEY not in text and SECRET_KEY not in text
    assert not S3Output.enabled(S3Config())
    assert S3Output.enabled(S3Config(bucket=BUCKET))
    assert S3Output.name == "awss3" and S3Output.path == ("aws", "s3")


def test_shared_keys_from_the_aws_section(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "aws:\n  region: eu-west-3\n  rolearn: arn:aws:iam::123456789012:role/w\n"
        "  externalid: ext-1\n  s3:\n    bucket: b-1-x\n    region: eu-north-1\n"
    )
    s3 = load_config(path, env={"AWS_S3_PREFIX": "k8s/prod"}).outputs["awss3"]
    assert isinstance(s3, S3Config)
    role = "arn:aws:iam::123456789012:role/w"
    assert (s3.rolearn, s3.externalid) == (role, "ext-1")  # from the aws section
    assert s3.region == "eu-north-1"  # the output's own value wins
    assert s3.prefix == "k8s/prod"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"AWS_S3_OBJECTCANNEDACL": "public"})
    assert str(info.value).startswith("env AWS_S3_OBJECTCANNEDACL: Input should be ''")
    path.write_text("aws:\n  accesskeyid: AKIAX\n  s3:\n    bucket: b-1-x\n")
    with pytest.raises(ConfigError, match="accesskeyid and secretaccesskey must be set together"):
        load_config(path, env={})


# -- through the hub -----------------------------------------------------------------------


def hub_config(endpoint: str, **s3: Any) -> dict[str, Any]:
    return {
        "aws": {
            "region": REGION,
            "accesskeyid": ACCESS_KEY,
            "secretaccesskey": SECRET_KEY,
            "s3": {"bucket": BUCKET, "endpoint": endpoint, "timeout": 2, **s3},
        },
        "delivery": {"initialbackoff": "50ms", "maxbackoff": "2s"},
    }


def test_hub_slowdown_and_429_end_in_one_object(
    tmp_path: Path, moto: MotoServer, proxy: Receiver
) -> None:
    proxy.respond_with(429, {"Retry-After": "1"}, b"", times=1)
    proxy.respond_with(503, {"Content-Type": "application/xml"}, S3_ERROR % b"SlowDown", times=3)
    with HubProcess(tmp_path, hub_config(proxy.url)) as hub:
        alert = falco_alert(1)
        assert httpx.post(f"{hub.url}/", json=alert).status_code == 200
        [key] = moto.wait_keys(BUCKET, 1)
        assert key == f"falco/2026-11-29/20261129T100000.123456789Z_{alert['uuid']}.json"
        assert orjson.loads(moto.get(BUCKET, key)["Body"])["uuid"] == alert["uuid"]
        statuses = [r.status for r in puts(proxy)]
        assert statuses == [429, 503, 503, 503, 200]
        assert puts(proxy)[1].received_at - puts(proxy)[0].received_at >= 0.95
        test = httpx.post(f"{hub.url}/test").json()
        keys_now = moto.wait_keys(BUCKET, 2)
        [test_key] = [k for k in keys_now if k != key]
        assert test_key.endswith(f"_{test['uuid']}.json")
        assert orjson.loads(moto.get(BUCKET, test_key)["Body"])["rule"] == "Test rule"
        time.sleep(0.3)
        assert len(moto.keys(BUCKET)) == 2
        for secret in (ACCESS_KEY, SECRET_KEY):
            assert secret not in hub.log()


def test_hub_missing_bucket_dead_letters(tmp_path: Path, moto: MotoServer) -> None:
    with HubProcess(tmp_path, hub_config(moto.url, bucket="not-a-bucket-yet")) as hub:
        alert = falco_alert(2)
        assert httpx.post(f"{hub.url}/", json=alert).status_code == 200
        deadline = time.monotonic() + 15
        while not (dead := httpx.get(f"{hub.url}/api/v1/deadletters").json()["deadletters"]):
            assert time.monotonic() < deadline, "never dead-lettered"
            time.sleep(0.1)
        assert dead[0]["output"] == "awss3"
        assert dead[0]["alert"]["uuid"] == alert["uuid"]
        assert dead[0]["reason"] == "awss3: NoSuchBucket (HTTP 404)"
        # the operator creates the bucket and re-drives: delivered
        moto.create_bucket("not-a-bucket-yet")
        redriven = httpx.post(f"{hub.url}/api/v1/deadletters/redrive", json={"output": "awss3"})
        assert redriven.json() == {"redriven": 1}
        [key] = moto.wait_keys("not-a-bucket-yet", 1)
        assert key.endswith(f"_{alert['uuid']}.json")


def test_hub_batches_from_env_config(tmp_path: Path, moto: MotoServer) -> None:
    env = {
        "AWS_S3_BUCKET": BUCKET,
        "AWS_S3_ENDPOINT": moto.url,
        "AWS_S3_PREFIX": "batched",
        "AWS_S3_BATCHSIZE": "50",
        "AWS_S3_BATCHWINDOW": "1",
        "AWS_S3_MINIMUMPRIORITY": "warning",
        "AWS_REGION": REGION,
        "AWS_ACCESSKEYID": ACCESS_KEY,
        "AWS_SECRETACCESSKEY": SECRET_KEY,
    }
    alerts = [falco_alert(n) for n in range(30)] + [falco_alert(99, priority="Notice")]
    with HubProcess(tmp_path, {}, env=env) as hub:
        with httpx.Client() as client:
            for alert in alerts:
                assert client.post(f"{hub.url}/", json=alert).status_code == 200
        deadline = time.monotonic() + 15
        uuids: list[str] = []
        while len(uuids) < 30 and time.monotonic() < deadline:
            time.sleep(0.2)
            uuids = []
            for key in moto.keys(BUCKET):
                assert key.startswith("batched/2026-11-29/") and key.endswith(".ndjson.gz")
                body = gzip.decompress(moto.get(BUCKET, key)["Body"])
                uuids += [orjson.loads(line)["uuid"] for line in body.splitlines()]
        assert sorted(uuids) == sorted(a["uuid"] for a in alerts[:30])  # not the Notice
        assert len(moto.keys(BUCKET)) <= 3  # batched, not one object per alert
