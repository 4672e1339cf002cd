"""``POST /``, where Falco's http_output posts, served as bare ASGI in front of the API.

It is the hot path: a framework's routing, middleware and dependency machinery would cost
more than the validation and the durable write together, so this one endpoint does without.
Every other path goes to the FastAPI app.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from sidekick.alert import Alert, AlertError
from sidekick.hub import Hub

log = logging.getLogger("lanner.ingest")

Scope = dict[str, Any]
ASGIApp = Any  # (scope, receive, send) -> awaitable; typed loosely like the ASGI spec

# Documented in the OpenAPI schema by the API module.
INGEST_RESPONSES: dict[int, str] = {
    200: "accepted (or a duplicate of an accepted uuid): `{uuid, duplicate}`",
    400: "invalid alert: `{error, field}` names the culprit",
    413: "body larger than `bodylimit`",
    415: "Content-Type is not application/json",
}


class IngestError(Exception):
    def __init__(self, status: int, message: str, field: str) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def read_alert(scope: Scope, receive: Any, limit: int) -> Alert:
    """The request's alert, validated; IngestError (4xx) for anything wrong with it."""
    media = (_header(scope, b"content-type") or b"").split(b";", 1)[0].strip().lower()
    if media != b"application/json":
        raise IngestError(415, "Content-Type must be application/json", "content-type")
    declared = _header(scope, b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise IngestError(400, "invalid Content-Length", "content-length")
        if int(declared) > limit:
            raise IngestError(413, f"body larger than {limit} bytes", "body")
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise IngestError(400, "client went away before sending the whole body", "body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:  # chunked bodies have no Content-Length to check up front
            raise IngestError(413, f"body larger than {limit} bytes", "body")
        chunks.append(chunk)
        more = message.get("more_body", False)
    try:
        return Alert.from_json(b"".join(chunks))
    except AlertError as exc:
        raise IngestError(400, exc.message, exc.field) from None
    except RecursionError:
        raise IngestError(400, "JSON nested too deeply", "body") from None


async def _respond(send: Any, status: int, body: dict[str, Any]) -> None:
    payload = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class HubApp:
    """The hub's whole HTTP side: ``POST /`` here, everything else ``api``."""

    def __init__(self, hub: Hub, api: ASGIApp) -> None:
        self.hub = hub
        self.api = api
        self.limit = hub.config.bodylimit

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/" and scope["method"] == "POST":
            await self.ingest(scope, receive, send)
        else:
            await self.api(scope, receive, send)

    async def ingest(self, scope: Scope, receive: Any, send: Any) -> None:
        try:
            alert = await read_alert(scope, receive, self.limit)
        except IngestError as exc:
            self.hub.reject()
            await _respond(send, exc.status, {"error": exc.message, "field": exc.field})
            return
        try:
            (new,) = await self.hub.accept([alert])
        except Exception as exc:
            # Not acknowledged: the sender still has the alert and can send it again.
            log.error("could not store an alert (%s); answered 503", type(exc).__name__)
            await _respond(send, 503, {"error": "the store is unavailable; retry later"})
            return
        await _respond(send, 200, {"uuid": alert.uuid, "duplicate": not new})
