from __future__ import annotations

import time

import pytest

from sidekick.alert import Alert, AlertError, Priority, format_time_ns, parse_time_ns


@pytest.mark.parametrize(
    ("text", "expected"),
    [("warning", Priority.WARNING), ("WARNING", Priority.WARNING), ("Info", Priority.INFORMATIONAL),
     ("informational", Priority.INFORMATIONAL), (" emergency ", Priority.EMERGENCY),
     ("debug", Priority.DEBUG)],
)
def test_priority_parse(text: str, expected: Priority) -> None:
    assert Priority.parse(text) is expected


def test_priority_order_and_labels() -> None:
    assert [p.label for p in sorted(Priority)] == [
        "Debug", "Informational", "Notice", "Warning", "Error", "Critical", "Alert", "Emergency"]
    with pytest.raises(ValueError, match="unknown priority 'urgent'"):
        Priority.parse("urgent")


@pytest.mark.parametrize(
    ("text", "ns"),
    [("1970-01-01T00:00:00Z", 0),
     ("2026-11-29T10:00:00.123456789Z", 1795946400123456789),
     ("2026-11-29T12:00:00.5+02:00", 1795946400500000000),
     ("2026-11-29t10:00:00.000001z", 1795946400000001000)],
)
def test_time_round_trip(text: str, ns: int) -> None:
    assert parse_time_ns(text) == ns
    assert parse_time_ns(format_time_ns(ns)) == ns


@pytest.mark.parametrize("text", ["", "2026-11-29", "2026-11-29T10:00:00", "2026-02-30T25:00:00Z",
                                  "2026-11-29T10:00:00.1234567890Z", "now",
                                  "4996-12-17T10:46:17Z", "1969-12-31T23:59:59Z",
                                  "2026-11-29T10:00:00+34:00"])
def test_time_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time_ns(text)


def test_from_dict_keeps_uuid_sorts_tags_defaults_source() -> None:
    alert = Alert.from_dict({
        "uuid": "abc", "rule": "R", "priority": "info", "time": "2026-11-29T10:00:00Z",
        "output_fields": {"a": 1, "b": None, "c": [1, "x"]}, "tags": ["z", "a"],
        "message": "ignored: newer Falco sends it",
    })
    assert alert.uuid == "abc" and alert.tags == ["a", "z"] and alert.source == "syscalls"
    assert alert.to_dict()["priority"] == "Informational"
    assert alert.to_dict()["time"] == "2026-11-29T10:00:00.000000000Z"


def test_ensure_uuid_only_when_missing() -> None:
    alert = Alert(rule="R", priority=Priority.DEBUG, time_ns=0, output_fields={"a": 1})
    alert.ensure_uuid()
    made = alert.uuid
    alert.ensure_uuid()
    assert alert.uuid == made and len(made) == 36


def test_error_names_field() -> None:
    with pytest.raises(AlertError) as info:
        Alert.from_json(b'{"rule":"R","priority":"Warning","time":"x","output_fields":{"a":1}}')
    assert info.value.field == "time"


def test_new_uuid_is_a_time_ordered_uuid7() -> None:
    import uuid

    from sidekick.alert import new_uuid

    made = [new_uuid() for _ in range(1000)]
    parsed = [uuid.UUID(u) for u in made]
    assert all(p.version == 7 and p.variant == uuid.RFC_4122 for p in parsed)
    assert len(set(made)) == 1000
    millis = [int(u.replace("-", "")[:12], 16) for u in made]
    assert millis == sorted(millis)
    assert abs(millis[0] - time.time() * 1000) < 5000
