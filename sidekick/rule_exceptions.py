"""False positive -> Falco exception: the ``exceptions:`` that stop a rule firing on events like
one the operator chose, on the fields they chose; how many stored events it would have
silenced; and the hub's local rules file that collects them for the detector to load after the
rules they extend::

    lanner detect --rules rules/lanner_rules.yaml <datadir>/lanner_local_rules.yaml

Falco builds an exception's condition text from its values verbatim, wrapping only a value
with a space in quotes and escaping nothing. So every value is written here as condition text
that reads back exactly: bare when it is a plain word, else a quoted string with escapes (a
value already starting with a quote is left alone by Falco).
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from fastapi import FastAPI, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from sidekick.alert import Alert
from sidekick.apiutil import FIELD_NAME, BadRequest, JSONBytes, Reader, Writer, error, split_list
from sidekick.config import HubConfig
from sidekick.hub import Hub
from sidekick.store.base import EventQuery, field_text

FILE_NAME = "lanner_local_rules.yaml"
HEADER = """\
# Exceptions made in the Lanner UI (false positives). Load this file after the rules it
# extends, e.g.: lanner detect --rules rules/lanner_rules.yaml {path}
# Check it with: lanner rules validate rules/lanner_rules.yaml {path}
"""
_BARE = re.compile(r"[A-Za-z_/][A-Za-z0-9_/@%+.:~-]*")
_FIELD_LIKE = re.compile(r"[a-zA-Z][a-zA-Z0-9_]*(?:\.[a-zA-Z][a-zA-Z0-9_]*)+")
_WORDS = {"and", "or", "not", "in", "intersects", "pmatch", "exists", "contains", "icontains",
          "bcontains", "startswith", "bstartswith", "endswith", "glob", "iglob", "regex",
          "true", "false"}
# Only the total is wanted from stats: one bucket spans anything a store keeps.
_WHOLE_STORE_BUCKET_S = 100 * 365 * 86400
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b",
            "\f": "\\f"}


class LocalRulesError(Exception):
    """The local rules file cannot be read or written; the message names it."""


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


def dump(items: list[dict[str, Any]]) -> str:
    return yaml.safe_dump(items, sort_keys=False, default_flow_style=None, width=4096,
                          allow_unicode=True)


def merge(items: list[Any], new: dict[str, Any]) -> bool:
    """Add ``new``'s exception to ``items``: its values to the same rule's exception of the same
    name, else as an item of its own. False if that row was there already."""
    [exception] = new["exceptions"]
    for item in items:
        if not isinstance(item, dict) or item.get("rule") != new["rule"]:
            continue
        for existing in item.get("exceptions") or []:
            if isinstance(existing, dict) and existing.get("name") == exception["name"]:
                values = existing.setdefault("values", [])
                if exception["values"][0] in values:
                    return False
                values.append(exception["values"][0])
                return True
    items.append(new)
    return True


class LocalRules:
    """The hub's local rules file; one writer at a time, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    def read(self) -> list[Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise LocalRulesError(f"{self.path}: cannot read: {exc}") from None
        try:
            items = yaml.safe_load(text)
        except yaml.YAMLError:
            raise LocalRulesError(f"{self.path}: not valid YAML; fix or remove it") from None
        if items is None:
            return []
        if not isinstance(items, list):
            raise LocalRulesError(f"{self.path}: not a list of rules items; fix or remove it")
        return items

    async def add(self, item: dict[str, Any]) -> bool:
        async with self._lock:
            items = self.read()
            added = merge(items, item)
            if added:
                self._write(items)
            return added

    def _write(self, items: list[Any]) -> None:
        text = HEADER.format(path=self.path) + dump(items)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            raise LocalRulesError(f"{self.path}: cannot write: {exc.strerror}") from None


class ExceptionRequest(BaseModel):
    uuid: str = Field(max_length=128, description="the false positive event")
    fields: list[str] = Field(min_length=1, max_length=16,
                              description="the output fields whose values make it benign")


def local_rules_path(config: HubConfig) -> Path:
    return Path(config.ui.rulesfile or Path(config.datadir) / FILE_NAME)


def add_exception_routes(app: FastAPI, hub: Hub) -> None:
    config = hub.config
    local = LocalRules(local_rules_path(config))

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
              summary="Save the exception to the hub's local rules file")
    async def save(request: ExceptionRequest) -> Response:
        item, silenced = await build(request.uuid, request.fields)
        try:
            added = await local.add(item)
            text = local.path.read_text(encoding="utf-8")
        except (LocalRulesError, OSError) as exc:
            return error(409, str(exc), "file")
        return JSONBytes({"file": str(local.path), "added": added, "silenced": silenced,
                          "yaml": text})

    @app.get("/api/v1/exceptions/file", dependencies=[Reader],
             summary="The hub's local rules file")
    async def local_file() -> Response:
        try:
            text = local.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return error(404, "no exception saved yet", "file")
        except (OSError, UnicodeDecodeError) as exc:
            return error(409, f"{local.path}: cannot read: {exc}", "file")
        return Response(text, media_type="application/yaml", headers={
            "content-disposition": f'attachment; filename="{FILE_NAME}"'})

