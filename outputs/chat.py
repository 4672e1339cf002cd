"""What the chat outputs (Slack, Discord) share: Falcosidekick's field list, value rendering,
cutting text to a service's limits, and fitting a field list into a size budget.

Everything here works on strings the caller escapes for its service: ``fit`` applies an escape
table character by character, so a cut never splits an escape sequence (``&amp;``, ``\\*``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sidekick.alert import Alert

ELLIPSIS = "…"
NULL = "<NA>"  # how Falco prints a field without a value

Escapes = Mapping[int, str]  # a str.translate table: code point -> replacement
F = TypeVar("F")


def render_value(value: Any) -> str:
    """An output field value as text. Falcosidekick drops everything but strings; we keep
    numbers, booleans (``true``/``false``, as in the JSON), null (``<NA>``) and lists."""
    if value is None:
        return NULL
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return ", ".join(render_value(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{key}: {render_value(item)}" for key, item in value.items())
    return str(value)


def go_time(ns: int) -> str:
    """The event time as Falcosidekick prints it (Go's ``time.String()`` of a UTC time):
    ``2026-11-29 10:00:00.123456789 +0000 UTC``, trailing zeros of the fraction dropped."""
    seconds, frac = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return f"{text} +0000 UTC"


def fit(text: str, limit: int, escapes: Escapes | None = None) -> str:
    """``text`` escaped with ``escapes``, at most ``limit`` characters; a cut ends with ``…``.

    Escaping per character before counting keeps the result within the limit however many
    characters need escaping, and never leaves half an escape sequence at the cut.
    """
    escaped = text.translate(escapes) if escapes else text
    if len(escaped) <= limit:
        return escaped
    room = limit - len(ELLIPSIS)
    pieces: list[str] = []
    for char in text:
        piece = escapes.get(ord(char), char) if escapes else char
        if len(piece) > room:
            break
        pieces.append(piece)
        room -= len(piece)
    return "".join(pieces) + ELLIPSIS


def summary_fields(alert: Alert) -> list[tuple[str, str]]:
    """The fields both outputs start with, in Falcosidekick's order: rule, priority, source,
    then hostname when the alert has one."""
    fields = [("rule", alert.rule), ("priority", alert.priority.label), ("source", alert.source)]
    if alert.hostname:
        fields.append(("hostname", alert.hostname))
    return fields


def tags_text(alert: Alert) -> str:
    """Tags as Falcosidekick shows them: sorted, comma and space separated; "" if none."""
    return ", ".join(sorted(alert.tags))


def output_items(alert: Alert) -> list[tuple[str, str]]:
    """Every output field, rendered, sorted by key (Falcosidekick's order)."""
    return [(key, render_value(alert.output_fields[key])) for key in sorted(alert.output_fields)]


def fit_fields(
    head: list[F],
    body: list[F],
    tail: list[F],
    *,
    max_fields: int,
    budget: int,
    size: Callable[[F], int],
    notice: Callable[[int], F],
) -> list[F]:
    """``head + body + tail`` within ``max_fields`` fields and ``budget`` characters.

    Only ``body`` (the output fields) gives way, from its end; when any of it is left out, a
    last field made by ``notice(count)`` says how many. The caller keeps ``head``, ``tail``
    and one notice within both limits.
    """
    slots = max_fields - len(head) - len(tail)
    room = budget - sum(size(field) for field in (*head, *tail))
    kept: list[F] = []
    for field in body:
        if len(kept) == slots or size(field) > room:
            break
        kept.append(field)
        room -= size(field)
    if len(kept) == len(body):
        return head + kept + tail
    note = notice(len(body) - len(kept))
    while kept and (len(kept) + 1 > slots or size(note) > room):
        room += size(kept.pop())
        note = notice(len(body) - len(kept))
    return head + kept + tail + [note]
