"""Alertmanager: alerts to one Alertmanager, or to every member of a cluster.

Falcosidekick-compatible keys (``alertmanager.*`` / ``ALERTMANAGER_*``): ``hostport`` (list or
comma-separated ``http(s)://host:port``; setting it enables the output), ``endpoint``
(``/api/v2/alerts``; v1 is refused, Alertmanager 0.27 removed it), ``expiresafter``,
``extralabels``, ``extraannotations``, ``customseveritymap``, ``dropeventdefaultpriority``,
``dropeventthresholds``, ``customheaders``, ``checkcert``; ours: ``labelallowlist`` and
``labeldenylist``; and the common keys of ``OutputConfig``. docs/outputs/alertmanager.md has
the details.

One ``POST`` of a JSON array per batch, to every host at once, as Prometheus does with an
Alertmanager cluster (members gossip silences and notifications, not alerts). Delivered when at
least one host accepted; a host that failed misses that batch and is logged once until it
recovers. When every host failed: retryable if any failure was (at the earliest Retry-After),
else permanent. A permanent answer to several alerts is followed by one request per alert, so
one refused alert does not dead-letter its neighbours (Alertmanager stores the valid alerts of
a batch and answers 400 for the rest; re-sending a stored alert only refreshes it).

Labels are what Alertmanager groups, deduplicates and silences by, so repeats of an event must
carry the same ones: output fields become labels (name: runs of non-alphanumerics to ``_``,
trimmed), except null or empty values and fields that change with every occurrence
(``DENIED_FIELDS``: times, pids, event and fd numbers), then Falcosidekick's fixed labels, then
``extralabels``. Values are capped (``LABEL_VALUE_MAX``), cut the same way every time.

Secrets: ``customheaders`` values are ``SecretStr``, masked in ``repr`` and ``model_dump``.
``hostport`` is not one: URLs with credentials or a query are refused, so messages may name
the host.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson
from pydantic import Field, SecretStr, field_serializer, field_validator

from outputs.base import (
    HttpOutput,
    HttpOutputConfig,
    OutputConfig,
    OutputError,
    PartialFailure,
    PermanentError,
    RetryableError,
    check_headers,
    http_request,
    pairs_from_text,
)
from sidekick.alert import Alert, Priority, format_time_ns

log = logging.getLogger("lanner.output.alertmanager")

DEFAULT_ENDPOINT = "/api/v2/alerts"
CONTENT_TYPE = "application/json; charset=utf-8"
LABEL_VALUE_MAX = 1024
ANNOTATION_VALUE_MAX = 16384
EXPIRES_MAX = 365 * 86400.0

DEFAULT_SEVERITY: dict[Priority, str] = {
    Priority.DEBUG: "information",
    Priority.INFORMATIONAL: "information",
    Priority.NOTICE: "information",
    Priority.WARNING: "warning",
    Priority.ERROR: "warning",
    Priority.CRITICAL: "critical",
    Priority.ALERT: "critical",
    Priority.EMERGENCY: "critical",
}

DEFAULT_THRESHOLDS: dict[int, Priority] = {
    10000: Priority.CRITICAL,
    1000: Priority.CRITICAL,
    100: Priority.CRITICAL,
    10: Priority.WARNING,
    1: Priority.WARNING,
}

# Output fields whose value changes from one occurrence of the same event to the next. As
# labels they would make every alert unique, so Alertmanager could not group or silence it.
DENIED_FIELDS: tuple[str, ...] = (
    "evt.time*", "evt.rawtime*", "evt.reltime*", "evt.datetime*", "evt.deltatime*",
    "evt.latency*", "evt.num", "evt.cpu", "evt.args", "evt.buffer", "evt.buflen", "evt.rawres",
    "evt.*arg.fd", "evt.*arg.res", "evt.*arg.*pid", "evt.*arg.*tid",
    "proc.*pid", "proc.*pid.*", "proc.apid*", "proc.*pgid", "proc.sid", "proc.*duration",
    "proc.*start_ts", "proc.exe_ino*", "proc.fd*", "proc.vm*",
    "thread.*tid", "thread.cpu*", "thread.*exectime", "thread.vm*", "thread.pf*",
    "fd.num", "fd.ino", "fd.uid", "fd.cport",
)

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")
_DROP_COUNT = re.compile(r"-?[0-9]{1,18}")


def label_name(field: str) -> str | None:
    """The label an output field becomes, or None when no valid name is left."""
    name = _NOT_ALNUM.sub("_", field).strip("_")
    return name if name and not name[0].isdigit() else None


def glob_matcher(patterns: list[str] | tuple[str, ...]) -> re.Pattern[str]:
    """One regex for globs where only ``*`` and ``?`` are special (field names hold ``[]``)."""
    if not patterns:
        return re.compile(r"(?!)")
    alternatives = (
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
        for pattern in patterns
    )
    return re.compile("|".join(f"(?:{a})" for a in alternatives), re.DOTALL)


_DENIED = glob_matcher(DENIED_FIELDS)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _label_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(text for text in map(_label_value, value) if text)
    return str(value)


def _priority(value: Any) -> Priority:
    if isinstance(value, Priority):
        return value
    if not isinstance(value, str):
        raise ValueError("priorities are names such as warning or critical")
    return Priority.parse(value)


def _check_names(value: dict[str, str]) -> dict[str, str]:
    for name in value:
        if not _LABEL_NAME.fullmatch(name):
            raise ValueError(f"{name[:64]!r} is not a valid name ([a-zA-Z_][a-zA-Z0-9_]*)")
    return value


def _check_url(text: str) -> str:
    shown = text[:64]
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"{shown!r} is not an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{shown!r} is not an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("a host must not carry credentials; use customheaders (Authorization)")
    if parts.query or parts.fragment:
        raise ValueError(f"{shown!r} must not have a query or fragment")
    return text.rstrip("/")


class AlertmanagerConfig(HttpOutputConfig):
    hostport: list[str] = []
    endpoint: str = DEFAULT_ENDPOINT
    expiresafter: float = Field(0.0, ge=0, le=EXPIRES_MAX)
    extralabels: dict[str, str] = {}
    extraannotations: dict[str, str] = {}
    customseveritymap: dict[Priority, str] = {}
    dropeventdefaultpriority: Priority = Priority.CRITICAL
    dropeventthresholds: dict[int, Priority] = DEFAULT_THRESHOLDS
    labelallowlist: list[str] = []
    labeldenylist: list[str] = []
    customheaders: dict[str, SecretStr] = {}

    @field_validator("hostport", "labelallowlist", "labeldenylist", mode="before")
    @classmethod
    def _lists_from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("hostport")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        hosts = [_check_url(host.strip()) for host in value if host.strip()]
        for i, host in enumerate(hosts):
            if host in hosts[:i]:
                raise ValueError(f"{host[:64]!r} is listed twice")
        return hosts

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        value = value.strip() or DEFAULT_ENDPOINT
        if not value.startswith("/") or re.search(r"[\s?#]", value):
            raise ValueError("must be a path such as /api/v2/alerts")
        if re.search(r"/api/v1/alerts/?$", value):
            raise ValueError(
                "Alertmanager removed the v1 API in 0.27 (it answers 410 Gone); use "
                "/api/v2/alerts, the default, which takes the same alerts"
            )
        return value

    @field_validator("customheaders", mode="before")
    @classmethod
    def _headers_from_text(cls, value: Any) -> Any:
        return pairs_from_text(value)

    @field_validator("extralabels", "extraannotations", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        value = pairs_from_text(value)
        if not isinstance(value, dict):
            return value
        # YAML reads `tier: 1` as a number; a label value is text either way.
        return {k: _label_value(v) if isinstance(v, int | float) else v for k, v in value.items()}

    @field_validator("extralabels", "extraannotations")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_names(value)

    @field_validator("customseveritymap", mode="before")
    @classmethod
    def _severity_priorities(cls, value: Any) -> Any:
        value = pairs_from_text(value)
        if not isinstance(value, dict):
            return value
        severities: dict[Priority, Any] = {}
        for level, severity in value.items():
            if not isinstance(severity, str) or not severity.strip():
                raise ValueError(f"the severity for {str(level)[:32]!r} must be a non-empty text")
            severities[_priority(level)] = severity.strip()
        return severities

    @field_validator("dropeventdefaultpriority", mode="before")
    @classmethod
    def _default_priority(cls, value: Any) -> Priority:
        return Priority.CRITICAL if value in (None, "") else _priority(value)

    @field_validator("dropeventthresholds", mode="before")
    @classmethod
    def _thresholds(cls, value: Any) -> Any:
        value = pairs_from_text(value)
        if not isinstance(value, dict):
            return value
        thresholds: dict[int, Priority] = {}
        for count, level in value.items():
            text = str(count).strip() if isinstance(count, int | str) else ""
            if isinstance(count, bool) or not re.fullmatch(r"[0-9]{1,18}", text):
                raise ValueError(f"{text[:32]!r} is not a whole number of dropped events")
            if isinstance(level, str) and ":" in level:
                raise ValueError("separate the pairs with commas: 10000:critical, 10:warning")
            thresholds[int(text)] = _priority(level)
        return thresholds

    @field_validator("customheaders")
    @classmethod
    def _headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        return check_headers(value)

    @field_serializer("customseveritymap")
    def _severity_names(self, value: dict[Priority, str]) -> dict[str, str]:
        return {level.name.lower(): severity for level, severity in value.items()}

    @field_serializer("dropeventdefaultpriority")
    def _default_priority_name(self, value: Priority) -> str:
        return value.name.lower()

    @field_serializer("dropeventthresholds")
    def _threshold_names(self, value: dict[int, Priority]) -> dict[str, str]:
        return {str(count): level.name.lower() for count, level in value.items()}


class AlertmanagerOutput(HttpOutput):
    name: ClassVar[str] = "alertmanager"
    path: ClassVar[tuple[str, ...]] = ("alertmanager",)
    Config: ClassVar[type[OutputConfig]] = AlertmanagerConfig

    config: AlertmanagerConfig

    def __init__(self, config: AlertmanagerConfig, public_url: str = "") -> None:
        super().__init__(config, public_url)
        self._urls = [host + config.endpoint for host in config.hostport]
        self._missing: set[str] = set()  # hosts whose last request failed, logged once
        self._deny = glob_matcher(config.labeldenylist)
        self._allow = glob_matcher(config.labelallowlist)
        self._named = {p for p in config.labelallowlist if "*" not in p and "?" not in p}
        self._thresholds = sorted(config.dropeventthresholds.items(), reverse=True)

    @classmethod
    def enabled(cls, config: OutputConfig) -> bool:
        return isinstance(config, AlertmanagerConfig) and bool(config.hostport)

    def session_headers(self) -> dict[str, str]:
        headers = {"Content-Type": CONTENT_TYPE}
        for name, value in self.config.customheaders.items():
            headers[name] = value.get_secret_value()
        return headers

    # -- payload -------------------------------------------------------------------------------

    def is_label(self, field: str) -> bool:
        """Whether an output field may become a label (the allow and deny lists)."""
        if self._deny.fullmatch(field):
            return False
        if field in self._named:
            return True
        if _DENIED.fullmatch(field):
            return False
        return not self.config.labelallowlist or self._allow.fullmatch(field) is not None

    def _drop_bucket(self, value: Any, priority: Priority) -> tuple[str, Priority]:
        """Falcosidekick's bucketing of a drop counter: (label value, raised priority).

        The value is "" when it is not a whole number (the label is then left out).
        """
        if isinstance(value, bool) or not isinstance(value, int | str):
            return "", priority
        text = str(value).strip()
        if not _DROP_COUNT.fullmatch(text):
            return "", priority
        count = int(text)
        if count == 0:
            return "0", max(priority, Priority.WARNING)
        for threshold, level in self._thresholds:
            if count > threshold:
                return f">{threshold}", max(priority, level)
        return str(count), max(priority, self.config.dropeventdefaultpriority)

    def labels(self, alert: Alert) -> dict[str, str]:
        priority = alert.priority
        labels: dict[str, str] = {}
        # Sorted, so that when two fields map to one label name the same one always wins.
        for field in sorted(alert.output_fields):
            value = alert.output_fields[field]
            if field.startswith("n_evts"):
                continue
            if field.startswith("n_drop"):
                text, priority = self._drop_bucket(value, priority)
            else:
                text = _label_value(value)
            name = label_name(field)
            if text and name and name not in labels and self.is_label(field):
                labels[name] = text
        labels.update(source="falco", eventsource=alert.source, rule=alert.rule,
                      alertname=alert.rule)
        if alert.hostname:
            labels["hostname"] = alert.hostname
        if alert.tags:
            labels["tags"] = ",".join(sorted(alert.tags))
        labels["priority"] = priority.label
        labels["severity"] = (
            self.config.customseveritymap.get(priority) or DEFAULT_SEVERITY[priority]
        )
        labels.update(self.config.extralabels)
        return {k: _clip(v, LABEL_VALUE_MAX) for k, v in labels.items() if v}

    def annotations(self, alert: Alert) -> dict[str, str]:
        notes = {"info": alert.output, "description": alert.output, "summary": alert.rule}
        notes.update(self.config.extraannotations)
        return {k: _clip(v, ANNOTATION_VALUE_MAX) for k, v in notes.items() if v}

    def payload(self, alert: Alert) -> dict[str, Any]:
        """One element of the JSON array Alertmanager takes."""
        item: dict[str, Any] = {
            "labels": self.labels(alert),
            "annotations": self.annotations(alert),
            "startsAt": alert.time,
            "generatorURL": self.event_url(alert),
        }
        if self.config.expiresafter:
            item["endsAt"] = format_time_ns(alert.time_ns + int(self.config.expiresafter * 1e9))
        return item

    # -- delivery ------------------------------------------------------------------------------

    async def send(self, batch: list[Alert]) -> None:
        items = [self.payload(alert) for alert in batch]
        try:
            await self._post_everywhere(orjson.dumps(items), len(items))
        except PermanentError:
            if len(batch) == 1:
                raise
            await self._one_by_one(batch, items)

    async def _one_by_one(self, batch: list[Alert], items: list[dict[str, Any]]) -> None:
        failures: dict[str, RetryableError | PermanentError] = {}
        for alert, item in zip(batch, items, strict=True):
            try:
                await self._post_everywhere(orjson.dumps([item]), 1)
            except (RetryableError, PermanentError) as exc:
                failures[alert.uuid] = exc
        if failures:
            raise PartialFailure(self.name, failures)

    async def _post_everywhere(self, body: bytes, count: int) -> None:
        session = self.session()
        results = await asyncio.gather(
            *(http_request(self.name, session, "POST", url, body) for url in self._urls),
            return_exceptions=True,
        )
        errors: dict[str, OutputError] = {}
        for url, result in zip(self._urls, results, strict=True):
            if isinstance(result, OutputError):
                errors[url] = result
            elif isinstance(result, BaseException):
                raise result
        self._note_hosts(errors, count)
        if len(errors) < len(self._urls):
            return
        if len(errors) == 1:
            raise next(iter(errors.values()))
        detail = "; ".join(
            f"{_host(url)} {str(exc).removeprefix(f'{self.name}: ')}" for url, exc in errors.items()
        )
        message = f"{self.name}: every host failed: {detail}"
        retryable = [exc for exc in errors.values() if isinstance(exc, RetryableError)]
        if not retryable:
            raise PermanentError(message)
        waits = [exc.retry_after for exc in retryable]
        # The first host that may take the batch again sets when to retry.
        known = [wait for wait in waits if wait is not None]
        raise RetryableError(message, min(known) if len(known) == len(waits) else None)

    def _note_hosts(self, errors: dict[str, OutputError], count: int) -> None:
        for url in self._urls:
            error = errors.get(url)
            if error is None and url in self._missing:
                self._missing.discard(url)
                log.info("%s: %s accepts alerts again", self.name, _host(url))
            elif error is not None and url not in self._missing and len(self._urls) > 1:
                self._missing.add(url)
                delivered = len(errors) < len(self._urls)
                log.warning(
                    "%s: %s failed (%s)%s", self.name, _host(url), error,
                    f"; {count} alert(s) went to the other host(s) only, and it misses alerts "
                    "until it recovers" if delivered else "",
                )


def _host(url: str) -> str:
    return urlsplit(url).netloc
