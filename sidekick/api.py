"""HTTP side of the hub: Falcosidekick-compatible ingest, health, metrics and the JSON API."""

from __future__ import annotations

import asyncio
import math
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel

from sidekick.alert import TEST_RULE, Alert, Priority, now_ns, parse_duration
from sidekick.apiutil import BadRequest, Filters, JSONBytes, Reader, Writer, error
from sidekick.auth import Access, AccessDenied
from sidekick.config import redacted
from sidekick.delivery_status import add_delivery_routes
from sidekick.http_ingest import INGEST_RESPONSES, HubApp
from sidekick.hub import Hub
from sidekick.livefeed import add_live_routes
from sidekick.rule_exceptions import add_exception_routes
from sidekick.triage import add_triage_routes
from sidekick.ui import SecurityHeaders, add_ui_routes

ALERT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["rule", "priority", "time", "output_fields"],
    "properties": {
        "uuid": {"type": "string", "maxLength": 128},
        "output": {"type": "string"},
        "priority": {
            "type": "string",
            "example": "Warning",
            "enum": sorted(
                {*(p.label for p in Priority), *(p.name.lower() for p in Priority), "info"}
            ),
            "description": "case-insensitive; info = Informational",
        },
        "rule": {"type": "string", "minLength": 1, "pattern": r"\S"},
        "time": {
            "type": "string",
            "example": "2026-11-29T10:00:00.123456789Z",
            "pattern": r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
            r"T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$",
        },
        "output_fields": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {
                "anyOf": [
                    {"type": "string"},
                    {"type": "number"},
                    {"type": "boolean"},
                    {"type": "null"},
                    {"type": "array", "items": {"type": ["string", "number", "boolean", "null"]}},
                ],
            },
        },
        "source": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "hostname": {"type": "string"},
    },
}

_NICE_BUCKETS = (1, 5, 10, 30, 60, 300, 900, 1800, 3600, 10800, 21600, 43200, 86400)
_MAX_BUCKETS = 200
_HEALTH_TIMEOUT_S = 2.0


def choose_bucket(since_ns: int, until_ns: int) -> int:
    span_s = max(1.0, (until_ns - since_ns) / 1e9)
    for size in _NICE_BUCKETS:
        if span_s / size <= _MAX_BUCKETS:
            return size
    return math.ceil(span_s / _MAX_BUCKETS)


class RedriveRequest(BaseModel):
    output: str | None = None
    ids: list[str] | None = None


def create_app(hub: Hub, access: Access) -> HubApp:
    """The HTTP app over a hub; whoever serves it starts and stops the hub. ``access`` guards
    the UI and the JSON API; ingest, health and metrics are open, as Falcosidekick's."""

    app = FastAPI(
        title="Lanner hub",
        version="0.1.0",
        description="Falcosidekick-compatible ingest with durable per-output delivery.",
    )

    app.state.access = access

    @app.exception_handler(AccessDenied)
    async def _denied(_: Request, exc: AccessDenied) -> Response:
        response = error(exc.status, exc.message)
        if exc.status == 401:
            response.headers["www-authenticate"] = 'Bearer realm="lanner"'
        return response

    @app.exception_handler(BadRequest)
    async def _bad_request(_: Request, exc: BadRequest) -> Response:
        return error(400, exc.message, exc.field)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"] if p not in ("query", "body", "path"))
        return error(400, first["msg"], field or None)

    @app.post("/test", summary="Send a test alert through every output")
    async def post_test() -> Response:
        alert = Alert(
            rule=TEST_RULE,
            priority=Priority.DEBUG,
            time_ns=now_ns(),
            output="This is a test from Lanner",
            output_fields={"proc.name": "lanner", "user.name": "lanner"},
            tags=["example", "test"],
        )
        (new,) = await hub.accept([alert])
        return JSONBytes({"uuid": alert.uuid, "duplicate": not new})

    @app.get("/ping", response_class=PlainTextResponse)
    async def ping() -> str:
        return "pong\n"

    @app.get("/healthz")
    async def healthz() -> Response:
        try:
            async with asyncio.timeout(_HEALTH_TIMEOUT_S):
                await hub.store.ping()
        except Exception as exc:  # a store that hangs is as unready as one that fails
            return JSONBytes(
                {"status": "unavailable", "store": type(exc).__name__}, status_code=503
            )
        return JSONBytes({"status": "ok"})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        await hub.refresh_gauges()
        return Response(hub.metrics.exposition(), media_type="text/plain; version=0.0.4")

    @app.get("/api/v1/session", summary="Who the UI talks to", dependencies=[Reader])
    async def session() -> Response:
        """The CSRF token a page sends with its writes (header X-CSRF-Token), and what the UI
        shows about the hub."""
        return JSONBytes({"csrf": access.csrf, "outputs": sorted(hub.outputs),
                          "customfields": sorted(hub.config.customfields),
                          "retention": {"maxage_s": hub.config.retention.maxage,
                                        "maxcount": hub.config.retention.maxcount}})

    @app.get("/api/v1/events", summary="Recent events, newest first", dependencies=[Reader])
    async def events(
        query: Filters,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: str | None = None,
    ) -> Response:
        query.limit, query.cursor = limit, cursor
        try:
            page = await hub.store.events(query)
        except ValueError as exc:
            raise BadRequest(str(exc), "cursor") from None
        triage = await hub.store.triage_of([a.uuid for a in page.events])
        return JSONBytes({
            "events": [a.to_dict() for a in page.events],
            "next_cursor": page.next_cursor,
            "triage": {uuid: asdict(t) for uuid, t in triage.items()},
        })

    @app.get("/api/v1/events/{uuid}", summary="One event", dependencies=[Reader])
    async def event(uuid: str) -> Response:
        alert = await hub.store.get_event(uuid)
        if alert is None:
            return error(404, "no such event", "uuid")
        return JSONBytes(alert.to_dict())

    @app.get("/api/v1/stats", summary="Counts by priority, rule, source, hostname, tag, time",
             dependencies=[Reader])
    async def stats(
        query: Filters,
        bucket: Annotated[str | None, Query(description="bucket size: 1m, 1h...")] = None,
    ) -> Response:
        """Without ``since``, the last 24 hours."""
        query.until_ns = query.until_ns or now_ns()
        query.since_ns = query.since_ns or query.until_ns - 86400 * 10**9
        if query.since_ns >= query.until_ns:
            raise BadRequest("since must be before until", "since")
        if bucket:
            try:
                bucket_s = math.ceil(parse_duration(bucket))
            except ValueError as exc:
                raise BadRequest(str(exc), "bucket") from None
            if bucket_s < 1:
                raise BadRequest("bucket must be at least 1s", "bucket")
        else:
            bucket_s = choose_bucket(query.since_ns, query.until_ns)
        try:
            result = await hub.store.stats(query, bucket_s)
        except ValueError as exc:
            raise BadRequest(str(exc), "bucket") from None
        return JSONBytes(
            {
                "total": result.total,
                "bucket_seconds": bucket_s,
                "by_priority": result.by_priority,
                "by_rule": result.by_rule,
                "by_source": result.by_source,
                "by_hostname": result.by_hostname,
                "by_tag": result.by_tag,
                "buckets": [{"start": s, "count": c} for s, c in result.buckets],
            }
        )

    @app.get("/api/v1/outputs", summary="Enabled outputs, their settings and queues",
             dependencies=[Reader])
    async def outputs() -> Response:
        stats = await hub.store.queue_stats(list(hub.outputs))
        return JSONBytes(
            {
                name: {
                    "config": redacted(output.config),
                    "pending": stats[name].pending,
                    "oldest_pending_ns": stats[name].oldest_pending_ns,
                    "dead": stats[name].dead,
                }
                for name, output in hub.outputs.items()
            }
        )

    @app.get("/api/v1/deadletters", summary="Deliveries given up, newest first",
             dependencies=[Reader])
    async def dead_letters(
        output: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> Response:
        letters = await hub.store.dead_letters(output, limit)
        return JSONBytes(
            {
                "deadletters": [
                    {
                        "id": d.id,
                        "output": d.output,
                        "attempts": d.attempts,
                        "reason": d.reason,
                        "accepted_ns": d.accepted_ns,
                        "dead_ns": d.dead_ns,
                        "alert": d.alert.to_dict(),
                    }
                    for d in letters
                ]
            }
        )

    @app.post("/api/v1/deadletters/redrive", summary="Queue dead letters again",
              dependencies=[Writer])
    async def redrive(request: RedriveRequest) -> Response:
        if request.output is not None and request.output not in hub.outputs:
            raise BadRequest(f"unknown output {request.output!r}", "output")
        count = await hub.store.redrive(request.output, request.ids)
        return JSONBytes({"redriven": count})

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schema["paths"].setdefault("/", {})["post"] = {
                "summary": "Ingest one alert (Falco http_output format)",
                "operationId": "post_alert",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ALERT_SCHEMA}},
                },
                "responses": {
                    str(code): {"description": text} for code, text in INGEST_RESPONSES.items()
                },
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    add_delivery_routes(app, hub)
    add_triage_routes(app, hub)
    add_live_routes(app, hub)
    add_exception_routes(app, hub)
    add_ui_routes(app, access)
    return HubApp(hub, SecurityHeaders(app))
