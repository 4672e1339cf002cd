"""The condition text the loader builds: exceptions appended and lists substituted.

Expected strings are written from the Falco rules reference (§1.4, §1.5) and Falco's compiler:
``(<condition>) and not <clause>`` per exception with values; the scalar form's clause is
``(field comp (v1, v2))``; the tuple form's is ``(( f1 c1 v1 and  f2 c2 v2) or ( ...))`` — Falco
puts a blank before every field, hence the blank after ``(`` and the double blank after ``and``.
List names are replaced as whole tokens by their items joined with ", ", padded with one blank.
"""

from __future__ import annotations

import textwrap

import pytest

from detector.engine.errors import RuleError
from detector.engine.loader import load_rules_text
from detector.engine.model import LoadedRules


def load(text: str) -> LoadedRules:
    return load_rules_text(textwrap.dedent(text), "rules.yaml")[0]


def condition_with(exceptions: str, condition: str = "proc.name = x", prelude: str = "") -> str:
    """The condition of a rule carrying ``exceptions`` (YAML, indented under the rule)."""
    text = textwrap.dedent(prelude) + textwrap.dedent(
        f"""
        - rule: r
          desc: d
          condition: {condition}
          output: o
          priority: INFO
          exceptions:
        """
    )
    text += textwrap.indent(textwrap.dedent(exceptions), "  ")
    return load_rules_text(text, "rules.yaml")[0].rules[0].condition


# -- exceptions: scalar form (one field) -------------------------------------------------------


def test_scalar_form_defaults_to_in() -> None:
    got = condition_with(
        """
        - name: shells
          fields: proc.pname
          values: [bash, sh]
        """
    )
    assert got == "(proc.name = x) and not (proc.pname in (bash, sh))"


@pytest.mark.parametrize("comp", ["pmatch", "intersects", "startswith oneof", "endswith anyof"])
def test_scalar_form_list_operators(comp: str) -> None:
    got = condition_with(
        f"""
        - name: dirs
          fields: fd.name
          comps: {comp}
          values: [/tmp, /var/tmp]
        """
    )
    assert got == f"(proc.name = x) and not (fd.name {comp} (/tmp, /var/tmp))"


def test_scalar_form_quotes_values_with_spaces_but_not_quoted_ones() -> None:
    got = condition_with(
        """
        - name: paths
          fields: fd.name
          values: [/my dir/x, '"/already quoted"', "it's mine"]
        """
    )
    # Falco wraps in double quotes and escapes nothing inside.
    expected = '(proc.name = x) and not (fd.name in ("/my dir/x", "/already quoted", "it\'s mine"))'
    assert got == expected


def test_scalar_form_rejects_non_list_operator() -> None:
    with pytest.raises(RuleError, match="comps must be one of"):
        condition_with("- {name: e, fields: proc.name, comps: '=', values: [a]}")


# -- exceptions: tuple form (list of fields) ---------------------------------------------------


def test_tuple_form_single_field_defaults_to_equals() -> None:
    got = condition_with("- {name: e, fields: [proc.pname], values: [[bash]]}")
    assert got == "(proc.name = x) and not (( proc.pname = bash))"


def test_tuple_form_two_fields_two_rows() -> None:
    got = condition_with(
        """
        - name: pairs
          fields: [proc.name, proc.pname]
          values:
            - [bash, sshd]
            - [sh, cron]
        """
    )
    assert got == (
        "(proc.name = x) and not "
        "(( proc.name = bash and  proc.pname = sshd) or ( proc.name = sh and  proc.pname = cron))"
    )


def test_tuple_form_quotes_values_with_spaces() -> None:
    # The reference's own example, in Falco's text form.
    got = condition_with(
        """
        - name: local_curl
          fields: [proc.cmdline]
          comps: [contains]
          values:
            - [curl 127.0.0.1]
        """,
        condition="proc.cmdline contains curl or proc.cmdline contains wget",
    )
    assert got == (
        "(proc.cmdline contains curl or proc.cmdline contains wget) "
        'and not (( proc.cmdline contains "curl 127.0.0.1"))'
    )


@pytest.mark.parametrize(
    "comp",
    [
        *("=", "==", "!=", "<", "<=", ">", ">=", "contains", "icontains", "startswith"),
        *("endswith", "glob", "iglob", "regex", "bcontains", "bstartswith"),
    ],
)
def test_tuple_form_scalar_operators_keep_value_bare(comp: str) -> None:
    got = condition_with(f"- {{name: e, fields: [fd.name], comps: ['{comp}'], values: [[v1]]}}")
    assert got == f"(proc.name = x) and not (( fd.name {comp} v1))"


@pytest.mark.parametrize("comp", ["in", "pmatch", "intersects", "contains allof"])
def test_tuple_form_list_operator_parenthesises_scalar(comp: str) -> None:
    got = condition_with(
        f"""
        - name: e
          fields: [fd.name, proc.name]
          comps: [{comp}, in]
          values: [[/tmp, '(a, b)']]
        """
    )
    # A scalar already starting with "(" is taken as a list as written.
    assert got == f"(proc.name = x) and not (( fd.name {comp} (/tmp) and  proc.name in (a, b)))"


def test_tuple_form_yaml_list_value_becomes_a_list() -> None:
    got = condition_with("- {name: e, fields: [proc.name], comps: [in], values: [[[bash, my sh]]]}")
    assert got == '(proc.name = x) and not (( proc.name in (bash, "my sh")))'


def test_comps_are_trimmed() -> None:
    got = condition_with("- {name: e, fields: [fd.name], comps: [' startswith '], values: [[/a]]}")
    assert got == "(proc.name = x) and not (( fd.name startswith /a))"


def test_exception_values_may_name_a_list() -> None:
    prelude = """
        - list: shells
          items: [bash, sh]
        """
    tuple_form = condition_with(
        "- {name: e, fields: [proc.name], comps: [in], values: [[shells]]}", prelude=prelude
    )
    assert tuple_form == "(proc.name = x) and not (( proc.name in ( bash, sh )))"
    scalar_form = condition_with(
        "- {name: e, fields: proc.pname, values: [shells]}", prelude=prelude
    )
    assert scalar_form == "(proc.name = x) and not (proc.pname in ( bash, sh ))"


def test_exceptions_without_values_add_nothing_but_parentheses() -> None:
    got = condition_with(
        """
        - {name: tuple_empty, fields: [proc.name, proc.pname]}
        - {name: scalar_empty, fields: proc.name, values: []}
        - {name: used, fields: proc.pname, values: [a]}
        """
    )
    assert got == "(proc.name = x) and not (proc.pname in (a))"


def test_several_exceptions_are_each_negated_in_order() -> None:
    got = condition_with(
        """
        - {name: one, fields: proc.pname, values: [a]}
        - {name: two, fields: [fd.name], comps: [startswith], values: [[/tmp]]}
        """
    )
    assert got == "(proc.name = x) and not (proc.pname in (a)) and not (( fd.name startswith /tmp))"


RULE_WITH_EXCEPTION = """
- rule: r
  desc: d
  condition: evt.type = open
  output: o
  priority: INFO
  exceptions:
    - {name: pairs, fields: [proc.name, fd.name], comps: [=, startswith], values: [[a, /x]]}
"""


def test_override_append_adds_values_and_new_exceptions() -> None:
    text = RULE_WITH_EXCEPTION + textwrap.dedent(
        """
        - rule: r
          exceptions:
            - {name: pairs, values: [[b, /y]]}
            - {name: extra, fields: proc.pname, values: [cron]}
          override:
            exceptions: append
        """
    )
    got = load_rules_text(text)[0].rules[0].condition
    assert got == (
        "(evt.type = open) and not "
        "(( proc.name = a and  fd.name startswith /x) or "
        "( proc.name = b and  fd.name startswith /y))"
        " and not (proc.pname in (cron))"
    )


def test_legacy_append_adds_exception_values() -> None:
    text = RULE_WITH_EXCEPTION + textwrap.dedent(
        """
        - rule: r
          append: true
          exceptions:
            - {name: pairs, values: [[c, /z]]}
        """
    )
    rules, warnings = load_rules_text(text)
    assert rules.rules[0].condition.endswith("or ( proc.name = c and  fd.name startswith /z))")
    assert [w.code for w in warnings] == ["LOAD_DEPRECATED_ITEM"]


def test_override_replace_swaps_the_exceptions() -> None:
    text = RULE_WITH_EXCEPTION + textwrap.dedent(
        """
        - rule: r
          exceptions:
            - {name: only, fields: proc.name, comps: pmatch, values: [/bin]}
          override:
            exceptions: replace
        """
    )
    got = load_rules_text(text)[0].rules[0].condition
    assert got == "(evt.type = open) and not (proc.name pmatch (/bin))"


@pytest.mark.parametrize(
    ("exceptions", "message", "line"),
    [
        ("- {name: e, fields: [a.b, c.d], values: [[1]]}", "Fields and values lists must", 8),
        ("- {name: e, fields: [a.b], comps: [=, =], values: []}", "Fields and comps lists", 8),
        ("- {name: e, fields: [a.b], comps: [like], values: []}", "'like' is not a supported", 8),
        ("- {name: e, fields: a.b, values: [[x]]}", "Expected values array to contain", 8),
        ("- {name: e, values: [[x]]}", "Item has no mapping for key 'fields'", 8),
        ("- {name: e, fields: a.b, values: x}", "Rule exception values must be a sequence", 8),
        ("- just_a_name", "Rule exception must be a mapping", 8),
        ("- {name: e, fields: [a.b], values: [[[[x]]]]}", "Value is not a scalar value", 8),
    ],
)
def test_bad_exceptions_are_located(exceptions: str, message: str, line: int) -> None:
    with pytest.raises(RuleError, match=message) as caught:
        condition_with(exceptions)
    assert (caught.value.file, caught.value.line) == ("rules.yaml", line)


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ("- {name: pairs, fields: [x.y], values: [[a]]}", "Can not append exception fields"),
        ("- {name: pairs, comps: [in], values: [[a]]}", "Can not append exception comps"),
        ("- {name: pairs, values: [[only_one]]}", "Fields and values lists must have equal"),
        ("- {name: fresh, values: [[a]]}", "must have fields property"),
        ("- {name: fresh, fields: proc.name}", "must have values property"),
    ],
)
def test_bad_exception_appends(update: str, message: str) -> None:
    text = RULE_WITH_EXCEPTION + "- rule: r\n  override: {exceptions: append}\n  exceptions:\n"
    text += textwrap.indent(update, "    ") + "\n"
    with pytest.raises(RuleError, match=message) as caught:
        load_rules_text(text)
    assert caught.value.line == 12


def test_duplicate_exception_names_warn() -> None:
    text = RULE_WITH_EXCEPTION + "    - {name: pairs, fields: proc.name, values: [z]}\n"
    _, warnings = load_rules_text(text)
    assert [(w.code, w.line) for w in warnings] == [("LOAD_EXCEPTION_NAME_NOT_UNIQUE", 9)]


# -- lists --------------------------------------------------------------------------------------


def macro_condition(lists: str, condition: str) -> str:
    text = textwrap.dedent(lists) + f"- macro: m\n  condition: {condition}\n"
    return load_rules_text(text)[0].macros["m"].condition


def test_list_items_are_joined_padded_and_quoted_like_falco() -> None:
    lists = """
        - list: cmds
          items: [ls, my cmd, '"sh -c x"', 'say "hi there"', 80]
        """
    got = macro_condition(lists, "proc.cmdline in (cmds)")
    assert got == 'proc.cmdline in ( ls, "my cmd", "sh -c x", "say "hi there"", 80 )'


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("proc.name in (shells_x)", "proc.name in (shells_x)"),
        ("proc.name in (x_shells)", "proc.name in (x_shells)"),
        ("proc.shells exists", "proc.shells exists"),
        ("proc.name=shells", "proc.name= bash, sh "),
        ("shells", "bash, sh "),
        ("proc.name in (a,shells)", "proc.name in (a, bash, sh )"),
        ('proc.cmdline contains "run shells now"', 'proc.cmdline contains "run bash, sh now"'),
        (
            "proc.name in (shells) or proc.pname in (shells)",
            "proc.name in ( bash, sh ) or proc.pname in ( bash, sh )",
        ),
    ],
)
def test_list_names_are_replaced_only_as_whole_tokens(condition: str, expected: str) -> None:
    lists = "- list: shells\n  items: [bash, sh]\n"
    assert macro_condition(lists, f"'{condition}'") == expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("proc.name in (a, empty)", "proc.name in (a  )"),
        ("proc.name in (empty, a)", "proc.name in (   a)"),
        ("proc.name in (empty)", "proc.name in (  )"),
    ],
)
def test_empty_list_swallows_one_comma(condition: str, expected: str) -> None:
    assert macro_condition("- list: empty\n  items: []\n", condition) == expected


def test_nested_lists_are_flattened() -> None:
    lists = """
        - list: inner
          items: [a, b]
        - list: middle
          items: [inner, c]
        - list: outer
          items: [middle, d]
        """
    text = textwrap.dedent(lists) + "- macro: m\n  condition: proc.name in (outer)\n"
    loaded = load_rules_text(text)[0]
    assert loaded.lists["outer"] == ["a", "b", "c", "d"]
    assert loaded.macros["m"].condition == "proc.name in ( a, b, c, d )"


def test_list_defined_later_stays_a_name_but_is_still_substituted() -> None:
    # Falco only nests lists defined earlier; the later list's own pass then replaces the name.
    lists = """
        - list: first
          items: [second, x]
        - list: second
          items: [y, z]
        """
    text = textwrap.dedent(lists) + "- macro: m\n  condition: proc.name in (first)\n"
    loaded = load_rules_text(text)[0]
    assert loaded.lists["first"] == ["second", "x"]
    assert loaded.macros["m"].condition == "proc.name in ( y, z , x )"


@pytest.mark.parametrize(
    ("lists", "line"),
    [
        (
            "- list: a\n  items: [x]\n- list: b\n  items: [a]\n"
            "- list: a\n  items: [b]\n  append: true\n",
            1,
        ),
        ("- list: a\n  items: [x]\n- list: a\n  items: [a]\n  override: {items: append}\n", 1),
    ],
)
def test_list_cycle_is_an_error(lists: str, line: int) -> None:
    with pytest.raises(RuleError, match="refers to itself") as caught:
        load_rules_text(lists + "- macro: m\n  condition: proc.name in (a)\n")
    assert (caught.value.file, caught.value.line, caught.value.item) == (
        "rules.yaml",
        line,
        "list 'a'",
    )


def test_rules_and_macros_may_use_lists_defined_after_them() -> None:
    text = """
        - rule: r
          desc: d
          condition: proc.name in (late)
          output: o
          priority: INFO
        - list: late
          items: [x]
        """
    assert load(text).rules[0].condition == "proc.name in ( x )"


def test_unused_list_warns() -> None:
    text = "- list: used\n  items: [a]\n- list: unused\n  items: [b]\n"
    text += "- macro: m\n  condition: proc.name in (used)\n"
    _, warnings = load_rules_text(text)
    assert [(w.code, w.line, w.item) for w in warnings] == [
        ("LOAD_UNUSED_LIST", 3, "list 'unused'")
    ]
