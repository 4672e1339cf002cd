"""The condition parser: Falco's grammar and quirks, its errors, and the upstream rulesets."""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.engine import ast
from detector.engine.errors import RuleError
from detector.engine.parser import format_condition, parse_condition, parse_field_token
from tests.upstream import upstream_file

# -- a compact spelling of trees ---------------------------------------------------------------
# (op left right) for comparisons, with the modifier after op; [a "b c"] for lists; "x" for a
# quoted value and x for a bare one; val(f) for a right-hand field; names alone for macros.


def to_sexpr(node: object) -> str:
    if isinstance(node, ast.Or | ast.And):
        kind = "or" if isinstance(node, ast.Or) else "and"
        return f"({kind} " + " ".join(to_sexpr(item) for item in node.items) + ")"
    if isinstance(node, ast.Not):
        return f"(not {to_sexpr(node.operand)})"
    if isinstance(node, ast.MacroRef):
        return node.name
    if isinstance(node, ast.Compare):
        head = node.op if node.modifier is None else f"{node.op} {node.modifier}"
        right = "" if node.right is None else " " + to_sexpr(node.right)
        return f"({head} {to_sexpr(node.left)}{right})"
    if isinstance(node, ast.Field):
        return node.name if node.arg is None else f"{node.name}[{node.arg}]"
    if isinstance(node, ast.Transform):
        return f"{node.func}({to_sexpr(node.operand)})"
    if isinstance(node, ast.FieldValue):
        inner = to_sexpr(node.operand)
        return f"val({inner})" if isinstance(node.operand, ast.Field) else inner
    if isinstance(node, ast.ListValue):
        return "[" + " ".join(to_sexpr(item) for item in node.items) + "]"
    assert isinstance(node, ast.Value)
    return f'"{node.text}"' if node.quoted else node.text


NO_SPAN = ast.Span(0, 0)


def without_spans(node: object) -> object:
    """The same tree with every span zeroed, to compare trees by content."""
    if not dataclasses.is_dataclass(node) or isinstance(node, type):
        return node
    changes: dict[str, object] = {}
    for field in dataclasses.fields(node):
        value = getattr(node, field.name)
        if isinstance(value, ast.Span):
            changes[field.name] = NO_SPAN
        elif isinstance(value, tuple):
            changes[field.name] = tuple(without_spans(item) for item in value)
        else:
            changes[field.name] = without_spans(value)
    return dataclasses.replace(node, **changes)  # type: ignore[type-var]


# -- parse cases ---------------------------------------------------------------------------------

PARSES = [
    # every operator, == normalised to =
    ("proc.name = bash", "(= proc.name bash)"),
    ("proc.name == bash", "(= proc.name bash)"),
    ("proc.name != bash", "(!= proc.name bash)"),
    ("proc.name=bash", "(= proc.name bash)"),
    ("proc.name!=bash", "(!= proc.name bash)"),
    ("evt.num < 5", "(< evt.num 5)"),
    ("evt.num <= 5", "(<= evt.num 5)"),
    ("evt.num > 5", "(> evt.num 5)"),
    ("evt.num >= 5", "(>= evt.num 5)"),
    ("evt.num>=5", "(>= evt.num 5)"),
    ("proc.cmdline contains curl", "(contains proc.cmdline curl)"),
    ("proc.cmdline icontains CURL", "(icontains proc.cmdline CURL)"),
    ("evt.buffer bcontains CAFEBABE", "(bcontains evt.buffer CAFEBABE)"),
    ("fd.name startswith /etc", "(startswith fd.name /etc)"),
    ("evt.buffer bstartswith 7f454c46", "(bstartswith evt.buffer 7f454c46)"),
    ("fd.name endswith .conf", "(endswith fd.name .conf)"),
    ("fd.name glob '/etc/*.conf'", '(glob fd.name "/etc/*.conf")'),
    ("fd.name iglob /ETC/*", "(iglob fd.name /ETC/*)"),
    ("proc.name regex '[a-z]+sh'", '(regex proc.name "[a-z]+sh")'),
    ("proc.name in (bash, sh)", "(in proc.name [bash sh])"),
    (
        "ka.req.pod.containers.image intersects (nginx, redis)",
        "(intersects ka.req.pod.containers.image [nginx redis])",
    ),
    ("fd.name pmatch (/etc, /usr/lib)", "(pmatch fd.name [/etc /usr/lib])"),
    ("proc.name exists", "(exists proc.name)"),
    ("proc.name in(bash)", "(in proc.name [bash])"),
    ("proc.name in shell_binaries", "(in proc.name shell_binaries)"),
    ("proc.name in (shell_binaries)", "(in proc.name [shell_binaries])"),
    ("proc.name in ()", "(in proc.name [])"),
    ("proc.name in ( )", "(in proc.name [])"),
    ("proc.name in (\"my proc\", 'x y', plain)", '(in proc.name ["my proc" "x y" plain])'),
    ("proc.name in (\"a,b\", 'c)d')", '(in proc.name ["a,b" "c)d"])'),
    ("proc.name in (a,b , c)", "(in proc.name [a b c])"),
    ("proc.name in (a,\n  b)", "(in proc.name [a b])"),
    # numbers
    ("evt.num = 0x1F", "(= evt.num 0x1F)"),
    ("evt.num > -1", "(> evt.num -1)"),
    ("evt.num > +1.5", "(> evt.num +1.5)"),
    ("evt.num < 1e+10", "(< evt.num 1e+10)"),
    ("evt.num < 2.5E-3", "(< evt.num 2.5E-3)"),
    ("evt.num > 5.", "(> evt.num 5.)"),
    # transformers, nested, on either side
    ("tolower(proc.name) = bash", "(= tolower(proc.name) bash)"),
    ("toupper(proc.name) = BASH", "(= toupper(proc.name) BASH)"),
    ("b64(evt.arg.data) contains abc", "(contains b64(evt.arg.data) abc)"),
    ("basename(proc.exepath) = sh", "(= basename(proc.exepath) sh)"),
    ("len(proc.args) > 2", "(> len(proc.args) 2)"),
    ("toupper(basename(proc.exepath)) = SH", "(= toupper(basename(proc.exepath)) SH)"),
    ("tolower( proc.name ) = bash", "(= tolower(proc.name) bash)"),
    ("len(tolower(basename(proc.exepath))) >= 3", "(>= len(tolower(basename(proc.exepath))) 3)"),
    ("tolower(proc.aname[2]) = sh", "(= tolower(proc.aname[2]) sh)"),
    ("proc.name = val(proc.pname)", "(= proc.name val(proc.pname))"),
    ("proc.name = val( proc.pname )", "(= proc.name val(proc.pname))"),
    ("proc.name = val(proc.aname[1])", "(= proc.name val(proc.aname[1]))"),
    ("proc.name != tolower(proc.pname)", "(!= proc.name tolower(proc.pname))"),
    ("len(proc.args) > len(proc.env)", "(> len(proc.args) len(proc.env))"),
    ("evt.num > val(evt.count)", "(> evt.num val(evt.count))"),
    ("proc.name in val(proc.pname)", "(in proc.name val(proc.pname))"),
    ("proc.name in tolower(proc.pname)", "(in proc.name tolower(proc.pname))"),
    ("proc.name = tolower", "(= proc.name tolower)"),
    # field arguments: bare up to ], quoted, dot form kept as written
    ("proc.aname[2] = sh", "(= proc.aname[2] sh)"),
    ("evt.arg[0] = 3", "(= evt.arg[0] 3)"),
    ("proc.env[HOME] startswith /root", "(startswith proc.env[HOME] /root)"),
    (
        "container.mount.dest[/var/run/docker.sock] exists",
        "(exists container.mount.dest[/var/run/docker.sock])",
    ),
    ('proc.env["MY VAR"] = x', "(= proc.env[MY VAR] x)"),
    ("proc.env['A]B'] = x", "(= proc.env[A]B] x)"),
    ("jevt.value[/requestObject/spec/tls] exists", "(exists jevt.value[/requestObject/spec/tls])"),
    ("ka.uri.param[command] = sh", "(= ka.uri.param[command] sh)"),
    ("k8s.pod.label[app.kubernetes.io/name] = x", "(= k8s.pod.label[app.kubernetes.io/name] x)"),
    ("evt.arg.flags contains O_TRUNC", "(contains evt.arg.flags O_TRUNC)"),
    ("k8s.pod.label.app = nginx", "(= k8s.pod.label.app nginx)"),
    ("evt.rawarg.res < 0", "(< evt.rawarg.res 0)"),
    # modifiers, and the words used as plain values
    ("proc.cmdline contains allof (curl, bash)", "(contains allof proc.cmdline [curl bash])"),
    ("proc.name = oneof (a, b)", "(= oneof proc.name [a b])"),
    ("proc.name != anyof (a, b)", "(!= anyof proc.name [a b])"),
    ("fd.name glob anyof ('/tmp/*', /var/*)", '(glob anyof fd.name ["/tmp/*" /var/*])'),
    ("proc.name = allof shell_binaries", "(= allof proc.name shell_binaries)"),
    ("proc.name = oneof", "(= proc.name oneof)"),
    ("proc.name = oneof and x", "(and (= proc.name oneof) x)"),
    ("proc.name = anyof or x", "(or (= proc.name anyof) x)"),
    ("(proc.name = allof)", "(= proc.name allof)"),
    ('proc.name = "oneof"', '(= proc.name "oneof")'),
    ("proc.name in (oneof)", "(in proc.name [oneof])"),
    # bare strings: everything but blanks, quotes, parentheses, = and ,
    ("proc.name = runc:[0:PARENT]", "(= proc.name runc:[0:PARENT])"),
    ("fd.name = /etc/", "(= fd.name /etc/)"),
    ("proc.pname = <NA>", "(= proc.pname <NA>)"),
    ("fd.net = 10.0.0.0/8", "(= fd.net 10.0.0.0/8)"),
    ("fd.name contains *x!y>z<w", "(contains fd.name *x!y>z<w)"),
    ("proc.name = and", "(= proc.name and)"),
    ("proc.name = exists", "(= proc.name exists)"),
    ("proc.name = a.b", "(= proc.name a.b)"),
    # no comments in conditions: # is an ordinary character
    ("proc.name = #x", "(= proc.name #x)"),
    # quoting and escapes
    (r'proc.name = "a\"b"', '(= proc.name "a"b")'),
    (r"proc.name = 'a\'b'", '(= proc.name "a\'b")'),
    (r'proc.name = "a\\b"', '(= proc.name "a\\b")'),
    (r'proc.name = "a\/b"', '(= proc.name "a/b")'),
    (r'proc.name = "\x41\x7a"', '(= proc.name "Az")'),
    (r'proc.name = "a\ b"', '(= proc.name "a\\b")'),
    # the closing quote is the first one after a non-backslash, even an escaped backslash
    (r'proc.name = "a\\" or b"', '(= proc.name "a\\" or b")'),
    ('proc.name = ""', '(= proc.name "")'),
    ("proc.name = 'say \"hi\"'", '(= proc.name "say "hi"")'),
    ("proc.name = 'a and b'", '(= proc.name "a and b")'),
    # precedence and flattening
    ("a and b or c", "(or (and a b) c)"),
    ("a or b and c", "(or a (and b c))"),
    ("a and b and c", "(and a b c)"),
    ("a or b or c", "(or a b c)"),
    ("a and (b and c)", "(and a b c)"),
    ("(a or b) or (c or d)", "(or a b c d)"),
    ("(a or b) and c", "(and (or a b) c)"),
    ("not a and b", "(and (not a) b)"),
    ("not a or b", "(or (not a) b)"),
    ("not (a and b)", "(not (and a b))"),
    ("not(a)", "(not a)"),
    ("not not a", "a"),
    ("not not not a", "(not a)"),
    ("not   not(a)", "a"),
    ("not proc.name = bash", "(not (= proc.name bash))"),
    ("a and not(b) or c", "(or (and a (not b)) c)"),
    ("a and(b)", "(and a b)"),
    ("a or(b)", "(or a b)"),
    ("(a)and(b)", "(and a b)"),
    ("(a)or(b)", "(or a b)"),
    ("((a))", "a"),
    ("a and not b and not c", "(and a (not b) (not c))"),
    ("(a and b) and not (c or d)", "(and a b (not (or c d)))"),
    # macro references: identifiers without dots, keywords only as whole words
    ("spawned_process", "spawned_process"),
    ("never_true_2", "never_true_2"),
    ("notify", "notify"),
    ("android and order", "(and android order)"),
    ("not", "not"),
    # blanks, lines
    ("  proc.name = bash  ", "(= proc.name bash)"),
    ("proc.name\t=\tbash", "(= proc.name bash)"),
    (
        "spawned_process\nand proc.name = bash\r\nand not x",
        "(and spawned_process (= proc.name bash) (not x))",
    ),
    ("a\band b", "(and a b)"),
    ("(\n  a\n)", "a"),
    # word operators take any blank after them (libsinsp wants a space: a superset)
    ("proc.name contains\tfoo", "(contains proc.name foo)"),
]


@pytest.mark.parametrize(("text", "expected"), PARSES)
def test_parses(text: str, expected: str) -> None:
    assert to_sexpr(parse_condition(text)) == expected


def test_dot_argument_field_keeps_its_name() -> None:
    node = parse_condition("evt.arg.flags contains O_TRUNC")
    assert isinstance(node, ast.Compare)
    assert node.left == ast.Field("evt.arg.flags", None, ast.Span(0, 13))


def test_every_escape() -> None:
    node = parse_condition(r'proc.name = "\b\f\n\r\t\\\/\"\x00\xff\ "')
    assert isinstance(node, ast.Compare) and isinstance(node.right, ast.Value)
    assert node.right.text == '\b\f\n\r\t\\/"\x00\xff\\'
    assert node.right.quoted


def test_single_quoted_escapes() -> None:
    node = parse_condition(r"proc.name = '\'\t\x41'")
    assert isinstance(node, ast.Compare) and isinstance(node.right, ast.Value)
    assert node.right.text == "'\tA"


def test_list_items_keep_quoting() -> None:
    node = parse_condition("proc.name in (a, 'a', \"a b\")")
    assert isinstance(node, ast.Compare) and isinstance(node.right, ast.ListValue)
    assert [(v.text, v.quoted) for v in node.right.items] == [
        ("a", False),
        ("a", True),
        ("a b", True),
    ]


def test_spans_cover_the_text_written() -> None:
    text = "(proc.name = 'a b') and not x"
    node = parse_condition(text)
    assert isinstance(node, ast.And)
    assert text[node.span.start : node.span.end] == text
    compare, negation = node.items
    assert isinstance(compare, ast.Compare) and isinstance(negation, ast.Not)
    assert text[compare.span.start : compare.span.end] == "proc.name = 'a b'"
    assert compare.right is not None
    assert text[compare.right.span.start : compare.right.span.end] == "'a b'"
    assert text[negation.span.start : negation.span.end] == "not x"


def test_spans_of_transformers_and_lists() -> None:
    text = "tolower(proc.aname[2]) in (a, b) "
    node = parse_condition(text)
    assert isinstance(node, ast.Compare) and node.right is not None
    assert text[node.left.span.start : node.left.span.end] == "tolower(proc.aname[2])"
    assert isinstance(node.left, ast.Transform)
    inner = node.left.operand
    assert text[inner.span.start : inner.span.end] == "proc.aname[2]"
    assert text[node.right.span.start : node.right.span.end] == "(a, b)"
    assert text[node.span.start : node.span.end] == text.strip()


def test_deep_nesting_within_the_cap() -> None:
    # libsinsp counts five guarded calls per parenthesis plus four for a macro reference:
    # 199 levels use 999 of the 1000 allowed.
    assert parse_condition("(" * 199 + "a" + ")" * 199) == ast.MacroRef("a", ast.Span(199, 200))


def test_many_nots_are_a_loop_not_a_recursion() -> None:
    assert to_sexpr(parse_condition("not " * 100_001 + "a")) == "(not a)"


def test_long_flat_chains() -> None:
    text = " and ".join(f"m{i}" for i in range(20_000))
    node = parse_condition(text)
    assert isinstance(node, ast.And) and len(node.items) == 20_000


# -- errors ------------------------------------------------------------------------------------

OPS = (
    "'exists', '<=', '<', '>=', '>', '==', '=', '!=', 'glob', 'iglob', 'contains', 'icontains', "
    "'bcontains', 'startswith', 'bstartswith', 'endswith', 'regex', 'intersects', 'in', 'pmatch'"
)
TRANSFORMERS = "'val', 'tolower', 'toupper', 'b64', 'basename', 'len'"
CHECK = "expected a '(' token, a field check, or an identifier"
OPERATOR = f"expected a valid check operator: one of {OPS}"
STRING = f"expected a string value or a field with a valid transformer: {TRANSFORMERS}"
CLOSE = "expected a ')' token"


def after(token: str) -> str:
    return f"unexpected token after '{token}', expecting 'or', 'and'"


ERRORS = [
    ("", "filter input string is empty", 1),
    ("   ", CHECK, 4),
    (")", CHECK, 1),
    ("1 = 1", CHECK, 1),
    ("(a", CLOSE, 3),
    ("((a)", CLOSE, 5),
    ("a)", after("a"), 2),
    ("a b", after("a"), 3),
    ("proc.name = bash extra", after("bash"), 18),
    ("proc.name = 'x y' z", after("'x y'"), 19),
    ("proc.name", OPERATOR, 10),
    ("proc.name bash", OPERATOR, 11),
    ("proc.name ~= bash", OPERATOR, 11),
    ("proc.name Contains x", OPERATOR, 11),
    ("proc.name startswith", OPERATOR, 11),
    ("proc.aname [2] = x", OPERATOR, 12),
    ("a andb", "expected blank or '(' after 'and'", 6),
    ("a orb", "expected blank or '(' after 'or'", 5),
    ("a and", "expected blank or '(' after 'and'", 6),
    ("proc.name = bash and ", CHECK, 22),
    # `or(` takes only the group as its operand, so an `and` cannot follow it
    ("a or(b) and c", after(")"), 9),
    ("proc.name = ", STRING, 13),
    ("proc.name = )", STRING, 13),
    (
        "evt.num > abc",
        f"expected a number value or a field with a valid transformer: {TRANSFORMERS}",
        11,
    ),
    (
        "proc.name in",
        f"expected a list, an identifier, or a field with a valid transformer: {TRANSFORMERS}",
        13,
    ),
    (
        "proc.name in 'a'",
        f"expected a list, an identifier, or a field with a valid transformer: {TRANSFORMERS}",
        14,
    ),
    ("proc.name in (a b)", CLOSE, 17),
    ("proc.name in (a", CLOSE, 16),
    ("proc.name in (a, )", "expected a string value", 18),
    ("proc.name in (a, b=c)", CLOSE, 19),
    # lists hold strings only: a field or transformer is a bare word followed by junk
    ("proc.name in (tolower(proc.pname))", CLOSE, 22),
    ("proc.name in (val(proc.pname))", CLOSE, 18),
    ("proc.name = val(bash)", "expected a field within 'val' transformer", 17),
    ("proc.name = val(proc.pname", "expected a ')' token closing the transformer", 27),
    ("tolower(bash) = x", f"expected a field or a nested valid transformer: {TRANSFORMERS}", 9),
    ("tolower(proc.name = x", "expected a ')' token closing the transformer", 19),
    ("val(proc.name) = x", after("val"), 4),
    ("proc.name = oneof(a)", after("oneof"), 18),
    ("proc.env[] = x", "expected a valid field argument: a quoted string or a bare string", 10),
    ("proc.env[HOME = x", "expected a ']' token", 14),
    ("proc.env['a'b] = x", "expected a ']' token", 13),
    ('proc.name = "abc', 'unterminated string: expected a closing "', 13),
    ("proc.name in ('abc)", "unterminated string: expected a closing '", 15),
    (r'proc.name = "a\"', 'unterminated string: expected a closing "', 13),
    (r'proc.name = "a\qb"', "unsupported string escape sequence: \\q", 15),
    (r"proc.name = 'a\"b'", "invalid \\\" escape in '-quoted string", 15),
    (r'proc.name = "a\'b"', "invalid \\' escape in \"-quoted string", 15),
    (r'proc.name = "\x4"', "invalid \\x escape: expected two hex digits", 14),
    (r'proc.name = "\xZZ"', "invalid \\x escape: expected two hex digits", 14),
    (r"proc.name in ('\q')", "unsupported string escape sequence: \\q", 16),
    ("proc.name = a\0b", after("a"), 14),
    ("(" * 200 + "a" + ")" * 200, "exceeded max depth limit of 1000", 201),
]


@pytest.mark.parametrize(("text", "message", "column"), ERRORS)
def test_errors(text: str, message: str, column: int) -> None:
    with pytest.raises(RuleError) as caught:
        parse_condition(text)
    assert (caught.value.message, caught.value.column, caught.value.line) == (message, column, 1)


def rendered(text: str) -> str:
    with pytest.raises(RuleError) as caught:
        parse_condition(text)
    return str(caught.value)


def test_underline_marks_the_offending_token() -> None:
    assert rendered("proc.name = bash extra").splitlines() == [
        "1:18: unexpected token after 'bash', expecting 'or', 'and'",
        "  proc.name = bash extra",
        "                   ^^^^^",
    ]


def test_underline_of_an_unterminated_string_runs_to_the_end() -> None:
    assert rendered("a and proc.name = 'abc").splitlines()[1:] == [
        "  a and proc.name = 'abc",
        "                    ^^^^",
    ]


def test_underline_of_a_bad_escape_marks_the_escape() -> None:
    assert rendered(r'proc.name = "a\qb"').splitlines()[1:] == [
        '  proc.name = "a\\qb"',
        "                ^^",
    ]


def test_error_on_a_later_line_names_that_line() -> None:
    text = "spawned_process\n  and proc.nme bash\n  and x"
    with pytest.raises(RuleError) as caught:
        parse_condition(text)
    error = caught.value
    assert (error.line, error.column, error.text, error.length) == (2, 16, "  and proc.nme bash", 4)
    assert str(error).splitlines() == [
        f"2:16: {OPERATOR}",
        "    and proc.nme bash",
        "                 ^^^^",
    ]


def test_location_is_left_for_the_loader() -> None:
    with pytest.raises(RuleError) as caught:
        parse_condition("a b")
    assert caught.value.file is None and caught.value.item is None


@pytest.mark.parametrize(
    "text",
    [
        "(" * 5000 + "a" + ")" * 5000,
        "not(" * 5000 + "a" + ")" * 5000,
        "a or(" * 5000 + "a" + ")" * 5000,
        "a and(" * 5000 + "a" + ")" * 5000,
        "tolower(" * 5000 + "proc.name" + ")" * 5000 + " = x",
        "proc.name = " + "tolower(" * 5000 + "proc.name" + ")" * 5000,
        "(" * 100_000,
    ],
)
def test_deep_nesting_is_a_rule_error_not_a_recursion_error(text: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_condition(text)
    assert caught.value.message == "exceeded max depth limit of 1000"


def stack_depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


def nested_call(levels: int, call: Callable[[], ast.Node]) -> ast.Node:
    return call() if levels == 0 else nested_call(levels - 1, call)


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        # 99 guarded levels: below the point where the parser checks the stack again
        ("(" * 19 + "a" + ")" * 19, "a"),
        # the deepest `or(` chain the cap allows: two guarded levels per group
        ("x or(" * 497 + "a" + ")" * 497, "(or " + "x " * 497 + "a)"),
    ],
)
def test_parsing_needs_no_spare_interpreter_stack(text: str, shape: str) -> None:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(stack_depth() + 1000)
    try:
        node = nested_call(975, lambda: parse_condition(text))
    finally:
        sys.setrecursionlimit(max(limit, sys.getrecursionlimit()))
    assert to_sexpr(node) == shape


# -- parse_field_token ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("%proc.aname[2]", ("proc.aname", "2")),
        ("proc.name", ("proc.name", None)),
        ("%evt.arg.flags", ("evt.arg.flags", None)),
        ('%proc.env["A B"]', ("proc.env", "A B")),
        (
            "%container.mount.dest[/var/run/docker.sock]",
            ("container.mount.dest", "/var/run/docker.sock"),
        ),
    ],
)
def test_parse_field_token(token: str, expected: tuple[str, str | None]) -> None:
    assert parse_field_token(token) == expected


@pytest.mark.parametrize("token", ["%proc", "%proc.name extra", "%proc.env[]", "%proc.env[a", ""])
def test_parse_field_token_rejects(token: str) -> None:
    with pytest.raises(RuleError):
        parse_field_token(token)


# -- printing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "printed"),
    [
        ("a and (b or c)", "a and (b or c)"),
        ("not (not a)", "not (not a)"),
        ("not(a and b) or c", "not (a and b) or c"),
        ("proc.name==bash", "proc.name = bash"),
        ("proc.name in ('a b',c)", 'proc.name in ("a b", c)'),
        ("proc.env['x]'] exists", 'proc.env["x]"] exists'),
        (r"proc.name = 'it\'s\ '", r'proc.name = "it' + "'" + r's\ "'),
        ("proc.name = oneof (a)", "proc.name = oneof (a)"),
        ("tolower(proc.name) = val(proc.pname)", "tolower(proc.name) = val(proc.pname)"),
        ("(not) and (or)", "(not) and (or)"),
    ],
)
def test_format_condition(text: str, printed: str) -> None:
    assert format_condition(parse_condition(text)) == printed


# -- properties ----------------------------------------------------------------------------------

GRAMMAR_CHARS = list("()[],=!<>\"'\\ \t\n\b.-/*:_0123456789abcdeilnorstvxyz%+")
TOKENS = [
    "proc.name", "fd.name", "evt.arg[0]", "proc.aname[2]", "proc.env[", "]", "and", "or", "not",
    "not(", "and(", "or(", "(", ")", "=", "==", "!=", "<", "<=", ">", "in", "in(", "intersects",
    "pmatch", "contains", "glob", "exists", "oneof", "anyof", "tolower(", "len(", "val(", "bash",
    '"a b"', "'x'", ",", "0x1F", "-1.5", "\\", '"\\x4', "\\ ", "'\\''", "\0", "é", "\t", "\n",
]  # fmt: skip


def roundtrips(node: ast.Node) -> None:
    text = format_condition(node)
    assert without_spans(parse_condition(text)) == without_spans(node), text


def parse_or_reject(text: str) -> None:
    """Anything but RuleError fails the test; whatever parses must print and parse back."""
    try:
        node = parse_condition(text)
    except RuleError as error:
        assert error.column is not None and error.column >= 1
        return
    roundtrips(node)


@settings(max_examples=600, deadline=None)
@given(st.text(alphabet=st.sampled_from(GRAMMAR_CHARS) | st.characters(), max_size=60))
def test_random_text_only_raises_rule_error(text: str) -> None:
    parse_or_reject(text)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=14), st.sampled_from([" ", "", "  "]))
def test_random_token_soup_only_raises_rule_error(tokens: list[str], sep: str) -> None:
    parse_or_reject(sep.join(tokens))


IDENT = st.from_regex(r"[a-zA-Z][a-zA-Z0-9_]{0,6}", fullmatch=True)
FIELD_NAME = st.from_regex(r"[a-z][a-z0-9_]{0,4}(\.[a-zA-Z][a-zA-Z0-9_]{0,4}){1,3}", fullmatch=True)
# What a bare value can hold once read back: no NUL (it ends the text), no leading \b (a blank).
BARE = st.from_regex(r"[^()\"'=, \t\n\v\f\r\x00\x08][^()\"'=, \t\n\v\f\r\x00]{0,7}", fullmatch=True)
NUMBER = st.from_regex(
    r"[+-]?[0-9]{1,4}(\.[0-9]{0,3})?([eE][+-][0-9]{1,2})?|0[xX][0-9a-fA-F]{1,4}", fullmatch=True
)
ANY_TEXT = st.text(max_size=10)

FIELDS = st.builds(ast.Field, FIELD_NAME, st.none() | ANY_TEXT, st.just(NO_SPAN))
OPERANDS = st.recursive(
    FIELDS,
    lambda inner: st.builds(
        ast.Transform, st.sampled_from(ast.TRANSFORMERS), inner, st.just(NO_SPAN)
    ),
    max_leaves=3,
)
FIELD_VALUES = st.builds(ast.FieldValue, OPERANDS, st.just(NO_SPAN))
STRINGS = st.builds(ast.Value, BARE, st.just(False), st.just(NO_SPAN)) | st.builds(
    ast.Value, ANY_TEXT, st.just(True), st.just(NO_SPAN)
)
LISTS = st.builds(ast.ListValue, st.lists(STRINGS, max_size=4).map(tuple), st.just(NO_SPAN))
NAMED_LIST = st.builds(ast.Value, IDENT, st.just(False), st.just(NO_SPAN))
NUM_OPS = ["<", "<=", ">", ">="]
LIST_OPS = ["in", "intersects", "pmatch"]
STR_OPS = [op for op in ast.OPERATORS if op not in (*NUM_OPS, *LIST_OPS, "exists")]


def compare(
    op: str, right: st.SearchStrategy[ast.RightHand | None], modifier: str | None = None
) -> st.SearchStrategy[ast.Compare]:
    return st.builds(ast.Compare, OPERANDS, st.just(op), right, st.just(NO_SPAN), st.just(modifier))


COMPARES = st.one_of(
    compare("exists", st.none()),
    st.sampled_from(NUM_OPS).flatmap(
        lambda op: compare(
            op, st.builds(ast.Value, NUMBER, st.just(False), st.just(NO_SPAN)) | FIELD_VALUES
        )
    ),
    st.sampled_from(STR_OPS).flatmap(lambda op: compare(op, STRINGS | FIELD_VALUES)),
    st.tuples(st.sampled_from(STR_OPS), st.sampled_from(ast.MODIFIERS)).flatmap(
        lambda pair: compare(
            pair[0],
            LISTS | NAMED_LIST.filter(lambda v: v.text not in ("and", "or", "not")),
            pair[1],
        )
    ),
    st.sampled_from(LIST_OPS).flatmap(
        lambda op: compare(op, LISTS | NAMED_LIST | FIELD_VALUES)
    ),
)


def joined(kind: type[ast.And] | type[ast.Or], items: list[ast.Node]) -> ast.Node:
    flat: list[ast.Node] = []
    for item in items:
        flat.extend(item.items if isinstance(item, kind) else (item,))
    return kind(tuple(flat), NO_SPAN)


CONDITIONS = st.recursive(
    COMPARES | st.builds(ast.MacroRef, IDENT, st.just(NO_SPAN)),
    lambda inner: st.one_of(
        st.builds(ast.Not, inner, st.just(NO_SPAN)),
        st.lists(inner, min_size=2, max_size=4).map(lambda items: joined(ast.And, items)),
        st.lists(inner, min_size=2, max_size=4).map(lambda items: joined(ast.Or, items)),
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CONDITIONS)
def test_printed_trees_parse_back(node: ast.Node) -> None:
    roundtrips(node)


# -- upstream rulesets -----------------------------------------------------------------------------

UPSTREAM_FILES = ["falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml",
                  "k8s_audit_rules.yaml"]  # fmt: skip
_DELIMITED = r"(?<![^ \t\n\r(),=]){}(?![^ \t\n\r(),=])"


def load_items(path: Path) -> list[dict[str, object]]:
    return [item for item in yaml.safe_load(path.read_text()) or [] if isinstance(item, dict)]


def expanded_lists(items: list[dict[str, object]]) -> dict[str, list[str]]:
    """Each list's items, nested list names expanded, quoted when they hold a blank."""
    lists: dict[str, list[str]] = {}
    for item in items:
        if "list" in item:
            values: list[str] = []
            for value in item.get("items") or []:
                text = str(value)
                values.extend(lists.get(text, [text]))
            lists[str(item["list"])] = values
    for name, values in lists.items():
        lists[name] = [f'"{v}"' if " " in v and not v.startswith(('"', "'")) else v for v in values]
    return lists


def substitute(condition: str, lists: dict[str, list[str]]) -> str:
    """Falco's textual list substitution, simplified: whole-word names replaced by their items."""
    for name, values in lists.items():
        word = _DELIMITED.format(re.escape(name))
        if not values:
            # An empty list takes one adjacent comma with it.
            condition = re.sub(rf"{word}\s*,\s*|\s*,\s*{word}", "", condition)
        # Backslashes are the only special characters of a replacement string.
        condition = re.sub(word, ", ".join(values).replace("\\", "\\\\"), condition)
    return condition


def upstream_conditions(name: str) -> list[tuple[str, str]]:
    items = load_items(upstream_file("falco_rules.yaml"))
    if name != "falco_rules.yaml":
        items += load_items(upstream_file(name))
    lists = expanded_lists(items)
    own = load_items(upstream_file(name))
    return [
        (f"{kind} {item[kind]}", substitute(str(item["condition"]), lists))
        for item in own
        for kind in ("macro", "rule")
        if kind in item and "condition" in item
    ]


@pytest.mark.parametrize("name", UPSTREAM_FILES)
def test_upstream_conditions_parse(name: str) -> None:
    conditions = upstream_conditions(name)
    failures = []
    for label, text in conditions:
        try:
            roundtrips(parse_condition(text))
        except RuleError as error:
            failures.append(f"{label}: {error}")
    assert not failures, "\n".join(failures)
    assert len(conditions) > 90


def test_substitution_really_happened() -> None:
    conditions = dict(upstream_conditions("falco_rules.yaml"))
    text = conditions["macro shell_procs"]
    assert "shell_binaries" not in text and "bash" in text
    node = parse_condition(text)
    assert isinstance(node, ast.Compare) and isinstance(node.right, ast.ListValue)
    assert "bash" in {item.text for item in node.right.items}


def test_stable_ruleset_parses_fast() -> None:
    conditions = [text for _, text in upstream_conditions("falco_rules.yaml")]
    started = time.perf_counter()
    for text in conditions:
        parse_condition(text)
    # The whole ruleset load (parse, compile, index) has one second; parsing gets a fraction.
    assert time.perf_counter() - started < 0.3
