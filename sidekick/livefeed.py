"""``GET /api/v1/stream``: the live feed as server-sent events, for the UI's events table.

Each accepted alert that passes the stream's filters (the events API's) is pushed as it comes,
in batches (``event: alerts``). A client too slow to keep up loses the oldest alerts of its
queue rather than holding up ingest (``sidekick.broadcast``); it is told how many (``event:
gap``) so it can reload instead of showing a table with holes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from sidekick.alert import Alert, Priority
from sidekick.apiutil import Filters, Reader
from sidekick.hub import Hub
from sidekick.store.base import EventQuery, event_matches

KEEPALIVE_S = 15.0  # a comment this often keeps proxies from closing an idle stream
BATCH = 500


def live_filter(query: EventQuery) -> Callable[[Alert], dict[str, Any] | None]:
    """For a just-accepted alert (so triage "new"): its JSON if it passes the filters and time
    range, else None."""
    prios = None
    if query.min_priority is not None:
        prios = {p.label for p in Priority if p >= query.min_priority}
    needle = query.text.lower()
    since, until = query.since_ns, query.until_ns

    def shown(alert: Alert) -> dict[str, Any] | None:
        if (since is not None and alert.time_ns < since) or (
                until is not None and alert.time_ns >= until):
            return None
        d = alert.to_dict()
        return d if event_matches(d, query, prios, needle) else None

    return shown


def _message(event: str, data: object) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def sse(hub: Hub, query: EventQuery) -> AsyncIterator[bytes]:
    shown = live_filter(query)
    async with hub.broadcaster.subscribe(query.min_priority or Priority.DEBUG) as feed:
        yield b"retry: 2000\n\n"  # reconnect after 2 s if the hub goes away
        dropped = 0
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE_S):
                    batch = await feed.next_batch(BATCH)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if not batch:
                return  # the hub is stopping
            if feed.dropped != dropped:
                yield _message("gap", {"dropped": feed.dropped - dropped})
                dropped = feed.dropped
            events = [d for d in map(shown, batch) if d is not None]
            if events:
                yield _message("alerts", {"events": events})


def add_live_routes(app: FastAPI, hub: Hub) -> None:
    # Not in the OpenAPI document: a stream that never ends is no request/response operation
    # (docs/ui.md describes it).
    @app.get("/api/v1/stream", dependencies=[Reader], include_in_schema=False)
    async def stream(query: Filters) -> StreamingResponse:
        return StreamingResponse(sse(hub, query), media_type="text/event-stream",
                                 headers={"cache-control": "no-store",
                                          "x-accel-buffering": "no"})
