"""From loaded rules to compiled rules: parse, inline macros, type, generate, derive event
types, warn.

Every error is located for the user: the file and line of the condition it is in (the macro's
own condition when the mistake is in a macro), and the offending text underlined.
"""

from __future__ import annotations

import dataclasses
import linecache
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from detector.engine import ast
from detector.engine.checks import Check, CheckBuilder, UnknownFilter
from detector.engine.compiler import CheckKey, CompiledCondition, Compiler
from detector.engine.dnscache import HostAddresses
from detector.engine.errors import RuleError, RuleWarning
from detector.engine.evttypes import ALL_EVENT_TYPES, derive
from detector.engine.fields import FieldRegistry
from detector.engine.macros import Tree, inline, macro_item
from detector.engine.model import LoadedRules, Origin, Rule
from detector.engine.output import Formatter, compile_output
from detector.engine.parser import parse_condition
from sidekick.alert import Priority

Event = Mapping[str, Any]
# Falco warns when a rule needs more than this many event types (LOAD_NO_EVTTYPE).
TOO_MANY_EVENT_TYPES = 100


@dataclass(eq=False, slots=True)
class CompiledRule:
    name: str
    priority: Priority
    tags: list[str]
    source: str
    enabled: bool
    desc: str
    condition: str  # the condition as compiled: lists substituted, exceptions appended
    output: str
    event_types: frozenset[str] | None  # None: every event type
    matches: Callable[[Event], bool]
    code: str  # the generated Python source of ``matches``
    tree: Tree  # the condition with macros inlined, for explain()
    checks: dict[CheckKey, Check]
    formatter: Formatter
    origin: Origin


# What Falco's container plugin flags as "suggested output" and Falco's default config appends
# (`append_output: [suggested_output: true]`): the stable rules leave the container to it.
SUGGESTED_OUTPUT = (("container_id", "container.id"), ("container_name", "container.name"))


def with_suggested_output(output: str) -> str:
    """``output`` plus ``container_id=%container.id container_name=%container.name``, each
    unless the rule already prints that field."""
    extra = [f"{key}=%{field}" for key, field in SUGGESTED_OUTPUT if f"%{field}" not in output]
    return " ".join([output, *extra]) if extra else output


class RulesetBuilder:
    def __init__(
        self,
        loaded: LoadedRules,
        registry: FieldRegistry,
        hosts: HostAddresses,
        suggested_output: bool = True,
    ) -> None:
        self.suggested_output = suggested_output
        self.loaded = loaded
        self.registry = registry
        self.hosts = hosts
        self.sources = registry.sources()
        self.warnings: list[RuleWarning] = []
        self.macro_texts = {name: m.condition for name, m in loaded.macros.items()}

    def build(self) -> list[CompiledRule]:
        macros: dict[str, ast.Node] = {}
        for name, macro in self.loaded.macros.items():
            try:
                macros[name] = parse_condition(macro.condition)
            except RuleError as exc:
                raise self._locate(exc, macro.origin, macro.condition, macro_item(name)) from None
        compiled = []
        for rule in self.loaded.rules:
            if rule.source not in self.sources:
                self._warn(rule, "LOAD_UNKNOWN_SOURCE", f"Unknown source {rule.source}, skipping")
                continue
            try:
                result = self._rule(rule, macros)
            except UnknownFilter as exc:
                if not rule.skip_if_unknown_filter:
                    raise self._located(exc, rule) from None
                self._warn(rule, "LOAD_UNKNOWN_FILTER", f"{exc.message}; rule skipped")
                continue
            except RuleError as exc:
                raise self._located(exc, rule) from None
            compiled.append(result)
        return compiled

    def _rule(self, rule: Rule, macros: Mapping[str, ast.Node]) -> CompiledRule:
        tree = _inlined(parse_condition(rule.condition), macros)
        checks = CheckBuilder(self.registry, {**self.macro_texts, None: rule.condition},
                              rule.source)
        condition = Compiler(checks, self.hosts).compile(tree, rule.name)
        formatter = self._output(rule)
        event_types = derive(tree) if rule.source == "syscall" else None
        count = len(ALL_EVENT_TYPES) if event_types is None else len(event_types)
        if rule.source == "syscall" and rule.warn_evttypes and count > TOO_MANY_EVENT_TYPES:
            self._warn(rule, "LOAD_NO_EVTTYPE", "Rule matches too many evt.type values. This "
                       "has a significant performance penalty.")
        seen: set[tuple[str, str]] = set()
        for check in condition.checks.values():
            for code, message in check.warnings:
                if (code, message) not in seen:
                    seen.add((code, message))
                    self._warn(rule, code, message)
        return CompiledRule(
            name=rule.name, priority=rule.priority, tags=sorted(rule.tags), source=rule.source,
            enabled=rule.enabled, desc=rule.desc, condition=rule.condition, output=rule.output,
            event_types=event_types, matches=condition.match, code=condition.source, tree=tree,
            checks=condition.checks, formatter=formatter, origin=rule.origin,
        )

    def _output(self, rule: Rule) -> Formatter:
        def warn(message: str, column: int) -> None:
            self._warn(rule, "LOAD_DEPRECATED_ITEM", message)

        output = rule.output
        if self.suggested_output and rule.source == "syscall":
            output = with_suggested_output(output)
        try:
            return compile_output(output, self.registry, warn, rule.source)
        except RuleError as exc:
            # output.py has no error class of its own for an unknown field; its message does.
            if exc.message.startswith("unknown field"):
                raise UnknownFilter(exc.message, column=exc.column, text=exc.text,
                                    length=exc.length, item="output") from None
            raise dataclasses.replace(exc, item="output") from None

    def _warn(self, rule: Rule, code: str, message: str) -> None:
        self.warnings.append(RuleWarning(message, rule.origin.file or None, rule.origin.line,
                                         f"rule '{rule.name}'", code))

    def _located(self, exc: RuleError, rule: Rule) -> RuleError:
        label = f"rule '{rule.name}'"
        if exc.item == "output":  # a column into the output format: no condition position
            return dataclasses.replace(exc, file=rule.origin.file or None,
                                       line=rule.origin.line, item=f"{label} output")
        if exc.item is None:
            return self._locate(exc, rule.origin, rule.condition, label)
        macro = self.loaded.macros[exc.item[len("macro '"):-1]]
        return self._locate(exc, macro.origin, macro.condition, f"{exc.item} (used by {label})")

    def _locate(self, exc: RuleError, origin: Origin, text: str, item: str) -> RuleError:
        """File, line, column and source text for an error located within a condition."""
        line_no, column = exc.line or 1, exc.column
        lines = text.split("\n")
        snippet = lines[line_no - 1] if line_no <= len(lines) else text
        start = origin.condition_line or origin.line
        if column is not None and line_no == 1 and origin.condition_column is not None:
            # When the file line holds the condition exactly as compiled (no list substituted
            # before the error), point into the file itself.
            source = ""
            if origin.file:
                linecache.checkcache(origin.file)  # the file may have changed since last read
                source = linecache.getline(origin.file, start).rstrip("\r\n")
            at = origin.condition_column - 1
            end = column - 1 + exc.length
            if source[at:at + end] == snippet[:end]:
                snippet, column = source, at + column
        return dataclasses.replace(exc, file=origin.file or None, line=start + line_no - 1,
                                   item=item, text=snippet, column=column)


def compile_condition(
    condition: str,
    macros: Mapping[str, str] | None = None,
    *,
    registry: FieldRegistry,
    hosts: HostAddresses,
) -> tuple[CompiledCondition, Tree]:
    """One condition (and the macros it may use, as text), outside any rules file: for tools
    and tests. Errors carry the text of the condition (or macro) their column points into."""
    texts = dict(macros or {})
    try:
        trees = {}
        for name, text in texts.items():
            owner = macro_item(name)
            trees[name] = _parsed(text, owner)
        tree = _inlined(_parsed(condition, None), trees)
        checks = CheckBuilder(registry, {**texts, None: condition})
        return Compiler(checks, hosts).compile(tree), tree
    except RuleError as exc:
        owner_text = condition if exc.item is None else texts[exc.item[len("macro '"):-1]]
        if exc.text is None:
            exc.text = owner_text.split("\n")[(exc.line or 1) - 1]
        raise


def _parsed(text: str, item: str | None) -> ast.Node:
    try:
        return parse_condition(text)
    except RuleError as exc:
        exc.item = item
        raise


def _inlined(node: ast.Node, macros: Mapping[str, ast.Node]) -> Tree:
    """Macros inlined, with room on the stack for the passes that walk the tree recursively."""
    _ensure_stack_room(_depth(node, macros))
    return inline(node, macros)


def _depth(node: ast.Node, macros: Mapping[str, ast.Node]) -> int:
    """How deep the inlined tree will be (an upper bound, computed without recursion)."""
    deepest, stack = 0, [(node, 1, 0)]
    while stack:
        item, depth, hops = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, ast.Not):
            stack.append((item.operand, depth + 1, hops))
        elif isinstance(item, ast.And | ast.Or):
            stack.extend((i, depth + 1, hops) for i in item.items)
        elif isinstance(item, ast.MacroRef) and item.name in macros and hops < len(macros):
            stack.append((macros[item.name], depth + 1, hops + 1))  # hops: cycles end
    return deepest


def _ensure_stack_room(depth: int) -> None:
    # Each level of the tree costs a few frames in inlining, typing and code generation. The
    # limit is only ever raised (Python 3.11 runs Python calls without C recursion).
    frame, frames = sys._getframe(), 0
    while frame is not None:
        frame, frames = frame.f_back, frames + 1
    needed = 4 * depth + 200 + frames
    if sys.getrecursionlimit() < needed:
        sys.setrecursionlimit(needed)
