"""One error type for everything a rules author can get wrong, rendered as one clear message.

    rules.yaml:12:28: rule 'Shell in container': unknown field 'proc.nme'
      condition: spawned_process and proc.nme = bash
                                     ^^^^^^^^
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RuleError(Exception):
    message: str
    file: str | None = None
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based
    item: str | None = None  # "rule 'X'", "macro 'y'", "list 'z'"
    text: str | None = None  # the source line (or condition) the column points into
    length: int = 1  # how many characters to underline

    def __post_init__(self) -> None:
        super().__init__(self.message)

    # Fill in a location later with dataclasses.replace(error, file=..., line=...).

    def __str__(self) -> str:
        place = ":".join(str(p) for p in (self.file, self.line, self.column) if p is not None)
        head = ": ".join(p for p in (place, self.item, self.message) if p)
        if self.text is None or self.column is None:
            return head
        line, start = _window(self.text.replace("\t", " "), self.column - 1)
        marker = " " * start + "^" * max(1, min(self.length, _WINDOW))
        return f"{head}\n  {line}\n  {marker}"


_WINDOW = 160  # characters of the source line shown, as Falco does; conditions can be 2 KB


def _window(line: str, at: int) -> tuple[str, int]:
    """The part of ``line`` around offset ``at`` (with ``...`` where cut) and ``at`` in it."""
    if len(line) <= _WINDOW:
        return line, at
    first = max(0, min(at - _WINDOW // 2, len(line) - _WINDOW))
    shown = line[first:first + _WINDOW]
    start = at - first
    if first > 0:
        shown, start = "..." + shown, start + 3
    if first + _WINDOW < len(line):
        shown += "..."
    return shown, start


@dataclass
class RuleWarning:
    """A load-time warning (Falco prints them with ``-V``): never stops loading."""

    message: str
    file: str | None = None
    line: int | None = None
    item: str | None = None
    code: str = ""  # Falco's code, e.g. LOAD_NO_EVTTYPE

    def __str__(self) -> str:
        place = ":".join(str(p) for p in (self.file, self.line) if p is not None)
        return ": ".join(p for p in (place, self.item, f"warning: {self.message}") if p)
