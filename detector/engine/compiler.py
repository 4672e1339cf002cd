"""Conditions -> Python source -> one function per rule, compiled once, called per event.

The inlined, typed condition becomes a single expression: ``and``/``or``/``not`` map to Python's
own short-circuiting operators (same order, so same results), and each comparison becomes an
inline test on the event (``emit.py``):

    g('proc.name') in _s0                                   # `in` on a plain field
    (_v1 := g('fd.name')) is not None and _v1.startswith('/etc/')
    (_v2 := _x0(ev)) is not None and _v2 != 0               # a derived field: its extractor

Plain fields are read with ``ev.get`` directly in the source (no extractor call); derived ones
call their extractor, bound in the closure with every other pre-built value (frozensets,
compiled regexes, IP networks). A missing value (None) makes the test false before the
operator runs, whatever the operator, so ``not`` of it is true. Comparisons known without an
event (the ``evt.num`` invariant, e.g. the ``never_true`` macro) are folded away, and a
double ``not`` cancels out (every comparison is a real bool).

The same generator builds the index's bucket functions (``bucket.py``), which evaluate several
rules in one function.
"""

from __future__ import annotations

import itertools
import linecache
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from detector.engine import ast
from detector.engine.checks import Check, CheckBuilder
from detector.engine.dnscache import HostAddresses
from detector.engine.emit import Emitter
from detector.engine.macros import BoolAnd, BoolNot, BoolOr, Expanded, Tree

Event = Mapping[str, Any]
Match = Callable[[Event], bool]
CheckKey = tuple[str | None, ast.Compare]

# CPython's parser refuses ~200 nested parentheses: deeper sub-conditions become functions.
_SPLIT_DEPTH = 60
_sources = itertools.count()


@dataclass(frozen=True, slots=True)
class CompiledCondition:
    match: Match
    source: str  # the generated Python, for debugging and the docs
    checks: dict[CheckKey, Check]  # every typed comparison, for explain()


class Compiler:
    """Compiles inlined condition trees of one ruleset."""

    def __init__(self, builder: CheckBuilder, hosts: HostAddresses) -> None:
        self._builder = builder
        self._hosts = hosts

    def compile(self, tree: Tree, name: str = "condition") -> CompiledCondition:
        gen = Gen(self._builder.build, self._hosts)
        expr = gen.node(tree, None, 1)
        return CompiledCondition(gen.function([f"return {expr}"], name), gen.source, gen.checks)


def compile_check(check: Check, hosts: HostAddresses) -> Match:
    """One comparison alone (explain() evaluates a rule clause by clause with these)."""
    gen = Gen(None, hosts)
    return gen.function([f"return {gen.leaf(check)}"], "check")


class Gen(Emitter):
    """Code generation for one function: the boolean structure, and the function itself.

    ``cached_macros`` are evaluated at most once per call and kept in locals (see Emitter for
    the other options): in a bucket several rules use the same macros.
    """

    def __init__(
        self,
        lookup: Callable[[ast.Compare, str | None], Check] | None,
        hosts: HostAddresses,
        *,
        event_types: frozenset[str] | None = None,
        cached_fields: frozenset[tuple[str, str | None]] = frozenset(),
        cached_macros: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(hosts, event_types, cached_fields)
        self.lookup = lookup
        self.cached_macros = cached_macros
        self.checks: dict[CheckKey, Check] = {}
        self.source = ""

    # -- the function -----------------------------------------------------------------------

    def function(self, body: list[str], name: str) -> Callable[[Event], Any]:
        names = list(self.bound)
        lines = ["g = ev.get", *self.prologue, *body]
        text = "".join(f"        {line}\n" for line in "\n".join(lines).split("\n"))
        self.source = (
            f"def _bind({', '.join(names)}):\n"
            f"    def {_identifier(name)}(ev):\n{text}"
            f"    return {_identifier(name)}\n"
        )
        # Registered with linecache so tracebacks and profilers show the generated lines.
        filename = f"<lanner rule {next(_sources)}: {name}>"
        code = compile(self.source, filename, "exec")
        linecache.cache[filename] = (len(self.source), None, self.source.splitlines(True),
                                     filename)
        namespace: dict[str, Any] = {}
        exec(code, namespace)
        return namespace["_bind"](*self.bound.values())  # type: ignore[no-any-return]

    # -- boolean structure ------------------------------------------------------------------

    def node(self, node: Tree, owner: str | None, depth: int) -> str | bool:
        if depth > _SPLIT_DEPTH:
            part = Gen(self.lookup, self.hosts, event_types=self.event_types)
            code = part.node(node, owner, 1)
            self.checks.update(part.checks)
            if isinstance(code, bool):
                return code
            return f"{self.bind(part.function([f'return {code}'], 'part'), '_p')}(ev)"
        if isinstance(node, Expanded):
            code = self.node(node.body, node.name, depth)
            if node.name not in self.cached_macros or isinstance(code, bool):
                return code
            return self.cached(("macro", node.name), "_M", "None", code)
        if isinstance(node, BoolNot):
            inner = node.operand
            while isinstance(inner, Expanded) and inner.name not in self.cached_macros:
                owner, inner = inner.name, inner.body
            if isinstance(inner, BoolNot):  # not not x == x: every check is a real bool
                return self.node(inner.operand, owner, depth)
            code = self.node(inner, owner, depth + 1)
            if isinstance(code, bool):
                return not code
            return f"not {code}" if _enclosed(code) else f"not ({code})"
        if isinstance(node, BoolAnd | BoolOr):
            return self.junction(node, owner, depth)
        assert self.lookup is not None, "whole trees need a way to type their comparisons"
        check = self.lookup(node, owner)
        self.checks[(owner, node)] = check
        return self.leaf(check)

    def junction(self, node: BoolAnd | BoolOr, owner: str | None, depth: int) -> str | bool:
        is_and = isinstance(node, BoolAnd)
        # Every item is compiled (and type-checked) even when a constant decides the result.
        parts = [self.node(item, item_owner, depth + 1)
                 for item, item_owner in _flatten(node, owner, self.cached_macros)]
        if (not is_and) in parts:
            return not is_and  # False in an `and`, True in an `or`: decided
        code = [p for p in parts if not isinstance(p, bool)]
        if not code:
            return is_and
        if len(code) == 1:
            return code[0]
        indent = "\n" + "    " * depth
        word = "and " if is_and else "or "
        inner = (indent + word).join(_paren(c) for c in code)
        return f"({indent}{inner}{indent[:-4]})"


def _flatten(
    node: BoolAnd | BoolOr, owner: str | None, cached: frozenset[str]
) -> list[tuple[Tree, str | None]]:
    """Items of an and/or, with nested ones of the same kind (often from macros) spliced in
    (but a cached macro stays whole: its value is kept, not its parts)."""
    out: list[tuple[Tree, str | None]] = []
    for item in node.items:
        item_owner = owner
        inner = item
        while isinstance(inner, Expanded) and inner.name not in cached:
            item_owner, inner = inner.name, inner.body
        if type(inner) is type(node):
            assert isinstance(inner, BoolAnd | BoolOr)
            out.extend(_flatten(inner, item_owner, cached))
        else:
            out.append((item, owner))
    return out


def _paren(code: str) -> str:
    """``code`` safe to put next to and/or/not: leaves that are one comparison stay bare."""
    if _enclosed(code):
        return code
    if " and " in code or " or " in code or code.startswith("not ") or " if " in code:
        return f"({code})"
    return code


def _enclosed(code: str) -> bool:
    """Whether ``code`` is one parenthesised whole (quotes in it are respected)."""
    if not (code.startswith("(") and code.endswith(")")):
        return False
    depth, quote, escaped = 0, "", False
    for i, ch in enumerate(code):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0 and i != len(code) - 1:
                return False
    return True


def _identifier(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")
    return f"rule_{cleaned}"[:60] if cleaned.isascii() else "rule"
