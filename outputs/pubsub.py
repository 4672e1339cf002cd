"""GCP Pub/Sub: each alert's Falco JSON as one message on a topic, with filterable attributes.

Falcosidekick-compatible keys (``gcp.pubsub.*`` / ``GCP_PUBSUB_*``): ``projectid`` and ``topic``
(both set enables the output; only one of them set is a config error, where Falcosidekick
silently stays off), ``customattributes`` (a map, or the env form ``k:v,k2:v2``) and the common
keys of ``OutputConfig``; ``gcp.credentials`` / ``GCP_CREDENTIALS`` comes from the parent
section, shared with any other GCP output. Ours: ``orderingkey`` and ``endpoint``.

A message is ``data`` = ``alert.to_json()`` and attributes ``priority``, ``rule``, ``source`` and
``hostname`` (empty ones left out, values cut to Pub/Sub's 1024-byte limit) plus the custom
attributes, which win over a per-event one of the same name. Falcosidekick sends only the custom
ones, so subscribers could not filter on severity server-side. Custom attributes are checked
against the service's limits when the config loads: at most 100 attributes with the per-event
ones, keys of 1 to 256 bytes not starting with ``goog``, values up to 1024 bytes. The client
library passes attributes as keyword arguments, so the names of its own parameters (``data``,
``ordering_key``, ``retry``, ``self``, ``timeout``, ``topic``) cannot be custom attributes.

Publishing uses the library's ``PublisherClient``: all alerts of a batch are handed to it at once
and it packs them into Publish RPCs (up to ``batchsize`` messages per RPC, 1 MB, 10 ms). Its own
retries are switched off (``retry=None``, ``timeout`` per RPC): left on, they retry for up to 60 s,
and forever once message ordering is on, which would hide an outage from the hub. The hub's queue
retries instead, with backoff, honouring a ``RetryInfo`` the server attaches. Each alert's
outcome is its own future, so a batch can partly fail (``PartialFailure``).

gRPC status codes: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNKNOWN
and CANCELLED are retryable; the others (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED,
FAILED_PRECONDITION...) permanent. UNAUTHENTICATED is retryable once: an access token can
expire between the client's check and the server's, and the next attempt carries a fresh one.
If the next failing send is UNAUTHENTICATED too, with no success in between, the credentials are
bad and it is permanent. A message over the 10 MB limit is a permanent error for that alert.

``orderingkey`` is a template over ``{rule}``, ``{priority}``, ``{source}`` and ``{hostname}``
(``{{``/``}}`` for braces), e.g. ``{hostname}`` or a fixed ``falco``. Setting it turns message
ordering on in the client. Once a publish with an ordering key fails, the client refuses that key
until ``resume_publish``; ``send`` resumes every key that failed, after its futures settle, so
the retries go through. Order holds among the messages of one batch and between successful
sends; a retried alert arrives after later ones, as with any retry.

Credentials: ``gcp.credentials`` is the base64 of a credentials JSON file (service account key,
or any type google-auth loads); empty means Application Default Credentials (Workload Identity,
the metadata server, ``GOOGLE_APPLICATION_CREDENTIALS``). It is a ``SecretStr``; errors about it
name the key and the problem, never the value. Without any credentials the output still starts
and each send is retryable (``no Google credentials``), so alerts wait in the queue.
``PUBSUB_EMULATOR_HOST`` (the library's variable) sends everything in plain text, without
credentials, to an emulator; ``endpoint`` sets another API endpoint (``host:port``: a regional
endpoint such as ``europe-west1-pubsub.googleapis.com:443``, or Private Service Connect).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import re
from concurrent.futures import Future
from typing import Any, ClassVar

import google.auth
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import Credentials
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.publisher import exceptions as publisher_exceptions
from google.oauth2 import service_account
from google.rpc import error_details_pb2
from grpc import StatusCode
from pydantic import SecretStr, field_validator, model_validator

from outputs.base import Output, OutputConfig, PartialFailure, PermanentError, RetryableError
from sidekick.alert import Alert

log = logging.getLogger("lanner.outputs.pubsub")

MAX_ATTRIBUTES = 100
MAX_KEY_BYTES = 256
MAX_VALUE_BYTES = 1024
MAX_ORDERING_KEY_BYTES = 1024
MAX_MESSAGES_PER_REQUEST = 1000
BATCH_LATENCY_S = 0.01  # the library's default: how long a batch waits for more messages
# With batchsize > 1 a whole batch is handed over at once; a longer wait keeps it one RPC even
# when the hub is busy and handing over 500 messages takes longer than 10 ms.
BATCHED_LATENCY_S = 0.05
EVENT_ATTRIBUTES = ("priority", "rule", "source", "hostname")
RESERVED_NAMES = frozenset({"data", "ordering_key", "retry", "self", "timeout", "topic"})
CREDENTIAL_TYPES = frozenset(
    {
        "service_account",
        "authorized_user",
        "external_account",
        "external_account_authorized_user",
        "impersonated_service_account",
    }
)

RETRYABLE_CODES = frozenset(
    {
        StatusCode.UNAVAILABLE,
        StatusCode.DEADLINE_EXCEEDED,
        StatusCode.RESOURCE_EXHAUSTED,
        StatusCode.ABORTED,
        StatusCode.INTERNAL,
        StatusCode.UNKNOWN,
        StatusCode.CANCELLED,
    }
)

_TOPIC = re.compile(r"[A-Za-z0-9._~+%-]{1,255}")
_PROJECT = re.compile(r"[a-z0-9][a-z0-9.:-]{0,99}")  # domain-scoped ids have "example.com:"
_ENDPOINT = re.compile(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?")
_FIELD = re.compile(r"\{\{|\}\}|\{(\w*)\}|[{}]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def truncate(text: str, limit: int) -> str:
    """At most ``limit`` UTF-8 bytes, never splitting a character."""
    raw = text.encode()
    return text if len(raw) <= limit else raw[:limit].decode(errors="ignore")


def credentials_info(encoded: str) -> dict[str, Any]:
    """The credentials JSON from its base64 text. ValueError says what is wrong, not the value."""
    try:
        raw = base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "is not valid base64 (expected the base64 of a credentials JSON file)"
        ) from None
    try:
        info = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("does not decode to JSON (expected a credentials JSON file)") from None
    if not isinstance(info, dict) or info.get("type") not in CREDENTIAL_TYPES:
        kinds = ", ".join(sorted(CREDENTIAL_TYPES))
        raise ValueError(f'is not a Google credentials file (its "type" must be one of {kinds})')
    return info


def _check_service_account(info: dict[str, Any]) -> None:
    missing = [k for k in ("client_email", "private_key", "token_uri") if not info.get(k)]
    if missing:
        raise ValueError(f"is a service account key without {', '.join(missing)}")
    try:
        service_account.Credentials.from_service_account_info(info)
    except Exception:  # the library's messages may quote the key; say what, not how
        raise ValueError("is a service account key whose private_key cannot be read") from None


def _check_attribute(key: str, value: str) -> None:
    if key in RESERVED_NAMES:
        names = ", ".join(sorted(RESERVED_NAMES))
        raise ValueError(f"{key!r} cannot be an attribute name here (reserved: {names})")
    if not key or len(key.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"attribute names must be 1 to {MAX_KEY_BYTES} bytes ({key[:32]!r})")
    if key.startswith("goog"):
        raise ValueError(f"attribute names must not start with 'goog' ({key[:64]!r})")
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise ValueError(f"the value of {key[:64]!r} is over {MAX_VALUE_BYTES} bytes")


class PubsubConfig(OutputConfig):
    shared: ClassVar[frozenset[str]] = frozenset({"credentials"})

    credentials: SecretStr = SecretStr("")
    projectid: str = ""
    topic: str = ""
    customattributes: dict[str, str] = {}
    orderingkey: str = ""
    endpoint: str = ""

    @field_validator("credentials")
    @classmethod
    def _credentials(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value().strip()
        if text:
            info = credentials_info(text)
            if info["type"] == "service_account":
                _check_service_account(info)
        return SecretStr(text)

    @field_validator("projectid")
    @classmethod
    def _projectid(cls, value: str) -> str:
        value = value.strip()
        if value and not _PROJECT.fullmatch(value):
            raise ValueError("must be a project id: lowercase letters, digits, '-', '.', ':'")
        return value

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        value = value.strip()
        if value.startswith("projects/"):
            raise ValueError("must be the topic's name, not its path (set projectid apart)")
        if value and not _TOPIC.fullmatch(value):
            raise ValueError("must be 1 to 255 of letters, digits and - _ . ~ + %")
        if value.startswith("goog"):
            raise ValueError("must not start with 'goog'")
        return value

    @field_validator("customattributes", mode="before")
    @classmethod
    def _scalars_as_text(cls, value: Any) -> Any:
        """YAML reads ``level: 3`` or ``prod: true`` as a number or bool; attributes are text."""
        if not isinstance(value, dict):
            return value
        text = {True: "true", False: "false"}
        return {
            k: text[v] if isinstance(v, bool) else str(v) if isinstance(v, int | float) else v
            for k, v in value.items()
        }

    @field_validator("customattributes")
    @classmethod
    def _attributes(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            _check_attribute(key, item)
        if len(set(value) | set(EVENT_ATTRIBUTES)) > MAX_ATTRIBUTES:
            raise ValueError(
                f"too many: Pub/Sub takes {MAX_ATTRIBUTES} attributes per message, and "
                f"{', '.join(EVENT_ATTRIBUTES)} are set per event"
            )
        return value

    @field_validator("orderingkey")
    @classmethod
    def _orderingkey(cls, value: str) -> str:
        for match in _FIELD.finditer(value):
            name = match.group(1)
            if match.group(0) in ("{{", "}}"):
                continue
            if name not in EVENT_ATTRIBUTES:
                shown = "a lone brace" if name is None else f"{{{name}}}"
                raise ValueError(
                    f"unknown field {shown}; use {{rule}}, {{priority}}, {{source}} or "
                    "{hostname} (write {{ and }} for braces)"
                )
        if len(value.encode()) > MAX_ORDERING_KEY_BYTES:
            raise ValueError(f"must be at most {MAX_ORDERING_KEY_BYTES} bytes")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        value = value.strip()
        if value and not _ENDPOINT.fullmatch(value):
            raise ValueError("must be host or host:port, without a scheme")
        return value

    @model_validator(mode="after")
    def _both_or_neither(self) -> PubsubConfig:
        if bool(self.projectid) != bool(self.topic):
            missing = "topic" if self.projectid else "projectid"
            raise ValueError(f"{missing} is required too: both projectid and topic enable it")
        return self


class PubsubOutput(Output):
    name: ClassVar[str] = "gcppubsub"
    path: ClassVar[tuple[str, ...]] = ("gcp", "pubsub")
    Config: ClassVar[type[OutputConfig]] = PubsubConfig

    config: PubsubConfig

    def __init__(self, config: PubsubConfig, public_url: str = "") -> None:
        super().__init__(config, public_url)
        self.topic_path = f"projects/{config.projectid}/topics/{config.topic}"
        self._client: pubsub_v1.PublisherClient | None = None
        self._unauthenticated = False  # the last failing send was UNAUTHENTICATED

    @classmethod
    def enabled(cls, config: OutputConfig) -> bool:
        return isinstance(config, PubsubConfig) and bool(config.projectid and config.topic)

    async def start(self) -> None:
        try:
            await self._ready()
        except RetryableError as exc:
            log.error("%s; alerts wait in the queue until they are available", exc)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(_shut, client)

    async def _ready(self) -> pubsub_v1.PublisherClient:
        if self._client is None:
            # Finding credentials can query the metadata server: not on the event loop.
            self._client = await asyncio.to_thread(self._new_client)
        return self._client

    def _new_client(self) -> pubsub_v1.PublisherClient:
        options: dict[str, Any] = {}
        if self.config.endpoint:
            options["client_options"] = {"api_endpoint": self.config.endpoint}
        try:
            # With PUBSUB_EMULATOR_HOST set, the library ignores these for the emulator's sake.
            options["credentials"] = self._credentials()
        except (auth_exceptions.GoogleAuthError, ValueError) as exc:
            raise RetryableError(
                f"{self.name}: no Google credentials ({type(exc).__name__}): set gcp.credentials "
                "or provide Application Default Credentials"
            ) from None
        # The library sends a batch once a message would make it reach max_messages, and holds
        # a batch that is not full for max_latency: 1 sends each alert at once; N + 1 lets a
        # whole batch of N go in one RPC.
        size = self.config.batchsize
        return pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(
                max_latency=BATCH_LATENCY_S if size <= 1 else BATCHED_LATENCY_S,
                max_messages=1 if size <= 1 else min(MAX_MESSAGES_PER_REQUEST, size + 1),
            ),
            publisher_options=pubsub_v1.types.PublisherOptions(
                enable_message_ordering=bool(self.config.orderingkey),
                retry=None,
                timeout=self.config.timeout,
            ),
            **options,
        )

    def _credentials(self) -> Credentials | None:
        if os.environ.get("PUBSUB_EMULATOR_HOST"):
            return None  # no credentials lookup (it may probe the metadata server for seconds)
        encoded = self.config.credentials.get_secret_value()
        if encoded:
            credentials, _ = google.auth.load_credentials_from_dict(credentials_info(encoded))
        else:
            credentials, _ = google.auth.default()
        return credentials

    def attributes(self, alert: Alert) -> dict[str, str]:
        attributes = {
            key: truncate(value, MAX_VALUE_BYTES)
            for key, value in _event_fields(alert).items()
            if value
        }
        attributes.update(self.config.customattributes)
        return attributes

    def ordering_key(self, alert: Alert) -> str:
        if not self.config.orderingkey:
            return ""
        fields = _event_fields(alert)

        def fill(match: re.Match[str]) -> str:
            token = match.group(0)
            return token[0] if token in ("{{", "}}") else fields[match.group(1)]

        return truncate(_FIELD.sub(fill, self.config.orderingkey), MAX_ORDERING_KEY_BYTES)

    async def send(self, batch: list[Alert]) -> None:
        client = await self._ready()
        failures: dict[str, RetryableError | PermanentError] = {}
        pending: dict[str, tuple[str, asyncio.Future[str]]] = {}
        for alert in batch:
            key = self.ordering_key(alert)
            try:
                future = await self._publish(client, alert, key)
            except publisher_exceptions.MessageTooLargeError:
                failures[alert.uuid] = PermanentError(
                    f"{self.name}: the message is over Pub/Sub's 10 MB limit"
                )
                continue
            except (RuntimeError, AssertionError) as exc:
                failures[alert.uuid] = RetryableError(f"{self.name}: {_describe(exc)}")
                continue
            pending[alert.uuid] = (key, asyncio.wrap_future(future))
        outcomes = await asyncio.gather(*(f for _, f in pending.values()), return_exceptions=True)
        paused: set[str] = set()
        unauthenticated = False
        for (uuid, (key, _)), outcome in zip(pending.items(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failures[uuid] = self._classify(outcome)
                unauthenticated |= _code(outcome) is StatusCode.UNAUTHENTICATED
                if key:
                    paused.add(key)
        for key in paused:
            _resume(client, self.topic_path, key)
        if unauthenticated:
            self._unauthenticated = True
        elif len(failures) < len(batch):
            self._unauthenticated = False
        if failures:
            raise _combined(self.name, failures, len(batch))

    async def _publish(
        self, client: pubsub_v1.PublisherClient, alert: Alert, key: str
    ) -> Future[str]:
        def publish() -> Future[str]:
            return client.publish(
                self.topic_path,
                alert.to_json(),
                ordering_key=key,
                retry=None,
                timeout=self.config.timeout,
                **self.attributes(alert),
            )

        try:
            return publish()
        except AssertionError:
            # google-cloud-pubsub 2.44: a batch sent because it was full, whose Publish then
            # failed, stays the topic's open batch until the batch timer (max_latency) replaces
            # it; publishing meanwhile trips an assert. Once the timer has run, it works.
            await asyncio.sleep(2 * BATCH_LATENCY_S)
            return publish()

    def _classify(self, exc: BaseException) -> RetryableError | PermanentError:
        code = _code(exc)
        if code is None:
            return RetryableError(f"{self.name}: {_describe(exc)}")
        detail = _CONTROL.sub(" ", str(getattr(exc, "message", "") or "")).strip()[:200]
        message = f"{self.name}: {code.name}" + (f": {detail}" if detail else "")
        if code in RETRYABLE_CODES:
            return RetryableError(message, _retry_after(exc))
        if code is StatusCode.UNAUTHENTICATED and not self._unauthenticated:
            return RetryableError(message)
        return PermanentError(message)


def _event_fields(alert: Alert) -> dict[str, str]:
    values = (alert.priority.label, alert.rule, alert.source, alert.hostname)
    return dict(zip(EVENT_ATTRIBUTES, values, strict=True))


def _code(exc: BaseException) -> StatusCode | None:
    code = getattr(exc, "grpc_status_code", None)
    return code if isinstance(code, StatusCode) else None


def _describe(exc: BaseException) -> str:
    """Failures that are no gRPC status: the client's own, or reaching the token service."""
    if isinstance(exc, publisher_exceptions.PublishToPausedOrderingKeyException):
        return "the ordering key was paused by an earlier failure"
    if isinstance(exc, AssertionError):
        return "the client library is still recovering from a failed batch"
    if isinstance(exc, RuntimeError):
        # The library cancels a key's batches behind a failure, and refuses once stopped.
        return f"the client library gave up ({str(exc)[:100]})"
    if isinstance(exc, auth_exceptions.GoogleAuthError):
        return f"cannot get an access token ({type(exc).__name__})"
    return type(exc).__name__


def _retry_after(exc: BaseException) -> float | None:
    for detail in getattr(exc, "details", None) or ():
        if isinstance(detail, error_details_pb2.RetryInfo):
            return detail.retry_delay.ToTimedelta().total_seconds()
    return None


def _combined(
    output: str, failures: dict[str, RetryableError | PermanentError], total: int
) -> Exception:
    """One error for the whole batch when all of it failed alike, else a PartialFailure."""
    errors = list(failures.values())
    if len(errors) == total:
        if all(isinstance(e, PermanentError) for e in errors):
            return errors[0]
        if all(isinstance(e, RetryableError) for e in errors):
            waits = [e.retry_after for e in errors if isinstance(e, RetryableError)]
            known = [w for w in waits if w is not None]
            return RetryableError(str(errors[0]), max(known) if known else None)
    return PartialFailure(output, failures)


def _resume(client: pubsub_v1.PublisherClient, topic: str, key: str) -> None:
    # RuntimeError: not paused (a concurrent send resumed it), or the client is stopped.
    with contextlib.suppress(RuntimeError):
        client.resume_publish(topic, key)


def _shut(client: pubsub_v1.PublisherClient) -> None:
    client.stop()  # sends what is still batched; the hub drained its sends before this
    client.transport.close()
