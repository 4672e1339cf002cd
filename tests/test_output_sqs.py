"""The awssqs output against moto's real SQS server, directly and through the running hub."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson
import pytest
from pydantic import ValidationError

from outputs.base import PartialFailure, PermanentError, RetryableError
from outputs.sqs import SqsConfig, SqsOutput, group_id
from sidekick.alert import Alert, Priority
from sidekick.config import ConfigError, load_config
from tests.aws import ACCESS_KEY, ACCOUNT, REGION, SECRET_KEY, MotoServer
from tests.hubproc import HubProcess, falco_alert
from tests.receiver import Forward, Receiver, Reply, Request
from tests.support import free_port

SEND_BATCH = "AmazonSQS.SendMessageBatch"


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    moto_server.reset()
    return moto_server


@pytest.fixture
def proxy(moto: MotoServer) -> Iterator[Receiver]:
    """A recording receiver in front of moto, to inject answers and see each request."""
    with Receiver(forward_to=moto.url) as rx:
        yield rx


def make_alert(n: int = 0, **changes: Any) -> Alert:
    alert = Alert(
        rule="Terminal shell in container",
        priority=Priority.WARNING,
        time_ns=1_795_946_400_123_456_789 + n,
        output_fields={"proc.name": "bash", "evt.num": n},
        output=f"A shell was spawned in a container (n={n}) é ✓",
        source="syscall",
        tags=["container", "shell"],
        hostname="node-1",
        uuid=f"00000000-0000-4000-8000-{n:012d}",
    )
    for key, value in changes.items():
        setattr(alert, key, value)
    return alert


def keys(url: str, endpoint: str, **more: Any) -> dict[str, Any]:
    return {
        "url": url,
        "endpoint": endpoint,
        "region": REGION,
        "accesskeyid": ACCESS_KEY,
        "secretaccesskey": SECRET_KEY,
        **more,
    }


def sqs_output(**config: Any) -> SqsOutput:
    """The output; `async with` starts and closes it."""
    return SqsOutput(SqsConfig(**config))


def batch_calls(rx: Receiver) -> list[Request]:
    return [r for r in rx.requests if r.headers.get("x-amz-target") == SEND_BATCH]


def entry_uuids(request: Request) -> list[str]:
    return [orjson.loads(e["MessageBody"])["uuid"] for e in request.json["Entries"]]


def assert_clean(exc: BaseException, *extra: str) -> None:
    text = str(exc) + repr(exc) + "".join(traceback.format_exception(exc))
    if isinstance(exc, PartialFailure):
        text += "".join(str(e) for e in exc.failures.values())
    for secret in (ACCESS_KEY, SECRET_KEY, ACCOUNT, "127.0.0.1", "http", *extra):
        assert secret not in text, f"{secret!r} leaked into {text!r}"


# -- delivery ----------------------------------------------------------------------------


async def test_standard_queue_body_and_attributes(moto: MotoServer) -> None:
    url = moto.create_queue("alerts")
    alerts = [make_alert(1), make_alert(2, hostname=""), make_alert(3, priority=Priority.CRITICAL)]
    async with sqs_output(**keys(url, moto.url)) as out:
        await out.send(alerts)
    messages = moto.messages(url, expect=3)
    by_uuid = {orjson.loads(m["Body"])["uuid"]: m for m in messages}
    assert sorted(by_uuid) == [a.uuid for a in alerts]
    for alert in alerts:
        message = by_uuid[alert.uuid]
        assert message["Body"] == alert.to_json().decode()
        expected = {
            "priority": alert.priority.label,
            "rule": alert.rule,
            "source": "syscall",
            **({"hostname": alert.hostname} if alert.hostname else {}),
        }
        assert {k: v["StringValue"] for k, v in message["MessageAttributes"].items()} == expected
        assert {v["DataType"] for v in message["MessageAttributes"].values()} == {"String"}
        assert "MessageGroupId" not in message["Attributes"]  # a standard queue


async def test_fifo_queue_dedup_id_is_the_uuid_and_retries_are_dropped(moto: MotoServer) -> None:
    url = moto.create_queue("alerts.fifo")
    alerts = [make_alert(n, hostname=f"node-{n % 2}") for n in range(4)]
    async with sqs_output(**keys(url, moto.url)) as out:
        await out.send(alerts)
        await out.send(alerts[:2])  # a retry of a send whose answer was lost
    messages = moto.messages(url, expect=4)
    assert len(messages) == 4
    for message in messages:
        uuid = orjson.loads(message["Body"])["uuid"]
        assert message["Attributes"]["MessageDeduplicationId"] == uuid
        assert message["Attributes"]["MessageGroupId"] == f"node-{int(uuid[-1]) % 2}"


async def test_fifo_group_template_and_unsafe_uuid(moto: MotoServer) -> None:
    url = moto.create_queue("grouped.fifo")
    odd = make_alert(1, uuid="é uuid with spaces", hostname="")
    async with sqs_output(**keys(url, moto.url, messagegroupid="{rule}/{hostname}")) as out:
        await out.send([odd])
    [message] = moto.messages(url, expect=1)
    assert message["Attributes"]["MessageGroupId"] == "Terminal_shell_in_container/-"
    digest = hashlib.sha256("é uuid with spaces".encode()).hexdigest()
    assert message["Attributes"]["MessageDeduplicationId"] == digest
    assert orjson.loads(message["Body"])["uuid"] == "é uuid with spaces"
    assert group_id("fixed", odd) == "fixed"
    assert group_id("{priority}:{source}", odd) == "Warning:syscall"
    assert len(group_id("{rule}{rule}{rule}{rule}{rule}{rule}", odd)) == 128


async def test_hostile_strings_do_not_fail_the_call(moto: MotoServer, proxy: Receiver) -> None:
    url = moto.create_queue("hostile")
    hostile = make_alert(
        1,
        rule="bad\x00rule\x01\ufffe\uffff😈" + "x" * 1000,
        hostname="host\x7f\x1f",
        output="noncharacters \ufffe\uffff and \x00",
    )
    async with sqs_output(**keys(url, proxy.url)) as out:
        await out.send([hostile])
    [request] = batch_calls(proxy)
    assert "\ufffe".encode() not in request.body and "\uffff".encode() not in request.body
    [message] = moto.messages(url, expect=1)
    assert orjson.loads(message["Body"]) == hostile.to_dict()  # the same JSON value
    rule = message["MessageAttributes"]["rule"]["StringValue"]
    assert rule == ("bad\ufffdrule\ufffd\ufffd\ufffd😈" + "x" * 1000)[:256]
    assert message["MessageAttributes"]["hostname"]["StringValue"] == "host\x7f\ufffd"


async def test_batches_split_by_count_and_size(moto: MotoServer, proxy: Receiver) -> None:
    url = moto.create_queue("split")
    small = [make_alert(n) for n in range(25)]
    big = [make_alert(100 + n, output="y" * 100_000) for n in range(5)]
    async with sqs_output(**keys(url, proxy.url, batchsize=25)) as out:
        await out.send(small)
        await out.send(big)
    calls = batch_calls(proxy)
    assert [len(c.json["Entries"]) for c in calls] == [10, 10, 5, 2, 2, 1]
    assert all(c.ok for c in calls)
    assert [u for c in calls for u in entry_uuids(c)] == [a.uuid for a in small + big]
    assert max(len(c.body) for c in calls) < 262_144 + 4096
    assert len(moto.messages(url, expect=30)) == 30


async def test_oversized_alert_fails_alone(moto: MotoServer) -> None:
    url = moto.create_queue("oversized")
    alerts = [make_alert(1), make_alert(2, output="z" * 300_000), make_alert(3)]
    async with sqs_output(**keys(url, moto.url, batchsize=3)) as out:
        with pytest.raises(PartialFailure) as info:
            await out.send(alerts)
    [(uuid, error)] = info.value.failures.items()
    assert uuid == alerts[1].uuid
    assert isinstance(error, PermanentError)
    assert "over the 262144-byte message limit" in str(error)
    got = {orjson.loads(m["Body"])["uuid"] for m in moto.messages(url, expect=2)}
    assert got == {alerts[0].uuid, alerts[2].uuid}
    # a queue configured for SQS's newer 1 MiB limit takes it
    async with sqs_output(**keys(url, moto.url, maxmessagesize=1_048_576)) as out:
        await out.send([alerts[1]])


def fail_entries(fail: dict[str, dict[str, Any]], times: int = 1) -> Any:
    """Middleware: moto never sees the entries of these uuids and they come back in ``Failed``
    with the given SenderFault/Code, as SQS answers a partly failed batch."""
    left = Counter({uuid: times for uuid in fail})

    async def middleware(request: Request, forward: Forward) -> Reply:
        if request.headers.get("x-amz-target") != SEND_BATCH:
            return await forward(request.body)
        kept, failed = [], []
        for entry in request.json["Entries"]:
            uuid = orjson.loads(entry["MessageBody"])["uuid"]
            if left[uuid] > 0:
                left[uuid] -= 1
                failed.append({"Id": entry["Id"], "Message": "no", **fail[uuid]})
            else:
                kept.append(entry)
        if not failed:
            return await forward(request.body)
        answer: dict[str, Any] = {"Successful": [], "Failed": []}
        if kept:
            reply = await forward(orjson.dumps({**request.json, "Entries": kept}))
            answer = orjson.loads(reply.body)
        answer["Failed"] += failed
        return Reply(200, {"Content-Type": "application/x-amz-json-1.0"}, orjson.dumps(answer))

    return middleware


async def test_failed_entries_are_a_partial_failure(moto: MotoServer, proxy: Receiver) -> None:
    url = moto.create_queue("partial")
    alerts = [make_alert(n) for n in range(5)]
    proxy.set_middleware(
        fail_entries(
            {
                alerts[1].uuid: {"SenderFault": False, "Code": "InternalError"},
                alerts[3].uuid: {"SenderFault": True, "Code": "InvalidParameterValue"},
            }
        )
    )
    async with sqs_output(**keys(url, proxy.url, batchsize=5)) as out:
        with pytest.raises(PartialFailure) as info:
            await out.send(alerts)
    failures = info.value.failures
    assert set(failures) == {alerts[1].uuid, alerts[3].uuid}
    assert isinstance(failures[alerts[1].uuid], RetryableError)
    assert str(failures[alerts[1].uuid]) == "awssqs: InternalError"
    assert isinstance(failures[alerts[3].uuid], PermanentError)
    assert str(failures[alerts[3].uuid]) == "awssqs: InvalidParameterValue (sender fault)"
    got = {orjson.loads(m["Body"])["uuid"] for m in moto.messages(url, expect=3)}
    assert got == {alerts[0].uuid, alerts[2].uuid, alerts[4].uuid}
    assert_clean(info.value)


async def test_a_failed_call_leaves_the_rest_to_the_retry(
    moto: MotoServer, proxy: Receiver
) -> None:
    url = moto.create_queue("second-call")
    alerts = [make_alert(n) for n in range(25)]
    calls = 0

    def second_call_fails(request: Request) -> Reply | None:
        nonlocal calls
        calls += 1
        return Reply(503, body=b"") if calls == 2 else None

    proxy.set_responder(second_call_fails)
    async with sqs_output(**keys(url, proxy.url, batchsize=25)) as out:
        with pytest.raises(PartialFailure) as info:
            await out.send(alerts)
    assert set(info.value.failures) == {a.uuid for a in alerts[10:]}
    assert {str(e) for e in info.value.failures.values()} == {"awssqs: HTTP 503"}
    assert len(batch_calls(proxy)) == 2  # the third call was not attempted
    assert len(moto.messages(url, expect=10)) == 10


# -- whole-call errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "body", "message", "retry_after"),
    [
        (429, {"Retry-After": "7"}, b"", "awssqs: HTTP 429", 7.0),
        (503, {}, b"", "awssqs: HTTP 503", None),
        (500, {}, b'{"__type": "com.amazonaws.sqs#InternalError"}',
         "awssqs: InternalError (HTTP 500)", None),
        # SQS throttles with 400 and a code, not with 429
        (400, {"x-amzn-query-error": "RequestThrottled;Sender"},
         b'{"__type": "com.amazonaws.sqs#ThrottlingException", "message": "Rate exceeded"}',
         "awssqs: ThrottlingException (HTTP 400)", None),
        # only the legacy code, in the header
        (403, {"x-amzn-query-error": "AWS.SimpleQueueService.RequestThrottled;Sender"}, b"",
         "awssqs: AWS.SimpleQueueService.RequestThrottled (HTTP 403)", None),
        (408, {}, b"", "awssqs: HTTP 408", None),
    ],
)
async def test_retryable_answers(
    moto: MotoServer, proxy: Receiver, status: int, headers: dict[str, str], body: bytes,
    message: str, retry_after: float | None,
) -> None:
    url = moto.create_queue("qretry7")
    proxy.respond_with(status, {"Content-Type": "application/x-amz-json-1.0", **headers}, body,
                       times=1)
    async with sqs_output(**keys(url, proxy.url)) as out:
        with pytest.raises(RetryableError) as info:
            await out.send([make_alert()])
        await out.send([make_alert()])  # the next attempt goes through
    assert str(info.value) == message
    assert info.value.retry_after == retry_after
    assert [r.status for r in batch_calls(proxy)] == [status, 200]
    assert_clean(info.value, "qretry7")


async def test_permanent_answers(moto: MotoServer, proxy: Receiver) -> None:
    url = moto.create_queue("qperm7")
    missing = url.replace("qperm7", "qgone7")
    async with sqs_output(**keys(missing, moto.url)) as out:
        with pytest.raises(PermanentError) as info:
            await out.send([make_alert()])
    assert str(info.value) == "awssqs: QueueDoesNotExist (HTTP 400)"
    assert_clean(info.value, "qgone7")
    proxy.respond_with(
        403, {"Content-Type": "application/x-amz-json-1.0"},
        b'{"__type": "com.amazon.coral.service#AccessDeniedException", "message": '
        b'"User: arn:aws:iam::123456789012:user/x is not authorized on ' + url.encode() + b'"}',
        times=1,
    )
    async with sqs_output(**keys(url, proxy.url)) as out:
        with pytest.raises(PermanentError) as info:
            await out.send([make_alert()])
    assert str(info.value) == "awssqs: AccessDeniedException (HTTP 403)"
    assert_clean(info.value, "qperm7", "arn:")


async def test_connection_refused_and_timeout(moto: MotoServer, proxy: Receiver) -> None:
    url = moto.create_queue("slow")
    async with sqs_output(**keys(url, f"http://127.0.0.1:{free_port()}", timeout=2)) as out:
        with pytest.raises(RetryableError) as info:
            await out.send([make_alert()])
    assert str(info.value) == "awssqs: connection failed"
    assert_clean(info.value)
    proxy.respond_with(200, delay=1.5, times=1)
    async with sqs_output(**keys(url, proxy.url, timeout=0.3)) as out:
        started = time.monotonic()
        with pytest.raises(RetryableError) as info:
            await out.send([make_alert()])
        assert time.monotonic() - started < 1.4
    assert str(info.value) == "awssqs: timeout"


# -- credentials ---------------------------------------------------------------------------


def signing_key(request: Request) -> str:
    return request.headers["authorization"].split("Credential=")[1].split("/")[0]


async def test_assume_role_with_external_id(
    moto: MotoServer, proxy: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # as with the hub's `debug: true`
    url = moto.create_queue("assumed")
    role = f"arn:aws:iam::{ACCOUNT}:role/lanner-writer"
    config = keys(url, proxy.url, rolearn=role, externalid="ext-42", stsendpoint=proxy.url)
    async with sqs_output(**config) as out:
        await out.send([make_alert(1)])
        await out.send([make_alert(2)])
    sts_calls = [r for r in proxy.requests if b"Action=" in r.body]
    queries = [parse_qs(r.body.decode()) for r in sts_calls]
    # the identity check at start needs credentials: the role is assumed once, then cached
    assert [q["Action"] for q in queries] == [["AssumeRole"], ["GetCallerIdentity"]]
    assert queries[0]["RoleArn"] == [role]
    assert queries[0]["ExternalId"] == ["ext-42"]
    assert queries[0]["RoleSessionName"] == ["lanner-awssqs"]
    assert signing_key(sts_calls[0]) == ACCESS_KEY  # the base credentials assume the role
    assert signing_key(sts_calls[1]).startswith("ASIA")
    for call in batch_calls(proxy):
        assert signing_key(call).startswith("ASIA")  # the role's temporary credentials
        assert call.headers["x-amz-security-token"]
        # botocore's debug logging would show the session token: it stays off
        assert call.headers["x-amz-security-token"] not in caplog.text
        assert signing_key(call) not in caplog.text
    assert len(moto.messages(url, expect=2)) == 2


async def test_default_credential_chain(
    moto: MotoServer, proxy: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = moto.create_queue("chain")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMTHEENVCHAIN1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-the-env-chain")
    async with sqs_output(url=url, endpoint=proxy.url, region=REGION) as out:
        await out.send([make_alert()])
    [call] = batch_calls(proxy)
    assert signing_key(call) == "AKIAFROMTHEENVCHAIN1"


def no_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing for botocore's defaults to find: no env keys, files, region or metadata."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


async def test_no_credentials_anywhere_is_retryable(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_aws_environment(monkeypatch)
    url = moto.create_queue("nocreds")
    async with sqs_output(url=url, endpoint=moto.url, region=REGION) as out:
        with pytest.raises(RetryableError) as info:
            await out.send([make_alert()])
    assert str(info.value) == "awssqs: no AWS credentials found"


async def test_no_region_anywhere_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    no_aws_environment(monkeypatch)
    output = SqsOutput(SqsConfig(url="https://queues.example.com/123/q", checkidentity=False))
    with pytest.raises(PermanentError) as info:
        await output.start()
    assert str(info.value) == "awssqs: no AWS region: set aws.region (env AWS_REGION)"
    await output.close()


async def test_identity_check_only_logs(
    moto: MotoServer, proxy: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    url = moto.create_queue("identity")
    caplog.set_level(logging.INFO)
    async with sqs_output(**keys(url, proxy.url, stsendpoint=proxy.url)):
        pass
    assert [r.body for r in proxy.requests if b"GetCallerIdentity" in r.body]
    assert "credentials accepted" in caplog.text
    proxy.reset()
    proxy.respond_with(403, {"Content-Type": "text/xml"}, b"<ErrorResponse><Error><Code>"
                       b"InvalidClientTokenId</Code></Error></ErrorResponse>", times=1)
    async with sqs_output(**keys(url, proxy.url, stsendpoint=proxy.url)) as out:
        await out.send([make_alert()])  # the output works on regardless
    assert "identity check (sts:GetCallerIdentity) failed: awssqs: InvalidClientTokenId" \
        in caplog.text
    proxy.reset()
    async with sqs_output(**keys(url, proxy.url, stsendpoint=proxy.url, checkidentity=False)):
        pass
    async with sqs_output(**keys(url, proxy.url)):  # a custom endpoint and no stsendpoint
        pass
    assert proxy.count == 0
    for secret in (ACCESS_KEY, SECRET_KEY):
        assert secret not in caplog.text


# -- config --------------------------------------------------------------------------------


def test_secrets_stay_out_of_repr_and_dumps() -> None:
    config = SqsConfig(**keys("https://sqs.eu-west-3.amazonaws.com/123456789012/q", ""))
    dumped = config.model_dump(mode="json")
    for text in (repr(config), str(config), repr(dumped), config.model_dump_json()):
        assert ACCESS_KEY not in text and SECRET_KEY not in text
    assert dumped["accesskeyid"] == dumped["secretaccesskey"] == "**********"
    assert SqsConfig().model_dump(mode="json")["secretaccesskey"] == ""


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("url", "not a url"),
        ("url", "ftp://sqs.example.com/1/q"),
        ("url", "https://sqs.us-east-1.amazonaws.com"),
        ("endpoint", "localhost:4566"),
        ("region", "us east 1"),
        ("rolearn", "arn:aws:iam::12:role/x"),
        ("messagegroupid", "{nope}"),
        ("messagegroupid", "with space"),
        ("messagegroupid", ""),
        ("maxmessagesize", 2_000_000),
        ("timeout", "soon"),
    ],
)
def test_bad_values_name_the_key(key: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        SqsConfig(**{key: value})
    [error] = info.value.errors()
    assert error["loc"] == (key,)
    if key in ("url", "endpoint"):
        assert value not in str(info.value)


def test_pairs_and_enabled() -> None:
    with pytest.raises(ValidationError, match="accesskeyid and secretaccesskey"):
        SqsConfig(accesskeyid=ACCESS_KEY)
    with pytest.raises(ValidationError, match="externalid is only used with rolearn"):
        SqsConfig(externalid="abc")
    assert not SqsOutput.enabled(SqsConfig())
    assert SqsOutput.enabled(SqsConfig(url="https://sqs.us-east-1.amazonaws.com/1/q"))
    assert SqsOutput.name == "awssqs" and SqsOutput.path == ("aws", "sqs")


def test_region_from_the_queue_url() -> None:
    def region(url: str, endpoint: str = "") -> str | None:
        return SqsOutput(SqsConfig(url=url, endpoint=endpoint)).default_region()

    assert region("https://sqs.eu-west-3.amazonaws.com/1/q") == "eu-west-3"
    assert region("https://ap-south-1.queue.amazonaws.com/1/q") == "ap-south-1"
    assert region("https://sqs.cn-north-1.amazonaws.com.cn/1/q") == "cn-north-1"
    assert region("http://localhost:4566/1/q", "http://localhost:4566") == "us-east-1"
    assert region("https://queues.example.com/1/q") is None


def test_yaml_and_env_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "aws:\n  region: eu-west-3\n  accesskeyid: A\n  secretaccesskey: B\n"
        "  sqs:\n    url: https://sqs.eu-west-3.amazonaws.com/1/q.fifo\n"
        "    messagegroupid: '{rule}'\n    minimumpriority: error\n"
    )
    config = load_config(path, env={"AWS_SQS_BATCHSIZE": "10", "AWS_CHECKIDENTITY": "false"})
    sqs = config.outputs["awssqs"]
    assert isinstance(sqs, SqsConfig)
    assert (sqs.region, sqs.messagegroupid, sqs.batchsize) == ("eu-west-3", "{rule}", 10)
    assert sqs.minimumpriority is Priority.ERROR and sqs.checkidentity is False
    assert sqs.secretaccesskey.get_secret_value() == "B"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"AWS_SQS_MESSAGEGROUPID": "{nope}"})
    assert str(info.value).startswith("env AWS_SQS_MESSAGEGROUPID: unknown placeholder {nope}")
    path.write_text("aws:\n  sqs:\n    url: https://q.example.com/1/q\n    messagegroupid: ''\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value).startswith(f"{path}:4: aws.sqs.messagegroupid: must be")
    path.write_text("aws:\n  regoin: x\n")
    with pytest.raises(ConfigError, match=r"unknown key 'aws.regoin' \(did you mean 'region'"):
        load_config(path, env={})


# -- through the hub -----------------------------------------------------------------------


def hub_config(url: str, endpoint: str, **sqs: Any) -> dict[str, Any]:
    return {
        "aws": {
            "region": REGION,
            "accesskeyid": ACCESS_KEY,
            "secretaccesskey": SECRET_KEY,
            "sqs": {"url": url, "endpoint": endpoint, "timeout": 2, **sqs},
        },
        "delivery": {"initialbackoff": "50ms", "maxbackoff": "2s"},
    }


def dead_letters(hub: HubProcess, count: int, timeout: float = 15.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(dead := httpx.get(f"{hub.url}/api/v1/deadletters").json()["deadletters"]) < count:
        assert time.monotonic() < deadline, f"{len(dead)} of {count} dead letters"
        time.sleep(0.1)
    return dead


def test_hub_throttling_and_5xx_end_in_one_delivery(
    tmp_path: Path, moto: MotoServer, proxy: Receiver
) -> None:
    url = moto.create_queue("hub.fifo")
    proxy.respond_with(
        400,
        {"Content-Type": "application/x-amz-json-1.0", "x-amzn-query-error": "RequestThrottled;"
         "Sender", "Retry-After": "1"},
        b'{"__type": "com.amazonaws.sqs#ThrottlingException"}',
        times=1,
    )
    proxy.respond_with(503, times=3)
    with HubProcess(tmp_path, hub_config(url, proxy.url)) as hub:
        alert = falco_alert(1)
        assert httpx.post(f"{hub.url}/", json=alert).status_code == 200
        [message] = moto.messages(url, expect=1, timeout=20)
        assert orjson.loads(message["Body"])["uuid"] == alert["uuid"]
        assert message["Attributes"]["MessageDeduplicationId"] == alert["uuid"]
        calls = batch_calls(proxy)
        assert [c.status for c in calls] == [400, 503, 503, 503, 200]
        assert calls[1].received_at - calls[0].received_at >= 0.95  # Retry-After honoured
        assert {u for c in calls for u in entry_uuids(c)} == {alert["uuid"]}
        time.sleep(0.3)
        assert moto.messages(url) == []  # nothing more arrived
        metrics = httpx.get(f"{hub.url}/metrics").text
        assert 'lanner_delivery_retries_total{destination="awssqs"} 4.0' in metrics
        for secret in (ACCESS_KEY, SECRET_KEY):
            assert secret not in hub.log()


def test_hub_permanent_error_dead_letters(tmp_path: Path, moto: MotoServer) -> None:
    url = moto.create_queue("exists").replace("exists", "gone")
    with HubProcess(tmp_path, hub_config(url, moto.url)) as hub:
        alert = falco_alert(2)
        assert httpx.post(f"{hub.url}/", json=alert).status_code == 200
        [dead] = dead_letters(hub, 1)
        assert dead["output"] == "awssqs"
        assert dead["alert"]["uuid"] == alert["uuid"]
        assert dead["reason"] == "awssqs: QueueDoesNotExist (HTTP 400)"
        assert dead["attempts"] == 1


def test_hub_partial_failure_retries_only_the_failed_entries(
    tmp_path: Path, moto: MotoServer, proxy: Receiver
) -> None:
    url = moto.create_queue("hub-partial")
    alerts = [falco_alert(n) for n in range(6)]
    retried, rejected = alerts[2]["uuid"], alerts[4]["uuid"]
    proxy.set_middleware(
        fail_entries(
            {
                retried: {"SenderFault": False, "Code": "InternalError"},
                rejected: {"SenderFault": True, "Code": "InvalidParameterValue"},
            }
        )
    )
    config = hub_config(url, proxy.url, batchsize=10, batchwindow=1.5)
    with HubProcess(tmp_path, config) as hub:
        with httpx.Client() as client:
            for alert in alerts:
                assert client.post(f"{hub.url}/", json=alert).status_code == 200
        messages = moto.messages(url, expect=5, timeout=20)
        uuids = Counter(orjson.loads(m["Body"])["uuid"] for m in messages)
        assert uuids == Counter(a["uuid"] for a in alerts if a["uuid"] != rejected)
        [dead] = dead_letters(hub, 1)
        assert dead["alert"]["uuid"] == rejected
        assert dead["reason"] == "awssqs: InvalidParameterValue (sender fault)"
        sent = Counter(u for c in batch_calls(proxy) for u in entry_uuids(c))
        assert sent[retried] == 2  # failed once, then retried on its own
        assert all(n == 1 for u, n in sent.items() if u != retried)
        assert entry_uuids(batch_calls(proxy)[-1]) == [retried]


def test_hub_env_config_and_test_endpoint(tmp_path: Path, moto: MotoServer) -> None:
    url = moto.create_queue("from-env.fifo")
    env = {
        "AWS_SQS_URL": url,
        "AWS_SQS_ENDPOINT": moto.url,
        "AWS_SQS_MINIMUMPRIORITY": "critical",
        "AWS_SQS_MESSAGEGROUPID": "lanner-{source}",
        "AWS_REGION": REGION,
        "AWS_ACCESSKEYID": ACCESS_KEY,
        "AWS_SECRETACCESSKEY": SECRET_KEY,
    }
    with HubProcess(tmp_path, {}, env=env) as hub:
        assert httpx.post(f"{hub.url}/", json=falco_alert(1)).status_code == 200  # Warning
        test = httpx.post(f"{hub.url}/test").json()
        [message] = moto.messages(url, expect=1)
        body = orjson.loads(message["Body"])
        assert (body["uuid"], body["rule"], body["priority"]) == (test["uuid"], "Test rule",
                                                                   "Debug")
        assert message["Attributes"]["MessageGroupId"] == "lanner-internal"
        shown = httpx.get(f"{hub.url}/api/v1/outputs").json()["awssqs"]["config"]
        assert shown["secretaccesskey"] == shown["accesskeyid"] == "**********"
        assert shown["minimumpriority"] == "critical"


def test_bad_env_value_is_a_config_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sidekick.cli", "sidekick", "--check"],
        env={"AWS_SQS_URL": "sqs.example.com/queue", "AWS_ACCESSKEYID": ACCESS_KEY,
             "AWS_SECRETACCESSKEY": SECRET_KEY, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "lanner: configuration error: env AWS_SQS_URL: must be a queue URL: "
        "https://sqs.REGION.amazonaws.com/ACCOUNT/NAME"
    )
    assert SECRET_KEY not in result.stderr + result.stdout
