"""Lists: expanding nested lists and substituting list names into condition text.

Falco substitutes lists as text before parsing, so the exact bytes matter: error positions and
everything the parser sees depend on them. ``substitute`` reproduces Falco's algorithm (token
boundaries, blank consumption, the single padding blank on each side, the comma an empty list
swallows). Quoting follows Falco too: only items containing a space and not already starting
with a quote are wrapped in double quotes, and inner quotes are never escaped — rules files
write items that need quoting as ``'"sh -c x"'``, and we must hand the parser what Falco does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

BLANKS = " \t\n\r"
DELIMITERS = BLANKS + "(),="


def quote_item(item: str) -> str:
    """Wrap an item in double quotes when it holds a space and is not quoted already."""
    if " " in item and item[:1] not in ('"', "'"):
        return f'"{item}"'
    return item


def substitute(text: str, name: str, items: Sequence[str]) -> tuple[str, bool]:
    """Replace every whole-token occurrence of ``name`` in ``text`` by the joined items.

    Returns the new text and whether the name occurred at all.
    """
    used = False
    start = text.find(name)
    while start != -1:
        end = start + len(name)
        before_ok = start == 0 or text[start - 1] in DELIMITERS
        after_ok = end >= len(text) or text[end] in DELIMITERS
        if before_ok and after_ok:
            while start > 0 and text[start - 1] in BLANKS:
                start -= 1
            while end < len(text) and text[end] in BLANKS:
                end += 1
            joined = ", ".join(quote_item(item) for item in items)
            if not joined:
                # An empty list would leave a dangling comma: drop one neighbour.
                if start > 0 and text[start - 1] == ",":
                    start -= 1
                elif end < len(text) and text[end] == ",":
                    end += 1
            head = text[:start] + " " if start > 0 else ""
            text = head + joined + " " + text[end:]
            # Resume after the inserted items so an item equal to the name cannot loop.
            start += len(joined) + 1
            used = True
        start = text.find(name, start + 1)
    return text, used


def substitute_all(text: str, lists: Iterable[tuple[str, Sequence[str]]]) -> tuple[str, set[str]]:
    """Apply ``substitute`` for each list in turn (definition order, as Falco does).

    Returns the text and the names of the lists that occurred.
    """
    used: set[str] = set()
    for name, items in lists:
        text, found = substitute(text, name, items)
        if found:
            used.add(name)
    return text, used


@dataclass(slots=True)
class ListDef:
    name: str
    items: list[str]
    index: int  # position of the first definition (global counter across files)
    visibility: int  # position of the latest define/append


class ListCycleError(Exception):
    """A list reaches itself through nested list items; ``path`` starts and ends with it."""

    def __init__(self, path: list[str]) -> None:
        super().__init__(" -> ".join(path))
        self.path = path


def expand(defs: Sequence[ListDef]) -> tuple[dict[str, list[str]], set[str]]:
    """Flatten nested lists; returns the items per list (definition order) and nested names.

    An item naming another list is expanded only when that list was first defined before this
    list's latest definition (Falco's visibility rule); otherwise it stays a literal string.
    Falco expands one level only; we expand recursively (a superset) and reject cycles.
    """
    by_name = {d.name: d for d in defs}
    done: dict[str, list[str]] = {}
    nested: set[str] = set()

    def refs(d: ListDef) -> list[ListDef]:
        found = []
        for item in d.items:
            ref = by_name.get(item)
            if ref is not None and ref.index < d.visibility:
                found.append(ref)
        return found

    for root in defs:
        if root.name in done:
            continue
        # Depth-first without recursion, so deep nesting cannot exhaust Python's stack.
        stack: list[ListDef] = [root]
        on_path: list[str] = [root.name]
        while stack:
            current = stack[-1]
            pending = [r for r in refs(current) if r.name not in done]
            if pending:
                ref = pending[0]
                if ref.name in on_path:
                    raise ListCycleError([*on_path[on_path.index(ref.name) :], ref.name])
                stack.append(ref)
                on_path.append(ref.name)
                continue
            items: list[str] = []
            for item in current.items:
                ref = by_name.get(item)
                if ref is not None and ref.index < current.visibility:
                    nested.add(ref.name)
                    items.extend(done[ref.name])
                else:
                    items.append(item)
            done[current.name] = items
            stack.pop()
            on_path.pop()
    return {d.name: done[d.name] for d in defs}, nested
