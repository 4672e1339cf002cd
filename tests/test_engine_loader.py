"""The rules-file loader: upstream rulesets, append/override/redefinition, versions, broken files.

Condition text (exceptions, list substitution) is covered in test_engine_loader_text.py.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from detector.engine.errors import RuleError
from detector.engine.loader import ENGINE_VERSION, load_rules, load_rules_text
from detector.engine.model import LoadedRules
from sidekick.alert import Priority
from tests.upstream import upstream_file

RULE = """
- rule: {name}
  desc: {name} desc
  condition: {condition}
  output: {name} output
  priority: {priority}
"""


def rule(name: str, condition: str = "evt.type = open", priority: str = "INFO") -> str:
    return RULE.format(name=name, condition=condition, priority=priority)


def load(text: str) -> LoadedRules:
    return load_rules_text(textwrap.dedent(text))[0]


def error_of(text: str) -> RuleError:
    with pytest.raises(RuleError) as caught:
        load_rules_text(textwrap.dedent(text))
    return caught.value


# -- upstream rulesets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rules", "macros", "lists"),
    [
        ("falco_rules.yaml", 25, 87, 49),
        ("falco-incubating_rules.yaml", 31, 82, 54),
        ("falco-sandbox_rules.yaml", 37, 183, 60),
    ],
)
def test_upstream_syscall_rulesets_load(name: str, rules: int, macros: int, lists: int) -> None:
    loaded, warnings = load_rules([upstream_file(name)])
    assert (len(loaded.rules), len(loaded.macros), len(loaded.lists)) == (rules, macros, lists)
    assert warnings == []
    assert loaded.required_engine_version == "0.57.0"
    assert loaded.required_plugin_versions == [
        {"name": "container", "version": "0.4.0", "alternatives": []}
    ]
    assert all(r.source == "syscall" for r in loaded.rules)


def test_stable_ruleset_details() -> None:
    loaded, _ = load_rules([upstream_file("falco_rules.yaml")])
    assert loaded.rules[0].name == "Directory traversal monitored file read"
    assert loaded.macros["shell_procs"].condition == (
        "(proc.name in ( ash, bash, csh, ksh, sh, tcsh, zsh, dash ))"
    )
    # Nested one level upstream: package_mgmt_binaries holds rpm_binaries, deb_binaries...
    assert loaded.lists["package_mgmt_binaries"][:3] == ["dnf", "dnf-automatic", "rpm"]
    assert "deb_binaries" not in loaded.lists["package_mgmt_binaries"]
    priorities = [r.priority for r in loaded.rules]
    assert priorities.count(Priority.WARNING) == 14 and priorities.count(Priority.CRITICAL) == 3
    assert priorities.count(Priority.NOTICE) == 7 and priorities.count(Priority.INFORMATIONAL) == 1
    assert all("maturity_stable" in r.tags for r in loaded.rules)
    assert all(r.tags == sorted(r.tags) for r in loaded.rules)
    # No list name survives as a token in any condition.
    tokens = {t for r in loaded.rules for t in r.condition.replace("(", " ").split()}
    tokens |= {t for m in loaded.macros.values() for t in m.condition.replace("(", " ").split()}
    assert not tokens & set(loaded.lists)


def test_k8s_audit_ruleset_loads() -> None:
    loaded, warnings = load_rules([upstream_file("k8s_audit_rules.yaml")])
    assert (len(loaded.rules), len(loaded.macros), len(loaded.lists)) == (48, 45, 18)
    assert warnings == []
    assert loaded.required_engine_version == "0.15.0"
    plugins = {p["name"]: p for p in loaded.required_plugin_versions}
    assert set(plugins) == {"k8saudit", "json"}
    assert plugins["json"]["version"] == "0.7.0"
    assert [a["name"] for a in plugins["k8saudit"]["alternatives"]] == [  # type: ignore[union-attr]
        "k8saudit-aks",
        "k8saudit-eks",
        "k8saudit-gke",
        "k8saudit-ovh",
    ]
    assert {r.source for r in loaded.rules} == {"k8s_audit"}


def test_upstream_files_load_together_sharing_names() -> None:
    names = ["falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml"]
    paths = [upstream_file(n) for n in names]
    loaded, _ = load_rules(paths)
    expected: dict[str, dict[str, None]] = {"rule": {}, "macro": {}, "list": {}}
    for path in paths:
        for item in yaml.safe_load(path.read_text()):
            for kind, seen in expected.items():
                if kind in item:
                    seen.setdefault(str(item[kind]))
    assert [r.name for r in loaded.rules] == list(expected["rule"])
    assert list(loaded.macros) == list(expected["macro"])
    assert list(loaded.lists) == list(expected["list"])


# -- redefinition, append, override ---------------------------------------------------------------


def test_redefinition_replaces_but_keeps_first_position() -> None:
    text = rule("A", "evt.type = open") + rule("B") + rule("A", "evt.type = close", "ERROR")
    text += "- macro: m\n  condition: a\n- macro: n\n  condition: b\n- macro: m\n  condition: c\n"
    text += "- list: l\n  items: [1]\n- list: k\n  items: [2]\n- list: l\n  items: [3]\n"
    loaded = load_rules_text(text)[0]
    assert [(r.name, r.condition, r.priority) for r in loaded.rules] == [
        ("A", "evt.type = close", Priority.ERROR),
        ("B", "evt.type = open", Priority.INFORMATIONAL),
    ]
    assert [(m.name, m.condition) for m in loaded.macros.values()] == [("m", "c"), ("n", "b")]
    assert loaded.lists == {"l": ["3"], "k": ["2"]}


@pytest.mark.parametrize(
    ("update", "warned"),
    [
        ("  append: true\n", True),
        ("  override:\n    items: append\n", False),
    ],
)
def test_list_append(update: str, warned: bool) -> None:
    text = "- list: l\n  items: [a, b]\n- list: l\n  items: [c]\n" + update
    loaded, warnings = load_rules_text(text)
    assert loaded.lists["l"] == ["a", "b", "c"]
    assert [w.code for w in warnings if w.code != "LOAD_UNUSED_LIST"] == (
        ["LOAD_DEPRECATED_ITEM"] if warned else []
    )


def test_list_override_replace() -> None:
    text = "- list: l\n  items: [a]\n- list: l\n  items: [z]\n  override: {items: replace}\n"
    assert load(text).lists["l"] == ["z"]


@pytest.mark.parametrize("update", ["  append: true\n", "  override:\n    condition: append\n"])
def test_macro_append_concatenates_text(update: str) -> None:
    text = "- macro: m\n  condition: evt.type = open\n"
    text += "- macro: m\n  condition: and proc.name = cat\n" + update
    assert load(text).macros["m"].condition == "evt.type = open and proc.name = cat"


def test_macro_positions_for_the_compiler() -> None:
    text = "- macro: a\n  condition: x\n- macro: b\n  condition: y\n"
    text += "- macro: a\n  condition: or z\n  override: {condition: append}\n"
    macros = load(text).macros
    assert [(m.index, m.visibility) for m in macros.values()] == [(0, 2), (1, 1)]


def test_rule_override_append_and_replace_per_key() -> None:
    text = (
        rule("R")
        + "  tags: [b, a]\n"
        + textwrap.dedent(
            """
        - rule: R
          condition: and proc.name = cat
          output: extra=%proc.name
          desc: more
          tags: [c]
          priority: critical
          enabled: false
          override:
            condition: append
            output: append
            desc: append
            tags: append
            priority: replace
            enabled: replace
        """
        )
    )
    (r,) = load(text).rules
    assert r.condition == "evt.type = open and proc.name = cat"
    assert r.output == "R output extra=%proc.name"
    assert r.desc == "R desc more"
    assert r.tags == ["a", "b", "c"]
    assert (r.priority, r.enabled) == (Priority.CRITICAL, False)


def test_rule_override_replace_other_keys() -> None:
    text = rule("R") + textwrap.dedent(
        """
        - rule: R
          condition: evt.type = close
          tags: [z]
          warn_evttypes: false
          skip-if-unknown-filter: true
          capture: true
          capture_duration: 2000
          override:
            condition: replace
            tags: replace
            warn_evttypes: replace
            skip-if-unknown-filter: replace
            capture: replace
            capture_duration: replace
        """
    )
    (r,) = load(text).rules
    assert (r.condition, r.tags, r.warn_evttypes, r.skip_if_unknown_filter) == (
        "evt.type = close",
        ["z"],
        False,
        True,
    )
    assert (r.capture, r.capture_duration) == (True, 2000)
    assert r.origin.line == 8 and r.origin.condition_line == 9  # where the condition now comes from


def test_legacy_rule_append_touches_only_condition() -> None:
    text = rule("R") + "- rule: R\n  append: true\n  condition: and fd.num > 0\n  output: ignored\n"
    (r,) = load(text).rules
    assert (r.condition, r.output) == ("evt.type = open and fd.num > 0", "R output")


def test_enable_only_form_is_deprecated_but_works() -> None:
    loaded, warnings = load_rules_text(rule("R") + "- rule: R\n  enabled: false\n")
    assert loaded.rules[0].enabled is False
    assert [(w.code, w.line) for w in warnings] == [("LOAD_DEPRECATED_ITEM", 7)]


def test_later_files_refine_earlier_ones(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(rule("R") + rule("S") + "- list: l\n  items: [a]\n")
    local = tmp_path / "local.yaml"
    local.write_text(
        "- list: l\n  items: [b]\n  override: {items: append}\n"
        "- rule: R\n  condition: and proc.name in (l)\n  override: {condition: append}\n"
        + rule("S", "evt.type = close")
    )
    loaded, _ = load_rules([tmp_path / "base.yaml", local])
    assert [(r.name, r.condition) for r in loaded.rules] == [
        ("R", "evt.type = open and proc.name in ( a, b )"),
        ("S", "evt.type = close"),
    ]
    assert loaded.rules[1].origin.file == str(local)


def test_directory_loads_yaml_files_by_name(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text("- macro: m\n  condition: b\n")
    (tmp_path / "a.yaml").write_text("- macro: m\n  condition: a\n- macro: n\n  condition: x\n")
    (tmp_path / "c.txt").write_text("not yaml: [")
    (tmp_path / "d.yaml").mkdir()
    loaded, _ = load_rules([tmp_path])
    assert [(m.name, m.condition) for m in loaded.macros.values()] == [("m", "b"), ("n", "x")]


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        ("- list: l\n  items: [a]\n  append: true\n", "no list by that name", 1),
        ("- macro: m\n  condition: x\n  override: {condition: append}\n", "no macro by that", 1),
        ("- rule: R\n  condition: x\n  override: {condition: append}\n", "no rule by that", 1),
        ("- rule: R\n  priority: debug\n  override: {priority: replace}\n", "no rule by that", 1),
        ("- rule: R\n  append: true\n  condition: x\n", "no rule by that name", 1),
        ("- rule: R\n  enabled: true\n", "Rule has 'enabled' key but no rule", 1),
    ],
)
def test_updating_something_undefined_fails(text: str, message: str, line: int) -> None:
    caught = error_of(text)
    assert message in caught.message and (caught.file, caught.line) == ("rules.yaml", line)


@pytest.mark.parametrize(
    ("update", "message", "line"),
    [
        (rule("R", "c", "info")[1:] + "  source: k8s_audit\n", "different source", 12),
        ("- rule: R\n  source: k8s_audit\n  desc: d\n  override: {desc: append}\n", "different", 8),
        ("- rule: R\n  priority: debug\n  override: {priority: append}\n", "cannot be appended", 9),
        ("- rule: R\n  priority: debug\n  override: {source: replace}\n", "'source' cannot be", 9),
        ("- rule: R\n  priority: debug\n  override: {priority: merge}\n", "values are: replace", 9),
        ("- rule: R\n  priority: debug\n  override: {output: append}\n", "'output' is not def", 9),
        ("- rule: R\n  priority: debug\n  desc: x\n  override: {desc: append}\n", "Unexpected", 8),
        (
            "- rule: R\n  condition: x\n  append: true\n  override: {condition: append}\n",
            "cannot be used",
            7,
        ),
        ("- rule: R\n  output: x\n  append: true\n", "must have exceptions or condition", 7),
        ("- rule: R\n  priority: loud\n  override: {priority: replace}\n", "Invalid priority", 8),
    ],
)
def test_bad_rule_updates(update: str, message: str, line: int) -> None:
    caught = error_of(rule("R") + update)
    assert message in caught.message
    assert (caught.line, caught.item) == (line, "rule 'R'")


# -- versions, warnings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "kept"),
    [("15", "0.15.0"), ("0.57.0", "0.57.0"), ('"0.50.2"', "0.50.2"), (ENGINE_VERSION, "0.57.0")],
)
def test_required_engine_version_accepted(written: str, kept: str) -> None:
    assert load(f"- required_engine_version: {written}\n").required_engine_version == kept


def test_required_engine_version_keeps_the_highest() -> None:
    text = "- required_engine_version: 0.50.0\n- required_engine_version: 12\n"
    text += "---\n- required_engine_version: 0.20.0\n"
    assert load(text).required_engine_version == "0.50.0"


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("58", "Rules require engine version 0.58.0, but engine version is 0.57.0"),
        ("0.57.1", "Rules require engine version 0.57.1, but engine version is 0.57.0"),
        ("1.0.0", "Rules require engine version 1.0.0"),
        ("latest", "Unable to parse engine version 'latest' as a semver string"),
        ("[1]", "Value is not a scalar value"),
    ],
)
def test_required_engine_version_refused(written: str, message: str) -> None:
    caught = error_of(f"- rule: x\n  enabled: true\n  required_engine_version: {written}\n")
    assert message in caught.message
    assert (caught.line, caught.column) == (3, 28)


def test_engine_version_is_configurable() -> None:
    text = "- required_engine_version: 0.60.0\n"
    loaded, _ = load_rules_text(text, engine_version="0.62.0")
    assert loaded.required_engine_version == "0.60.0"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("- {name: a, version: 1.0.0, alternatives: [{name: a, version: 2.0.0}]}", "multiple"),
        ("- {name: a, version: one}", "Invalid required version 'one' for plugin 'a'"),
        ("- {name: a}", "Item has no mapping for key 'version'"),
        ("- just_a_name", "Plugin version must be a mapping"),
        ("- {name: a, version: 1.0.0, alternatives: x}", "alternatives must be a sequence"),
    ],
)
def test_bad_plugin_requirements(entry: str, message: str) -> None:
    caught = error_of(f"- required_plugin_versions:\n    {entry}\n")
    assert message in caught.message and caught.line == 2


def test_unknown_keys_and_items_only_warn() -> None:
    text = rule("R") + "  severity: high\n- macro: m\n  condition: x\n  desc: no such key\n"
    text += "- description: not an item\n- list: l\n  items: []\n  colour: red\n"
    text += "- macro: 1bad\n  condition: x\n- list: 'bad,name'\n  items: []\n"
    loaded, warnings = load_rules_text(text)
    assert [r.name for r in loaded.rules] == ["R"]
    got = [(w.code, w.line) for w in warnings]
    assert got == [
        ("LOAD_UNKNOWN_KEY", 7),
        ("LOAD_UNKNOWN_KEY", 10),
        ("LOAD_UNKNOWN_ITEM", 11),
        ("LOAD_UNKNOWN_KEY", 14),
        ("LOAD_INVALID_MACRO_NAME", 15),
        ("LOAD_INVALID_LIST_NAME", 17),
        ("LOAD_UNUSED_LIST", 12),
        ("LOAD_UNUSED_LIST", 17),
    ]
    assert str(warnings[0]) == (
        "rules.yaml:7: rule 'R': warning: Unknown key 'severity'. The key will be ignored."
    )


def test_rule_keys_and_defaults() -> None:
    text = rule("R", priority="info")
    text += "  source: aws_cloudtrail\n  tags: [b, a, b]\n  capture: yes\n  capture_duration: 500\n"
    text += "- rule: D\n  desc: d\n  condition: c\n  output: '  padded  '\n  priority: Debug\n"
    first, second = load(text).rules
    assert (first.source, first.tags, first.capture, first.capture_duration) == (
        "aws_cloudtrail",
        ["a", "b"],
        True,
        500,
    )
    assert (first.priority, first.desc) == (Priority.INFORMATIONAL, "R desc")
    assert (second.source, second.enabled, second.warn_evttypes, second.skip_if_unknown_filter) == (
        "syscall",
        True,
        True,
        False,
    )
    assert (second.output, second.priority, second.tags) == ("padded", Priority.DEBUG, [])


def test_condition_origin() -> None:
    text = "- macro: one\n  condition: evt.type = open\n"
    text += "- macro: quoted\n  condition: 'a = b'\n"
    text += "- macro: block\n  condition: >\n    evt.type = x\n\n- macro: folded\n  condition: >\n"
    text += "    a and\n    b\n"
    got = {m.name: m.origin for m in load(text).macros.values()}
    assert (got["one"].line, got["one"].condition_line, got["one"].condition_column) == (1, 2, 14)
    assert (got["quoted"].condition_line, got["quoted"].condition_column) == (4, 15)
    assert (got["block"].condition_line, got["block"].condition_column) == (7, 5)
    assert (got["folded"].condition_line, got["folded"].condition_column) == (11, None)


# -- broken files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message", "line", "column"),
    [
        ("- rule: x\n  condition: [a\n", "YAML parse error", 3, 1),
        ("- macro: m\n\tcondition: x\n", "YAML parse error", 2, 1),
        ("rule: x\n", "Rules content is not yaml array of objects", 1, 1),
        ("just text\n", "Rules content is not yaml", 1, 1),
        ("- macro: m\n  condition: x\n- just a string\n", "Each element should be a yaml", 3, 3),
        (rule("R")[1:].replace("  condition: evt.type = open\n", ""), "key 'condition'", 1, 3),
        (rule("R")[1:] + "  tags: network\n", "Value is not a sequence", 6, 9),
        (rule("R")[1:] + "  tags: [[a]]\n", "sequence value is not scalar", 6, 10),
        (rule("R")[1:] + "  enabled: maybe\n", "Can't decode YAML scalar value", 6, 12),
        (rule("R", priority="[WARNING]")[1:], "Value is not a scalar value", 5, 13),
        (rule("R", priority="''")[1:], "Value must be non-empty", 5, 13),
        (rule("R", condition="")[1:], "Mapping for key 'condition' is empty", 3, 13),
        ("- macro: [m]\n  condition: x\n", "Value is not a scalar value", 1, 10),
        ("- {[a]: b}\n", "Mapping keys must be strings", 1, 4),
    ],
)
def test_broken_files_give_one_located_error(
    text: str, message: str, line: int, column: int
) -> None:
    caught = error_of(text)
    assert message in caught.message
    assert (caught.file, caught.line, caught.column) == ("rules.yaml", line, column)


def test_item_kind_names_an_item_without_a_usable_name() -> None:
    assert error_of("- rule: [x]\n").item == "rule"
    assert error_of("- list: ''\n").item == "list"


def test_error_renders_with_the_line_underlined() -> None:
    caught = error_of(rule("Shell", priority="SUPER"))
    assert str(caught) == (
        "rules.yaml:6:13: rule 'Shell': Invalid priority\n    priority: SUPER\n              ^^^^^"
    )


def test_unreadable_file_is_a_rule_error(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="Could not read rules file") as caught:
        load_rules([tmp_path / "missing.yaml"])
    assert caught.value.file == str(tmp_path / "missing.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"- macro: m\n  condition: caf\xe9\n")
    with pytest.raises(RuleError, match="Could not read rules file"):
        load_rules([tmp_path / "latin1.yaml"])


def test_error_in_second_file_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(rule("R"))
    (tmp_path / "b.yaml").write_text("- macro: m\n  condition: x\n  append: true\n")
    with pytest.raises(RuleError) as caught:
        load_rules([tmp_path])
    assert (caught.value.file, caught.value.line) == (str(tmp_path / "b.yaml"), 1)


def test_empty_and_null_documents_are_fine() -> None:
    text = "# nothing\n---\n---\n- null\n-\n- macro: m\n  condition: x\n---\n[]\n"
    assert list(load(text).macros) == ["m"]
