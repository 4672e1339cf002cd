"""`lanner rules`: check, list and try out Falco-language rules files (`lanner detect` and
`lanner detector setup` are detector.cli_detect).

    lanner rules validate FILE...                      like `falco -V`
    lanner rules list [FILE...] [--json]               like `falco -L`
    lanner rules fields [--json]                       like `falco --list`
    lanner rules test RULES... --events FILE [--rule NAME] [--json]

Exit codes. validate: 0 every file valid, 1 some file invalid. list: 0, or 1 when the rules do
not load. fields: 0. test: 0 every ``_expect`` annotation of the events held (or there were
none), 1 some did not, 2 the rules or the events could not be read, or a recorded value had a
type a rule could not compare. A usage mistake, or output cut short because the reader closed
the pipe: 2.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from detector.engine.engine import CompiledRule, Engine
from detector.engine.errors import RuleError, RuleWarning
from detector.engine.fields import describe_fields
from detector.sources.replay import Recorded, ReplayError, read_events

# The rules shipped in the repository, used when `list` is given no file.
DEFAULT_RULES = Path(__file__).resolve().parents[1] / "rules" / "lanner_rules.yaml"

EXIT_OK = 0
EXIT_FAILED = 1  # validate: a file is invalid; test: an expectation failed
EXIT_ERROR = 2  # test: rules or events unusable; any command: usage


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lanner rules",
        description="Validate, list and test Falco-language rules files.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="load and check rules files, like falco -V")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE",
                   help="rules files, loaded in order: a file may build on earlier ones")

    p = sub.add_parser("list", help="list the rules of rules files, like falco -L")
    p.add_argument("files", nargs="*", type=Path, metavar="FILE",
                   help=f"rules files (default: {DEFAULT_RULES.name} shipped with Lanner)")
    p.add_argument("--json", action="store_true", help="one JSON document instead of a table")

    p = sub.add_parser("fields", help="list the fields conditions and outputs can use")
    p.add_argument("--json", action="store_true", help="JSON instead of text")

    p = sub.add_parser("test", help="run recorded events through rules and show what fires")
    p.add_argument("rules", nargs="+", type=Path, metavar="RULES", help="rules files, in order")
    p.add_argument("--events", required=True, type=Path, metavar="FILE",
                   help="recorded events, JSON lines (docs/rules.md)")
    p.add_argument("--rule", metavar="NAME",
                   help="also explain, for each event this rule looks at, why it did not fire")
    p.add_argument("--json", action="store_true", help="one JSON document instead of text")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's exit-time flush of
        # stdout from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


def _run(args: argparse.Namespace) -> int:
    if args.command == "validate":
        return validate(args.files)
    if args.command == "list":
        return list_rules(args.files or [DEFAULT_RULES], as_json=args.json)
    if args.command == "fields":
        print(describe_fields("json" if args.json else "text"))
        return EXIT_OK
    return replay_rules(args.rules, args.events, rule=args.rule, as_json=args.json)


def err(text: str) -> None:
    print(text, file=sys.stderr)


# ---- validate ------------------------------------------------------------------------------


def validate(files: Sequence[Path]) -> int:
    """Each file is loaded on top of the valid files before it, as Falco loads a rules list, so
    a local file that appends to falco_rules.yaml validates when given after it."""
    valid: list[Path] = []
    seen: Counter[str] = Counter()  # warnings already reported for earlier files
    status = EXIT_OK
    for path in files:
        try:
            _, warnings = Engine.from_files([*valid, path])
        except RuleError as exc:
            print(f"{path}: Invalid")
            err(str(exc))
            status = EXIT_FAILED
            continue
        valid.append(path)
        fresh = _new_warnings(warnings, seen)
        print(f"{path}: Ok, with warnings" if fresh else f"{path}: Ok")
        for warning in fresh:
            err(str(warning))
    return status


def _new_warnings(warnings: list[RuleWarning], seen: Counter[str]) -> list[RuleWarning]:
    """The warnings not reported yet; every load repeats those of the files before it."""
    now = Counter(str(w) for w in warnings)
    budget = now - seen
    fresh = []
    for warning in warnings:
        if budget[str(warning)] > 0:
            budget[str(warning)] -= 1
            fresh.append(warning)
    seen.clear()
    seen.update(now)
    return fresh


# ---- list ----------------------------------------------------------------------------------


def _load(files: Sequence[Path]) -> Engine | None:
    try:
        engine, warnings = Engine.from_files(files, rule_matching="all")
    except RuleError as exc:
        err(str(exc))
        return None
    if warnings:
        err(f"lanner: {len(warnings)} load warning(s); `lanner rules validate` shows them")
    return engine


def _event_types(rule: CompiledRule) -> list[str] | None:
    return None if rule.event_types is None else sorted(rule.event_types)


def list_rules(files: Sequence[Path], *, as_json: bool) -> int:
    engine = _load(files)
    if engine is None:
        return EXIT_FAILED
    if as_json:
        rules = [
            {
                "name": r.name, "priority": r.priority.label, "source": r.source,
                "enabled": r.enabled, "event_types": _event_types(r), "tags": sorted(r.tags),
                "desc": r.desc, "condition": r.condition, "output": r.output,
            }
            for r in engine.rules
        ]
        print(orjson.dumps({"rules": rules}, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    rows = [("RULE", "PRIORITY", "SOURCE", "ENABLED", "EVENT TYPES", "TAGS")]
    for r in engine.rules:
        types = _event_types(r)
        rows.append((
            r.name, r.priority.label, r.source, "yes" if r.enabled else "no",
            "(all)" if types is None else ",".join(types) or "(none)",
            ",".join(sorted(r.tags)),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))
    return EXIT_OK


# ---- test ----------------------------------------------------------------------------------


@dataclass
class _Report:
    """What `test` found. Text mode prints findings as they come and keeps only counts; JSON
    mode collects them (alerts, explanations) for the one document printed at the end."""

    events: int = 0
    by_rule: Counter[str] = field(default_factory=Counter)  # alerts per rule
    alerts: list[dict[str, Any]] = field(default_factory=list)
    explanations: list[dict[str, Any]] = field(default_factory=list)
    checked: int = 0  # events that carried an _expect annotation
    failed: list[dict[str, Any]] = field(default_factory=list)
    broken: list[dict[str, Any]] = field(default_factory=list)  # rules an event made fail
    not_looked_at: int = 0  # events of types the --rule does not consider


def replay_rules(rules: Sequence[Path], events: Path, *, rule: str | None, as_json: bool) -> int:
    engine = _load(rules)
    if engine is None:
        return EXIT_ERROR
    focus = None
    if rule is not None:
        by_name = {r.name: r for r in engine.rules}
        focus = by_name.get(rule)
        if focus is None:
            close = difflib.get_close_matches(rule, by_name, n=3)
            hint = f"; did you mean {', '.join(repr(n) for n in close)}?" if close else ""
            err(f"lanner: no rule named {rule!r} in {', '.join(map(str, rules))}{hint}")
            return EXIT_ERROR
    # The engine logs a rule that fails on an event with a traceback, which is right for a
    # sensor's log but not for a user's recording: this command reports it by file and line.
    logging.getLogger("detector.engine").setLevel(logging.CRITICAL)
    report = _Report()
    where = str(events)
    try:
        for recorded in read_events(events):
            _run_one(engine, recorded, focus, report, where, as_json)
    except ReplayError as exc:
        err(str(exc))
        return EXIT_ERROR
    if as_json:
        print(orjson.dumps({
            "events": report.events, "alerts": report.alerts,
            "explanations": report.explanations, "not_explained": report.not_looked_at,
            "expectations": {"checked": report.checked, "failed": report.failed},
            "errors": report.broken,
        }, option=orjson.OPT_INDENT_2).decode())
    else:
        print(_summary(report, focus))
    if report.broken:
        return EXIT_ERROR
    return EXIT_FAILED if report.failed else EXIT_OK


def _run_one(engine: Engine, recorded: Recorded, focus: CompiledRule | None, report: _Report,
             where: str, as_json: bool) -> None:
    """Process one event; in text mode print its findings at once, so a long recording shows
    progress and a crash still leaves the earlier results on screen."""
    report.events += 1
    at = {"line": recorded.line, "event": recorded.number}
    place = f"{where}:{recorded.line} event {recorded.number}"
    errors = engine.errors
    alerts = engine.process(recorded.event)
    broken = set()
    if engine.errors != errors:
        broken = _report_broken(engine, recorded.event, at, place, report, as_json)
    for alert in alerts:
        report.by_rule[alert.rule] += 1
        if as_json:
            report.alerts.append({**at, "rule": alert.rule, "priority": alert.priority.label,
                                  "output": alert.output, "output_fields": alert.output_fields})
        else:
            print(f"{place}: {alert.priority.label} {alert.rule}\n    {alert.output}")
    fired = {alert.rule for alert in alerts}
    if focus is not None and focus.name not in fired and focus.name not in broken:
        if _looks_at(focus, recorded.event):
            try:
                why = engine.explain(focus.name, recorded.event)
            except Exception as exc:  # a wrongly typed value in a rule process() skipped
                why = f"rule {focus.name!r} cannot be explained on this event ({exc})"
            if as_json:
                report.explanations.append({**at, "rule": focus.name, "explanation": why})
            else:
                print(f"{place}: not fired: " + why.replace("\n", "\n  "))
        else:
            report.not_looked_at += 1
    if recorded.expect is not None:
        report.checked += 1
        if fired != recorded.expect:
            expected, got = sorted(recorded.expect), sorted(fired)
            report.failed.append({**at, "expected": expected, "fired": got})
            if not as_json:
                print(f"{place}: EXPECTATION FAILED: expected {_names(expected)}, "
                      f"fired {_names(got)}")


def _report_broken(engine: Engine, event: dict[str, Any], at: dict[str, int], place: str,
                   report: _Report, as_json: bool) -> set[str]:
    """Name the rules that raised on this event (the engine only counts them) and why; they
    cannot be explained either, explain() evaluates the same comparisons."""
    names = set()
    for rule in engine.rules_for(event):
        try:
            rule.matches(event)
        except Exception as exc:  # whatever the engine caught, as the engine does
            names.add(rule.name)
            message = f"{type(exc).__name__}: {exc}"
            report.broken.append({**at, "rule": rule.name, "message": message})
            if not as_json:
                print(f"{place}: ERROR: rule {rule.name!r} cannot be evaluated on this event "
                      f"({message}); a recorded value has the wrong type")
    return names


def _looks_at(rule: CompiledRule, event: dict[str, Any]) -> bool:
    """Whether the rule's source and event types cover the event. Explaining every other event
    of a long recording ("wrong event type") would bury the useful explanations. Decided from
    the rule itself rather than the engine's index so that a disabled rule is explained too."""
    if (event.get("evt.source") or "syscall") != rule.source:
        return False
    return rule.event_types is None or event.get("evt.type") in rule.event_types


def _names(names: list[str]) -> str:
    return "[" + ", ".join(repr(n) for n in names) + "]" if names else "nothing"


def _summary(report: _Report, focus: CompiledRule | None) -> str:
    lines = [f"{report.events} events, {report.by_rule.total()} alerts"]
    for name, count in sorted(report.by_rule.items(), key=lambda item: (-item[1], item[0])):
        lines.append(f"  {count:6d}  {name}")
    if focus is not None and report.not_looked_at:
        lines.append(f"{report.not_looked_at} events not explained: {focus.name!r} does not "
                     "look at their event type")
    if report.broken:
        lines.append(f"errors: {len(report.broken)} rule evaluations failed on recorded values")
    if report.checked:
        lines.append(f"expectations: {report.checked} checked, {len(report.failed)} failed")
    return "\n".join(lines)


# ---- lanner detect / lanner detector setup -----------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())
