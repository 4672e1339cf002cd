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
import time
from typing import Any, ClassVar, Literal

from pydantic import SecretStr, field_validator

from outputs.base import (
    HttpOutput,
    HttpOutputConfig,
    OutputConfig,
    check_headers,
    check_url,
    http_request,
    pairs_from_text,
)
from sidekick.alert import Alert

CONTENT_TYPE = "application/json; charset=utf-8"
SIGNATURE_HEADER = "X-Lanner-Signature"
TIMESTAMP_HEADER = "X-Lanner-Timestamp"



def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Lanner-Signature`` value for ``body`` sent at ``timestamp``."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookConfig(HttpOutputConfig):
    address: SecretStr = SecretStr("")
    method: Literal["POST", "PUT"] = "POST"
    customheaders: dict[str, SecretStr] = {}
    hmacsecret: SecretStr = SecretStr("")

    @field_validator("address")
    @classmethod
    def _address(cls, value: SecretStr) -> SecretStr:
        return SecretStr(check_url(value.get_secret_value()))

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
    def _headers_from_text(cls, value: Any) -> Any:
        return pairs_from_text(value)

    @field_validator("customheaders")
    @classmethod
    def _headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        return check_headers(value)


class WebhookOutput(HttpOutput):
    name: ClassVar[str] = "webhook"
    path: ClassVar[tuple[str, ...]] = ("webhook",)
    Config: ClassVar[type[OutputConfig]] = WebhookConfig

    config: WebhookConfig

    @classmethod
    def enabled(cls, config: OutputConfig) -> bool:
        return isinstance(config, WebhookConfig) and bool(config.address.get_secret_value())

    def session_headers(self) -> dict[str, str]:
        headers = {"Content-Type": CONTENT_TYPE}
        for name, value in self.config.customheaders.items():
            headers[name] = value.get_secret_value()
        return headers

    async def send(self, batch: list[Alert]) -> None:
        # One request per alert, in order. If one fails, the error is raised and the queue
        # retries the whole batch, so alerts sent before the failure may arrive twice; that is
        # acceptable because every alert keeps its uuid and receivers can be idempotent on it.
        session = self.session()
        address = self.config.address.get_secret_value()
        secret = self.config.hmacsecret.get_secret_value()
        for alert in batch:
            body = alert.to_json()
            headers: dict[str, str] = {}
            if secret:
                timestamp = str(int(time.time()))
                headers[TIMESTAMP_HEADER] = timestamp
                headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
            await http_request(self.name, session, self.config.method, address, body, headers)
