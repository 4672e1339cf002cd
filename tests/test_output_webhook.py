"""The webhook output against a real HTTP receiver on loopback."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import time
import traceback
from typing import Any

import pytest
from pydantic import ValidationError

from outputs.base import PermanentError, RetryableError, retry_after_seconds
from outputs.webhook import WebhookConfig, WebhookOutput
from sidekick.alert import Alert, Priority
from tests.receiver import Receiver, Reply
from tests.support import free_port

TOKEN = "T0KEN-in-the-url-8d1f"
HMAC_SECRET = "hmac-s3cret-value-42"
HEADER_SECRET = "Bearer header-s3cret-77"


def make_alert(n: int = 0, **changes: Any) -> Alert:
    alert = Alert(
        rule="Terminal shell in container",
        priority=Priority.WARNING,
        time_ns=1_700_000_000_123_456_789 + n,
        output_fields={"proc.name": "bash", "container.id": "abc123", "evt.num": n, "ok": True},
        output="A shell was spawned in a container (user=root) é ✓",
        tags=["container", "shell"],
        hostname="node-1",
        uuid=f"00000000-0000-4000-8000-{n:012d}",
    )
    for key, value in changes.items():
        setattr(alert, key, value)
    return alert


def hook_url(rx: Receiver) -> str:
    return f"{rx.url}/hook/{TOKEN}?key={TOKEN}"


def webhook(**keys: Any) -> WebhookOutput:
    """The output; `async with` starts and closes it."""
    return WebhookOutput(WebhookConfig(**keys))


def assert_no_secrets(text: str, *extra: str) -> None:
    for secret in (TOKEN, HMAC_SECRET, HEADER_SECRET, "127.0.0.1", *extra):
        assert secret not in text, f"{secret!r} leaked into {text!r}"


def assert_clean_error(exc: BaseException, port: int) -> None:
    everything = str(exc) + repr(exc) + "".join(traceback.format_exception(exc))
    assert_no_secrets(everything, f":{port}", "/hook")


# -- delivery ----------------------------------------------------------------------------


async def test_body_is_exactly_the_alert_json(receiver: Receiver) -> None:
    alert = make_alert(1)
    async with webhook(address=hook_url(receiver)) as out:
        await out.send([alert])
    [req] = receiver.wait_for(1)
    assert req.body == alert.to_json()
    assert req.method == "POST"
    assert req.path == f"/hook/{TOKEN}"
    assert req.query == f"key={TOKEN}"
    assert req.headers["content-type"] == "application/json; charset=utf-8"
    assert req.headers["user-agent"] == "Lanner"
    assert "x-lanner-signature" not in req.headers
    assert "x-lanner-timestamp" not in req.headers
    assert Alert.from_json(req.body) == alert


async def test_put_and_custom_headers(receiver: Receiver) -> None:
    headers = {"Authorization": HEADER_SECRET, "X-Team": "sec:ops"}
    async with webhook(address=receiver.url, method="put", customheaders=headers) as out:
        await out.send([make_alert()])
    [req] = receiver.wait_for(1)
    assert req.method == "PUT"
    assert req.headers["authorization"] == HEADER_SECRET
    assert req.headers["x-team"] == "sec:ops"
    assert req.headers["user-agent"] == "Lanner"


async def test_custom_headers_env_form(receiver: Receiver) -> None:
    config = WebhookConfig(address=receiver.url, customheaders="Authorization:Basic a:b, X-One:1")
    assert {k: v.get_secret_value() for k, v in config.customheaders.items()} == {
        "Authorization": "Basic a:b",
        "X-One": "1",
    }


async def test_hmac_signature_verifies(receiver: Receiver) -> None:
    alert = make_alert(7)
    before = int(time.time())
    async with webhook(address=receiver.url, hmacsecret=HMAC_SECRET) as out:
        await out.send([alert])
    [req] = receiver.wait_for(1)
    timestamp = req.headers["x-lanner-timestamp"]
    assert before <= int(timestamp) <= time.time() + 1
    expected = hmac.new(
        HMAC_SECRET.encode(), timestamp.encode() + b"." + req.body, hashlib.sha256
    ).hexdigest()
    signature = req.headers["x-lanner-signature"]
    assert signature.startswith("sha256=")
    assert hmac.compare_digest(signature, f"sha256={expected}")
    assert req.body == alert.to_json()
    # a tampered body does not verify
    forged = hmac.new(
        HMAC_SECRET.encode(), timestamp.encode() + b"." + req.body + b" ", hashlib.sha256
    ).hexdigest()
    assert signature != f"sha256={forged}"


async def test_batch_is_sent_as_consecutive_requests_in_order(receiver: Receiver) -> None:
    batch = [make_alert(n) for n in range(5)]
    async with webhook(address=receiver.url, batchsize=5) as out:
        await out.send(batch)
    receiver.wait_for(5)
    assert receiver.uuids() == [a.uuid for a in batch]
    assert [r.body for r in receiver.requests] == [a.to_json() for a in batch]


async def test_failure_inside_a_batch_raises(receiver: Receiver) -> None:
    def fail_third(req: Any) -> Reply | None:
        return Reply(503) if req.json["output_fields"]["evt.num"] == 2 else None

    receiver.set_responder(fail_third)
    batch = [make_alert(n) for n in range(4)]
    async with webhook(address=receiver.url, batchsize=4) as out:
        with pytest.raises(RetryableError):
            await out.send(batch)
    assert receiver.uuids() == [a.uuid for a in batch[:3]]


# -- error classification ------------------------------------------------------------------


async def test_503_with_retry_after(receiver: Receiver) -> None:
    receiver.respond_with(status=503, headers={"Retry-After": "7"}, times=1)
    async with webhook(address=hook_url(receiver), hmacsecret=HMAC_SECRET) as out:
        with pytest.raises(RetryableError) as info:
            await out.send([make_alert()])
        assert info.value.retry_after == 7.0
        assert "503" in str(info.value)
        assert_clean_error(info.value, receiver.port)
        await out.send([make_alert()])  # the plan is back to 200
    assert [r.status for r in receiver.requests] == [503, 200]


@pytest.mark.parametrize("status", [429, 500, 502, 504])
async def test_retryable_statuses(receiver: Receiver, status: int) -> None:
    receiver.respond_with(status=status, times=1)
    async with webhook(address=hook_url(receiver)) as out:
        with pytest.raises(RetryableError) as info:
            await out.send([make_alert()])
    assert info.value.retry_after is None
    assert str(status) in str(info.value)
    assert_clean_error(info.value, receiver.port)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 302])
async def test_permanent_statuses(receiver: Receiver, status: int) -> None:
    receiver.respond_with(status=status, headers={"Location": "/elsewhere"}, times=1)
    async with webhook(address=hook_url(receiver)) as out:
        with pytest.raises(PermanentError) as info:
            await out.send([make_alert()])
    assert str(status) in str(info.value)
    assert_clean_error(info.value, receiver.port)


async def test_connection_refused_is_retryable() -> None:
    port = free_port()  # bound then closed: nothing listens there
    async with webhook(address=f"http://127.0.0.1:{port}/hook/{TOKEN}", timeout=2) as out:
        with pytest.raises(RetryableError) as info:
            await out.send([make_alert()])
    assert str(info.value) == "webhook: connection failed"
    assert_clean_error(info.value, port)


async def test_timeout_is_retryable(receiver: Receiver) -> None:
    receiver.respond_with(status=200, delay=1.5, times=1)
    async with webhook(address=hook_url(receiver), timeout=0.3) as out:
        started = time.monotonic()
        with pytest.raises(RetryableError) as info:
            await out.send([make_alert()])
        assert time.monotonic() - started < 1.4
    assert str(info.value) == "webhook: timeout"
    assert_clean_error(info.value, receiver.port)


# -- config --------------------------------------------------------------------------------


def test_secrets_stay_out_of_repr_and_dumps() -> None:
    config = WebhookConfig(
        address=f"https://hooks.example.com/{TOKEN}",
        hmacsecret=HMAC_SECRET,
        customheaders={"Authorization": HEADER_SECRET},
        minimumpriority="warning",
    )
    dumped = config.model_dump(mode="json")
    for text in (repr(config), str(config), repr(dumped), config.model_dump_json(),
                 repr(config.model_dump())):
        assert_no_secrets(text, "hooks.example.com")
    assert dumped["address"] == "**********"
    assert dumped["hmacsecret"] == "**********"
    assert dumped["customheaders"] == {"Authorization": "**********"}
    assert dumped["minimumpriority"] == "warning"  # the name, as users write it
    assert dumped["method"] == "POST"
    # unset secrets dump as "", so "not configured" stays visible
    assert WebhookConfig().model_dump(mode="json")["hmacsecret"] == ""
    # the real values are still there for the output itself
    assert config.address.get_secret_value() == f"https://hooks.example.com/{TOKEN}"


def test_invalid_method_names_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        WebhookConfig(address="http://example.com", method="DELETE")
    [error] = info.value.errors()
    assert error["loc"] == ("method",)
    assert "method" in str(info.value)
    assert WebhookConfig(method="put").method == "PUT"


def test_invalid_address_error_does_not_echo_it() -> None:
    with pytest.raises(ValidationError) as info:
        WebhookConfig(address=f"ftp://files.example.com/{TOKEN}")
    [error] = info.value.errors()
    assert error["loc"] == ("address",)
    assert_no_secrets(str(info.value), "files.example.com")


def test_minimumpriority() -> None:
    with pytest.raises(ValidationError) as info:
        WebhookConfig(minimumpriority="wrong")
    [error] = info.value.errors()
    assert error["loc"] == ("minimumpriority",)
    assert WebhookConfig(minimumpriority="info").minimumpriority is Priority.INFORMATIONAL
    assert WebhookConfig(minimumpriority="CRITICAL").minimumpriority is Priority.CRITICAL
    assert WebhookConfig(minimumpriority="").minimumpriority is None


def test_unknown_key_is_an_error() -> None:
    with pytest.raises(ValidationError) as info:
        WebhookConfig(adress="http://example.com")
    assert info.value.errors()[0]["loc"] == ("adress",)


def test_bad_custom_header() -> None:
    with pytest.raises(ValidationError) as info:
        WebhookConfig(customheaders={"X-Evil": "a\r\nInjected: 1"})
    assert info.value.errors()[0]["loc"] == ("customheaders",)
    with pytest.raises(ValidationError):
        WebhookConfig(customheaders={"Bad Name": "x"})


def test_enabled() -> None:
    assert not WebhookOutput.enabled(WebhookConfig())
    assert not WebhookOutput.enabled(WebhookConfig(address="  "))
    assert WebhookOutput.enabled(WebhookConfig(address="http://example.com/x"))
    assert WebhookOutput.name == "webhook"
    assert WebhookOutput.Config is WebhookConfig


# -- base helpers --------------------------------------------------------------------------


def test_retry_after_seconds() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(" 2.5 ") == 2.5
    assert retry_after_seconds("-3") == 0.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("") is None
    assert retry_after_seconds("soon") is None
    future = email.utils.formatdate(time.time() + 120, usegmt=True)
    seconds = retry_after_seconds(future)
    assert seconds is not None and 115 <= seconds <= 121
    past = email.utils.formatdate(time.time() - 3600, usegmt=True)
    assert retry_after_seconds(past) == 0.0


# -- the receiver itself -------------------------------------------------------------------


async def test_receiver_plan_and_throughput(receiver: Receiver) -> None:
    receiver.respond_with(status=503, headers={"Retry-After": "1"}, times=3)
    alerts = [make_alert(n) for n in range(2000)]
    async with webhook(address=receiver.url, timeout=5, maxconcurrentrequests=4) as out:
        queue = list(alerts)
        failed: list[Alert] = []

        async def worker() -> None:
            while queue:
                alert = queue.pop()
                try:
                    await out.send([alert])
                except RetryableError as exc:
                    assert exc.retry_after == 1.0
                    failed.append(alert)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(4)))
        elapsed = time.monotonic() - started
    assert len(failed) == 3
    receiver.wait_for(2000, timeout=5)
    assert sorted(receiver.uuids(ok=True)) == sorted(a.uuid for a in alerts if a not in failed)
    assert [r.status for r in receiver.requests].count(503) == 3
    assert elapsed < 30, f"2000 requests took {elapsed:.1f}s"
    receiver.fail_for(60)
    async with webhook(address=receiver.url) as out:
        with pytest.raises(RetryableError):
            await out.send([make_alert()])
    receiver.reset()
    assert receiver.count == 0
