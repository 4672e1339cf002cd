"""Where an event stands with each output: queued, delivered, retrying (and when next), dead
letter (and why, with the id to re-drive it) or aggregated, with every step before.

The store records each step as it happens; an output the event was routed to with no step yet
is still queued. Routing is the current configuration's: an output removed since shows only
the steps it recorded.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from sidekick.apiutil import JSONBytes, Reader, error
from sidekick.hub import Hub
from sidekick.routing import route
from sidekick.store.base import DeliveryRecord


def summarize(output: str, steps: list[DeliveryRecord]) -> dict[str, Any]:
    own = [s for s in steps if not s.summary]
    last = own[-1] if own else None
    # Re-driven: back in the queue until its next step.
    state = "queued" if last is None or last.state == "redriven" else last.state
    summaries = [s for s in steps if s.summary]
    return {
        "output": output,
        "state": state,
        "attempts": last.attempts if last else 0,
        "next_attempt_ns": last.next_ns if last and state == "retrying" else None,
        "reason": last.reason if last and state in ("retrying", "dead", "aggregated") else "",
        "dead_id": last.dead_id if last and state == "dead" else "",
        "summary": asdict(summaries[-1]) if summaries else None,
        "history": [asdict(s) for s in steps],
    }


def add_delivery_routes(app: FastAPI, hub: Hub) -> None:
    @app.get("/api/v1/events/{uuid}/deliveries", dependencies=[Reader],
             summary="The event's delivery to each output, and every step of it")
    async def deliveries(uuid: str) -> Response:
        alert = await hub.store.get_event(uuid)
        if alert is None:
            return error(404, "no such event", "uuid")
        log = await hub.store.delivery_log(uuid)
        names = dict.fromkeys([*route(hub.config.outputs, alert), *(s.output for s in log)])
        return JSONBytes({"deliveries": [
            summarize(name, [s for s in log if s.output == name]) for name in names
        ]})
