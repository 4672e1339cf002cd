"""json.* and jevt.* (the older names): any part of an audit event's JSON, as Falco's json
plugin reads it, next to the k8saudit plugin's ka.* fields (``fielddefs_k8saudit``).

- ``jevt.value[/json/pointer]`` walks objects by key and arrays by index (RFC 6901: ``~1`` is
  ``/``, ``~0`` is ``~``; the plugin also takes a pointer without its leading ``/``); a string
  reads as is, anything else as its compact JSON text;
- ``jevt.obj`` is the whole event as JSON indented by two spaces;
- ``jevt.rawtime`` is the event time in ns, as text (so ``jevt.rawtime=0``, Falco's
  ``k8s_audit_never_true``, compares text and is false for every real event).
"""

from __future__ import annotations

from typing import Any

import orjson

from detector.engine.auditjson import ABSENT, TOO_DEEP, at, pointer_keys, rfc3339_ns, text
from detector.engine.fielddefs_common import Event
from detector.engine.fielddefs_k8saudit import EVENT_KEY, SOURCE
from detector.engine.fields import Extractor, FieldArgError, FieldClass, FieldSpec, FieldType

S = FieldType.STRING


def _pointer(arg: str | None) -> Extractor:
    if not arg:
        raise FieldArgError("json.value needs a JSON pointer, e.g. jevt.value[/user/username]")
    keys = pointer_keys(arg)

    def extract(event: Event) -> Any:
        obj = event.get(EVENT_KEY)
        if obj is None:
            return None
        value = at(obj, keys)
        return None if value is ABSENT else text(value)

    return extract


def _whole(event: Event) -> Any:
    obj = event.get(EVENT_KEY)
    if obj is None:
        return None
    try:
        return orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONEncodeError:
        return TOO_DEEP


def _rawtime(event: Event) -> Any:
    ns = event.get("evt.time")
    if ns is None:
        obj = event.get(EVENT_KEY)
        stamp = obj.get("stageTimestamp") if obj.__class__ is dict else None
        ns = rfc3339_ns(stamp) if isinstance(stamp, str) else None
    return None if ns is None else str(ns)


def _json_fields(prefix: str, alias: bool) -> tuple[FieldSpec, ...]:
    note = " (older name of json.{})" if alias else ""
    return (
        FieldSpec(f"{prefix}.value", S,
                  "A value of the event by JSON pointer (RFC 6901): "
                  f"{prefix}.value[/objectRef/name]; text, or JSON text if not a string"
                  + note.format("value"), arg="required", source=SOURCE, factory=_pointer),
        FieldSpec(f"{prefix}.obj", S, "The whole event as JSON, indented" + note.format("obj"),
                  source=SOURCE, factory=lambda _arg: _whole),
        FieldSpec(f"{prefix}.rawtime", S,
                  "Event time in nanoseconds since the epoch, as text" + note.format("rawtime"),
                  source=SOURCE, factory=lambda _arg: _rawtime),
    )


JSON = FieldClass(
    name="json",
    shortdesc="JSON of the event",
    desc="Any part of the audit event's JSON, as Falco's json plugin reads it.",
    source=SOURCE,
    fields=(*_json_fields("json", alias=False), *_json_fields("jevt", alias=True)),
)

CLASSES = (JSON,)
