"""Rule exceptions: shape checks, and the condition text Falco builds from them.

The text is byte-for-byte what Falco's rule compiler produces (``build_rule_exception_infos``),
including its quirks, because error positions point into it and the parser must see the same
input:

    (<condition>) and not (<field> <comp> (v1, v2))                 one field ("scalar form")
    (<condition>) and not (( f1 c1 v1 and  f2 c2 v2) or ( f1 ...))  fields list ("tuple form")

Note the blank after each ``(`` and the double blank after ``and`` in the tuple form: Falco
prefixes every field with a blank. Values are quoted when they hold a space and don't start with
a quote (inner quotes are not escaped); with a list operator a scalar value is parenthesised
instead of quoted; a value that is itself a YAML list becomes ``(a, b)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from detector.engine.lists import quote_item

STRING_OPERATORS = (
    "=",
    "==",
    "!=",
    "glob",
    "iglob",
    "contains",
    "icontains",
    "bcontains",
    "startswith",
    "bstartswith",
    "endswith",
    "regex",
)
LIST_OPERATORS = ("in", "intersects", "pmatch")
OPERATORS = (*STRING_OPERATORS, "<", "<=", ">", ">=", *LIST_OPERATORS, "exists")
MODIFIERS = ("oneof", "anyof", "allof")

# A decoded YAML value: a scalar, or a sequence of them (nesting is checked, not typed).
Entry: TypeAlias = "str | list[Entry]"


@dataclass(slots=True)
class RuleException:
    name: str
    fields: str | list[str] | None = None  # None: not given (appending values to an existing one)
    comps: str | list[str] | None = None  # None: not given; ``complete`` fills Falco's default
    values: list[Entry] = field(default_factory=list)


def _is_modified(comp: str) -> bool:
    """``startswith oneof`` and the like: a string operator with a list modifier."""
    words = comp.split()
    return len(words) == 2 and words[0] in STRING_OPERATORS and words[1] in MODIFIERS


def is_list_operator(comp: str) -> bool:
    return comp in LIST_OPERATORS or _is_modified(comp)


def complete(ex: RuleException) -> str | None:
    """Default the comps and check them against the fields; an error message, or None."""
    if ex.fields is None:
        return "Rule exception must have fields property with a list of fields"
    if isinstance(ex.fields, list):
        if not ex.fields:
            return "Rule exception fields list must not be empty"
        if ex.comps is None:
            ex.comps = ["="] * len(ex.fields)
        if not isinstance(ex.comps, list) or len(ex.comps) != len(ex.fields):
            return "Fields and comps lists must have equal length"
        ex.comps = [comp.strip() for comp in ex.comps]
        for comp in ex.comps:
            if comp not in OPERATORS and not _is_modified(comp):
                return f"'{comp}' is not a supported comparison operator"
        return None
    if ex.comps is None:
        ex.comps = "in"
    if isinstance(ex.comps, list):
        return "Fields and comps must both be strings"
    ex.comps = ex.comps.strip()
    if not is_list_operator(ex.comps):
        return (
            "When fields is a single value, comps must be one of (in, pmatch, intersects) "
            "or a modifier operator (e.g. startswith oneof)"
        )
    return None


def check_value(fields: str | list[str], value: Entry) -> str | None:
    """Check one entry of ``values`` against the exception's fields; an error message or None."""
    if not isinstance(fields, list):
        if isinstance(value, list):
            return "Expected values array to contain a list of strings"
        return None
    if not isinstance(value, list) or len(value) != len(fields):
        return "Fields and values lists must have equal length"
    return None


def _render_cell(value: Entry, comp: str) -> str:
    if isinstance(value, list):
        return "(" + ", ".join(quote_item(str(item)) for item in value) + ")"
    if is_list_operator(comp):
        return value if value.startswith("(") else f"({value})"
    return quote_item(value)


def _clause(ex: RuleException) -> str:
    """The text negated for one exception; empty when it has no values."""
    if not ex.values:
        return ""
    if isinstance(ex.fields, str) and isinstance(ex.comps, str):
        joined = ", ".join(quote_item(str(value)) for value in ex.values)
        return f"({ex.fields} {ex.comps} ({joined}))"
    assert isinstance(ex.fields, list) and isinstance(ex.comps, list), "complete() not called"
    rows = []
    for row in ex.values:
        assert isinstance(row, list), "check_value() not called"
        checks = (
            f" {name} {comp} {_render_cell(cell, comp)}"
            for name, comp, cell in zip(ex.fields, ex.comps, row, strict=True)
        )
        rows.append("(" + " and ".join(checks) + ")")
    return "(" + " or ".join(rows) + ")"


def build_condition(condition: str, exceptions: list[RuleException]) -> str:
    """The rule's condition with every exception appended, as Falco writes it."""
    text = f"({condition})"
    for ex in exceptions:
        clause = _clause(ex)
        if clause:
            text += " and not " + clause
    return text
