"""Property-based tests of the loader against a small model of Falco's collector.

The model: items live in insertion-ordered dicts; a definition replaces the value but keeps the
position, appends concatenate (items; condition text joined by a blank), updating something
undefined fails at that item. Every successful define/append/replace takes the next position of
one counter shared by all files and item kinds.
"""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.engine.errors import RuleError
from detector.engine.loader import load_rules, load_rules_text
from sidekick.alert import Priority

LIST_NAMES = ["l0", "l1", "l2"]
MACRO_NAMES = ["m0", "m1", "m2"]
RULE_NAMES = ["r0", "r1", "r2"]
PRIORITIES = ["debug", "info", "warning", "error"]


@dataclass(frozen=True)
class Op:
    kind: str  # list | macro | rule
    action: str  # define | legacy_append | append | replace | priority
    name: str
    items: tuple[str, ...] = ()
    text: str = ""


list_ops = st.builds(
    Op,
    kind=st.just("list"),
    action=st.sampled_from(["define", "legacy_append", "append", "replace"]),
    name=st.sampled_from(LIST_NAMES),
    items=st.lists(st.sampled_from(["i0", "i1", "i2", "my i3"]), max_size=3).map(tuple),
)
macro_ops = st.builds(
    Op,
    kind=st.just("macro"),
    action=st.sampled_from(["define", "legacy_append", "append", "replace"]),
    name=st.sampled_from(MACRO_NAMES),
    text=st.integers(0, 9).map(lambda n: f"evt.num = {n}"),
)
rule_ops = st.builds(
    Op,
    kind=st.just("rule"),
    action=st.sampled_from(["define", "append", "replace", "priority"]),
    name=st.sampled_from(RULE_NAMES),
    text=st.one_of(
        st.integers(0, 9).map(lambda n: f"evt.num = {n}"),
        st.sampled_from(LIST_NAMES).map(lambda name: f"proc.name in ({name})"),
        st.sampled_from(PRIORITIES),
    ),
)


def render(op: Op) -> str:
    """The op as one rules-file item."""
    if op.kind == "list":
        head = f"- list: {op.name}\n  items: [{', '.join(op.items)}]\n"
    elif op.kind == "macro":
        head = f"- macro: {op.name}\n  condition: {op.text}\n"
    elif op.action == "define":
        condition = op.text if op.text not in PRIORITIES else "evt.num = 1"
        head = f"- rule: {op.name}\n  desc: d\n  condition: {condition}\n  output: o\n"
        return head + "  priority: notice\n"
    elif op.action == "priority":
        priority = op.text if op.text in PRIORITIES else "critical"
        return f"- rule: {op.name}\n  priority: {priority}\n  override: {{priority: replace}}\n"
    else:
        head = f"- rule: {op.name}\n  condition: or {op.text}\n"
    key = "items" if op.kind == "list" else "condition"
    return (
        head
        + {
            "define": "",
            "legacy_append": "  append: true\n",
            "append": f"  override: {{{key}: append}}\n",
            "replace": f"  override: {{{key}: replace}}\n",
        }[op.action]
    )


class Undefined(Exception):
    pass


@dataclass
class Model:
    lists: dict[str, list[str]] = field(default_factory=dict)
    macros: dict[str, str] = field(default_factory=dict)
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)  # macro: index, vis
    rules: dict[str, tuple[str, Priority]] = field(default_factory=dict)
    counter: int = 0

    def tick(self) -> int:
        self.counter += 1
        return self.counter - 1

    def apply(self, op: Op) -> None:
        appending = op.action in ("legacy_append", "append")
        if op.kind == "list":
            if appending and op.name not in self.lists:
                raise Undefined
            self.lists[op.name] = (self.lists[op.name] if appending else []) + list(op.items)
            self.tick()
        elif op.kind == "macro":
            if appending and op.name not in self.macros:
                raise Undefined
            old = self.macros.get(op.name)
            self.macros[op.name] = f"{old} {op.text}" if appending else op.text
            position = self.tick()
            index = self.positions[op.name][0] if op.name in self.positions else position
            self.positions[op.name] = (index, position)
        elif op.action == "define":
            condition = op.text if op.text not in PRIORITIES else "evt.num = 1"
            self.rules[op.name] = (condition, Priority.NOTICE)
            self.tick()
        else:
            if op.name not in self.rules:
                raise Undefined
            condition, priority = self.rules[op.name]
            if op.action == "priority":
                priority = Priority.parse(op.text if op.text in PRIORITIES else "critical")
            elif op.action == "append":
                condition = f"{condition} or {op.text}"
            else:
                condition = f"or {op.text}"
            self.rules[op.name] = (condition, priority)
            self.tick()

    def substituted(self, condition: str) -> str:
        for name, items in self.lists.items():
            quoted = [f'"{item}"' if " " in item else item for item in items]
            condition = condition.replace(f"({name})", "( " + ", ".join(quoted) + " )")
        return condition


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(st.one_of(list_ops, macro_ops, rule_ops), min_size=1, max_size=25),
    cuts=st.sets(st.integers(1, 24), max_size=2),
)
def test_loader_matches_the_model(ops: list[Op], cuts: set[int]) -> None:
    # Split the ops over up to three files: later files refine earlier ones the same way.
    bounds = [0, *sorted(c for c in cuts if c < len(ops)), len(ops)]
    files = [ops[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    model = Model()
    failure: tuple[int, int] | None = None  # (file number, line) of the first bad item
    for number, chunk in enumerate(files):
        line = 1
        for op in chunk:
            try:
                model.apply(op)
            except Undefined:
                failure = (number, line)
                break
            line += render(op).count("\n")
        if failure:
            break
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for number, chunk in enumerate(files):
            path = Path(tmp) / f"f{number}.yaml"
            path.write_text("".join(render(op) for op in chunk))
            paths.append(path)
        if failure is not None:
            try:
                load_rules(paths)
            except RuleError as error:
                assert (error.file, error.line) == (str(paths[failure[0]]), failure[1])
                assert "no " in error.message and "by that name" in error.message
                return
            raise AssertionError("expected a RuleError")
        loaded, _ = load_rules(paths)
    assert loaded.lists == model.lists
    assert list(loaded.lists) == list(model.lists)
    assert [(m.name, m.condition) for m in loaded.macros.values()] == list(model.macros.items())
    assert [(m.index, m.visibility) for m in loaded.macros.values()] == list(
        model.positions.values()
    )
    assert [(r.name, r.condition, r.priority) for r in loaded.rules] == [
        (name, model.substituted(condition), priority)
        for name, (condition, priority) in model.rules.items()
    ]


# -- whatever the input, one RuleError or a result: never another exception ---------------------

KEYS = [
    "rule",
    "macro",
    "list",
    "condition",
    "output",
    "desc",
    "priority",
    "items",
    "append",
    "override",
    "enabled",
    "tags",
    "exceptions",
    "source",
    "name",
    "fields",
    "comps",
    "values",
    "required_engine_version",
    "required_plugin_versions",
    "version",
    "alternatives",
    "capture_duration",
    "skip-if-unknown-filter",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 100),
    st.sampled_from(KEYS),
    st.sampled_from(["append", "replace", "in", "=", "0.1.0", "info", "a b", "", "x.y"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)
items = st.dictionaries(st.sampled_from(KEYS), values, min_size=1, max_size=6)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(items, values), max_size=6))
def test_structured_garbage_only_raises_rule_error(content: list[object]) -> None:
    text = yaml.safe_dump(content, sort_keys=False)
    try:
        load_rules_text(text, "fuzz.yaml")
    except RuleError as error:
        assert error.file == "fuzz.yaml" and error.line is not None


fragments = st.sampled_from(
    [
        "- ",
        "rule: ",
        "macro: ",
        "list: ",
        "condition: ",
        "items: ",
        "[",
        "]",
        "{",
        "}",
        ": ",
        "  ",
        "\n",
        "\n  ",
        "append: true",
        "override: {",
        "exceptions:",
        "a",
        "1",
        "'",
        '"',
        "\t",
        "---",
        "&x ",
        "*x",
        "!t ",
        ",",
        "#",
        "|",
        ">",
        "%",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(fragments, max_size=40).map("".join))
def test_textual_garbage_only_raises_rule_error(text: str) -> None:
    try:
        load_rules_text(text, "fuzz.yaml")
    except RuleError as error:
        assert error.file == "fuzz.yaml"
