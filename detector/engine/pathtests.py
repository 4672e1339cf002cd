"""Which opened paths some rule could match: the filter the eBPF source applies in the kernel.

A node opens files all the time, and with the usual rules almost none of those opens can
matter (the stable rules look at /etc, /root/.ssh, log files and release_agent). Sending each
one to the detector costs more kernel time than the syscall itself, so the source asks the
rules, once, what an opened path must look like for any of them to match, and the kernel
drops the rest.

``open_path_tests(rules)`` derives that from the conditions. Under the assumption that the
event is an open, each condition is reduced to a necessary test on ``fd.name``: a leaf on a
path field (``fd.name``, ``fd.nameraw``, ``fd.directory``, ``fd.filename`` compared to
literals) gives the tests it stands for; a leaf that rules out open events gives "never"; any
other leaf, and any negated path leaf, gives "any path". ``and`` keeps the cheapest of its
parts that restricts the path (any one is necessary), ``or`` unites them, ``not`` is pushed
down to the leaves. The result holds for normal-form absolute paths only (where the raw and
the normalised name are the same); the kernel side sends every other path on unfiltered.
None means some rule can match any path, and nothing is filtered.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from detector.engine import ast
from detector.engine.evttypes import leaf_types, literal_texts
from detector.engine.macros import BoolAnd, BoolNot, BoolOr, Expanded, Tree

OPEN_TYPES = frozenset({"open", "openat", "openat2"})
SYSCALL = "syscall"


@dataclass(frozen=True, slots=True, order=True)
class PathTest:
    """``kind`` is one of exact, prefix, suffix, contains (on the whole path), directory
    (the path's parent is ``text``) and filename (its last component is ``text``)."""

    kind: str
    text: str

    @property
    def cost(self) -> int:
        return 8 if self.kind == "contains" else 1  # a scan against one comparison


# A reduced condition: None is "any path", an empty set "never", else "one of these tests".
_Need = frozenset[PathTest] | None
_NEVER: frozenset[PathTest] = frozenset()
# (field, operator) -> the kind of test each literal makes.
_KINDS = {
    ("fd.name", "="): "exact", ("fd.nameraw", "="): "exact",
    ("fd.name", "in"): "exact", ("fd.nameraw", "in"): "exact",
    ("fd.name", "startswith"): "prefix", ("fd.nameraw", "startswith"): "prefix",
    ("fd.name", "endswith"): "suffix", ("fd.nameraw", "endswith"): "suffix",
    ("fd.name", "contains"): "contains", ("fd.nameraw", "contains"): "contains",
    ("fd.directory", "="): "directory", ("fd.directory", "in"): "directory",
    ("fd.filename", "="): "filename", ("fd.filename", "in"): "filename",
}


_PATH_FIELDS = ("fd.name", "fd.nameraw")
_GLOB_META = re.compile(r"[*?\[\]\\]")


class _Rule(Protocol):
    enabled: bool
    source: str
    event_types: frozenset[str] | None
    tree: Tree


def open_path_tests(rules: Sequence[_Rule]) -> tuple[PathTest, ...] | None:
    """The tests an opened path must pass (any one of them) for an enabled syscall rule to
    match the open; None when some rule can match whatever the path."""
    tests: set[PathTest] = set()
    for rule in rules:
        if not rule.enabled or rule.source != SYSCALL:
            continue
        if rule.event_types is not None and not rule.event_types & OPEN_TYPES:
            continue
        need = _need(rule.tree, negated=False)
        if need is None:
            return None
        tests |= need
    return tuple(sorted(tests))


def _need(node: Tree, *, negated: bool) -> _Need:
    if isinstance(node, Expanded):
        return _need(node.body, negated=negated)
    if isinstance(node, BoolNot):
        return _need(node.operand, negated=not negated)
    if isinstance(node, BoolAnd | BoolOr):
        parts = [_need(item, negated=negated) for item in node.items]
        return _all_of(parts) if isinstance(node, BoolAnd) != negated else _any_of(parts)
    return _leaf(node, negated)


def _all_of(parts: Iterable[_Need]) -> _Need:
    known = [part for part in parts if part is not None]
    if not known:
        return None
    return min(known, key=lambda tests: (sum(t.cost for t in tests), sorted(tests)))


def _any_of(parts: Iterable[_Need]) -> _Need:
    tests: set[PathTest] = set()
    for part in parts:
        if part is None:
            return None
        tests |= part
    return frozenset(tests)


def _leaf(node: ast.Compare, negated: bool) -> _Need:
    can_true, can_false = leaf_types(node)
    if not (can_false if negated else can_true) & OPEN_TYPES:
        return _NEVER  # an evt.type (or evt.num) test that no open passes
    left = node.left
    if negated or not isinstance(left, ast.Field) or left.arg is not None:
        return None
    if node.modifier is not None or not isinstance(node.right, ast.Value | ast.ListValue):
        return None
    if left.name in _PATH_FIELDS and node.op in ("glob", "pmatch"):
        pattern_tests = [_pattern_test(text, node.op) for text in literal_texts(node.right)]
        return None if None in pattern_tests else frozenset(
            t for t in pattern_tests if t is not None)
    kind = _KINDS.get((left.name, node.op))
    if kind is None:
        return None
    tests = set()
    for text in literal_texts(node.right):
        if kind == "filename" and "/" in text:
            continue  # a last component has no slash: this one can never match
        tests.add(PathTest(kind, text))
    return frozenset(tests)


def _pattern_test(pattern: str, op: str) -> PathTest | None:
    """A test every path matching a glob (or a pmatch entry, a path prefix whose components
    may be globs) passes: its literal start, else its literal end, else its longest literal
    run; None when it has no literal part at all."""
    runs = _GLOB_META.split(pattern)
    if runs[0]:
        return PathTest("prefix", runs[0])
    if op == "glob" and runs[-1]:
        return PathTest("suffix", runs[-1])
    longest = max(runs, key=len)
    return PathTest("contains", longest) if longest else None
