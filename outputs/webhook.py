"""Generic webhook: each alert's Falco JSON, as is, to one HTTP endpoint.

Falcosidekick-compatible keys (``webhook.*`` / ``WEBHOOK_*``): ``address`` (setting it enables
the output), ``method`` (``POST`` default or ``PUT``; anything else is a config error, where
Falcosidekick silently falls back to POST), ``customheaders`` (a map, or the env form
``k:v,k2:v2``; only the first ``:`` of each pair separates, so values may contain colons),
``checkcert`` (default true) and the common keys of ``OutputConfig``.

The body is exactly ``alert.to_json()``: one request per alert, as Falcosidekick sends it, with
``Content-Type: application/json; charset=utf-8`` and ``User-Agent: Lanner``. Custom headers are
added after those two and may override them.

Signing (ours): when ``hmacsecret`` is set, every request carries two more headers::

    X-Lanner-Timestamp: <unix seconds, integer, when the request was made>
    X-Lanner-Signature: sha256=<hex HMAC-SHA256(key=hmacsecret, msg=b"<timestamp>." + body)>

``body`` is the exact request body bytes. A receiver verifies by recomputing the HMAC over the
timestamp header, a dot and the raw body it received, comparing in constant time
(``hmac.compare_digest``), and rejecting timestamps too far from its clock (e.g. more than
5 minutes) to stop replays. A retried alert is re-signed with a fresh timestamp; its ``uuid``
is unchanged, so receivers can deduplicate.

Secrets: ``address`` (webhook URLs often embed tokens), ``hmacsecret`` and the values of
``customheaders`` (typically ``Authorization``) are ``pydantic.SecretStr``. They show as
``'**********'`` in ``repr``/``str`` and in ``model_dump(mode="json")``/``model_dump_json()``,
which is the dump to use for logs, the UI or the API; only this module calls
``get_secret_value()``. Validation errors never echo the input (``hide_input_in_errors``) and
delivery errors name the HTTP status or the exception type, never the URL.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import aiohttp
from pydantic import SecretStr, field_validator

from outputs.base import Output, OutputConfig, http_request, http_session
from sidekick.alert import Alert

CONTENT_TYPE = "application/json; charset=utf-8"
SIGNATURE_HEADER = "X-Lanner-Signature"
TIMESTAMP_HEADER = "X-Lanner-Timestamp"

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 header field name
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls other than tab


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Lanner-Signature`` value for ``body`` sent at ``timestamp``."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookConfig(OutputConfig):
    address: SecretStr = SecretStr("")
    method: Literal["POST", "PUT"] = "POST"
    customheaders: dict[str, SecretStr] = {}
    checkcert: bool = True
    hmacsecret: SecretStr = SecretStr("")

    @field_validator("address")
    @classmethod
    def _address(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value().strip()
        if text:
            try:
                parts = urlsplit(text)
            except ValueError:
                raise ValueError("must be an http:// or https:// URL") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http:// or https:// URL")
        return SecretStr(text)

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, value: Any) -> Any:
        if isinstance(value, str):
            upper = value.strip().upper()
            if upper not in ("POST", "PUT"):
                raise ValueError(f"must be POST or PUT, not {value.strip()[:16]!r}")
            return upper
        return value

    @field_validator("customheaders", mode="before")
    @classmethod
    def _headers_from_env(cls, value: Any) -> Any:
        """Falcosidekick's env form ``k:v,k2:v2``; the first colon of a pair separates."""
        if not isinstance(value, str):
            return value
        headers: dict[str, str] = {}
        for pair in value.split(","):
            if not pair.strip():
                continue
            name, sep, item = pair.partition(":")
            if not sep:
                raise ValueError("each header must be written name:value")
            headers[name.strip()] = item.strip()
        return headers

    @field_validator("customheaders")
    @classmethod
    def _headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, item in value.items():
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"{name[:64]!r} is not a valid header name")
            if _BAD_VALUE.search(item.get_secret_value()):
                raise ValueError(f"the value of {name!r} contains control characters")
        return value


class WebhookOutput(Output):
    name: ClassVar[str] = "webhook"
    Config: ClassVar[type[OutputConfig]] = WebhookConfig

    config: WebhookConfig

    def __init__(self, config: WebhookConfig) -> None:
        super().__init__(config)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def enabled(cls, config: OutputConfig) -> bool:
        return isinstance(config, WebhookConfig) and bool(config.address.get_secret_value())

    async def start(self) -> None:
        if self._session is not None:
            return
        headers = {"Content-Type": CONTENT_TYPE}
        for name, value in self.config.customheaders.items():
            headers[name] = value.get_secret_value()
        self._session = http_session(self.config.timeout, self.config.checkcert, headers)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def send(self, batch: list[Alert]) -> None:
        # One request per alert, in order. If one fails, the error is raised and the queue
        # retries the whole batch, so alerts sent before the failure may arrive twice; that is
        # acceptable because every alert keeps its uuid and receivers can be idempotent on it.
        if self._session is None:
            await self.start()
        assert self._session is not None
        address = self.config.address.get_secret_value()
        secret = self.config.hmacsecret.get_secret_value()
        for alert in batch:
            body = alert.to_json()
            headers: dict[str, str] = {}
            if secret:
                timestamp = str(int(time.time()))
                headers[TIMESTAMP_HEADER] = timestamp
                headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
            await http_request(self.name, self._session, self.config.method, address, body, headers)
