"""Recorded events through the replay source and the engine: every rule on its firing event and
its near misses.

The corpora (tests/replay/*.jsonl) annotate each event with ``_rule``, the rule the case is
about, and ``_expect``, exactly the rules that fire on it when that corpus's rules file alone is
loaded with rule_matching="all". Rule names are read from the rules YAML directly, not through
the loader, so a rule the engine drops or a case someone deletes still fails a test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from detector.engine.engine import Engine
from detector.engine.fields import REGISTRY
from detector.sources.replay import Recorded, ReplayError, read_events
from tests.upstream import upstream_file

ROOT = Path(__file__).resolve().parents[1]
REPLAY = ROOT / "tests" / "replay"
STABLE_EVENTS = REPLAY / "upstream_stable.jsonl"
LANNER_EVENTS = REPLAY / "lanner_rules.jsonl"
LANNER_RULES = ROOT / "rules" / "lanner_rules.yaml"


def _rule_names(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        items = yaml.safe_load(handle)
    return [item["rule"] for item in items if isinstance(item, dict) and "rule" in item]


def _cases(path: Path) -> list[Recorded]:
    return list(read_events(path))


def _case_id(recorded: Recorded) -> str:
    rule = recorded.event["_rule"]
    kind = "fires" if recorded.expect and rule in recorded.expect else "near miss"
    return f"{rule} / {kind} (line {recorded.line})"


STABLE_CASES = _cases(STABLE_EVENTS)
LANNER_CASES = _cases(LANNER_EVENTS)


@pytest.fixture(scope="module")
def stable_engine() -> Engine:
    engine, _ = Engine.from_files([upstream_file("falco_rules.yaml")], rule_matching="all")
    return engine


@pytest.fixture(scope="module")
def lanner_engine() -> Engine:
    engine, warnings = Engine.from_files([LANNER_RULES], rule_matching="all")
    assert warnings == [], [str(w) for w in warnings]
    return engine


def _check(engine: Engine, recorded: Recorded) -> None:
    fired = sorted(alert.rule for alert in engine.process(recorded.event))
    expected = sorted(recorded.expect or ())
    if fired != expected:
        why = engine.explain(recorded.event["_rule"], recorded.event)
        pytest.fail(f"line {recorded.line}: expected {expected}, fired {fired}\n{why}")


def _assert_both_cases(rules: list[str], cases: list[Recorded]) -> None:
    fires = {c.event["_rule"] for c in cases if c.expect and c.event["_rule"] in c.expect}
    misses = {c.event["_rule"] for c in cases if not (c.expect and c.event["_rule"] in c.expect)}
    assert sorted(set(rules) - fires) == [], "rules without an event that fires them"
    assert sorted(set(rules) - misses) == [], "rules without a near miss"
    assert sorted({c.event["_rule"] for c in cases} - set(rules)) == [], "cases of unknown rules"


# ---- the 25 stable rules -------------------------------------------------------------------


def test_every_stable_rule_has_a_firing_event_and_a_near_miss() -> None:
    rules = _rule_names(upstream_file("falco_rules.yaml"))
    assert len(rules) == 25
    _assert_both_cases(rules, STABLE_CASES)


@pytest.mark.parametrize("recorded", STABLE_CASES, ids=_case_id)
def test_stable_rules_fire_exactly_as_recorded(stable_engine: Engine, recorded: Recorded) -> None:
    _check(stable_engine, recorded)


def test_every_stable_rule_fires_somewhere_and_only_where_expected(
    stable_engine: Engine,
) -> None:
    """The whole corpus at once: each rule's alerts land on exactly the events that expect it."""
    fired: dict[str, set[int]] = {}
    expected: dict[str, set[int]] = {}
    for recorded in STABLE_CASES:
        for alert in stable_engine.process(recorded.event):
            fired.setdefault(alert.rule, set()).add(recorded.line)
        for rule in recorded.expect or ():
            expected.setdefault(rule, set()).add(recorded.line)
    assert fired == expected
    assert len(fired) == 25


def test_stable_alerts_render_the_recorded_values(stable_engine: Engine) -> None:
    traversal = next(c for c in STABLE_CASES
                     if c.expect == {"Directory traversal monitored file read"})
    [alert] = stable_engine.process(traversal.event)
    assert alert.priority.label == "Warning"
    assert "Read monitored file via directory traversal | file=/etc/passwd" in alert.output
    assert alert.output_fields["fd.nameraw"] == "/var/www/html/uploads/../../../../etc/passwd"
    assert alert.output_fields["proc.aname[2]"] == "systemd"
    assert alert.time_ns == traversal.event["evt.time"]


# ---- our default rules ---------------------------------------------------------------------


def test_every_default_rule_has_a_firing_event_and_a_near_miss() -> None:
    rules = _rule_names(LANNER_RULES)
    assert len(rules) >= 10
    _assert_both_cases(rules, LANNER_CASES)


@pytest.mark.parametrize("recorded", LANNER_CASES, ids=_case_id)
def test_default_rules_fire_exactly_as_recorded(lanner_engine: Engine, recorded: Recorded) -> None:
    _check(lanner_engine, recorded)


def test_default_rules_load_next_to_the_stable_rules() -> None:
    """Our macro and list names differ from upstream's, so loading both changes neither: the
    stable corpus still gives exactly its expected stable alerts."""
    engine, _ = Engine.from_files(
        [upstream_file("falco_rules.yaml"), LANNER_RULES], rule_matching="all"
    )
    stable = set(_rule_names(upstream_file("falco_rules.yaml")))
    for recorded in STABLE_CASES:
        fired = {a.rule for a in engine.process(recorded.event)} & stable
        assert fired == recorded.expect, f"line {recorded.line}"


def test_default_rules_are_tagged_with_maturity_and_mitre(lanner_engine: Engine) -> None:
    for rule in lanner_engine.rules:
        assert any(t.startswith("maturity_") for t in rule.tags), rule.name
        assert any(t.startswith("mitre_") for t in rule.tags), rule.name
        assert rule.desc and " | " in rule.output, rule.name


# ---- the corpora themselves ----------------------------------------------------------------


@pytest.mark.parametrize("path", [STABLE_EVENTS, LANNER_EVENTS], ids=lambda p: p.name)
def test_corpus_keys_are_registered_fields(path: Path) -> None:
    """A misspelt key would be silently absent to the rules, and a near miss would pass for
    the wrong reason."""
    for recorded in read_events(path):
        unknown = [k for k in recorded.event if not k.startswith("_") and REGISTRY.get(k) is None]
        assert unknown == [], f"line {recorded.line}"


# ---- the replay reader ---------------------------------------------------------------------


def test_reader_skips_blank_and_comment_lines_and_numbers_events(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(
        '# a recording\n\n{"evt.type": "openat"}\n   # indented comment\n'
        '{"evt.type": "execve", "evt.num": 77, "_expect": "Some rule"}\n'
        '{"evt.type": "connect", "_expect": null}\n{"evt.type": "ptrace", "_expect": ["A", "B"]}\n'
    )
    got = list(read_events(path))
    assert [(r.line, r.number) for r in got] == [(3, 1), (5, 2), (6, 3), (7, 4)]
    assert [r.event["evt.num"] for r in got] == [1, 77, 3, 4]
    assert [r.expect for r in got] == [None, {"Some rule"}, frozenset(), {"A", "B"}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"evt.type": "open"\n', "invalid JSON"),
        ('["evt.type", "open"]\n', "expected a JSON object, got list"),
        ('{"evt.type": "open", "_expect": 3}\n', "_expect must be a rule name"),
    ],
)
def test_reader_names_file_and_line_of_a_bad_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"evt.type": "execve"}\n# fine so far\n' + text)
    events = read_events(path)
    assert next(events).line == 1
    with pytest.raises(ReplayError) as info:
        next(events)
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)


def test_reader_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ReplayError) as info:
        list(read_events(tmp_path / "nope.jsonl"))
    assert str(info.value).startswith(f"{tmp_path / 'nope.jsonl'}: cannot read")
