"""Code for one comparison: the inline Python test a condition's leaf becomes.

Each test reads its field, gives up (false) when the value is missing, then applies the
operator to pre-built values bound in the function's closure:

    g('proc.name') in _s0                                   # `in` on a plain field
    (_v1 := g('fd.name')) is not None and _v1.startswith('/etc/')
    (_v2 := _x0(ev)) is not None and _v2 != 0               # a derived field: its extractor

``compiler.Gen`` adds the boolean structure and assembles the function.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from detector.engine.checks import TRANSFORMS, Check, Operand
from detector.engine.dnscache import HostAddresses
from detector.engine.evttypes import EVTTYPE_FIELDS
from detector.engine.fields import Extractor, FieldType
from detector.engine.matchers import ascii_lower, ascii_upper, b64decode, basename, glob_regex

Event = Mapping[str, Any]

_HELPERS: dict[str, Any] = {
    "_lower": ascii_lower,
    "_upper": ascii_upper,
    "_b64": b64decode,
    "_basename": basename,
}
_TRANSFORM_CALLS = {"tolower": "_lower", "toupper": "_upper", "b64": "_b64",
                    "basename": "_basename"}
FIXED_NAMES = frozenset((*_HELPERS, "_U"))
_UNSET = object()  # a cached field not read yet (None is a value: "missing")
_INLINE_LITERALS = (str, int, bytes, bool, float)


@lru_cache(maxsize=1024)
def _dynamic_glob(pattern: str, casefold: bool) -> Callable[[str], Any]:
    """Globs whose pattern is a field's value (``glob val(x)``), compiled once per pattern."""
    return glob_regex(pattern, casefold).fullmatch


class Emitter:
    """Closure values, locals and comparison code for one generated function.

    ``event_types``: the function only ever sees events of these types (an index bucket), so
    ``evt.type`` checks they decide are folded. ``cached_fields`` (name, arg) are read at most
    once per call and kept in locals: in a bucket several rules read the same derived fields.
    """

    def __init__(
        self,
        hosts: HostAddresses,
        event_types: frozenset[str] | None,
        cached_fields: frozenset[tuple[str, str | None]],
    ) -> None:
        self.hosts = hosts
        self.event_types = event_types
        self.cached_fields = cached_fields
        self.bound: dict[str, Any] = {}  # closure variable -> value
        self._bound_ids: dict[Any, str] = {}
        self._vars = itertools.count()
        self._locals: dict[Any, str] = {}  # cache key -> local variable
        self.prologue: list[str] = []  # initialises the cache locals

    def bind(self, value: Any, prefix: str, key: Any = None) -> str:
        """A closure variable holding ``value`` (one per distinct ``key``, default identity)."""
        key = ("id", id(value)) if key is None else key
        name = self._bound_ids.get(key)
        if name is None:
            name = prefix if prefix in FIXED_NAMES else f"{prefix}{len(self.bound)}"
            self._bound_ids[key] = name
            self.bound[name] = value
        return name

    def var(self) -> str:
        return f"_v{next(self._vars)}"

    def cached(self, key: Any, prefix: str, unset: str, compute: str) -> str:
        """``compute`` evaluated on first use only, kept in a local initialised to ``unset``.

        Locals are named _F/_M/_v, never like a bound closure variable (_x _s _m _c...): a
        local of the same name would hide it."""
        local = self._locals.get(key)
        if local is None:
            local = self._locals[key] = f"{prefix}{len(self._locals)}"
            self.prologue.append(f"{local} = {unset}")
        return f"({local} if {local} is not {unset} else ({local} := {compute}))"

    def literal(self, value: Any) -> str:
        if type(value) in _INLINE_LITERALS:
            return repr(value)
        return self.bind(value, "_c", ("const", type(value), value))

    # -- boolean structure ------------------------------------------------------------------


    def leaf(self, c: Check) -> str | bool:
        if c.constant is not None:
            return c.constant
        if self.event_types is not None:
            known = _event_type_known(c, self.event_types)
            if known is not None:
                return known
        left = c.left
        if c.op == "exists":
            return self.exists(left)
        if c.right is not None:
            return self.dynamic(c)
        if c.address is not None:
            return self.resolving(c)
        if left.shape == "ancestors":
            return self.any_ancestor(c)
        if left.shape == "either":
            return self.either_side(c)
        if left.shape == "list":
            guards, vs = self.pipeline(left)
            s = self.value_set(c)
            test = f"{s}.issuperset({vs})" if c.op == "in" else f"not {s}.isdisjoint({vs})"
            return _join([*guards, test])
        if not left.transforms and c.modifier is None and _none_safe(c):
            return self.test(c, self.extract(left))
        guards, v = self.pipeline(left)
        return _join([*guards, self.test(c, v)])

    def extract(self, operand: Operand) -> str:
        if operand.key is not None:
            return f"g({operand.key!r})"
        key = ("extract", operand.spec.name, operand.arg)
        call = f"{self.bind(operand.extract, '_x', key)}(ev)"
        if (operand.spec.name, operand.arg) in self.cached_fields:
            return self.cached(key, "_F", self.bind(_UNSET, "_U"), call)
        return call

    def pipeline(self, operand: Operand) -> tuple[list[str], str]:
        """Guards that read the operand and apply its transformers, and the variable that then
        holds its (non-None) value."""
        v = self.var()
        guards = [f"({v} := {self.extract(operand)}) is not None"]
        typ = operand.spec.type
        for func in operand.transforms:
            if func == "len":
                expr = f"len({v})"
            elif typ is FieldType.LIST:
                expr = f"[{self.bind(_HELPERS[_TRANSFORM_CALLS[func]], _TRANSFORM_CALLS[func])}" \
                       f"(_e) for _e in {v}]"
            else:
                call = _TRANSFORM_CALLS[func]
                expr = f"{self.bind(_HELPERS[call], call)}({v})"
            guards.append(f"({v} := {expr}) is not None")
            typ = TRANSFORMS[func][typ]
        return guards, v

    def exists(self, left: Operand) -> str:
        guards, v = self.pipeline(left)
        if left.shape == "ancestors":
            guards.append(f"len({v}) > 0")
        return _join(guards)

    def value_set(self, c: Check) -> str:
        values = frozenset(c.values)
        return self.bind(values, "_s", ("set", values))

    def test(self, c: Check, x: str) -> str:
        """``x`` (a non-None value, or a plain read when ``_none_safe``) against the literals."""
        if c.modifier is not None:
            return self.modified(c, x)
        if c.op == "pmatch":
            return f"{self.bind(c.matchers[0], '_m')}({x})"
        if c.op in ("in", "intersects") and len(c.values) != 1:
            if c.left.type is FieldType.IPNET:
                nets = tuple(c.values)
                return f"{self.bind(lambda a: any(a in n for n in nets), '_n')}({x})"
            return f"{x} in {self.value_set(c)}"
        return self.compare(c.op, x, c.values[0], c.matchers[0] if c.matchers else None,
                            c.left.type is FieldType.IPNET)

    def compare(self, op: str, x: str, value: Any, matcher: Any, net: bool) -> str:
        lit = self.literal(value)
        if op in ("=", "in", "intersects"):
            return f"{x} in {lit}" if net else f"{x} == {lit}"
        if op == "!=":
            return f"{x} not in {lit}" if net else f"{x} != {lit}"
        if op in ("<", "<=", ">", ">="):
            return f"{x} {op} {lit}"
        if op in ("contains", "bcontains"):
            return f"{lit} in {x}"
        if op == "icontains":
            return f"{lit} in {self.bind(ascii_lower, '_lower')}({x})"
        if op in ("startswith", "bstartswith"):
            return f"{x}.startswith({lit})"
        if op == "endswith":
            return f"{x}.endswith({lit})"
        return f"{self.bind(matcher, '_m')}({x}) is not None"  # glob, iglob, regex

    def modified(self, c: Check, x: str) -> str:
        net = c.left.type is FieldType.IPNET
        if c.modifier == "anyof" and c.op == "=" and not net:
            return f"{x} in {self.value_set(c)}"
        matchers = c.matchers or (None,) * len(c.values)
        tests = [self.compare(c.op, x, value, matcher, net)
                 for value, matcher in zip(c.values, matchers, strict=True)]
        if c.modifier == "oneof":
            return f"({' + '.join(f'({t})' for t in tests)} == 1)" if tests else "False"
        if not tests:
            return "True" if c.modifier == "allof" else "False"
        return f"({(' and ' if c.modifier == 'allof' else ' or ').join(tests)})"

    def any_ancestor(self, c: Check) -> str:
        vs = self.var()
        head = f"({vs} := {self.extract(c.left)}) is not None"
        if c.modifier is None and c.left.type is not FieldType.IPNET:
            if c.op == "=" or (c.op in ("in", "intersects") and len(c.values) == 1):
                return f"{head} and {self.literal(c.values[0])} in {vs}"
            if c.op in ("in", "intersects"):
                return f"{head} and not {self.value_set(c)}.isdisjoint({vs})"
        x = self.var()
        return f"{head} and any({x} is not None and {self.test(c, x)} for {x} in {vs})"

    def either_side(self, c: Check) -> str:
        vs, x = self.var(), self.var()
        head = f"({vs} := {self.extract(c.left)}) is not None"
        test = self.test(c, x)
        if c.op == "!=":  # true only if every side that has a value differs
            sides = [f"(({x} := {vs}[{i}]) is None or {test})" for i in (0, 1)]
            return f"{head} and {sides[0]} and {sides[1]}"
        sides = [f"({x} := {vs}[{i}]) is not None and {test}" for i in (0, 1)]
        return f"{head} and ({sides[0]} or {sides[1]})"

    def dynamic(self, c: Check) -> str:
        """A field on the right: both sides read per event, either missing makes it false."""
        assert c.right is not None
        lguards, x = self.pipeline(c.left)
        rguards, y = self.pipeline(c.right)
        op, left_list, right_list = c.op, c.left.type is FieldType.LIST, \
            c.right.type is FieldType.LIST
        if op in ("in", "intersects"):
            if right_list and left_list:
                test = f"set({y}).issuperset({x})" if op == "in" else \
                    f"not set({y}).isdisjoint({x})"
            elif right_list:
                test = f"{x} in {y}"
            elif left_list:
                test = f"all(_e == {y} for _e in {x})" if op == "in" else f"{y} in {x}"
            else:
                test = f"{x} == {y}"
        elif op in ("glob", "iglob"):
            test = f"{self.bind(_dynamic_glob, '_glob')}({y}, {op == 'iglob'})({x}) is not None"
        elif op == "icontains":
            lower = self.bind(ascii_lower, "_lower")
            test = f"{lower}({y}) in {lower}({x})"
        elif op in ("contains", "bcontains"):
            test = f"{y} in {x}"
        elif op in ("startswith", "bstartswith"):
            test = f"{x}.startswith({y})"
        elif op == "endswith":
            test = f"{x}.endswith({y})"
        else:
            test = f"{x} {'==' if op == '=' else op} {y}"
        return _join([*lguards, *rguards, test])

    def resolving(self, c: Check) -> str:
        """fd.sip.name = host: the recorded name, or the address among the host's addresses."""
        assert c.address is not None
        hosts, names = self.hosts, frozenset(c.values)
        read_name, read_addr = c.left.extract, c.address.extract
        matcher = self.bind(_resolving_matcher(names, read_name, read_addr, hosts), "_d")
        return f"{matcher}(ev) is {c.op != '!='}"


def _resolving_matcher(
    names: frozenset[str], read_name: Extractor, read_addr: Extractor, hosts: HostAddresses
) -> Callable[[Event], bool | None]:
    def match(ev: Event) -> bool | None:
        name, addr = read_name(ev), read_addr(ev)
        if name is None and addr is None:
            return None
        if name is not None and name in names:
            return True
        return addr is not None and any(addr in hosts.addresses(h) for h in names)

    return match


def _none_safe(c: Check) -> bool:
    """Whether the test is already false for None (``None == 'x'``, ``None in frozenset``), so
    the plain read needs no guard."""
    return c.op in ("=", "in", "intersects") and c.left.type is not FieldType.IPNET


def _event_type_known(c: Check, event_types: frozenset[str]) -> bool | None:
    """An evt.type check decided by the types a bucket function serves, else None."""
    left = c.left
    if (left.spec.name not in EVTTYPE_FIELDS or left.arg is not None or left.transforms
            or c.modifier is not None or c.right is not None
            or c.op not in ("=", "!=", "in", "intersects")):
        return None
    names = frozenset(c.values)
    inside = True if event_types <= names else False if event_types.isdisjoint(names) else None
    if inside is None:
        return None
    return not inside if c.op == "!=" else inside


def _join(parts: list[str]) -> str:
    return " and ".join(parts) if len(parts) > 1 else parts[0]
