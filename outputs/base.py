"""What every output is: a config model and an async ``send(batch)``.

``send`` either returns (the whole batch is delivered), raises ``RetryableError`` (nothing
or not everything went through; try again later, at ``retry_after`` if the service said) or
raises ``PermanentError`` (this batch will never be accepted). The hub's queue does the
retrying, backoff and dead-lettering; outputs stay small.
"""

from __future__ import annotations

import abc
import email.utils
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_serializer, field_validator

from sidekick.alert import Alert, Priority, parse_duration


class OutputError(Exception):
    """Base of delivery errors. Messages must never contain secrets (URLs, tokens)."""


class RetryableError(OutputError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(OutputError):
    pass


class PartialFailure(OutputError):
    """Some alerts of a batch went through and some did not (SQS ``SendMessageBatch``...).

    ``failures`` maps the uuid of each alert that failed to its error; every other alert of
    the batch counts as delivered, so only the failed ones are retried or dead-lettered.
    """

    def __init__(self, output: str, failures: dict[str, RetryableError | PermanentError]) -> None:
        super().__init__(f"{output}: {len(failures)} alert(s) of the batch failed")
        self.failures = failures


def parse_priority(value: Any) -> Priority | None:
    """``minimumpriority``: empty means everything; an unknown name is an error."""
    if value is None or value == "":
        return None
    if isinstance(value, Priority):
        return value
    return Priority.parse(str(value))


_NOT_IN_FIELD_NAME = re.compile(r"[\s,\x00-\x1f\x7f]")


class OutputConfig(BaseModel):
    """Keys common to every output, named as in Falcosidekick."""

    # Secret keys are SecretStr (masked in repr and model_dump); errors must not echo input.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)

    # Keys read from the parent section, shared by sibling outputs: `aws.region` (env
    # AWS_REGION) serves both aws.sqs and aws.s3. A value in the output's own section wins.
    shared: ClassVar[frozenset[str]] = frozenset()

    minimumpriority: Priority | None = None
    rules: list[str] = []  # glob patterns on the rule name; empty means every rule
    sources: list[str] = []  # empty means every source
    tags: list[str] = []  # the alert must carry at least one of them; empty means any
    timeout: float = 10.0
    batchsize: int = 1  # alerts per send() call
    batchwindow: float = 0.0  # seconds to wait for a batch to fill once its first alert is due
    maxconcurrentrequests: int = 1
    maxattempts: int = 10  # then dead letter
    maxage: float = 86400.0  # seconds since acceptance; then dead letter
    # Alert fatigue control (the hub's sidekick.aggregation): 0 is off.
    aggregatewindow: float = Field(0.0, ge=0)
    aggregatefields: list[str] = []  # output_fields names that split a rule's repeats

    @field_validator("minimumpriority", mode="before")
    @classmethod
    def _priority(cls, value: Any) -> Priority | None:
        return parse_priority(value)

    @field_validator("timeout", "batchwindow", "maxage", "aggregatewindow", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("aggregatefields", mode="before")
    @classmethod
    def _field_names(cls, value: Any) -> Any:
        # A comma-separated string too, in YAML as in env.
        if isinstance(value, str):
            return value.split(",") if value.strip() else []
        return value

    @field_validator("aggregatefields")
    @classmethod
    def _check_field_names(cls, value: list[str]) -> list[str]:
        names = [name.strip() for name in value]
        for name in names:
            if not name or _NOT_IN_FIELD_NAME.search(name):
                raise ValueError(f"{name[:64]!r} is not an output field name")
        return list(dict.fromkeys(names))

    @field_serializer("minimumpriority")
    def _priority_name(self, value: Priority | None) -> str:
        return value.name.lower() if value is not None else ""


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_HEADER_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls other than tab


def pairs_from_text(value: Any) -> Any:
    """Falcosidekick's ``k:v,k2:v2`` form of a map, as YAML text; the first colon of a pair
    separates, so values may contain colons. Anything but a string is returned as is."""
    if not isinstance(value, str):
        return value
    pairs: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in value.split(","))):
        key, sep, item = pair.partition(":")
        if not sep:
            raise ValueError(f"{pair[:64]!r} is not key:value")
        pairs[key.strip()] = item.strip()
    return pairs


def check_headers(headers: dict[str, SecretStr]) -> dict[str, SecretStr]:
    """Custom HTTP headers: valid names, no control characters in values (header injection)."""
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"{name[:64]!r} is not a valid header name")
        if _HEADER_BAD.search(value.get_secret_value()):
            raise ValueError(f"the value of {name!r} contains control characters")
    return headers


class HttpOutputConfig(OutputConfig):
    """Keys of the outputs that speak HTTP, as Falcosidekick names them."""

    checkcert: bool = True  # verify the server's certificate
    mutualtls: bool = False

    @field_validator("mutualtls")
    @classmethod
    def _mutual_tls(cls, value: bool) -> bool:
        # Accepted so Falcosidekick configs carrying `mutualtls: false` load unchanged.
        if value:
            raise ValueError("client certificates to outputs are not supported yet; set false")
        return value


def retry_after_seconds(value: str | None) -> float | None:
    """An HTTP Retry-After header (seconds or HTTP date) in seconds, or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


RETRYABLE_STATUS = frozenset({408, 425, 429})
USER_AGENT = "Lanner"


def raise_for_http_status(output: str, status: int, retry_after: str | None) -> None:
    """Classify an HTTP answer: 2xx returns; 408/425/429/5xx retryable; other codes permanent."""
    if 200 <= status < 300:
        return
    message = f"{output}: HTTP {status}"
    if status in RETRYABLE_STATUS or status >= 500:
        raise RetryableError(message, retry_after_seconds(retry_after))
    raise PermanentError(message)


def http_session(
    timeout: float, verify: bool = True, headers: dict[str, str] | None = None
) -> aiohttp.ClientSession:
    """The HTTP client of an output; aiohttp costs several times less CPU per request than
    the alternatives measured here, and deliveries are the hub's main CPU cost."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout),
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        connector=aiohttp.TCPConnector(ssl=None if verify else False),
    )


def check_url(text: str) -> str:
    """``text`` stripped; "" or an http(s) URL with a host. The error never echoes the URL
    (webhook URLs carry their token)."""
    text = text.strip()
    if not text:
        return text
    try:
        parts = urlsplit(text)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    return text



@contextmanager
def transport_errors(output: str) -> Iterator[None]:
    """Client-side failures as delivery errors: connection failures and timeouts retryable, a
    malformed address permanent. The messages name the kind of failure, never the URL."""
    try:
        yield
    except aiohttp.InvalidURL:
        raise PermanentError(f"{output}: invalid address") from None
    except TimeoutError:
        raise RetryableError(f"{output}: timeout") from None
    except aiohttp.ClientConnectionError:
        raise RetryableError(f"{output}: connection failed") from None
    except aiohttp.ClientError as exc:
        raise RetryableError(f"{output}: {type(exc).__name__}") from None


async def http_request(
    output: str,
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> bytes:
    """Send one request and classify the outcome; returns the body of a 2xx answer.

    Connection failures and timeouts are retryable. Redirects are not followed (a 3xx is an
    error, as in Falcosidekick). Messages name the kind of failure, never the URL.
    """
    with transport_errors(output):
        async with session.request(
            method, url, data=body, headers=headers, allow_redirects=False
        ) as response:
            content = await response.read()
            raise_for_http_status(output, response.status, response.headers.get("Retry-After"))
            return content


class Output(abc.ABC):
    """One configured destination. Subclasses set ``name`` and ``Config``."""

    name: ClassVar[str]  # the metrics `destination` label and the name in the API, e.g. "awssqs"
    path: ClassVar[tuple[str, ...]]  # the config key path: ("aws", "sqs") is aws.sqs / AWS_SQS_*
    Config: ClassVar[type[OutputConfig]]

    def __init__(self, config: OutputConfig, public_url: str = "") -> None:
        self.config = config
        self.public_url = public_url  # the hub as users reach it, without a trailing slash

    def event_url(self, alert: Alert) -> str:
        """The event's page in the hub's UI."""
        return f"{self.public_url}/ui/?event={alert.uuid}"

    @classmethod
    @abc.abstractmethod
    def enabled(cls, config: OutputConfig) -> bool:
        """Falcosidekick's rule: an output is on when its address key is set."""

    async def start(self) -> None:
        """Open clients. Called once before the first send."""

    async def close(self) -> None:
        """Release clients."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def send(self, batch: list[Alert]) -> None: ...


class HttpOutput(Output):
    """An output over HTTP: one aiohttp session, opened at start and reused by every send."""

    config: HttpOutputConfig

    def __init__(self, config: HttpOutputConfig, public_url: str = "") -> None:
        super().__init__(config, public_url)
        self._session: aiohttp.ClientSession | None = None

    def session_headers(self) -> dict[str, str]:
        """Headers sent with every request (after User-Agent, which they may override)."""
        return {}

    async def start(self) -> None:
        self.session()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def session(self) -> aiohttp.ClientSession:
        """The output's session, opened on first use (sends may come before start())."""
        if self._session is None:
            self._session = http_session(
                self.config.timeout, self.config.checkcert, self.session_headers()
            )
        return self._session
