"""Triage: an operator marks events new, acknowledged, false positive or resolved, with a note
and their name; one event, or every stored event of a rule whose chosen fields have the same
values as an example event's. Stored in the hub (``Store.set_triage``), filterable
(``?triage=``) and kept with the event until retention removes it.

The token is shared, so "who" is the name the operator gives, not a verified identity.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel, Field, field_validator

from sidekick.alert import now_ns
from sidekick.apiutil import FIELD_NAME, BadRequest, JSONBytes, Reader, Writer, error
from sidekick.hub import Hub
from sidekick.store.base import EventQuery, Triage, field_text

Status = Literal["new", "acknowledged", "false_positive", "resolved"]
MAX_UUIDS = 1000


class TriageRequest(BaseModel):
    status: Status
    note: str = Field("", max_length=2000)
    actor: str = Field(min_length=1, max_length=64, description="who: the operator's name")

    @field_validator("actor")
    @classmethod
    def _actor(cls, value: str) -> str:
        value = value.strip()
        if not value or not value.isprintable():
            raise ValueError("must be a name: printable characters, not only blanks")
        return value

    def triage(self) -> Triage:
        return Triage(self.status, self.note, self.actor, now_ns())


class BulkTriageRequest(TriageRequest):
    """Either ``uuids``, or ``like`` (an event) with the ``fields`` whose values the others
    must share: every stored event of its rule with those values is marked."""

    uuids: list[str] | None = Field(None, max_length=MAX_UUIDS)
    like: str | None = Field(None, max_length=128)
    fields: list[str] = Field(default_factory=list, max_length=32)


async def same_as(hub: Hub, uuid: str, fields: list[str]) -> EventQuery:
    """The query for the stored events of ``uuid``'s rule whose ``fields`` hold its values."""
    alert = await hub.store.get_event(uuid)
    if alert is None:
        raise BadRequest("no such event", "like")
    wanted: dict[str, list[str]] = {}
    for name in dict.fromkeys(fields):
        if not FIELD_NAME.fullmatch(name) or name not in alert.output_fields:
            raise BadRequest(f"the event has no output field {name[:128]!r}", "fields")
        text = field_text(alert.output_fields[name])
        if text is None:
            raise BadRequest(f"{name} has no value in this event", "fields")
        wanted[name] = [text]
    return EventQuery(rules=[alert.rule], fields=wanted)


def _shown(triage: Triage | None) -> dict[str, Any] | None:
    return asdict(triage) if triage is not None else None


def add_triage_routes(app: FastAPI, hub: Hub) -> None:
    @app.get("/api/v1/events/{uuid}/triage", dependencies=[Reader],
             summary="The event's triage and its history")
    async def get_triage(uuid: str) -> Response:
        history = await hub.store.triage_history(uuid)
        if not history and await hub.store.get_event(uuid) is None:
            return error(404, "no such event", "uuid")
        return JSONBytes({"current": _shown(history[-1] if history else None),
                          "history": [asdict(t) for t in history]})

    @app.post("/api/v1/events/{uuid}/triage", dependencies=[Writer],
              summary="Triage one event")
    async def set_triage(uuid: str, request: TriageRequest) -> Response:
        triage = request.triage()
        if not await hub.store.set_triage([uuid], triage):
            return error(404, "no such event", "uuid")
        return JSONBytes({"triaged": 1, "current": asdict(triage)})

    @app.post("/api/v1/triage", dependencies=[Writer],
              summary="Triage many events: by uuid, or those like an event")
    async def bulk_triage(request: BulkTriageRequest) -> Response:
        if (request.uuids is None) == (request.like is None):
            raise BadRequest("give either uuids or like (an event's uuid)", "uuids")
        if request.uuids is not None:
            uuids = request.uuids
        else:
            assert request.like is not None
            query = await same_as(hub, request.like, request.fields)
            uuids = await hub.store.matching_uuids(query, hub.config.retention.maxcount)
        count = await hub.store.set_triage(uuids, request.triage())
        return JSONBytes({"triaged": count})
