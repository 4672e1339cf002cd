"""Alert <-> lanner.v1.Alert (protobuf). On the ingest hot path: keep it lean.

``output_fields_json`` carries the fields as a JSON object (orjson both ways), which keeps
64-bit integers exact. Validation is Alert.from_dict's, so a bad field raises AlertError naming
it, exactly as the HTTP ingest reports it.

alert_from_proto does not go through Alert.from_dict, though: protobuf already guarantees the
types from_dict checks (every string field is a str, tags a list of str), and the remaining
checks have fast paths for the common case. Each fast path only accepts what the check in
sidekick.alert accepts, with the same result, and anything else goes to that check itself, so
errors and their messages are from_dict's (tests/test_grpc.py compares the two).
"""

from __future__ import annotations

import orjson

from sidekick.alert import (
    _MAX_NS,
    DEFAULT_SOURCE,
    Alert,
    AlertError,
    Priority,
    _check_output_fields,
    parse_time_ns,
)
from sidekick.proto import lanner_pb2

_dumps = orjson.dumps
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
_PbAlert = lanner_pb2.Alert

# Priority texts as senders write them, resolved once by Priority.parse itself.
_PRIORITY_BY_TEXT: dict[str, Priority] = {
    text: Priority.parse(text)
    for text in [
        *(form for p in Priority for form in (p.label, p.name, p.name.lower())),
        *("info", "Info", "INFO"),
    ]
}

# orjson decodes to exactly these types (never subclasses), and _check_output_fields accepts any
# value of them; any other value (a list, a nested object) goes through the full check.
_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})

# "YYYY-MM-DDTHH:MM:SS" -> ns of that second, as parse_time_ns computes it. Alerts arrive in
# time order, so a batch needs one or a few entries; the cache is emptied when it grows big.
_SECOND_NS: dict[str, int] = {}
_SECOND_NS_MAX = 1024


def alert_to_proto(alert: Alert) -> lanner_pb2.Alert:
    """The wire form of a (valid) alert. Raises TypeError if output_fields isn't JSON-able."""
    return _PbAlert(
        uuid=alert.uuid,
        output=alert.output,
        priority=alert.priority.label,
        rule=alert.rule,
        time=alert.time,
        output_fields_json=_dumps(alert.output_fields),
        source=alert.source,
        tags=alert.tags,
        hostname=alert.hostname,
    )


def _second_ns(second: str) -> int | None:
    """ns since the epoch of "YYYY-MM-DDTHH:MM:SS" (UTC), None if parse_time_ns refuses it."""
    try:
        ns = parse_time_ns(second + "Z")
    except ValueError:
        return None
    if len(_SECOND_NS) >= _SECOND_NS_MAX:
        _SECOND_NS.clear()
    _SECOND_NS[second] = ns
    return ns


def _time_ns(text: str) -> int:
    """parse_time_ns(text), with AlertError("time", ...) for a bad one.

    Fast path for Falco's own form, "YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ": parse_time_ns's pattern
    always spends exactly 19 characters on the date and time, so such a text is valid exactly
    when its first 19 characters are (cached per second), and its value is that second's plus
    the nanoseconds, if still in range.
    """
    if len(text) == 30 and text[19] == "." and text[29] in "Zz":
        nanos = text[20:29]
        if nanos.isdigit() and nanos.isascii():
            second = text[:19]
            base = _SECOND_NS.get(second)
            if base is None:
                base = _second_ns(second)
            if base is not None and base + int(nanos) < _MAX_NS:
                return base + int(nanos)
    try:
        return parse_time_ns(text)
    except ValueError as exc:
        raise AlertError("time", str(exc)) from None


def alert_from_proto(pb: lanner_pb2.Alert) -> Alert:
    """Validate a received alert. Raises AlertError naming the wrong field.

    Empty strings are proto3's "not set": an empty uuid stays empty (the hub assigns one), an
    empty source becomes the default, an empty priority/time/rule is reported as missing.
    Fields are checked in Alert.from_dict's order (after output_fields_json is decoded), so
    the first wrong one is reported.
    """
    raw = pb.output_fields_json
    if not raw:
        raise AlertError("output_fields", "is required (output_fields_json is empty)")
    try:
        fields = _loads(raw)
    except _JSONDecodeError as exc:
        raise AlertError("output_fields", f"output_fields_json is not valid JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise AlertError("output_fields", "output_fields_json must be a JSON object")
    rule = pb.rule
    if not rule.strip():
        raise AlertError("rule", "is required and must not be empty")
    priority_text = pb.priority
    priority = _PRIORITY_BY_TEXT.get(priority_text)
    if priority is None:
        try:
            priority = Priority.parse(priority_text)
        except ValueError as exc:
            raise AlertError("priority", str(exc)) from None
    time_ns = _time_ns(pb.time)
    if not fields or not _SCALAR_TYPES.issuperset(map(type, fields.values())):
        _check_output_fields(fields)  # raises naming the field, or accepts lists of scalars
    uuid = pb.uuid
    if len(uuid) > 128:
        raise AlertError("uuid", "must be at most 128 characters")
    return Alert(
        rule=rule,
        priority=priority,
        time_ns=time_ns,
        output_fields=fields,
        output=pb.output,
        source=pb.source or DEFAULT_SOURCE,
        tags=sorted(pb.tags),
        hostname=pb.hostname,
        uuid=uuid,
    )
