"""Why a rule does or does not match an event: the clauses that decided, with field values.

Each comparison is evaluated by its own compiled function (the same code generator as the
rule's), in the rule's short-circuit order, so the explanation cannot disagree with the rule:

    rule 'Run shell untrusted' does not match this event
      false: proc.pname in (shell_binaries...) — proc.pname is 'python3' (macro shell_procs)

A ``not`` is pushed down to the comparisons it covers (De Morgan), so every line states a
comparison and whether it, as the rule uses it, held.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from detector.engine.checks import Check, Operand
from detector.engine.compiler import compile_check
from detector.engine.dnscache import HostAddresses
from detector.engine.macros import BoolAnd, BoolNot, BoolOr, Expanded, Tree

if TYPE_CHECKING:
    from detector.engine.build import CompiledRule

Event = Mapping[str, Any]
_MAX_VALUE = 120  # characters of a value or clause shown


class _Unevaluable(Exception):
    """A comparison raised (a value of the wrong type): process() counts the rule as failed."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


def explain_rule(rule: CompiledRule, event: Event, evaluated: bool, hosts: HostAddresses) -> str:
    try:
        value, lines = _Explainer(rule, event, hosts).run(rule.tree, None, (), False)
        head = f"rule '{rule.name}' {'matches' if value else 'does not match'} this event"
    except _Unevaluable as exc:
        head = (f"rule '{rule.name}' cannot be evaluated on this event (the engine counts an "
                "error and no match)")
        lines = [exc.line]
    notes = []
    if not rule.enabled:
        notes.append("the rule is disabled: the engine never reports it")
    elif not evaluated:
        kind = event.get("evt.type")
        notes.append(f"the engine does not test this rule on this event (event type {kind!r}, "
                     f"source {event.get('evt.source') or 'syscall'!r})")
    return "\n".join([head, *(f"  ({n})" for n in notes), *(f"  {line}" for line in lines)])


class _Explainer:
    def __init__(self, rule: CompiledRule, event: Event, hosts: HostAddresses) -> None:
        self.rule = rule
        self.event = event
        self.hosts = hosts

    def run(
        self, node: Tree, owner: str | None, macros: tuple[str, ...], negated: bool
    ) -> tuple[bool, list[str]]:
        """The node's value as the rule uses it (after ``negated``) and the deciding lines."""
        if isinstance(node, Expanded):
            return self.run(node.body, node.name, (*macros, node.name), negated)
        if isinstance(node, BoolNot):
            return self.run(node.operand, owner, macros, not negated)
        if isinstance(node, BoolAnd | BoolOr):
            # and (or a negated or) needs every item; or (or a negated and) needs one.
            every = isinstance(node, BoolAnd) != negated
            lines: list[str] = []
            for item in node.items:
                value, item_lines = self.run(item, owner, macros, negated)
                if value != every:
                    return value, item_lines
                lines.extend(item_lines)
            return every, lines
        check = self.rule.checks[(owner, node)]
        text = " ".join(check.text.split())
        if len(text) > _MAX_VALUE:
            text = text[:_MAX_VALUE] + "..."
        clause = f"not {text}" if negated else text
        where = f" (macro {' > '.join(macros)})" if macros else ""
        try:
            value = compile_check(check, self.hosts)(self.event) != negated
        except Exception as exc:
            raise _Unevaluable(f"error: {clause} — {self.values(check)}{where}: "
                               f"{type(exc).__name__}: {exc}") from None
        return value, [f"{'true' if value else 'false'}: {clause} — {self.values(check)}{where}"]

    def values(self, check: Check) -> str:
        if check.constant is not None:
            return "evt.num starts at 1 for every event, so this is decided without one"
        operands = [check.left, check.right, check.address]
        return ", ".join(self.value(op) for op in operands if op is not None)

    def value(self, operand: Operand) -> str:
        found = operand.extract(self.event)
        if found is None:
            return f"{operand.field_text} has no value"
        text = repr(found)
        if len(text) > _MAX_VALUE:
            text = text[:_MAX_VALUE] + "..."
        return f"{operand.field_text} is {text}"
