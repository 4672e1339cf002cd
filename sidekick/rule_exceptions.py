"""False positive -> Falco exception: the ``exceptions:`` that stop a rule firing on events like
one the operator chose, on the fields they chose; how many stored events it would have
silenced; and saving it to the hub's local rules (``sidekick.local_rules``: kept in the store,
shared by replicas, served to detectors over gRPC and copied to a file).

Falco builds an exception's condition text from its values verbatim, wrapping only a value
with a space in quotes and escaping nothing. So every value is written here as condition text
that reads back exactly: bare when it is a plain word, else a quoted string with escapes (a
value already starting with a quote is left alone by Falco).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from sidekick.alert import Alert
from sidekick.apiutil import FIELD_NAME, BadRequest, JSONBytes, Reader, Writer, error, split_list
from sidekick.hub import Hub
from sidekick.local_rules import FILE_NAME, LocalRulesError, dump
from sidekick.store.base import EventQuery, field_text

_BARE = re.compile(r"[A-Za-z_/][A-Za-z0-9_/@%+.:~-]*")
_FIELD_LIKE = re.compile(r"[a-zA-Z][a-zA-Z0-9_]*(?:\.[a-zA-Z][a-zA-Z0-9_]*)+")
_WORDS = {"and", "or", "not", "in", "intersects", "pmatch", "exists", "contains", "icontains",
          "bcontains", "startswith", "bstartswith", "endswith", "glob", "iglob", "regex",
          "true", "false"}
# Only the total is wanted from stats: one bucket spans anything a store keeps.
_WHOLE_STORE_BUCKET_S = 100 * 365 * 86400
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b",
            "\f": "\\f"}


def condition_value(value: Any, name: str) -> str:
    """A field value as condition text that the rule language reads back exactly."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        kind = "a list" if isinstance(value, list) else "not a string or a whole number"
        raise BadRequest(f"{name} is {kind}: an exception compares single values", "fields")
    if _BARE.fullmatch(value) and not _FIELD_LIKE.fullmatch(value) and value not in _WORDS:
        return value
    out = []
    for char in value:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char < " " or char == "\x7f":
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    if value.endswith("\\"):
        out[-1] = "\\ "  # a backslash before the closing quote would hide it from the lexer
    return '"' + "".join(out) + '"'


def exception_name(fields: list[str]) -> str:
    return "lanner_ui_" + "_".join(re.sub(r"[^A-Za-z0-9]+", "_", f).strip("_") for f in fields)


def exception_for(alert: Alert, fields: list[str]) -> tuple[dict[str, Any], EventQuery]:
    """The rules-file item appending the exception to the alert's rule, and the query for the
    stored events it would silence."""
    names = list(dict.fromkeys(fields))
    if not names:
        raise BadRequest("choose at least one field", "fields")
    row, wanted = [], {}
    for name in names:
        if not FIELD_NAME.fullmatch(name) or name not in alert.output_fields:
            raise BadRequest(f"the event has no output field {name[:128]!r}", "fields")
        value = alert.output_fields[name]
        text = field_text(value)
        if text is None:
            raise BadRequest(f"{name} has no value in this event", "fields")
        row.append(condition_value(value, name))
        wanted[name] = [text]
    item = {
        "rule": alert.rule,
        "exceptions": [{"name": exception_name(names), "fields": names,
                        "comps": ["="] * len(names), "values": [row]}],
        "override": {"exceptions": "append"},
    }
    return item, EventQuery(rules=[alert.rule], fields=wanted)


class ExceptionRequest(BaseModel):
    uuid: str = Field(max_length=128, description="the false positive event")
    fields: list[str] = Field(min_length=1, max_length=16,
                              description="the output fields whose values make it benign")


def add_exception_routes(app: FastAPI, hub: Hub) -> None:
    config = hub.config
    local = hub.local_rules

    async def build(uuid: str, fields: list[str]) -> tuple[dict[str, Any], int]:
        alert = await hub.store.get_event(uuid)
        if alert is None:
            raise BadRequest("no such event", "uuid")
        added = [name for name in fields if name in config.customfields]
        if added:
            raise BadRequest(f"{added[0]} is added by the hub (customfields), not a field the "
                             "rule sees", "fields")
        item, query = exception_for(alert, fields)
        silenced = await hub.store.stats(query, _WHOLE_STORE_BUCKET_S)
        return item, silenced.total

    @app.get("/api/v1/exceptions/preview", dependencies=[Reader],
             summary="The exception that would silence events like this one")
    async def preview(
        uuid: str,
        fields: Annotated[str | None, Query(description="comma list of output field names")] = None,
        download: bool = False,
    ) -> Response:
        item, silenced = await build(uuid, split_list([fields] if fields else []))
        text = dump([item])
        if download:
            return Response(text, media_type="application/yaml", headers={
                "content-disposition": 'attachment; filename="lanner_exception.yaml"'})
        return JSONBytes({"rule": item["rule"], "yaml": text, "silenced": silenced,
                          "file": str(local.path)})

    @app.post("/api/v1/exceptions", dependencies=[Writer],
              summary="Save the exception to the hub's local rules (shared by replicas)")
    async def save(request: ExceptionRequest) -> Response:
        item, silenced = await build(request.uuid, request.fields)
        try:
            added = await local.add(item)
        except LocalRulesError as exc:
            return error(409, str(exc), "file")
        doc = await local.current()
        body: dict[str, Any] = {"file": str(local.path), "added": added, "silenced": silenced,
                                "yaml": doc.text, "version": doc.version}
        if local.file_error is not None:  # saved all the same: the copy in the file lags
            body["file_error"] = local.file_error
        return JSONBytes(body)

    @app.get("/api/v1/exceptions/file", dependencies=[Reader],
             summary="The hub's local rules file")
    async def local_file() -> Response:
        doc = await local.current()
        if not doc.version:
            return error(404, "no exception saved yet", "file")
        return Response(doc.text, media_type="application/yaml", headers={
            "content-disposition": f'attachment; filename="{FILE_NAME}"'})

