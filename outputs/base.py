"""What every output is: a config model and an async ``send(batch)``.

``send`` either returns (the whole batch is delivered), raises ``RetryableError`` (nothing
or not everything went through; try again later, at ``retry_after`` if the service said) or
raises ``PermanentError`` (this batch will never be accepted). The hub's queue does the
retrying, backoff and dead-lettering; outputs stay small.
"""

from __future__ import annotations

import abc
import email.utils
import time
from typing import Any, ClassVar

import aiohttp
from pydantic import BaseModel, ConfigDict, field_serializer, field_validator

from sidekick.alert import Alert, Priority


class OutputError(Exception):
    """Base of delivery errors. Messages must never contain secrets (URLs, tokens)."""


class RetryableError(OutputError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(OutputError):
    pass


def parse_priority(value: Any) -> Priority | None:
    """``minimumpriority``: empty means everything; an unknown name is an error."""
    if value is None or value == "":
        return None
    if isinstance(value, Priority):
        return value
    return Priority.parse(str(value))


class OutputConfig(BaseModel):
    """Keys common to every output, named as in Falcosidekick."""

    # Secret keys are SecretStr (masked in repr and model_dump); errors must not echo input.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)

    minimumpriority: Priority | None = None
    rules: list[str] = []  # glob patterns on the rule name; empty means every rule
    sources: list[str] = []  # empty means every source
    tags: list[str] = []  # the alert must carry at least one of them; empty means any
    timeout: float = 10.0
    batchsize: int = 1  # alerts per send() call
    maxconcurrentrequests: int = 1
    maxattempts: int = 10  # then dead letter
    maxage: float = 86400.0  # seconds since acceptance; then dead letter

    @field_validator("minimumpriority", mode="before")
    @classmethod
    def _priority(cls, value: Any) -> Priority | None:
        return parse_priority(value)

    @field_serializer("minimumpriority")
    def _priority_name(self, value: Priority | None) -> str:
        return value.name.lower() if value is not None else ""


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
    try:
        async with session.request(
            method, url, data=body, headers=headers, allow_redirects=False
        ) as response:
            content = await response.read()
            raise_for_http_status(output, response.status, response.headers.get("Retry-After"))
            return content
    except aiohttp.InvalidURL:
        raise PermanentError(f"{output}: invalid address") from None
    except TimeoutError:
        raise RetryableError(f"{output}: timeout") from None
    except aiohttp.ClientConnectionError:
        raise RetryableError(f"{output}: connection failed") from None
    except aiohttp.ClientError as exc:
        raise RetryableError(f"{output}: {type(exc).__name__}") from None


class Output(abc.ABC):
    """One configured destination. Subclasses set ``name`` and ``Config``."""

    name: ClassVar[str]  # the config key and the metrics `destination` label, e.g. "webhook"
    Config: ClassVar[type[OutputConfig]]

    def __init__(self, config: OutputConfig) -> None:
        self.config = config

    @classmethod
    @abc.abstractmethod
    def enabled(cls, config: OutputConfig) -> bool:
        """Falcosidekick's rule: an output is on when its address key is set."""

    async def start(self) -> None:
        """Open clients. Called once before the first send."""

    async def close(self) -> None:
        """Release clients."""

    @abc.abstractmethod
    async def send(self, batch: list[Alert]) -> None: ...
