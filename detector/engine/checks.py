"""Typing one comparison: resolve its fields, check the operator fits, convert its literals.

Everything that can be decided without an event is decided here, once per rule, so the code
generator only has to arrange pre-built values: literals typed like the field (ports, IPs,
networks, bools), lists as frozensets, regexes and globs compiled, ``icontains`` needles folded,
hex decoded, and the ``evt.num`` invariant (it starts at 1) folded into a constant.

Errors are RuleErrors whose column/length underline the offending part of the condition text of
``owner`` (the macro the check was written in; None: the rule itself).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from detector.engine import ast
from detector.engine.errors import RuleError
from detector.engine.evttypes import EVTTYPE_FIELDS, evtnum_truth, is_event_type, parse_int
from detector.engine.fields import (
    NUMERIC_TYPES,
    Extractor,
    FieldError,
    FieldRegistry,
    FieldSpec,
    FieldType,
    UnknownField,
)
from detector.engine.macros import UnknownFilter, macro_item
from detector.engine.matchers import (
    ascii_lower,
    compile_regex,
    glob_regex,
    path_prefix_matcher,
)

STRING_OPS = frozenset(ast.OPERATORS) - {"bcontains", "bstartswith"}
_EQUALITY = frozenset({"=", "!=", "in", "intersects", "exists"})
_ALLOWED: dict[FieldType, tuple[str, frozenset[str]]] = {
    FieldType.BOOL: ("boolean", _EQUALITY),
    FieldType.IPADDR: ("IP address", _EQUALITY),
    FieldType.IPNET: ("IP network", _EQUALITY),
    FieldType.STRING: ("string", STRING_OPS),
    FieldType.BYTES: ("buffer", _EQUALITY | {"contains", "bcontains", "startswith",
                                             "bstartswith", "endswith"}),
    FieldType.LIST: ("list", frozenset({"in", "intersects", "exists"})),
    **{t: ("numeric", _EQUALITY | {"<", "<=", ">", ">="}) for t in NUMERIC_TYPES},
}
# What each transformer accepts and gives (a list is transformed element by element).
TRANSFORMS: dict[str, dict[FieldType, FieldType]] = {
    "tolower": {FieldType.STRING: FieldType.STRING, FieldType.LIST: FieldType.LIST},
    "toupper": {FieldType.STRING: FieldType.STRING, FieldType.LIST: FieldType.LIST},
    "basename": {FieldType.STRING: FieldType.STRING, FieldType.LIST: FieldType.LIST},
    "b64": {FieldType.STRING: FieldType.BYTES, FieldType.BYTES: FieldType.BYTES},
    "len": {t: FieldType.NUMBER for t in (FieldType.STRING, FieldType.BYTES, FieldType.LIST)},
}
_NO_RHS_FIELD_OPS = ("pmatch", "regex")
# Falco warns when a rule compares a plugin field of the audit source with the text outputs
# print for a missing value (LOAD_UNSAFE_NA_CHECK).
NA_TEXT = "<NA>"
_NA_UNSAFE = ("ka.", "jevt.")
_NA_OPS = frozenset({"=", "!=", "in", "intersects", "pmatch"})
__all__ = ["Check", "CheckBuilder", "Operand", "UnknownFilter"]


@dataclass(frozen=True, slots=True)
class Operand:
    """A field, possibly under transformers, as the generated code will read it."""

    text: str  # as written: "tolower(proc.name)"
    field_text: str  # the field inside the transformers, as written: "proc.name"
    spec: FieldSpec
    arg: str | None
    transforms: tuple[str, ...]  # innermost first
    type: FieldType  # after the transformers
    extract: Extractor
    key: str | None  # the event key when reading the field is just event.get(key)
    shape: str  # "one", "list", "ancestors" (any of them), "either" (client/server)


@dataclass(frozen=True, eq=False, slots=True)
class Check:
    """One typed comparison, ready for code generation."""

    compare: ast.Compare
    owner: str | None
    text: str  # the comparison as written
    left: Operand
    op: str
    modifier: str | None
    values: tuple[Any, ...] = ()  # literals typed like the left side
    matchers: tuple[Callable[[Any], Any], ...] = ()  # compiled glob/regex/pmatch, per value
    right: Operand | None = None
    address: Operand | None = None  # fd.sip.name = host: the address the host may resolve to
    constant: bool | None = None  # known without an event (the evt.num invariant)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (code, message)


class CheckBuilder:
    """Types comparisons for one rule; ``texts`` maps an owner to its condition text,
    ``source`` is the rule's event source (None: fields of any source)."""

    def __init__(self, registry: FieldRegistry, texts: Mapping[str | None, str],
                 source: str | None = None) -> None:
        self._registry = registry
        self._texts = texts
        self._source = source

    def build(self, compare: ast.Compare, owner: str | None) -> Check:
        source = self._texts.get(owner, "")
        typer = _Typer(self._registry, owner, source, self._source)
        left = typer.operand(compare.left)
        return typer.check(compare, left, source[compare.span.start : compare.span.end])


class _Typer:
    def __init__(self, registry: FieldRegistry, owner: str | None, source: str,
                 event_source: str | None) -> None:
        self.registry = registry
        self.owner = owner
        self.source = source  # the owner's condition text, which spans point into
        self.event_source = event_source
        self.warnings: list[tuple[str, str]] = []

    def error(self, message: str, span: ast.Span, kind: type[RuleError] = RuleError) -> RuleError:
        return kind(
            message,
            column=span.start + 1,
            length=max(1, span.end - span.start),
            item=None if self.owner is None else macro_item(self.owner),
        )

    # -- operands ---------------------------------------------------------------------------

    def operand(self, node: ast.Field | ast.Transform) -> Operand:
        transforms: list[str] = []
        inner: ast.Field | ast.Transform = node
        while isinstance(inner, ast.Transform):
            transforms.append(inner.func)
            inner = inner.operand
        transforms.reverse()
        spec, arg = self._resolve(inner)
        if spec.deprecated:
            self.warnings.append(
                ("LOAD_DEPRECATED_ITEM", f"field '{inner.name}' is deprecated")
            )
        multi = spec.either is not None or (spec.ancestors and arg is None)
        if transforms and (multi or not spec.transformers):
            raise self.error(f"field '{spec.name}' does not support transformers", node.span)
        typ = spec.type
        for func in transforms:
            result = TRANSFORMS[func].get(typ)
            if result is None:
                raise self.error(
                    f"can't add field transformer: type '{typ.value}' is not supported by "
                    f"'{func}' transformer",
                    node.span,
                )
            typ = result
        if spec.ancestors and arg is None:
            shape = "ancestors"
        elif spec.either is not None:
            shape = "either"
        else:
            shape = "list" if typ is FieldType.LIST else "one"
        key = spec.name if spec.factory is None else None
        return Operand(_operand_text(node), _operand_text(inner), spec, arg, tuple(transforms),
                       typ, spec.extractor(arg), key, shape)

    def _resolve(self, node: ast.Field) -> tuple[FieldSpec, str | None]:
        try:
            return self.registry.resolve(node.name, node.arg, self.event_source)
        except UnknownField as exc:
            raise self.error(str(exc), node.span, UnknownFilter) from None
        except FieldError as exc:
            raise self.error(str(exc), node.span) from None

    # -- comparisons ------------------------------------------------------------------------

    def check(self, compare: ast.Compare, left: Operand, text: str) -> Check:
        op, right = compare.op, compare.right
        kind, allowed = _ALLOWED[left.type]
        if op not in allowed:
            raise self.error(f"'{op}' operator not supported for {kind} filters",
                             self._operator_span(compare))
        is_evttype = left.spec.name in EVTTYPE_FIELDS and left.arg is None
        if is_evttype and left.transforms:
            raise self.error(
                "event code search does not support `evt.type` checks with transformers",
                compare.span,
            )
        right_field = address = None
        values: tuple[Any, ...] = ()
        matchers: tuple[Callable[[Any], Any], ...] = ()
        constant = None
        if isinstance(right, ast.FieldValue):
            if is_evttype:
                raise self.error(
                    "right-hand field comparisons on `evt.type` checks are not supported by "
                    "event code search",
                    right.span,
                )
            right_field = self._right_field(compare, left, right)
        elif right is not None:
            items = right.items if isinstance(right, ast.ListValue) else (right,)
            if isinstance(right, ast.ListValue) and compare.modifier is None \
                    and op not in ("in", "intersects", "pmatch"):
                raise self.error(f"'{op}' operator needs a single value, not a list", right.span)
            values = tuple(self._literal(left, op, item) for item in items)
            if is_evttype and op in ("=", "!=", "in", "intersects"):
                for item in items:
                    if not is_event_type(item.text):
                        raise self.error(
                            f"unknown event type {item.text}", item.span, UnknownFilter
                        )
            matchers = self._matchers(op, values, items)
            if left.spec.name.startswith(_NA_UNSAFE) and op in _NA_OPS \
                    and NA_TEXT in values:
                self.warnings.append((
                    "LOAD_UNSAFE_NA_CHECK",
                    f"comparing {left.text} with '<NA>' is unsafe: a missing value is never "
                    "the text '<NA>'; test it with 'exists' instead",
                ))
            if left.spec.resolves and op in ("=", "!=", "in") and compare.modifier is None:
                address = self.operand(ast.Field(left.spec.resolves, None, compare.left.span))
            if left.spec.name == "evt.num" and not left.transforms and compare.modifier is None:
                constant = evtnum_truth(op, values)
        return Check(
            compare=compare, owner=self.owner, text=text, left=left, op=op,
            modifier=compare.modifier, values=values, matchers=matchers, right=right_field,
            address=address, constant=constant, warnings=self.warnings,
        )

    def _operator_span(self, compare: ast.Compare) -> ast.Span:
        """Where the operator is written (``==`` is kept as ``=`` in the tree)."""
        start = compare.left.span.end
        for written in (("==", "=") if compare.op == "=" else (compare.op,)):
            at = self.source.find(written, start, compare.span.end)
            if at >= 0:
                return ast.Span(at, at + len(written))
        return compare.span

    def _literal(self, left: Operand, op: str, item: ast.Value) -> Any:
        if op in ("bcontains", "bstartswith"):
            try:
                return bytes.fromhex(item.text)
            except ValueError:
                raise self.error(
                    "bcontains and bstartswith operator support hex strings only", item.span
                ) from None
        if op in ("glob", "iglob", "regex", "pmatch"):
            return item.text
        try:
            if not left.transforms:
                value = left.spec.convert(item.text)
            else:
                value = _convert_transformed(left.type, item.text)
        except ValueError as exc:
            raise self.error(str(exc).replace(left.spec.name, left.text), item.span) from None
        return ascii_lower(value) if op == "icontains" else value

    def _matchers(
        self, op: str, values: tuple[Any, ...], items: tuple[ast.Value, ...]
    ) -> tuple[Callable[[Any], Any], ...]:
        if op in ("glob", "iglob"):
            return tuple(glob_regex(v, op == "iglob").fullmatch for v in values)
        if op == "pmatch":
            return (path_prefix_matcher(values),)
        if op == "regex":
            compiled = []
            for value, item in zip(values, items, strict=True):
                try:
                    compiled.append(compile_regex(value))
                except ValueError as exc:
                    raise self.error(str(exc), item.span) from None
            return tuple(compiled)
        return ()

    def _right_field(self, compare: ast.Compare, left: Operand, right: ast.FieldValue) -> Operand:
        op = compare.op
        if op in _NO_RHS_FIELD_OPS:
            raise self.error(f"'{op}' operator does not support right-hand side fields",
                             right.span)
        if compare.modifier is not None:
            raise self.error(f"'{compare.modifier}' needs a list of values, not a field",
                             right.span)
        if left.type is FieldType.IPNET:
            raise self.error("IP network fields do not support right-hand side fields",
                             right.span)
        if left.shape in ("ancestors", "either"):
            raise self.error(
                f"field '{left.text}' does not support right-hand side field comparisons",
                right.span,
            )
        operand = self.operand(right.operand)
        if not operand.spec.rhs:
            raise self.error(
                f"field '{operand.spec.name}' cannot be used on the right-hand side", right.span
            )
        compatible = operand.type is left.type or (
            op in ("in", "intersects")
            and {left.type, operand.type} <= {FieldType.STRING, FieldType.LIST}
        )
        if not compatible:
            raise self.error(
                f"field '{left.text}' has type '{left.type.value}' while the right-hand side "
                f"field '{operand.text}' has incompatible type '{operand.type.value}'",
                right.span,
            )
        return operand


def _operand_text(node: ast.Field | ast.Transform) -> str:
    if isinstance(node, ast.Transform):
        return f"{node.func}({_operand_text(node.operand)})"
    return node.name if node.arg is None else f"{node.name}[{node.arg}]"


def _convert_transformed(typ: FieldType, text: str) -> Any:
    """Literals compared with a transformer's result: its output type, not the field's."""
    if typ is FieldType.NUMBER:
        number = parse_int(text)
        if number is None:
            raise ValueError(f"'{text}' is not a number")
        return number
    if typ is FieldType.BYTES:
        return text.encode("utf-8", "surrogateescape")
    return text
