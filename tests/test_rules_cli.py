"""`lanner rules` as users run it: a subprocess, its exit code, stdout and stderr.

Most tests run `python -m detector.cli`, which is what `lanner rules` dispatches to, because
`lanner` itself first imports the hub's configuration (and every output library with it) and
that costs half a second per run; the dispatch has tests of its own below.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.upstream import upstream_file

ROOT = Path(__file__).resolve().parents[1]
LANNER_RULES = ROOT / "rules" / "lanner_rules.yaml"
STABLE_EVENTS = ROOT / "tests" / "replay" / "upstream_stable.jsonl"
LANNER_EVENTS = ROOT / "tests" / "replay" / "lanner_rules.jsonl"


def lanner(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """`lanner rules ARGS...`"""
    return subprocess.run(
        [sys.executable, "-m", "detector.cli", *map(str, args)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr


@pytest.fixture(scope="module")
def stable() -> Path:
    return upstream_file("falco_rules.yaml")


# ---- validate ------------------------------------------------------------------------------


def test_validate_upstream_stable_rules_through_lanner(stable: Path) -> None:
    command = [sys.executable, "-m", "sidekick.cli", "rules", "validate", str(stable)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{stable}: Ok\n"


def test_validate_installed_script_checks_our_rules_after_upstream(stable: Path) -> None:
    script = Path(sys.executable).with_name("lanner")
    result = subprocess.run([str(script), "rules", "validate", str(stable), str(LANNER_RULES)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{stable}: Ok", f"{LANNER_RULES}: Ok"]


RULE = """- rule: {name}
  desc: a test rule
  condition: {condition}
  output: "shell started | process=%proc.name"
  priority: WARNING
"""

BROKEN = {
    "bad_yaml": (
        "- rule: Broken\n  desc: x\n  condition: evt.type = execve\n   output: oops\n",
        4, "YAML parse error",
    ),
    "unknown_field": (
        RULE.format(name="Unknown field", condition="evt.type = execve and proc.nme = bash"),
        3, "unknown field 'proc.nme'",
    ),
    "unknown_macro": (
        RULE.format(name="Unknown macro", condition="spawned_process and proc.name = bash"),
        3, "unexpected identifier 'spawned_process'",
    ),
    "unbalanced_parentheses": (
        RULE.format(name="Unbalanced",
                    condition="evt.type = execve and (proc.name = bash or proc.name = sh"),
        3, "expected a ')' token",
    ),
    "bad_operator": (
        RULE.format(name="Bad operator", condition="evt.type = execve and proc.name like bash"),
        3, "expected a valid check operator",
    ),
    # A redefinition moves a_list after b_list, so each now expands the other.
    "list_cycle": (
        "- list: a_list\n  items: [x]\n- list: b_list\n  items: [a_list, y]\n"
        "- list: a_list\n  items: [b_list, z]\n"
        + RULE.format(name="Cycle", condition="evt.type = execve and proc.name in (a_list)"),
        5, "a_list -> b_list -> a_list",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_validate_reports_one_located_error(tmp_path: Path, case: str) -> None:
    text, line, message = BROKEN[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    result = lanner("validate", path)
    no_traceback(result)
    assert result.returncode == 1
    assert result.stdout == f"{path}: Invalid\n"
    assert result.stderr.startswith(f"{path}:{line}:"), result.stderr
    assert message in result.stderr
    # One error: one located headline, the rest is its snippet and underline.
    assert result.stderr.count(f"{path}:") == 1, result.stderr


def test_validate_missing_file_is_invalid_without_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = lanner("validate", missing)
    no_traceback(result)
    assert result.returncode == 1
    assert result.stdout == f"{missing}: Invalid\n"
    assert "No such file" in result.stderr


def test_validate_warnings_go_to_stderr(tmp_path: Path) -> None:
    path = tmp_path / "warn.yaml"
    path.write_text("- list: never_used\n  items: [x]\n"
                    + RULE.format(name="Fine", condition="evt.type = execve"))
    result = lanner("validate", path)
    assert result.returncode == 0
    assert result.stdout == f"{path}: Ok, with warnings\n"
    assert f"{path}:1: list 'never_used': warning: List not referred to" in result.stderr


def test_validate_loads_each_file_on_top_of_the_valid_ones_before(
    tmp_path: Path, stable: Path
) -> None:
    local = tmp_path / "local.yaml"
    local.write_text("- macro: user_known_remove_data_activities\n"
                     "  condition: and proc.pname = backup-agent\n"
                     "  override:\n    condition: append\n")
    result = lanner("validate", stable, local)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{stable}: Ok", f"{local}: Ok"]
    alone = lanner("validate", local)
    assert alone.returncode == 1
    assert alone.stdout == f"{local}: Invalid\n"
    assert f"{local}:1:" in alone.stderr
    no_traceback(alone)


# ---- list and fields -----------------------------------------------------------------------


def test_list_defaults_to_our_rules() -> None:
    result = lanner("list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["RULE", "PRIORITY", "SOURCE", "ENABLED", "EVENT", "TYPES", "TAGS"]
    row = next(line for line in lines if line.startswith("Write below /etc "))
    assert row.split()[3:8] == ["Error", "syscall", "yes", "open,openat,openat2",
                                "T1098,container,filesystem,host,maturity_stable,mitre_persistence"]
    assert len(lines) == 1 + 12


def test_list_json_upstream(stable: Path) -> None:
    result = lanner("list", "--json", stable)
    assert result.returncode == 0, result.stderr
    rules = {r["name"]: r for r in json.loads(result.stdout)["rules"]}
    assert len(rules) == 25
    shell = rules["Terminal shell in container"]
    assert shell["priority"] == "Notice"
    assert shell["event_types"] == ["execve", "execveat"]
    assert shell["source"] == "syscall" and shell["enabled"] is True
    assert "maturity_stable" in shell["tags"]
    assert rules["Disallowed SSH Connection Non Standard Port"]["event_types"] == [
        "connect", "sendmsg", "sendto"]


def test_list_of_an_invalid_file_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(RULE.format(name="Bad", condition="evt.type = execve and proc.nme = x"))
    result = lanner("list", path)
    no_traceback(result)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"{path}:3:")


def test_fields_text_and_json() -> None:
    text = lanner("fields")
    assert text.returncode == 0
    assert "Field Class:" in text.stdout
    assert any(line.startswith("proc.name ") for line in text.stdout.splitlines())
    as_json = lanner("fields", "--json")
    assert as_json.returncode == 0
    names = {f["name"] for c in json.loads(as_json.stdout)["fieldclasses"] for f in c["fields"]}
    assert {"proc.name", "fd.name", "evt.type", "container.id"} <= names


# ---- test ----------------------------------------------------------------------------------


def test_test_names_firing_rules_and_checks_expectations(stable: Path) -> None:
    result = lanner("test", stable, "--events", STABLE_EVENTS)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    head = f"{STABLE_EVENTS}:26 event 7: Notice Run shell untrusted"
    at = lines.index(head)
    assert lines[at + 1].startswith(
        "    09:00:07.000000000: Notice Shell spawned by untrusted binary | "
        "parent_exe=/usr/sbin/nginx parent_exepath=/usr/sbin/nginx pcmdline=nginx -g daemon off;"
    )
    assert "50 events, 27 alerts" in lines
    assert "       3  Read sensitive file untrusted" in lines
    assert lines[-1] == "expectations: 50 checked, 0 failed"


def test_test_explains_a_near_miss(stable: Path) -> None:
    result = lanner("test", stable, "--events", STABLE_EVENTS, "--rule", "Run shell untrusted")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    at = lines.index(f"{STABLE_EVENTS}:28 event 8: not fired: rule 'Run shell untrusted' "
                     "does not match this event")
    assert lines[at + 1].startswith('    false: not proc.cmdline in ( "sh -c uname -p')
    assert lines[at + 1].endswith("proc.cmdline is 'sh -c uname -s 2>&1'")
    assert "events not explained: 'Run shell untrusted' does not look at their event type" \
        in result.stdout


def test_test_json(stable: Path) -> None:
    result = lanner("test", stable, "--events", STABLE_EVENTS, "--json",
                    "--rule", "PTRACE anti-debug attempt")
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert report["events"] == 50
    assert report["expectations"] == {"checked": 50, "failed": []}
    [ptrace] = [a for a in report["alerts"] if a["rule"] == "PTRACE anti-debug attempt"]
    assert ptrace["priority"] == "Notice"
    assert ptrace["output_fields"]["proc.name"] == "updater"
    # ptrace events only: its own near miss and the other ptrace rule's two events.
    assert [e["line"] for e in report["explanations"]] == [116, 118, 124]
    assert report["not_explained"] == 46


def test_test_fails_when_an_expectation_does_not_hold(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    lines = LANNER_EVENTS.read_text().splitlines()
    fire = next(line for line in lines if '"_rule": "Kernel module loaded"' in line)
    events.write_text(fire.replace('"_expect": ["Kernel module loaded"]', '"_expect": []') + "\n")
    result = lanner("test", LANNER_RULES, "--events", events)
    assert result.returncode == 1
    assert f"{events}:1 event 1: EXPECTATION FAILED: expected nothing, " \
           "fired ['Kernel module loaded']" in result.stdout
    assert result.stdout.splitlines()[-1] == "expectations: 1 checked, 1 failed"


def test_tuning_loop_exception_silences_a_rule(tmp_path: Path) -> None:
    """Record, see the alert, add an exception in a local file, see it gone and why."""
    lines = LANNER_EVENTS.read_text().splitlines()
    shell = json.loads(next(line for line in lines
                            if '"_rule": "Shell started in a container"' in line))
    del shell["_rule"], shell["_expect"]
    events = tmp_path / "recorded.jsonl"
    events.write_text(json.dumps(shell) + "\n")
    before = lanner("test", LANNER_RULES, "--events", events)
    assert before.returncode == 0
    assert f"{events}:1 event 1: Notice Shell started in a container" in before.stdout

    local = tmp_path / "local.yaml"
    local.write_text("- rule: Shell started in a container\n"
                     "  exceptions:\n"
                     "    - name: images\n"
                     "      values: [ghcr.io/acme/shop-api]\n"
                     "  override:\n"
                     "    exceptions: append\n")
    after = lanner("test", LANNER_RULES, local, "--events", events,
                   "--rule", "Shell started in a container")
    assert after.returncode == 0, after.stderr
    assert "1 events, 0 alerts" in after.stdout
    assert "false: not container.image.repository in (ghcr.io/acme/shop-api)" in after.stdout


def test_test_unknown_rule_suggests_a_name() -> None:
    result = lanner("test", LANNER_RULES, "--events", LANNER_EVENTS, "--rule", "Write below etc")
    assert result.returncode == 2
    assert "no rule named 'Write below etc'" in result.stderr
    assert "did you mean 'Write below /etc'" in result.stderr


def test_test_bad_events_file(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"evt.type": "execve"}\n\n{"evt.type": \n')
    result = lanner("test", LANNER_RULES, "--events", events)
    no_traceback(result)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{events}:3: invalid JSON")


def test_test_invalid_rules(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(RULE.format(name="Bad", condition="evt.type = execve and ("))
    result = lanner("test", path, "--events", LANNER_EVENTS)
    no_traceback(result)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}:3:")


def test_lanner_help_lists_both_commands() -> None:
    result = subprocess.run([sys.executable, "-m", "sidekick.cli", "--help"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0
    assert "sidekick" in result.stdout and "rules" in result.stdout


def test_test_reports_a_wrongly_typed_value_by_line(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"evt.type": "connect", "evt.rawres": "zero", "fd.type": "ipv4", '
                      '"fd.sip": "198.51.100.1", "fd.sport": 3333, "proc.name": "bash"}\n')
    result = lanner("test", LANNER_RULES, "--events", events,
                    "--rule", "Shell opened a network connection")
    no_traceback(result)
    assert result.returncode == 2
    assert (f"{events}:1 event 1: ERROR: rule 'Shell opened a network connection' cannot be "
            "evaluated on this event (TypeError: ") in result.stdout
    assert "errors: 2 rule evaluations failed on recorded values" in result.stdout
