"""Slack: one message per alert, in Falcosidekick's attachment layout, to an incoming webhook.

Keys (``slack.*`` / ``SLACK_*``), as in Falcosidekick: ``webhookurl`` (setting it enables the
output), ``channel``, ``username``, ``icon``, ``footer``, ``outputformat`` (``all``, ``text`` or
``fields``), ``messageformat``, ``checkcert`` and the common keys of ``OutputConfig``. Defaults
follow Falcosidekick with Lanner's name: username ``Lanner``, footer ``Lanner``, no icon (the
webhook's own). ``channel``, ``username`` and ``icon`` only work on legacy webhooks; Slack apps'
webhooks post as the app, to its channel.

Payload (legacy attachments, as Falcosidekick): top-level ``text`` (the rendered
``messageformat``, when set and not empty), ``username``, ``icon_url``, ``channel`` and one
attachment: ``fallback`` (the output), ``color`` (per priority), ``text`` (the output; formats
``all``/``text``), ``fields`` and ``footer`` (formats ``all``/``fields``). Fields: rule,
priority, source, hostname, tags, every output field sorted by key, then time (Go's
``time.String()`` form, as Falcosidekick prints it). Falcosidekick drops output fields that are
not strings; we keep numbers, booleans and null (``<NA>``). ``short`` when a value has under 36
characters, as Falcosidekick.

Escaping: every string taken from the alert has ``&``, ``<`` and ``>`` written as ``&amp;``,
``&lt;``, ``&gt;``: Slack parses ``<...>`` as links and mentions anywhere, and alert strings come
from the kernel, which an attacker controls, so ``<!channel>`` arrives as text. mrkdwn has no
escape for ``*``, ``_``, ``~`` or backticks; they are left as they are (they may emphasise a
few characters inside one field or the text, never move anything out of it). Config strings
(footer, the literal parts of messageformat) are sent as written, so they may use Slack markup.

Limits: Slack truncates message ``text`` at 40,000 characters and splits above 4,000; it cuts
attachment text near 8,000 characters and field values near 2,000. It documents no limit on
field titles or field count. We cut before sending, marking each cut with ``…``: ``text`` 4,000,
attachment text and fallback 8,000, field titles 300, values 2,000, at most 50 fields, and the
whole message within 40,000 characters; when output fields must go, they go from the end and
a last field says how many were left out. An alert never fails for being too big.

messageformat is a Jinja template in an immutable sandbox (no Python internals, no changing the
alert). Variables carry Falcosidekick's Go template names: ``Rule``, ``Priority``, ``Output``,
``OutputFields`` (``{{ OutputFields["k8s.pod.name"] }}``), ``Hostname``, ``Tags``, ``Time``,
``Source``, ``UUID``. Everything printed by ``{{ }}`` is rendered like a field value and
escaped. A syntax error or a name starting with ``_`` is a config error naming the key; a
failure while rendering sends the alert without the text and is logged once.

Transport: slack-sdk's ``AsyncWebhookClient`` over the output's own aiohttp session (our timeout,
TLS setting and User-Agent), with no SDK retry handlers: the hub's queue retries. Answers are
classified by ``raise_for_http_status`` with Retry-After; Slack's error code (``no_service``,
``channel_is_archived``...) is added to the message. The webhook URL is a ``SecretStr``; the
SDK's logger is kept above debug, where it would print the URL.
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar, Literal

from jinja2 import Template, TemplateSyntaxError, Undefined, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import Field, SecretStr, field_validator
from slack_sdk.webhook.async_client import AsyncWebhookClient
from slack_sdk.webhook.webhook_response import WebhookResponse

from outputs.base import (
    USER_AGENT,
    HttpOutput,
    HttpOutputConfig,
    OutputConfig,
    PermanentError,
    RetryableError,
    check_url,
    raise_for_http_status,
    transport_errors,
)
from outputs.chat import (
    fit,
    fit_fields,
    go_time,
    output_items,
    render_value,
    summary_fields,
    tags_text,
)
from sidekick.alert import Alert, Priority

log = logging.getLogger("lanner.slack")
# The SDK logs each request with its URL (the secret) at debug level whenever its logger's own
# level is DEBUG or unset, whatever the handlers; a logger of its own set above debug stops it.
_SDK_LOG = logging.getLogger("lanner.slack.sdk")
_SDK_LOG.setLevel(logging.WARNING)

DEFAULT_USERNAME = "Lanner"
DEFAULT_FOOTER = "Lanner"

COLORS = {
    Priority.EMERGENCY: "#e20b0b",
    Priority.ALERT: "#ff5400",
    Priority.CRITICAL: "#ff5400",
    Priority.ERROR: "#e20b0b",
    Priority.WARNING: "#ffc700",
    Priority.NOTICE: "#5bffb5",
    Priority.INFORMATIONAL: "#68c2ff",
    Priority.DEBUG: "#ccfff2",
}

TEXT_LIMIT = 4_000
ATTACHMENT_TEXT_LIMIT = 8_000
FOOTER_LIMIT = 300
FIELD_TITLE_LIMIT = 300
FIELD_VALUE_LIMIT = 2_000
MAX_FIELDS = 50
MESSAGE_LIMIT = 40_000
SHORT_BELOW = 36  # Falcosidekick: a field is short (two per row) under 36 characters

ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_ERROR_CODE = re.compile(r"[a-z_]{1,64}")  # Slack's webhook errors: invalid_payload, no_service
_GO_SYNTAX = re.compile(r"\{\{-?\s*(\.|index\s)")


def _finalize(value: Any) -> str:
    if isinstance(value, Undefined):
        return str(value)  # "" for a missing name, as Jinja prints it
    return render_value(value).translate(ESCAPES)


_TEMPLATES = ImmutableSandboxedEnvironment(finalize=_finalize)


def compile_template(source: str) -> Template:
    """A messageformat template; ValueError says what is wrong with it."""
    try:
        tree = _TEMPLATES.parse(source)
    except TemplateSyntaxError as exc:
        hint = ""
        if _GO_SYNTAX.search(source):
            hint = "; templates are Jinja: {{ Rule }} where Falcosidekick had {{ .Rule }}"
        raise ValueError(f"invalid template at line {exc.lineno}: {exc.message}{hint}") from None
    for node in tree.find_all(nodes.Getattr):
        # The sandbox would refuse these at render time; refusing now tells the user.
        if node.attr.startswith("_"):
            raise ValueError(f"the template may not use {node.attr!r} (Python internals)")
    return _TEMPLATES.from_string(tree)


def template_context(alert: Alert) -> dict[str, Any]:
    """What messageformat sees, under Falcosidekick's names for the alert's parts."""
    return {
        "Rule": alert.rule,
        "Priority": alert.priority.label,
        "Output": alert.output,
        "OutputFields": alert.output_fields,
        "Hostname": alert.hostname,
        "Tags": alert.tags,
        "Time": go_time(alert.time_ns),
        "Source": alert.source,
        "UUID": alert.uuid,
    }


class SlackConfig(HttpOutputConfig):
    webhookurl: SecretStr = SecretStr("")
    channel: str = ""
    username: str = DEFAULT_USERNAME
    icon: str = ""
    footer: str = Field(DEFAULT_FOOTER, max_length=FOOTER_LIMIT)
    outputformat: Literal["all", "text", "fields"] = "all"
    messageformat: str = ""

    @field_validator("webhookurl")
    @classmethod
    def _webhookurl(cls, value: SecretStr) -> SecretStr:
        return SecretStr(check_url(value.get_secret_value()))

    @field_validator("icon")
    @classmethod
    def _icon(cls, value: str) -> str:
        return check_url(value)

    @field_validator("outputformat", mode="before")
    @classmethod
    def _outputformat(cls, value: Any) -> Any:
        if isinstance(value, str):
            name = value.strip().lower() or "all"
            if name not in ("all", "text", "fields"):
                raise ValueError(f"must be all, text or fields, not {value.strip()[:16]!r}")
            return name
        return value

    @field_validator("messageformat")
    @classmethod
    def _messageformat(cls, value: str) -> str:
        if value.strip():
            compile_template(value)
        return value


def _field(title: str, value: str, short: bool = True) -> dict[str, Any]:
    return {
        "title": fit(title, FIELD_TITLE_LIMIT, ESCAPES),
        "value": fit(value, FIELD_VALUE_LIMIT, ESCAPES),
        "short": short,
    }


def _size(field: dict[str, Any]) -> int:
    return len(field["title"]) + len(field["value"])


def _notice(count: int) -> dict[str, Any]:
    return {
        "title": "more fields",
        "value": f"{count} output field(s) left out to fit Slack's limits",
        "short": False,
    }


def _raise_for(output: str, response: WebhookResponse) -> None:
    code = response.body.strip() if isinstance(response.body, str) else ""
    detail = f" ({code})" if _ERROR_CODE.fullmatch(code) else ""
    try:
        raise_for_http_status(output, response.status_code, response.headers.get("Retry-After"))
    except RetryableError as exc:
        raise RetryableError(f"{exc}{detail}", exc.retry_after) from None
    except PermanentError as exc:
        raise PermanentError(f"{exc}{detail}") from None


class SlackOutput(HttpOutput):
    name: ClassVar[str] = "slack"
    path: ClassVar[tuple[str, ...]] = ("slack",)
    Config: ClassVar[type[OutputConfig]] = SlackConfig

    config: SlackConfig

    def __init__(self, config: SlackConfig, public_url: str = "") -> None:
        super().__init__(config, public_url)
        self._client: AsyncWebhookClient | None = None
        self._template = compile_template(config.messageformat) if config.messageformat else None
        self._template_failed = False

    @classmethod
    def enabled(cls, config: OutputConfig) -> bool:
        return isinstance(config, SlackConfig) and bool(config.webhookurl.get_secret_value())

    async def start(self) -> None:
        if self._client is not None:
            return
        self._client = AsyncWebhookClient(
            self.config.webhookurl.get_secret_value(),
            session=self.session(),
            logger=_SDK_LOG,
            retry_handlers=[],
        )
        # The SDK picks a proxy from HTTPS_PROXY by itself; every other output connects
        # directly (outputs.base.http_session), and one hub should behave one way.
        self._client.proxy = None

    async def close(self) -> None:
        self._client = None
        await super().close()

    def message_text(self, alert: Alert) -> str:
        if self._template is None:
            return ""
        try:
            text = self._template.render(template_context(alert))
        except Exception as exc:  # the template is user code: its failure must not lose alerts
            if not self._template_failed:
                self._template_failed = True
                log.warning(
                    "slack: messageformat failed (%s: %.200s); alerts go without the text "
                    "(logged once)", type(exc).__name__, exc,
                )
            return ""
        return fit(text, TEXT_LIMIT)

    def payload(self, alert: Alert) -> dict[str, Any]:
        config = self.config
        message: dict[str, Any] = {}
        text = self.message_text(alert)
        if text:
            message["text"] = text
        if config.username:
            message["username"] = config.username
        if config.icon:
            message["icon_url"] = config.icon
        if config.channel:
            message["channel"] = config.channel
        output = fit(alert.output, ATTACHMENT_TEXT_LIMIT, ESCAPES)
        attachment: dict[str, Any] = {"fallback": output, "color": COLORS[alert.priority]}
        if config.outputformat != "fields" and output:
            attachment["text"] = output
        if config.outputformat != "text":
            used = len(text) + len(output) * (2 if "text" in attachment else 1) + len(config.footer)
            attachment["fields"] = self._fields(alert, MESSAGE_LIMIT - used)
            if config.footer:
                attachment["footer"] = config.footer
        message["attachments"] = [attachment]
        return message

    def _fields(self, alert: Alert, budget: int) -> list[dict[str, Any]]:
        head = [_field(title, value) for title, value in summary_fields(alert)]
        tags = tags_text(alert)
        if tags:
            head.append(_field("tags", tags))
        body = [_field(key, value, len(value) < SHORT_BELOW) for key, value in output_items(alert)]
        tail = [_field("time", go_time(alert.time_ns), short=False)]
        return fit_fields(
            head, body, tail, max_fields=MAX_FIELDS, budget=budget, size=_size, notice=_notice
        )

    async def send(self, batch: list[Alert]) -> None:
        # One message per alert, in order; a failure raises and the queue retries the batch
        # (batchsize is 1 unless configured), so earlier messages of it may be posted twice.
        if self._client is None:
            await self.start()
        assert self._client is not None
        for alert in batch:
            with transport_errors(self.name):
                try:
                    response = await self._client.send_dict(
                        self.payload(alert), headers={"User-Agent": USER_AGENT}
                    )
                except UnicodeDecodeError:
                    # The SDK decodes every answer before we see its status: a proxy's error
                    # page in another charset must not escape as an unclassified error.
                    raise RetryableError(f"{self.name}: answer is not UTF-8 text") from None
            _raise_for(self.name, response)
