"""Property: a compiled condition agrees with a plain reference interpreter of the semantics
(reference §2.3-§2.4), over random conditions and random events.

The interpreter below is written from the spec, independently of the compiler: it reads the
event dict directly, treats a missing value as "every check false", and evaluates and/or/not
with Python's own operators. Conditions are rendered to text, so the parser is exercised too.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.engine.build import compile_condition
from detector.engine.explain import explain_rule
from tests.engine_support import HOSTS, REG

# field -> (kind, operators, literal pool)
STRINGS = ["bash", "sh", "BaSh", "zsh", "", "sshd", "a/b"]
PATHS = ["/etc/shadow", "/etc/", "/tmp/x", "/etc/ssh/a", "x"]
GLOBS = ["*sh", "/etc/*", "b?sh", "*", "*/*"]
NUMBERS = [-1, 0, 1, 3, 22]
ADDRS = ["10.0.0.1", "10.0.0.2", "192.168.1.1", "::1"]
NETS = ["10.0.0.0/8", "192.168.0.0/16", "::1/128", "10.0.0.2/32"]
STR_OPS = ["=", "!=", "contains", "icontains", "startswith", "endswith", "glob", "in", "exists"]
FIELDS: dict[str, tuple[str, list[str], list[Any]]] = {
    "proc.name": ("str", STR_OPS, STRINGS),
    "fd.name": ("str", STR_OPS, PATHS),
    "fd.num": ("num", ["=", "!=", "<", "<=", ">", ">=", "in", "exists"], NUMBERS),
    "proc.is_exe_upper_layer": ("bool", ["=", "!=", "exists"], [True, False]),
    "fd.sip": ("ip", ["=", "!=", "in", "exists"], ADDRS),
    "fd.snet": ("net", ["=", "!=", "in"], NETS),
    "proc.aname": ("anc", ["=", "!=", "in", "contains", "startswith", "exists"], STRINGS),
    "fd.ip": ("either", ["=", "!=", "in", "exists"], ADDRS),
    "test.items": ("list", ["in", "intersects", "exists"], STRINGS),
}
MODIFIABLE = ("=", "!=", "contains", "startswith", "endswith", "glob")


@st.composite
def comparisons(draw: st.DrawFn) -> tuple[Any, ...]:
    field = draw(st.sampled_from(sorted(FIELDS)))
    kind, ops, pool = FIELDS[field]
    op = draw(st.sampled_from(ops))
    if op == "exists":
        return ("cmp", field, op, None, ())
    if kind == "str" and op == "glob":
        pool = GLOBS
    modifier = None
    if kind == "str" and op in MODIFIABLE:
        modifier = draw(st.sampled_from([None, "anyof", "allof", "oneof"]))
    if op in ("in", "intersects") or modifier:
        values = tuple(draw(st.lists(st.sampled_from(pool), max_size=3)))
        if modifier and not values:
            values = (pool[0],)
    else:
        values = (draw(st.sampled_from(pool)),)
    return ("cmp", field, op, modifier, values)


conditions = st.recursive(
    comparisons(),
    lambda inner: st.one_of(
        st.tuples(st.just("not"), inner),
        st.tuples(st.just("and"), st.lists(inner, min_size=2, max_size=3)),
        st.tuples(st.just("or"), st.lists(inner, min_size=2, max_size=3)),
    ),
    max_leaves=8,
)


def _maybe(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # Mostly present: a check only shows its operator's semantics on a value.
    return st.one_of(values, values, values, st.just("<absent>"), st.none())


events = st.fixed_dictionaries({
    "proc.name": _maybe(st.sampled_from(STRINGS)),
    "fd.name": _maybe(st.sampled_from(PATHS)),
    "fd.num": _maybe(st.sampled_from(NUMBERS)),
    "proc.is_exe_upper_layer": _maybe(st.booleans()),
    "fd.sip": _maybe(st.sampled_from(ADDRS)),
    "fd.cip": _maybe(st.sampled_from(ADDRS)),
    "proc.aname": _maybe(st.lists(st.sampled_from(STRINGS), max_size=3)),
    "test.items": _maybe(st.lists(st.sampled_from(STRINGS), max_size=3)),
}).map(lambda e: {k: v for k, v in e.items() if v != "<absent>"})


# -- rendering to condition text --------------------------------------------------------------

def literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return f'"{value}"'


def render(node: tuple[Any, ...]) -> str:
    if node[0] == "not":
        return f"not ({render(node[1])})"
    if node[0] in ("and", "or"):
        return "(" + f" {node[0]} ".join(render(n) for n in node[1]) + ")"
    _, field, op, modifier, values = node
    if op == "exists":
        return f"{field} exists"
    if op in ("in", "intersects") or modifier:
        items = "(" + ", ".join(literal(v) for v in values) + ")"
        return f"{field} {op} {modifier + ' ' if modifier else ''}{items}"
    return f"{field} {op} {literal(values[0])}"


# -- the reference interpreter ----------------------------------------------------------------

def raw(field: str, event: dict[str, Any]) -> Any:
    kind = FIELDS[field][0]
    if kind in ("ip", "net"):
        value = event.get("fd.sip")
        return None if value is None else ipaddress.ip_address(value)
    if kind == "either":
        sides = [event.get(k) for k in ("fd.cip", "fd.sip")]
        if sides == [None, None]:
            return None
        return [None if s is None else ipaddress.ip_address(s) for s in sides]
    return event.get(field)


def holds(kind: str, op: str, value: Any, lit: Any) -> bool:
    if kind == "net":
        inside = value in ipaddress.ip_network(lit)
        return not inside if op == "!=" else inside
    if kind in ("ip", "either"):
        lit = ipaddress.ip_address(lit)
    return {
        "=": lambda: value == lit, "in": lambda: value == lit, "!=": lambda: value != lit,
        "<": lambda: value < lit, "<=": lambda: value <= lit,
        ">": lambda: value > lit, ">=": lambda: value >= lit,
        "contains": lambda: lit in value, "icontains": lambda: lit.lower() in value.lower(),
        "startswith": lambda: value.startswith(lit), "endswith": lambda: value.endswith(lit),
        "glob": lambda: fnmatch.fnmatchcase(value, lit),
    }[op]()


def scalar(kind: str, op: str, modifier: str | None, values: tuple[Any, ...], value: Any) -> bool:
    results = [holds(kind, op, value, lit) for lit in values]
    if op == "in" or modifier == "anyof":
        return any(results)
    if modifier == "allof":
        return all(results)
    if modifier == "oneof":
        return sum(results) == 1
    return results[0]


def reference(node: tuple[Any, ...], event: dict[str, Any]) -> bool:
    if node[0] == "not":
        return not reference(node[1], event)
    if node[0] == "and":
        return all(reference(n, event) for n in node[1])
    if node[0] == "or":
        return any(reference(n, event) for n in node[1])
    _, field, op, modifier, values = node
    kind, value = FIELDS[field][0], raw(field, event)
    if value is None:
        return False  # missing: every check is false, even != (and exists)
    if op == "exists":
        return len(value) > 0 if kind == "anc" else True
    if kind == "anc":
        return any(scalar("str", op, modifier, values, v) for v in value)
    if kind == "either":
        present = [v for v in value if v is not None]
        if op == "!=":
            return all(scalar(kind, op, modifier, values, v) for v in present)
        return any(scalar(kind, op, modifier, values, v) for v in present)
    if kind == "list":
        member = [v in values for v in value]
        return all(member) if op == "in" else any(member)
    return scalar(kind, op, modifier, values, value)


def check_agreement(condition: tuple[Any, ...], event_list: list[dict[str, Any]]) -> None:
    text = render(condition)
    compiled, tree = compile_condition(text, registry=REG, hosts=HOSTS)
    rule = SimpleNamespace(name="r", tree=tree, checks=compiled.checks, enabled=True)
    for event in event_list:
        expected = reference(condition, event)
        assert compiled.match(event) is expected, (text, event, compiled.source)
        verdict = explain_rule(rule, event, True, HOSTS).splitlines()[0]  # type: ignore[arg-type]
        assert verdict.endswith("does not match this event") is not expected, (text, event)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(condition=comparisons(), event_list=st.lists(events, min_size=4, max_size=12))
def test_each_comparison_agrees_with_the_reference(
    condition: tuple[Any, ...], event_list: list[dict[str, Any]]
) -> None:
    check_agreement(condition, event_list)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(condition=conditions, event_list=st.lists(events, min_size=1, max_size=6))
def test_whole_conditions_agree_with_the_reference(
    condition: tuple[Any, ...], event_list: list[dict[str, Any]]
) -> None:
    check_agreement(condition, event_list)
