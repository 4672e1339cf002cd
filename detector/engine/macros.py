"""Macro inlining on the syntax tree.

A macro reference is replaced by the macro's own parsed tree (never pasted as text, so its
precedence is kept), wrapped in ``Expanded`` so later passes still know which macro a check
came from: compile errors then point into the macro's condition, and ``explain`` can say
"macro open_read is false because...".

Falco also refuses, inside a macro, a macro defined after it; that order is not enforced here
(any loaded macro can be used), which only accepts more files, never changes a result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from detector.engine import ast
from detector.engine.errors import RuleError


@dataclass(frozen=True, slots=True)
class Expanded:
    name: str  # the macro's name
    body: Tree  # its condition, macros inside already inlined
    span: ast.Span  # the reference, in the referring condition


# The boolean nodes of an inlined tree: ast's, but with inlined children.
@dataclass(frozen=True, slots=True)
class BoolNot:
    operand: Tree
    span: ast.Span


@dataclass(frozen=True, slots=True)
class BoolAnd:
    items: tuple[Tree, ...]
    span: ast.Span


@dataclass(frozen=True, slots=True)
class BoolOr:
    items: tuple[Tree, ...]
    span: ast.Span


Tree = ast.Compare | BoolNot | BoolAnd | BoolOr | Expanded


class UnknownFilter(RuleError):
    """An unknown field, event type or macro: a rule with skip-if-unknown-filter is dropped
    (warning LOAD_UNKNOWN_FILTER) instead of failing the load."""


def macro_item(name: str) -> str:
    return f"macro '{name}'"


def inline(node: ast.Node, macros: Mapping[str, ast.Node], owner: str | None = None) -> Tree:
    """Replace every macro reference under ``node`` (recursively) by the macro's tree.

    ``owner`` is the macro whose condition ``node`` is (None: the rule's). An unknown name raises
    RuleError "unexpected identifier", a macro reaching itself "reference loop in macro"; the
    error's ``item`` says whose condition text its column points into (None: the rule's).
    """
    return _inline(node, macros, owner, ())


def _inline(
    node: ast.Node, macros: Mapping[str, ast.Node], owner: str | None, stack: tuple[str, ...]
) -> Tree:
    if isinstance(node, ast.MacroRef):
        body = macros.get(node.name)
        if body is None:
            raise _error(f"unexpected identifier '{node.name}'", node.span, owner, UnknownFilter)
        if node.name in stack:
            raise _error(f"reference loop in macro '{node.name}'", node.span, owner)
        inner = _inline(body, macros, node.name, (*stack, node.name))
        return Expanded(node.name, inner, node.span)
    if isinstance(node, ast.Not):
        return BoolNot(_inline(node.operand, macros, owner, stack), node.span)
    if isinstance(node, ast.And):
        return BoolAnd(tuple(_inline(i, macros, owner, stack) for i in node.items), node.span)
    if isinstance(node, ast.Or):
        return BoolOr(tuple(_inline(i, macros, owner, stack) for i in node.items), node.span)
    return node


def _error(
    message: str, span: ast.Span, owner: str | None, kind: type[RuleError] = RuleError
) -> RuleError:
    return kind(
        message,
        column=span.start + 1,
        length=max(1, span.end - span.start),
        item=None if owner is None else macro_item(owner),
    )
