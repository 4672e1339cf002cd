"""The alert: Falco's JSON contract, shared by the detector, the hub and the outputs.

A leaf module: it imports nothing from the project, so every package may import it.
"""

from __future__ import annotations

import calendar
import random
import re
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import orjson

DEFAULT_SOURCE = "syscalls"
TEST_RULE = "Test rule"


class Priority(IntEnum):
    """Falco priorities, lowest to highest."""

    DEBUG = 1
    INFORMATIONAL = 2
    NOTICE = 3
    WARNING = 4
    ERROR = 5
    CRITICAL = 6
    ALERT = 7
    EMERGENCY = 8

    @property
    def label(self) -> str:
        """The name as Falco writes it in alerts: ``Warning``, ``Informational``..."""
        return self.name.capitalize()

    @classmethod
    def parse(cls, text: str) -> Priority:
        """Case-insensitive, ``info`` accepted for Informational. Raises ValueError."""
        key = text.strip().upper() if isinstance(text, str) else ""
        if key == "INFO":
            return cls.INFORMATIONAL
        try:
            return cls[key]
        except KeyError:
            names = ", ".join(p.name.lower() for p in cls)
            raise ValueError(f"unknown priority {text!r} (one of: {names})") from None


class AlertError(ValueError):
    """A field of an incoming alert is wrong; ``field`` names it (dotted path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)


_MAX_NS = 1 << 63  # nanoseconds in a signed 64-bit integer, as stores and protobuf keep them


def parse_time_ns(text: str) -> int:
    """RFC3339 with up to nanosecond precision to integer ns since the epoch. ValueError if not."""
    m = _RFC3339.fullmatch(text)
    if not m:
        raise ValueError(f"not an RFC3339 time: {text[:64]!r}")
    year, month, day, hour, minute, sec = (int(g) for g in m.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and sec < 61):
        raise ValueError(f"not an RFC3339 time: {text[:64]!r}")
    frac = (m.group(7) or "").ljust(9, "0")
    seconds = calendar.timegm((year, month, day, hour, minute, sec, 0, 0, 0))
    zone = m.group(8)
    if zone not in ("Z", "z"):
        if int(zone[1:3]) > 23 or int(zone[4:6]) > 59:
            raise ValueError(f"not an RFC3339 time offset: {zone!r}")
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    ns = seconds * 1_000_000_000 + int(frac)
    if not 0 <= ns < _MAX_NS:
        raise ValueError(f"time out of range (1970 to 2262): {text[:64]!r}")
    return ns


def format_time_ns(ns: int) -> str:
    """Integer ns since the epoch to Falco's RFC3339 form, always UTC and 9 digits."""
    seconds, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:09d}Z"


def now_ns() -> int:
    return time.time_ns()


def new_uuid() -> str:
    """A UUIDv7 (RFC 9562): milliseconds first, then random bits.

    Time-ordered ids keep the stores' uuid indexes appending instead of writing pages at random.
    """
    # random's generator, not os.urandom: urandom releases the GIL, and taking it back behind a
    # busy store thread cost hundreds of microseconds per alert. Uniqueness is what matters here.
    value = (time.time_ns() // 1_000_000) << 80 | random.getrandbits(80)
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # RFC 4122 variant
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_SCALARS = (str, int, float, bool, type(None))


def _check_output_fields(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AlertError("output_fields", "must be an object")
    if not value:
        raise AlertError("output_fields", "must have at least one field")
    for key, item in value.items():
        if isinstance(item, list):
            if not all(isinstance(x, _SCALARS) for x in item):
                raise AlertError(f"output_fields.{key}", "list items must be scalars")
        elif not isinstance(item, _SCALARS):
            raise AlertError(f"output_fields.{key}", "must be a string, number, bool, null or list")
    return value


def _check_str(data: dict[str, Any], key: str, default: str = "") -> str:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise AlertError(key, "must be a string")
    return value


@dataclass(slots=True)
class Alert:
    """One alert. ``time_ns`` is the event time; ``to_dict`` gives Falco's JSON."""

    rule: str
    priority: Priority
    time_ns: int
    output_fields: dict[str, Any]
    output: str = ""
    source: str = DEFAULT_SOURCE
    tags: list[str] = field(default_factory=list)
    hostname: str = ""
    uuid: str = ""

    @property
    def time(self) -> str:
        return format_time_ns(self.time_ns)

    @classmethod
    def from_dict(cls, data: Any) -> Alert:
        """Validate a decoded Falco alert. Unknown keys are ignored, as Falcosidekick does.

        Raises AlertError naming the first wrong field. The sender's uuid is kept when set.
        """
        if not isinstance(data, dict):
            raise AlertError("body", "must be a JSON object")
        rule = _check_str(data, "rule")
        if not rule.strip():
            raise AlertError("rule", "is required and must not be empty")
        raw_priority = data.get("priority")
        if not isinstance(raw_priority, str):
            raise AlertError("priority", "is required and must be a string")
        try:
            priority = Priority.parse(raw_priority)
        except ValueError as exc:
            raise AlertError("priority", str(exc)) from None
        raw_time = data.get("time")
        if not isinstance(raw_time, str):
            raise AlertError("time", "is required and must be an RFC3339 string")
        try:
            time_ns = parse_time_ns(raw_time)
        except ValueError as exc:
            raise AlertError("time", str(exc)) from None
        output_fields = _check_output_fields(data.get("output_fields"))
        tags = data.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise AlertError("tags", "must be a list of strings")
        uuid = _check_str(data, "uuid")
        if len(uuid) > 128:
            raise AlertError("uuid", "must be at most 128 characters")
        source = _check_str(data, "source") or DEFAULT_SOURCE
        return cls(
            rule=rule,
            priority=priority,
            time_ns=time_ns,
            output_fields=output_fields,
            output=_check_str(data, "output"),
            source=source,
            tags=sorted(tags),
            hostname=_check_str(data, "hostname"),
            uuid=uuid,
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Alert:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise AlertError("body", f"invalid JSON: {exc}") from None
        return cls.from_dict(data)

    def ensure_uuid(self) -> None:
        if not self.uuid:
            self.uuid = new_uuid()

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "output": self.output,
            "priority": self.priority.label,
            "rule": self.rule,
            "time": self.time,
            "output_fields": self.output_fields,
            "source": self.source,
            "tags": self.tags,
            "hostname": self.hostname,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: Any) -> float:
    """Seconds from a number or ``500ms``, ``30s``, ``10m``, ``2h``, ``7d``, ``1w``."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 30s, 10m or 7d")
    if isinstance(value, int | float):
        return float(value)
    m = _DURATION.fullmatch(str(value).strip())
    if not m:
        raise ValueError(f"{value!r} is not a duration such as 30s, 10m or 7d")
    return float(m.group(1)) * _UNITS[m.group(2)]
