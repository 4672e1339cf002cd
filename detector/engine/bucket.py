"""The event-type index, with one generated function per bucket of rules.

Event types that need the same rules (open, openat and openat2 do, for the stable rules) share
a bucket; its function evaluates all of them in rule order on one event and returns the
positions of those that matched. Generating one function per bucket instead of calling each
rule's lets the rules share work without changing any result:

- ``evt.type`` checks the bucket's types decide are constants (the index already chose them);
- a derived field read by several rules (``evt.is_open_read``, ``fd.directory``...) is
  extracted once per event and kept in a local;
- a macro used by several rules (``open_read``, ``spawned_process``...) is evaluated once per
  event, when first needed, and its value kept.

Conditions are pure functions of the event, so evaluating a shared piece once is the same as
evaluating it in every rule; and every rule still short-circuits in its own order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from detector.engine import ast
from detector.engine.build import CompiledRule
from detector.engine.checks import Check
from detector.engine.compiler import CheckKey, Gen
from detector.engine.dnscache import HostAddresses
from detector.engine.macros import BoolAnd, BoolNot, BoolOr, Expanded, Tree

Event = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Bucket:
    rules: tuple[CompiledRule, ...]  # in rule order
    match: Callable[[Event], tuple[int, ...]]  # positions in ``rules`` of the matching ones
    source: str  # the generated Python


Index = tuple[dict[str, Bucket], Bucket]  # per event type, and for any other type


def build_index(rules: Sequence[CompiledRule], hosts: HostAddresses, first: bool) -> Index:
    """Buckets for enabled rules of one source, in rule order. ``first``: stop at a match."""
    every_type = tuple(r for r in rules if r.event_types is None)
    groups: dict[tuple[int, ...], set[str]] = {}
    for t in sorted({t for r in rules if r.event_types is not None for t in r.event_types}):
        members = tuple(i for i, r in enumerate(rules)
                        if r.event_types is None or t in r.event_types)
        groups.setdefault(members, set()).add(t)
    by_type: dict[str, Bucket] = {}
    for members, types in groups.items():
        bucket = compile_bucket([rules[i] for i in members], frozenset(types), hosts, first)
        by_type.update(dict.fromkeys(types, bucket))
    return by_type, compile_bucket(every_type, None, hosts, first)


def compile_bucket(
    rules: Sequence[CompiledRule],
    event_types: frozenset[str] | None,
    hosts: HostAddresses,
    first: bool,
) -> Bucket:
    checks: dict[CheckKey, Check] = {}
    for rule in rules:
        checks.update(rule.checks)
    fields, macros = _usage(rules, checks)
    gen = Gen(
        lambda compare, owner: checks[(owner, compare)],
        hosts,
        event_types=event_types,
        cached_fields=frozenset(f for f, n in fields.items() if n > 1),
        cached_macros=frozenset(m for m, n in macros.items() if n > 1),
    )
    body = [] if first else ["hits = ()"]
    for position, rule in enumerate(rules):
        code = gen.node(rule.tree, None, 1)
        if code is False:
            continue
        hit = f"return ({position},)" if first else f"hits += ({position},)"
        body.append(hit if code is True else f"if {code}:\n    {hit}")
    body.append("return ()" if first else "return hits")
    name = "bucket_" + "_".join(sorted(event_types or {"any"}))[:40]
    match = gen.function(body, name)
    return Bucket(tuple(rules), match, gen.source)


def _usage(
    rules: Sequence[CompiledRule], checks: Mapping[CheckKey, Check]
) -> tuple[Counter[tuple[str, str | None]], Counter[str]]:
    """How often each derived field is read and each macro used, over the bucket's rules."""
    fields: Counter[tuple[str, str | None]] = Counter()
    macros: Counter[str] = Counter()
    stack: list[tuple[Tree, str | None]] = [(rule.tree, None) for rule in rules]
    while stack:
        node, owner = stack.pop()
        if isinstance(node, Expanded):
            macros[node.name] += 1
            stack.append((node.body, node.name))
        elif isinstance(node, BoolNot):
            stack.append((node.operand, owner))
        elif isinstance(node, BoolAnd | BoolOr):
            stack.extend((item, owner) for item in node.items)
        elif isinstance(node, ast.Compare):
            check = checks[(owner, node)]
            for operand in (check.left, check.right, check.address):
                if operand is not None and operand.key is None:
                    fields[(operand.spec.name, operand.arg)] += 1
    return fields, macros
