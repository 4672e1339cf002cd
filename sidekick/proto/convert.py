"""Alert <-> lanner.v1.Alert (protobuf). On the ingest hot path: keep it lean.

``output_fields_json`` carries the fields as a JSON object (orjson both ways), which keeps
64-bit integers exact. Validation is Alert.from_dict's, so a bad field raises AlertError naming
it, exactly as the HTTP ingest reports it.
"""

from __future__ import annotations

import orjson

from sidekick.alert import Alert, AlertError
from sidekick.proto import lanner_pb2

_dumps = orjson.dumps
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
_PbAlert = lanner_pb2.Alert


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


def alert_from_proto(pb: lanner_pb2.Alert) -> Alert:
    """Validate a received alert. Raises AlertError naming the wrong field.

    Empty strings are proto3's "not set": an empty uuid stays empty (the hub assigns one), an
    empty source becomes the default, an empty priority/time/rule is reported as missing.
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
    return Alert.from_dict(
        {
            "uuid": pb.uuid,
            "output": pb.output,
            "priority": pb.priority,
            "rule": pb.rule,
            "time": pb.time,
            "output_fields": fields,
            "source": pb.source,
            "tags": list(pb.tags),
            "hostname": pb.hostname,
        }
    )
