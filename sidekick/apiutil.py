"""What the API modules share: JSON responses, 400 errors, the event filters, access checks."""

from __future__ import annotations

import re
from typing import Annotated, Any

import orjson
from fastapi import Depends, Query, Request
from fastapi.responses import Response

from sidekick.alert import Priority, now_ns, parse_duration, parse_time_ns
from sidekick.auth import Access, Credential
from sidekick.store.base import TRIAGE_STATES, EventQuery

# Output field names as conditions write them (``proc.aname[2]``, ``k8s.ns.name``): never a
# quote (they go into a JSON path) nor a colon (it separates name and value in ?field=).
FIELD_NAME = re.compile(r"[A-Za-z0-9_.\-\[\]/]{1,128}")


class JSONBytes(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error(status: int, message: str, field: str | None = None) -> JSONBytes:
    body: dict[str, Any] = {"error": message}
    if field:
        body["field"] = field
    return JSONBytes(body, status_code=status)


class BadRequest(Exception):
    """A wrong query parameter: 400 naming it."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.field = message, field


def parse_when(value: str, field: str) -> int:
    """An RFC3339 time, or a duration meaning that long ago (``15m``, ``24h``, ``7d``)."""
    try:
        return parse_time_ns(value)
    except ValueError:
        pass
    try:
        return now_ns() - int(parse_duration(value) * 1e9)
    except ValueError:
        raise BadRequest(
            f"{value[:64]!r} is neither an RFC3339 time nor a duration", field
        ) from None


def split_list(values: list[str] | None) -> list[str]:
    """Repeated parameters and comma lists both work: ?rule=a&rule=b or ?rule=a,b."""
    return [item for value in values or [] for item in value.split(",") if item]


ListParam = Annotated[list[str] | None, Query(description="repeat it, or a comma list")]


def parse_fields(values: list[str] | None) -> dict[str, list[str]]:
    """``?field=proc.name:bash`` (repeat it): values of one name are OR-ed, names AND-ed."""
    fields: dict[str, list[str]] = {}
    for item in values or []:
        name, sep, value = item.partition(":")
        if not sep or not FIELD_NAME.fullmatch(name):
            raise BadRequest(f"{item[:64]!r} is not <output field>:<value>", "field")
        fields.setdefault(name, []).append(value)
    return fields


def parse_triage(values: list[str] | None) -> list[str]:
    states = split_list(values)
    for state in states:
        if state not in TRIAGE_STATES:
            raise BadRequest(f"unknown triage state {state[:32]!r} (one of: "
                             f"{', '.join(TRIAGE_STATES)})", "triage")
    return states


def event_filters(
    priority: Annotated[str | None, Query(description="minimum priority")] = None,
    rule: ListParam = None,
    source: ListParam = None,
    hostname: ListParam = None,
    tag: ListParam = None,
    q: Annotated[str | None, Query(description="text in output, rule or fields")] = None,
    since: Annotated[str | None, Query(description="RFC3339, or a duration ago: 15m")] = None,
    until: Annotated[str | None, Query(description="RFC3339, or a duration ago")] = None,
    field: Annotated[
        list[str] | None, Query(description="output field: name:value, repeat it")
    ] = None,
    triage: Annotated[
        list[str] | None, Query(description=f"triage state: {', '.join(TRIAGE_STATES)}")
    ] = None,
) -> EventQuery:
    """The filters shared by the events and stats endpoints (a FastAPI dependency)."""
    min_priority = None
    if priority:
        try:
            min_priority = Priority.parse(priority)
        except ValueError as exc:
            raise BadRequest(str(exc), "priority") from None
    return EventQuery(
        min_priority=min_priority,
        rules=split_list(rule),
        sources=split_list(source),
        hostnames=split_list(hostname),
        tags=split_list(tag),
        text=(q or "").strip(),
        since_ns=parse_when(since, "since") if since else None,
        until_ns=parse_when(until, "until") if until else None,
        fields=parse_fields(field),
        triage=parse_triage(triage),
    )


Filters = Annotated[EventQuery, Depends(event_filters)]




def _access(request: Request) -> Access:
    access: Access = request.app.state.access
    return access


def reader(request: Request) -> Credential:
    """A FastAPI dependency: the request knows the UI token."""
    return _access(request).require_reader(request)


def writer(request: Request) -> Credential:
    """A FastAPI dependency: the request knows the UI token and is no cross-site forgery."""
    return _access(request).require_writer(request)


Reader = Depends(reader)
Writer = Depends(writer)
