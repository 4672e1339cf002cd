"""Reading audit events' JSON the way Falco's k8saudit and json plugins do (Go's fastjson,
url.Parse, time.Parse), for the ka.*/jevt.* fields (``fielddefs_k8saudit``) and the webhook.

Values are what ``orjson.loads`` gives: dicts, lists, str, int, float, bool, None (JSON null,
which is a value: the plugins read it as the text ``null``). A path the JSON does not have is
ABSENT.
"""

from __future__ import annotations

import calendar
import re
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson

ABSENT: Any = object()  # a key the JSON does not have (JSON null is None, a value)
# Arrays of arrays on a field's path are walked this deep: Kubernetes objects have none, a
# crafted event may nest a thousand.
_MAX_ARRAY_DEPTH = 16


# What a value nested deeper than orjson writes reads as: only a crafted event nests so deep,
# and the same text on every run beats JSON that depends on Python's recursion limit.
TOO_DEEP = "[nested too deeply]"


def text(value: Any) -> str:
    """A JSON value as the plugins give it: a string as is, anything else as compact JSON."""
    if value.__class__ is str:
        return value
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (254 levels)
        return TOO_DEEP


def child(value: Any, key: str) -> Any:
    """One step down: an object's member, or an array's element when the key is an index."""
    if value.__class__ is dict:
        return value.get(key, ABSENT)
    if value.__class__ is list and key.isascii() and key.isdigit():
        position = int(key)
        return value[position] if position < len(value) else ABSENT
    return ABSENT


def at(value: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = child(value, key)
        if value is ABSENT:
            break
    return value


def each(value: Any, index: int | None, keys: tuple[str, ...],
         depth: int = 0) -> list[Any] | None:
    """The values at ``keys``, an array met on the way standing for all its elements (or only
    element ``index``); an element without the path gives ABSENT. None: not there at all."""
    for i, key in enumerate(keys):
        if value.__class__ is list:
            if index is None:
                if depth >= _MAX_ARRAY_DEPTH:
                    return None
                found: list[Any] = []
                for item in value:
                    below = each(item, None, keys[i:], depth + 1)
                    found.extend([ABSENT] if below is None else below)
                return found
            if index >= len(value):
                return None
            value = value[index]
        value = child(value, key)
        if value is ABSENT:
            return None
    return [value]


def texts(values: list[Any] | None) -> list[str] | None:
    """Values as text, skipping elements that lacked the path; no element is no value."""
    if values is None:
        return None
    return [text(v) for v in values if v is not ABSENT] or None


def elements(obj: dict[str, Any], index: int | None, *keys: str) -> list[Any] | None:
    """The array at ``keys`` (or its element ``index`` alone); None when there is none."""
    array = at(obj, keys)
    if array.__class__ is not list:
        return None
    if index is None:
        return array
    return None if index >= len(array) else [array[index]]


def pointer_keys(pointer: str) -> tuple[str, ...]:
    """The keys of a JSON pointer (RFC 6901; the json plugin also takes one without the leading
    slash)."""
    body = pointer[1:] if pointer.startswith("/") else pointer
    return tuple(k.replace("~1", "/").replace("~0", "~") for k in body.split("/"))


# ---- request URIs: Go's url.Parse and url.ParseQuery, which refuse what they cannot parse ----

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def query(uri: str) -> dict[str, list[str]] | None:
    """The query of a request URI; None if Go would refuse it (then the plugin gives no value)."""
    if _CONTROL.search(uri):
        return None
    rest = uri.split("#", 1)[0]
    path, _, raw = rest.partition("?")
    if _BAD_ESCAPE.search(path):
        return None
    params: dict[str, list[str]] = {}
    for part in raw.split("&"):
        if ";" in part or _BAD_ESCAPE.search(part):
            return None
        if not part:
            continue
        key, _, value = part.partition("=")
        params.setdefault(_unescape(key), []).append(_unescape(value))
    return params


def _unescape(escaped: str) -> str:
    return unquote_to_bytes(escaped.replace("+", " ")).decode("utf-8", "surrogateescape")


# ---- timestamps: Go's time.Parse(time.RFC3339Nano) -------------------------------------------

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})")


def rfc3339_ns(stamp: str) -> int | None:
    """A Kubernetes (Go RFC3339Nano) timestamp in ns since the epoch; None when malformed."""
    match = _RFC3339.fullmatch(stamp)
    if match is None:
        return None
    seconds = _epoch_seconds(stamp[:19], match.group(8))
    if seconds is None:
        return None
    return seconds * 1_000_000_000 + int((match.group(7) or "0")[:9].ljust(9, "0"))


@lru_cache(maxsize=4096)
def _epoch_seconds(wall: str, zone: str) -> int | None:
    """``YYYY-MM-DDTHH:MM:SS`` in ``zone`` as seconds since the epoch; cached, since the events
    of a batch share their seconds."""
    year, month, day = int(wall[0:4]), int(wall[5:7]), int(wall[8:10])
    hour, minute, second = int(wall[11:13]), int(wall[14:16]), int(wall[17:19])
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]
            and hour < 24 and minute < 60 and second < 60):
        return None
    offset = 0 if zone == "Z" else (1 if zone[0] == "+" else -1) * (
        int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return calendar.timegm((year, month, day, hour, minute, second)) - offset
