"""Falco condition text -> syntax tree (``detector.engine.ast``), recursive descent.

The grammar, its quirks and its error messages are libsinsp's (reference §2.1, §2.2, §6.3).
Every parsing function that libsinsp guards against deep recursion is guarded here too, with the
same limit Falco sets for rule conditions, so a condition nests exactly as deep here as there
before "exceeded max depth limit of 1000".

Deliberate differences, all in error reporting: an unterminated string and a bad escape are
reported as such wherever they occur (libsinsp sometimes reports the token it tried next), and
"unexpected token after 'X'" names X as written (libsinsp shows a string without its quotes).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType

from detector.engine import ast
from detector.engine.lexer import (
    ARG_BARE,
    BARE_STRING,
    BLANKS,
    FIELD_NAME,
    HEX_NUMBER,
    IDENTIFIER,
    NOT_BLANK,
    NUMBER,
    Scanner,
    error_at,
    write_string,
)

MAX_DEPTH = 1000
# Real conditions nest a few levels; only past this many does the interpreter's recursion
# limit need checking against what the rest of the cap could use.
_SHALLOW = 100

_NUM_OPS = ("<=", "<", ">=", ">")
_SYMBOL_STR_OPS = ("==", "=", "!=")
_WORD_STR_OPS = (
    "glob", "iglob", "contains", "icontains", "bcontains", "startswith", "bstartswith",
    "endswith", "regex",
)
# Tried in this order so that `intersects` is not read as `in` + "tersects".
_LIST_OPS = ("intersects", "in", "pmatch")
_KEYWORDS = ("and", "or", "not")
_TRANSFORMER_OPENS = tuple(f"{name}(" for name in ast.TRANSFORMERS)


def _quoted_names(names: tuple[str, ...]) -> str:
    return ", ".join(f"'{name}'" for name in names)


_ALL_OPS = _quoted_names(("exists", *_NUM_OPS, *_SYMBOL_STR_OPS, *_WORD_STR_OPS, *_LIST_OPS))
_ALL_TRANSFORMERS = _quoted_names(("val", *ast.TRANSFORMERS))


def parse_condition(text: str) -> ast.Node:
    """Parse a whole condition (lists already substituted). Raises only RuleError, with the
    column (and line, 1-based within ``text``) of the offending token."""
    _ensure_stack_room(_SHALLOW)
    return _Parser(text).parse()


def parse_field_token(text: str) -> tuple[str, str | None]:
    """``proc.aname[2]`` (or ``%proc.aname[2]``) -> ("proc.aname", "2"): a whole field token,
    as written in an output format."""
    parser = _Parser(text[1:] if text.startswith("%") else text)
    scan = parser.scan
    name = scan.match(FIELD_NAME)
    if name is None:
        raise scan.error("expected a field name")
    field = parser.field_remainder(name, 0)
    if scan.pos != len(scan.source):
        raise scan.error(f"unexpected text after field '{scan.last}'")
    return field.name, field.arg


def _ensure_stack_room(levels: int) -> None:
    """Make sure ``levels`` more guarded calls cannot hit Python's recursion limit.

    Each costs at most two frames (one unguarded, _after_keyword, can sit between two guarded
    ones). The limit is only ever raised, and only for absurdly nested input: never lowered,
    so threads parsing at the same time cannot pull it from under each other, and Python
    3.11+ runs Python-to-Python calls without C recursion, so a higher limit is harmless."""
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    needed = depth + 2 * levels + 50
    if sys.getrecursionlimit() < needed:
        sys.setrecursionlimit(needed)


class _Depth:
    """Counts nested parsing calls, as libsinsp's depth guard does."""

    def __init__(self, scan: Scanner) -> None:
        self.value = 0
        self.scan = scan

    def __enter__(self) -> None:
        self.value += 1
        if self.value == _SHALLOW:
            _ensure_stack_room(MAX_DEPTH - _SHALLOW)
        if self.value >= MAX_DEPTH:
            raise self.scan.error(f"exceeded max depth limit of {MAX_DEPTH}")

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.value -= 1


class _Parser:
    def __init__(self, text: str) -> None:
        self.scan = Scanner(text)
        self.depth = _Depth(self.scan)

    def parse(self) -> ast.Node:
        if not self.scan.source:
            raise error_at("", 0, "filter input string is empty")
        node = self.parse_or()
        if self.scan.pos != len(self.scan.source):
            last = self.scan.last
            raise self.scan.error(f"unexpected token after '{last}', expecting 'or', 'and'")
        return node

    def _span(self, start: int) -> ast.Span:
        return ast.Span(start, self.scan.last_end)

    def _expect(self, literal: str, message: str) -> None:
        if not self.scan.literal(literal):
            raise self.scan.error(message)

    # -- boolean structure -------------------------------------------------------------------

    def parse_or(self) -> ast.Node:
        with self.depth:
            scan = self.scan
            scan.skip_blanks()
            start = scan.pos
            items = [self.parse_and()]
            scan.skip_blanks()
            while scan.literal("or"):
                items.append(self._after_keyword("or", self.parse_and))
                scan.skip_blanks()
            return _flatten(ast.Or, items, self._span(start))

    def parse_and(self) -> ast.Node:
        with self.depth:
            scan = self.scan
            scan.skip_blanks()
            start = scan.pos
            items = [self.parse_not()]
            scan.skip_blanks()
            while scan.literal("and"):
                items.append(self._after_keyword("and", self.parse_not))
                scan.skip_blanks()
            return _flatten(ast.And, items, self._span(start))

    def _after_keyword(self, keyword: str, operand: Callable[[], ast.Node]) -> ast.Node:
        # `or(` takes only the parenthesised group as its operand, not an `and` chain starting
        # with it: libsinsp then rejects `a or(b) and c`, and so do we.
        if self.scan.skip_blanks():
            return operand()
        if self.scan.literal("("):
            return self.parse_embedded()
        raise self.scan.error(f"expected blank or '(' after '{keyword}'")

    def parse_not(self) -> ast.Node:
        with self.depth:
            scan = self.scan
            scan.skip_blanks()
            start = scan.pos
            negate = False
            # Repeated `not` toggles, so `not not x` is x.
            while scan.match(NOT_BLANK):
                negate = not negate
            if scan.literal("not("):
                negate = not negate
                child = self.parse_embedded()
            else:
                child = self.parse_check()
            return ast.Not(child, self._span(start)) if negate else child

    def parse_embedded(self) -> ast.Node:
        """The rest of a group whose ``(`` was just read."""
        with self.depth:
            self.scan.skip_blanks()
            child = self.parse_or()
            self.scan.skip_blanks()
            self._expect(")", "expected a ')' token")
            return child

    def parse_check(self) -> ast.Node:
        with self.depth:
            scan = self.scan
            scan.skip_blanks()
            start = scan.pos
            if scan.literal("("):
                return self.parse_embedded()
            # Field first, then transformer, then identifier: a macro name has no dot.
            name = scan.match(FIELD_NAME)
            if name is not None:
                return self.parse_comparison(self.field_remainder(name, start), start)
            opened = scan.first_of(_TRANSFORMER_OPENS)
            if opened is not None:
                scan.skip_blanks()
                return self.parse_comparison(self.transformer_remainder(opened, start), start)
            name = scan.match(IDENTIFIER)
            if name is not None:
                return ast.MacroRef(name, self._span(start))
            raise scan.error("expected a '(' token, a field check, or an identifier")

    # -- operands ----------------------------------------------------------------------------

    def field_remainder(self, name: str, start: int) -> ast.Field:
        with self.depth:
            scan = self.scan
            arg = None
            if scan.literal("["):
                arg = scan.quoted()
                if arg is None:
                    arg = scan.match(ARG_BARE)
                if arg is None:
                    raise scan.error(
                        "expected a valid field argument: a quoted string or a bare string"
                    )
                self._expect("]", "expected a ']' token")
            return ast.Field(name, arg, self._span(start))

    def transformer_remainder(self, opened: str, start: int) -> ast.Transform:
        """The rest of ``func(`` once ``func(`` was read: a field or a nested transformer."""
        with self.depth:
            scan = self.scan
            scan.skip_blanks()
            operand: ast.Operand
            operand_start = scan.pos
            nested = scan.first_of(_TRANSFORMER_OPENS)
            name = None if nested is not None else scan.match(FIELD_NAME)
            if nested is not None:
                scan.skip_blanks()
                operand = self.transformer_remainder(nested, operand_start)
            elif name is not None:
                operand = self.field_remainder(name, operand_start)
            else:
                raise scan.error(
                    f"expected a field or a nested valid transformer: {_ALL_TRANSFORMERS}"
                )
            scan.skip_blanks()
            self._expect(")", "expected a ')' token closing the transformer")
            return ast.Transform(opened[:-1], operand, self._span(start))

    # -- comparisons -------------------------------------------------------------------------

    def parse_comparison(self, left: ast.Operand, start: int) -> ast.Compare:
        with self.depth:
            scan = self.scan
            scan.skip_blanks()
            if scan.literal("exists"):
                return ast.Compare(left, "exists", None, self._span(start))
            scan.skip_blanks()
            right: ast.RightHand
            modifier = None
            op = scan.first_of(_NUM_OPS)
            if op is not None:
                right = self.num_value()
            elif op := (
                scan.first_of(_SYMBOL_STR_OPS) or scan.word_followed_by_blank(_WORD_STR_OPS)
            ):
                modifier = self._modifier()
                right = self.list_value() if modifier else self.str_value()
            elif (op := scan.first_of(_LIST_OPS)) is not None:
                right = self.list_value()
            else:
                raise scan.error(f"expected a valid check operator: one of {_ALL_OPS}")
            return ast.Compare(left, "=" if op == "==" else op, right, self._span(start), modifier)

    def _modifier(self) -> str | None:
        """``oneof``/``anyof``/``allof`` after a string operator is a modifier only when a blank
        and then a list or a (non-keyword) identifier follow; otherwise it is the bare value."""
        scan = self.scan
        scan.skip_blanks()
        text, pos = scan.text, scan.pos
        for word in ast.MODIFIERS:
            after = pos + len(word)
            if not text.startswith(word, pos) or after >= len(text) or text[after] not in BLANKS:
                continue
            nxt = after
            while nxt < len(text) and text[nxt] in BLANKS:
                nxt += 1
            ident = IDENTIFIER.match(text, nxt)
            if text.startswith("(", nxt) or (ident is not None and ident.group() not in _KEYWORDS):
                scan.literal(word)
                return word
        return None

    def num_value(self) -> ast.Value | ast.FieldValue:
        with self.depth:
            scan = self.scan
            scan.skip_blanks()
            start = scan.pos
            field = self.transformer_or_val()
            if field is not None:
                return field
            number = scan.match(HEX_NUMBER) or scan.match(NUMBER)
            if number is not None:
                return ast.Value(number, False, self._span(start))
            raise scan.error(
                f"expected a number value or a field with a valid transformer: {_ALL_TRANSFORMERS}"
            )

    def str_value(self, in_list: bool = False) -> ast.Value | ast.FieldValue:
        with self.depth:
            scan = self.scan
            scan.skip_blanks()
            if not in_list:
                field = self.transformer_or_val()
                if field is not None:
                    return field
            value = self._string()
            if value is not None:
                return value
            if in_list:
                raise scan.error("expected a string value")
            raise scan.error(
                f"expected a string value or a field with a valid transformer: {_ALL_TRANSFORMERS}"
            )

    def _string(self) -> ast.Value | None:
        scan = self.scan
        start = scan.pos
        text = scan.quoted()
        if text is not None:
            return ast.Value(text, True, self._span(start))
        text = scan.match(BARE_STRING)
        return None if text is None else ast.Value(text, False, self._span(start))

    def list_value(self) -> ast.RightHand:
        with self.depth:
            scan = self.scan
            scan.skip_blanks()
            start = scan.pos
            if scan.literal("("):
                scan.skip_blanks()
                items: list[ast.Value] = []
                first = self._string()
                if first is not None:
                    items.append(first)
                    scan.skip_blanks()
                    while scan.literal(","):
                        item = self.str_value(in_list=True)
                        assert isinstance(item, ast.Value)  # in_list never yields a field
                        items.append(item)
                        scan.skip_blanks()
                self._expect(")", "expected a ')' token")
                return ast.ListValue(tuple(items), self._span(start))
            field = self.transformer_or_val()
            if field is not None:
                return field
            # A list name left unsubstituted (no such list): the compiler takes it as one value.
            name = scan.match(IDENTIFIER)
            if name is not None:
                return ast.Value(name, False, self._span(start))
            raise scan.error(
                "expected a list, an identifier, or a field with a valid transformer: "
                + _ALL_TRANSFORMERS
            )

    def transformer_or_val(self) -> ast.FieldValue | None:
        with self.depth:
            scan = self.scan
            scan.skip_blanks()
            start = scan.pos
            if scan.literal("val("):
                scan.skip_blanks()
                field_start = scan.pos
                name = scan.match(FIELD_NAME)
                if name is None:
                    raise scan.error("expected a field within 'val' transformer")
                field = self.field_remainder(name, field_start)
                scan.skip_blanks()
                self._expect(")", "expected a ')' token closing the transformer")
                return ast.FieldValue(field, self._span(start))
            opened = scan.first_of(_TRANSFORMER_OPENS)
            if opened is None:
                return None
            scan.skip_blanks()
            transform = self.transformer_remainder(opened, start)
            return ast.FieldValue(transform, transform.span)


def _flatten(kind: type[ast.And] | type[ast.Or], items: list[ast.Node], span: ast.Span) -> ast.Node:
    if len(items) == 1:
        return items[0]
    flat: list[ast.Node] = []
    for item in items:
        # A parenthesised group of the same kind is merged: `a and (b and c)` is and(a, b, c).
        flat.extend(item.items if isinstance(item, kind) else (item,))
    return kind(tuple(flat), span)


def format_condition(node: ast.Node) -> str:
    """Condition text for a tree, for explanations and listings. Parsing the text gives the
    same tree back, spans aside."""
    if isinstance(node, ast.Or):
        return " or ".join(_grouped(item, isinstance(item, ast.Or)) for item in node.items)
    if isinstance(node, ast.And):
        return " and ".join(
            _grouped(item, isinstance(item, ast.Or | ast.And)) for item in node.items
        )
    if isinstance(node, ast.Not):
        # `not not x` would read back as x, so a nested not keeps its parentheses.
        simple = isinstance(node.operand, ast.Compare | ast.MacroRef)
        return "not " + _grouped(node.operand, not simple)
    if isinstance(node, ast.MacroRef):
        # A macro called `not` (or `and`, `or`) reads as the keyword unless it stands alone.
        return f"({node.name})" if node.name in _KEYWORDS else node.name
    left = _format_operand(node.left)
    if node.right is None:
        return f"{left} {node.op}"
    modifier = f" {node.modifier}" if node.modifier else ""
    return f"{left} {node.op}{modifier} {_format_right(node.right)}"


def _grouped(node: ast.Node, parenthesise: bool) -> str:
    text = format_condition(node)
    return f"({text})" if parenthesise else text


def _format_operand(operand: ast.Operand) -> str:
    if isinstance(operand, ast.Transform):
        return f"{operand.func}({_format_operand(operand.operand)})"
    if operand.arg is None:
        return operand.name
    return f"{operand.name}[{write_string(operand.arg, ARG_BARE)}]"


def _format_right(right: ast.RightHand) -> str:
    if isinstance(right, ast.ListValue):
        return "(" + ", ".join(_format_value(item) for item in right.items) + ")"
    if isinstance(right, ast.FieldValue):
        if isinstance(right.operand, ast.Field):
            return f"val({_format_operand(right.operand)})"
        return _format_operand(right.operand)
    return _format_value(right)


def _format_value(value: ast.Value) -> str:
    return write_string(value.text, None if value.quoted else BARE_STRING)
