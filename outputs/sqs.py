"""AWS SQS: each alert's Falco JSON as one message, sent with ``SendMessageBatch``.

Keys (``aws.sqs.*`` / ``AWS_SQS_*``): ``url`` (the queue URL; setting it enables the output, as
in Falcosidekick), ``endpoint`` (ours: a custom endpoint such as an emulator),
``messagegroupid`` (FIFO queues), ``maxmessagesize``, the shared ``aws.*`` keys of
``outputs.aws`` and the common keys of ``OutputConfig``.

A batch goes out in as few calls as SQS allows: at most 10 messages and ``maxmessagesize``
bytes (256 KiB by default) per call. An alert too big for one message is a permanent error for
that alert only. Entries SQS reports in ``Failed`` come back as a ``PartialFailure``: the hub
completes the others and retries (or, with ``SenderFault``, dead-letters) only those.

Message: the body is ``alert.to_json()``, with one exception: the noncharacters U+FFFE and
U+FFFF, which SQS refuses, are written as the JSON escapes ``\\ufffe``/``\\uffff`` (the same
JSON value). String attributes ``priority``, ``rule``, ``source``, ``hostname``, each left out
when empty, cut to 256 characters, and with characters SQS refuses replaced by U+FFFD, so a
hostile rule or hostname cannot make the call fail.

FIFO queues (the URL ends in ``.fifo``): ``MessageDeduplicationId`` is the alert's uuid (its
SHA-256 when the uuid has characters SQS refuses), so a retried send within SQS's 5-minute
window is dropped by SQS. ``MessageGroupId`` comes from ``messagegroupid``, fixed text with the
placeholders ``{hostname}``, ``{rule}``, ``{priority}``, ``{source}``; the default
``{hostname}`` keeps each node's alerts in order while consumers work on several nodes at once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from outputs.aws import AwsConfig, AwsOutput, error_code, raise_failures
from outputs.base import OutputConfig, PermanentError, RetryableError
from sidekick.alert import Alert

MAX_BATCH_ENTRIES = 10  # SendMessageBatch's limit
MESSAGE_SIZE = 262_144  # 256 KiB: every queue accepts it, whatever its MaximumMessageSize
MESSAGE_SIZE_CEILING = 1_048_576  # what SQS accepts at most since 2025 (a queue setting)
ATTRIBUTE_CHARS = 256
ATTRIBUTES = ("priority", "rule", "source", "hostname")
GROUP_FIELDS = frozenset(ATTRIBUTES)

# SQS accepts #x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD #x10000-#x10FFFF in bodies and attributes.
_REFUSED = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# Deduplication and group ids: ASCII letters, digits and punctuation, at most 128.
_ID_CHARS = re.compile(r"[!-~]{1,128}")
_NOT_ID_CHARS = re.compile(r"[^!-~]")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_REGION_IN_HOST = re.compile(
    r"(?:sqs\.([a-z0-9-]+)|([a-z0-9-]+)\.queue)\.amazonaws\.com(?:\.cn)?"
)


def sqs_body(alert: Alert) -> str:
    text = alert.to_json().decode()
    # orjson escapes control characters already; only U+FFFE/U+FFFF can be left, always
    # inside JSON strings, where an escape means the same character.
    return _REFUSED.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def attribute_value(text: str) -> str:
    return _REFUSED.sub("\ufffd", text[:ATTRIBUTE_CHARS])


def deduplication_id(uuid: str) -> str:
    return uuid if _ID_CHARS.fullmatch(uuid) else hashlib.sha256(uuid.encode()).hexdigest()


def group_id(template: str, alert: Alert) -> str:
    """``messagegroupid`` for this alert: placeholders filled, characters SQS refuses as ``_``,
    an empty value as ``-``, at most 128 characters."""
    values = {
        "hostname": alert.hostname,
        "rule": alert.rule,
        "priority": alert.priority.label,
        "source": alert.source,
    }

    def fill(match: re.Match[str]) -> str:
        return _NOT_ID_CHARS.sub("_", values[match.group(1)]) or "-"

    return _PLACEHOLDER.sub(fill, template)[:128]


@dataclass(slots=True)
class _Entry:
    alert: Alert
    message: dict[str, Any]  # a SendMessageBatch entry without its Id
    size: int  # bytes SQS counts: body plus attribute names, types and values


class SqsConfig(AwsConfig):
    url: str = ""
    messagegroupid: str = "{hostname}"
    maxmessagesize: int = Field(MESSAGE_SIZE, ge=1024, le=MESSAGE_SIZE_CEILING)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        text = value.strip()
        if not text:
            return ""
        try:
            parts = urlsplit(text)
        except ValueError:
            parts = None
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or len(parts.path) < 2
        ):
            raise ValueError("must be a queue URL: https://sqs.REGION.amazonaws.com/ACCOUNT/NAME")
        return text

    @field_validator("messagegroupid")
    @classmethod
    def _group(cls, value: str) -> str:
        for name in _PLACEHOLDER.findall(value):
            if name not in GROUP_FIELDS:
                raise ValueError(
                    f"unknown placeholder {{{name[:32]}}}; use {{hostname}}, {{rule}}, "
                    "{priority} or {source}"
                )
        literal = _PLACEHOLDER.sub("", value)
        if not value or _NOT_ID_CHARS.search(literal) or "{" in literal or "}" in literal:
            raise ValueError(
                "must be ASCII letters, digits and punctuation, with placeholders {hostname}, "
                "{rule}, {priority}, {source}"
            )
        return value


class SqsOutput(AwsOutput):
    name: ClassVar[str] = "awssqs"
    path: ClassVar[tuple[str, ...]] = ("aws", "sqs")
    Config: ClassVar[type[OutputConfig]] = SqsConfig
    service: ClassVar[str] = "sqs"

    config: SqsConfig

    @classmethod
    def enabled(cls, config: OutputConfig) -> bool:
        return isinstance(config, SqsConfig) and bool(config.url)

    @property
    def fifo(self) -> bool:
        return urlsplit(self.config.url).path.endswith(".fifo")

    def default_region(self) -> str | None:
        """The region in an AWS queue URL, when no region is configured."""
        match = _REGION_IN_HOST.fullmatch(urlsplit(self.config.url).hostname or "")
        if match:
            return match.group(1) or match.group(2)
        return super().default_region()

    def _entry(self, alert: Alert) -> _Entry:
        body = sqs_body(alert)
        size = len(body.encode())
        attributes: dict[str, dict[str, str]] = {}
        for name, raw in zip(
            ATTRIBUTES, (alert.priority.label, alert.rule, alert.source, alert.hostname),
            strict=True,
        ):
            if raw:
                value = attribute_value(raw)
                attributes[name] = {"DataType": "String", "StringValue": value}
                size += len(name) + len("String") + len(value.encode())
        message: dict[str, Any] = {"MessageBody": body, "MessageAttributes": attributes}
        if self.fifo:
            message["MessageGroupId"] = group_id(self.config.messagegroupid, alert)
            message["MessageDeduplicationId"] = deduplication_id(alert.uuid)
        return _Entry(alert, message, size)

    def _calls(self, entries: list[_Entry]) -> Iterator[list[_Entry]]:
        """Consecutive entries grouped within SendMessageBatch's count and size limits."""
        chunk: list[_Entry] = []
        size = 0
        for entry in entries:
            if chunk and (
                len(chunk) == MAX_BATCH_ENTRIES or size + entry.size > self.config.maxmessagesize
            ):
                yield chunk
                chunk, size = [], 0
            chunk.append(entry)
            size += entry.size
        if chunk:
            yield chunk

    async def send(self, batch: list[Alert]) -> None:
        failures: dict[str, RetryableError | PermanentError] = {}
        entries: list[_Entry] = []
        for alert in batch:
            entry = self._entry(alert)
            if entry.size > self.config.maxmessagesize:
                failures[alert.uuid] = PermanentError(
                    f"{self.name}: the alert is {entry.size} bytes, over the "
                    f"{self.config.maxmessagesize}-byte message limit"
                )
            else:
                entries.append(entry)
        calls = list(self._calls(entries))
        for index, chunk in enumerate(calls):
            try:
                response = await self.call(
                    self._client.send_message_batch,
                    QueueUrl=self.config.url,
                    Entries=[{"Id": str(i), **e.message} for i, e in enumerate(chunk)],
                )
            except RetryableError as exc:
                # The service is struggling: leave the remaining calls for the retry.
                for later in calls[index:]:
                    failures.update((e.alert.uuid, exc) for e in later)
                break
            except PermanentError as exc:
                failures.update((e.alert.uuid, exc) for e in chunk)
                continue
            failures.update(self._failed_entries(chunk, response))
        raise_failures(self.name, batch, failures)

    def _failed_entries(
        self, chunk: list[_Entry], response: dict[str, Any]
    ) -> dict[str, RetryableError | PermanentError]:
        """The entries of one call that SQS did not take, by uuid."""
        failures: dict[str, RetryableError | PermanentError] = {}
        answered = {str(ok.get("Id")) for ok in response.get("Successful") or []}
        for failed in response.get("Failed") or []:
            entry_id = str(failed.get("Id"))
            if not entry_id.isdigit() or int(entry_id) >= len(chunk):
                continue
            answered.add(entry_id)
            code = error_code(failed.get("Code")) or "error"
            uuid = chunk[int(entry_id)].alert.uuid
            if failed.get("SenderFault"):
                failures[uuid] = PermanentError(f"{self.name}: {code} (sender fault)")
            else:
                failures[uuid] = RetryableError(f"{self.name}: {code}")
        for i, entry in enumerate(chunk):
            if str(i) not in answered:  # neither list names it: assume it did not go through
                failures[entry.alert.uuid] = RetryableError(f"{self.name}: no answer for entry")
        return failures
