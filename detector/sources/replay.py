"""Recorded events: JSON lines, one event per line, read back for rule testing.

Format (documented for users in docs/rules.md):

- each line is one JSON object whose keys are field names as the field registry records them
  (``"evt.type": "openat"``, ``"fd.name": "/etc/shadow"``...); a field with no value is left out
  or set to null, exactly as a live event would lack it;
- keys starting with ``_`` are annotations for people and tests; no field starts with ``_``,
  so the engine never reads them. One is understood here: ``"_expect"`` lists exactly the rules
  that must fire on the event (a rule name, a list of names, or null/[] for "none"), which
  ``lanner rules test`` checks;
- blank lines and lines whose first non-blank character is ``#`` are skipped, so a recording can
  be commented by hand;
- ``evt.num`` is filled in with the event's position (1, 2, ...) when the line has none: a live
  sensor numbers every event from 1, and conditions or outputs using it should not behave
  differently on a replay;
- any other line is an error: :class:`ReplayError` names ``file:line``. Recordings are inputs to
  tests, so a damaged line is reported rather than silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson


@dataclass
class ReplayError(Exception):
    file: str
    line: int  # 1-based; 0 when the file itself cannot be read
    message: str

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        place = f"{self.file}:{self.line}" if self.line else self.file
        return f"{place}: {self.message}"


@dataclass(frozen=True, slots=True)
class Recorded:
    line: int  # 1-based line of the event in its file
    number: int  # 1-based position among the file's events
    event: dict[str, Any]
    expect: frozenset[str] | None  # the rules "_expect" says fire; None: no expectation


EXPECT = "_expect"


def read_events(path: str | Path) -> Iterator[Recorded]:
    """Yield the events of a JSON-lines recording in file order; raise ReplayError on a bad line."""
    name = str(path)
    try:
        with open(path, "rb") as handle:
            yield from _parse(name, handle)
    except OSError as exc:
        raise ReplayError(name, 0, f"cannot read: {exc.strerror or exc}") from None


def content_lines(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number, stripped line) of each line of JSON, skipping blank and ``#`` lines."""
    for line_no, raw in enumerate(lines, start=1):
        text = raw.strip()
        if text and not text.startswith(b"#"):
            yield line_no, text


def _parse(name: str, lines: Iterable[bytes]) -> Iterator[Recorded]:
    for number, (line_no, text) in enumerate(content_lines(lines), start=1):
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ReplayError(name, line_no, f"invalid JSON: {exc}") from None
        if not isinstance(event, dict):
            kind = type(event).__name__
            raise ReplayError(name, line_no, f"expected a JSON object, got {kind}")
        event.setdefault("evt.num", number)
        yield Recorded(line_no, number, event, _expectation(name, line_no, event))


def _expectation(name: str, line_no: int, event: dict[str, Any]) -> frozenset[str] | None:
    if EXPECT not in event:
        return None
    value = event[EXPECT]
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset((value,))
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(value)
    raise ReplayError(name, line_no, f"{EXPECT} must be a rule name, a list of names or null")
