"""Discord: one message with one embed per alert, to a Discord webhook.

Keys (``discord.*`` / ``DISCORD_*``), as in Falcosidekick: ``webhookurl`` (setting it enables
the output), ``icon`` (the avatar, ``avatar_url``; default none: the webhook's own),
``checkcert`` and the common keys of ``OutputConfig``.

Payload: ``avatar_url``, ``embeds: [{description, color, fields}]`` and ``allowed_mentions:
{"parse": []}``, so no string in the alert can ping anyone (``@everyone``, ``<@id>``). The embed
is Falcosidekick's: ``description`` is the output, ``color`` its decimal colour per priority
(sent as a number, Discord's documented type; Falcosidekick sent a string), and the fields come
in its order, all inline: rule, priority, source, hostname, each output field sorted by key with
its value in a code block, tags, time (Go's ``time.String()`` form, as Falcosidekick). Output
fields that are numbers, booleans or null are kept (Falcosidekick drops them); null is ``<NA>``.

Escaping: Discord renders markdown in embeds, and alert strings come from the kernel, which an
attacker controls. Outside code blocks, ``\\ * _ ~ ` | [ ] < > # @`` get a backslash (Discord
shows the character, not the markup: no masked links, mentions, headers or spoilers). Inside
the code blocks, each backtick is followed by a zero-width space so a value cannot close its
block.

Limits, enforced by cutting rather than failing (Discord answers 400 to anything over them, and
Falcosidekick lost those alerts): at most 25 fields, field names 256 characters, values 1,024,
description 4,096, and 6,000 characters across the embed. Each cut ends with ``…``. The
description keeps up to its limit of what the fields leave; output fields give way from the
end, and a last field says how many were left out. (No title is sent, as Falcosidekick.)

Rate limits: a 429 is retryable after Discord's ``retry_after`` (the JSON body's seconds, more
precise than the Retry-After header, which is the fallback). When a response says the bucket
is empty (``X-RateLimit-Remaining: 0``), the next request waits ``X-RateLimit-Reset-After``, or
is handed back to the queue at once as retryable when that is longer than the timeout; so a
burst of alerts does not turn into a burst of 429s, which Discord punishes.

Transport: plain aiohttp on the output's session (``outputs.base.http_session``), not httpx,
which cost about 7 times the CPU per request when measured for the hub. The request is made here
rather than with ``outputs.base.http_request`` because the 429 body matters and that helper
drops error bodies; failures are classified alike (``raise_for_http_status``,
``outputs.chat.transport_errors``). Success is any 2xx (204, or 200 with ``?wait=true``).

The webhook URL is a ``SecretStr``; errors name the HTTP status or the failure, never the URL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson
from pydantic import SecretStr, field_validator

from outputs.base import (
    HttpOutput,
    HttpOutputConfig,
    OutputConfig,
    RetryableError,
    check_url,
    raise_for_http_status,
    retry_after_seconds,
    transport_errors,
)
from outputs.chat import (
    fit,
    fit_fields,
    go_time,
    output_items,
    summary_fields,
    tags_text,
)
from sidekick.alert import Alert, Priority

COLORS = {
    Priority.EMERGENCY: 15158332,  # red
    Priority.ALERT: 11027200,  # dark orange
    Priority.CRITICAL: 15105570,  # orange
    Priority.ERROR: 15844367,  # gold
    Priority.WARNING: 12745742,  # dark gold
    Priority.NOTICE: 3066993,  # teal
    Priority.INFORMATIONAL: 3447003,  # blue
    Priority.DEBUG: 12370112,  # grey
}

DESCRIPTION_LIMIT = 4_096
FIELD_NAME_LIMIT = 256
FIELD_VALUE_LIMIT = 1_024
MAX_FIELDS = 25
EMBED_LIMIT = 6_000

MARKDOWN = str.maketrans({char: "\\" + char for char in "\\*_~`|[]<>#@"})
CODE = str.maketrans({"`": "`\u200b"})
FENCE = "```"
EMPTY = "\u200b"  # Discord refuses empty names and values; this shows as nothing


class DiscordConfig(HttpOutputConfig):
    webhookurl: SecretStr = SecretStr("")
    icon: str = ""

    @field_validator("webhookurl")
    @classmethod
    def _webhookurl(cls, value: SecretStr) -> SecretStr:
        return SecretStr(check_url(value.get_secret_value()))

    @field_validator("icon")
    @classmethod
    def _icon(cls, value: str) -> str:
        return check_url(value)


def _field(name: str, value: str) -> dict[str, Any]:
    return {
        "name": fit(name, FIELD_NAME_LIMIT, MARKDOWN) or EMPTY,
        "value": fit(value, FIELD_VALUE_LIMIT, MARKDOWN) or EMPTY,
        "inline": True,
    }


def _code_field(name: str, value: str) -> dict[str, Any]:
    code = fit(value, FIELD_VALUE_LIMIT - 2 * len(FENCE), CODE)
    return {
        "name": fit(name, FIELD_NAME_LIMIT, MARKDOWN) or EMPTY,
        "value": f"{FENCE}{code}{FENCE}",
        "inline": True,
    }


def _size(field: dict[str, Any]) -> int:
    return len(field["name"]) + len(field["value"])


def _notice(count: int) -> dict[str, Any]:
    return {
        "name": "more fields",
        "value": f"{count} output field(s) left out to fit Discord's limits",
        "inline": False,
    }


def _retry_after(content: bytes, headers: Mapping[str, str]) -> float | None:
    """A 429's wait: the body's ``retry_after`` (float seconds), else the Retry-After header."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        data = None
    seconds = data.get("retry_after") if isinstance(data, dict) else None
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
        return float(seconds)
    return retry_after_seconds(headers.get("Retry-After"))


class DiscordOutput(HttpOutput):
    name: ClassVar[str] = "discord"
    path: ClassVar[tuple[str, ...]] = ("discord",)
    Config: ClassVar[type[OutputConfig]] = DiscordConfig

    config: DiscordConfig

    def __init__(self, config: DiscordConfig, public_url: str = "") -> None:
        super().__init__(config, public_url)
        self._not_before = 0.0  # time.monotonic() before which Discord's bucket is empty

    @classmethod
    def enabled(cls, config: OutputConfig) -> bool:
        return isinstance(config, DiscordConfig) and bool(config.webhookurl.get_secret_value())

    def session_headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json"}

    def payload(self, alert: Alert) -> dict[str, Any]:
        head = [_field(name, value) for name, value in summary_fields(alert)]
        body = [_code_field(key, value) for key, value in output_items(alert)]
        tags = tags_text(alert)
        tail = [_field("tags", tags)] if tags else []
        tail.append(_field("time", go_time(alert.time_ns)))
        fixed = sum(_size(field) for field in (*head, *tail)) + _size(_notice(len(body)))
        description = fit(alert.output, min(DESCRIPTION_LIMIT, EMBED_LIMIT - fixed), MARKDOWN)
        embed: dict[str, Any] = {}
        if description:
            embed["description"] = description
        embed["color"] = COLORS[alert.priority]
        embed["fields"] = fit_fields(
            head, body, tail, max_fields=MAX_FIELDS, budget=EMBED_LIMIT - len(description),
            size=_size, notice=_notice,
        )
        message: dict[str, Any] = {}
        if self.config.icon:
            message["avatar_url"] = self.config.icon
        message["embeds"] = [embed]
        message["allowed_mentions"] = {"parse": []}
        return message

    async def _pace(self) -> None:
        wait = self._not_before - time.monotonic()
        if wait <= 0:
            return
        if wait > self.config.timeout:
            raise RetryableError(f"{self.name}: rate limited", wait)
        await asyncio.sleep(wait)

    def _hold(self, seconds: float | None) -> None:
        if seconds:
            self._not_before = max(self._not_before, time.monotonic() + seconds)

    async def send(self, batch: list[Alert]) -> None:
        # One message per alert, in order; a failure raises and the queue retries the batch
        # (batchsize is 1 unless configured), so earlier messages of it may be posted twice.
        session = self.session()
        url = self.config.webhookurl.get_secret_value()
        for alert in batch:
            body = orjson.dumps(self.payload(alert))
            await self._pace()
            with transport_errors(self.name):
                async with session.post(url, data=body, allow_redirects=False) as response:
                    content = await response.read()
            headers = response.headers
            if headers.get("X-RateLimit-Remaining") == "0":
                self._hold(retry_after_seconds(headers.get("X-RateLimit-Reset-After")))
            if response.status == 429:
                retry_after = _retry_after(content, headers)
                self._hold(retry_after)
                raise RetryableError(f"{self.name}: HTTP 429", retry_after)
            raise_for_http_status(self.name, response.status, headers.get("Retry-After"))
