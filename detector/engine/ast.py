"""The typed syntax tree of a Falco condition: what the parser makes and the compiler reads.

Spans are offsets into the condition text the parser was given (after list substitution), so an
error can underline the offending text. Field names are kept as written (``evt.arg.flags``,
``proc.aname`` with arg ``"2"``); the field registry resolves them (longest registered prefix,
dot-argument form) when compiling, because the parser cannot know which names exist.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Span:
    start: int  # offset of the first character
    end: int  # offset after the last character


@dataclass(frozen=True, slots=True)
class Field:
    """``proc.name``, ``proc.aname[2]`` (arg "2"), ``evt.arg.flags`` (name as written, no arg)."""

    name: str
    arg: str | None
    span: Span


@dataclass(frozen=True, slots=True)
class Transform:
    """``tolower(x)``, ``toupper(x)``, ``b64(x)``, ``basename(x)``, ``len(x)``; nestable."""

    func: str
    operand: Field | Transform
    span: Span


@dataclass(frozen=True, slots=True)
class Value:
    """A literal as written (quotes removed, escapes applied); typed by the compiler."""

    text: str
    quoted: bool
    span: Span


@dataclass(frozen=True, slots=True)
class ListValue:
    """``(a, "b c", 3)``; may be empty."""

    items: tuple[Value, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class FieldValue:
    """A field on the right-hand side: ``val(proc.pname)`` or a transformer."""

    operand: Field | Transform
    span: Span


Operand = Field | Transform
RightHand = Value | ListValue | FieldValue


@dataclass(frozen=True, slots=True)
class Compare:
    """``left op right``. ``op`` is normalised: ``==`` is ``=``; ``exists`` has no right side.
    ``modifier`` is ``oneof``/``anyof``/``allof`` for ``op modifier (list)``, else None."""

    left: Operand
    op: str
    right: RightHand | None
    span: Span
    modifier: str | None = None


@dataclass(frozen=True, slots=True)
class MacroRef:
    """A bare identifier: a macro's name (or, unresolved, an error)."""

    name: str
    span: Span


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node
    span: Span


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Node, ...]  # two or more, flattened
    span: Span


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Node, ...]  # two or more, flattened
    span: Span


Node = Compare | MacroRef | Not | And | Or

OPERATORS = (
    "=", "!=", "<", "<=", ">", ">=", "contains", "icontains", "bcontains", "startswith",
    "bstartswith", "endswith", "glob", "iglob", "pmatch", "in", "intersects", "exists", "regex",
)
TRANSFORMERS = ("tolower", "toupper", "b64", "basename", "len")
MODIFIERS = ("oneof", "anyof", "allof")
