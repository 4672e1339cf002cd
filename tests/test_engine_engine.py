"""The engine end to end: rules files in, alerts (Falco JSON) out."""

from __future__ import annotations

import ipaddress
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.engine.dnscache import DnsCache
from detector.engine.engine import Engine
from detector.engine.errors import RuleError
from detector.engine.loader import load_rules
from tests.engine_support import FakeHosts
from tests.upstream import upstream_file

T0 = 1767258764123456789  # 2026-01-01T09:12:44.123456789Z
CAT_SHADOW: dict[str, Any] = {
    "evt.type": "openat", "evt.num": 7, "evt.time": T0, "evt.rawres": 3,
    "evt.args": {"fd": "3", "dirfd": "AT_FDCWD", "name": "/etc/shadow", "flags": "O_RDONLY"},
    "fd.num": 3, "fd.name": "/etc/shadow", "fd.type": "file",
    "proc.name": "cat", "proc.exe": "cat", "proc.exepath": "/usr/bin/cat",
    "proc.args": "/etc/shadow", "proc.aname": ["bash", "sshd", "systemd"], "proc.tty": 34816,
    "user.name": "root", "user.uid": 0, "user.loginuid": 1000, "container.id": "host",
}
SHRED: dict[str, Any] = {
    "evt.type": "execve", "evt.num": 8, "evt.time": T0 + 1, "evt.rawres": 0,
    "evt.args": {"flags": "EXE_WRITABLE"}, "proc.name": "shred", "proc.exe": "shred",
    "proc.exepath": "/usr/bin/shred", "proc.args": "-u /tmp/secrets", "proc.aname": ["bash"],
    "proc.tty": 0, "user.name": "alice", "user.uid": 1000, "container.id": "host",
}
TWO_RULES = """
- macro: shell
  condition: proc.name in (bash, sh)
- rule: Shell run
  desc: a shell
  condition: evt.type = execve and shell
  output: shell %proc.name
  priority: NOTICE
  tags: [b, a]
- rule: Any exec
  desc: anything
  condition: evt.type in (execve, execveat)
  output: exec %proc.name by %user.name
  priority: INFO
- rule: Disabled shell
  desc: never reported
  condition: evt.type = execve and shell
  output: disabled %proc.name
  priority: ERROR
  enabled: false
"""
BASH = {"evt.type": "execve", "evt.num": 1, "evt.time": T0, "proc.name": "bash",
        "user.name": "root"}


def engine_for(tmp_path: Path, text: str, **kwargs: Any) -> tuple[Engine, list[Any]]:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return Engine.from_files([path], hostname="node-1", hosts=FakeHosts(), **kwargs)


@pytest.fixture(scope="module")
def stable() -> Engine:
    engine, _ = Engine.from_files([upstream_file("falco_rules.yaml")], hostname="node-1",
                                  hosts=FakeHosts())
    return engine


@pytest.fixture(scope="module")
def stable_first() -> Engine:
    engine, _ = Engine.from_files([upstream_file("falco_rules.yaml")], hostname="node-1",
                                  hosts=FakeHosts(), rule_matching="first")
    return engine


def test_stable_ruleset_loads_and_compiles(capsys: pytest.CaptureFixture[str]) -> None:
    path = upstream_file("falco_rules.yaml")
    start = time.perf_counter()
    engine, warnings = Engine.from_files([path], hostname="node-1", hosts=FakeHosts())
    elapsed = time.perf_counter() - start
    with capsys.disabled():  # reported, never asserted: timings depend on the machine
        print(f"\n[engine] stable ruleset load + compile: {elapsed * 1000:.0f} ms")
    loaded, _ = load_rules([path])
    assert (len(loaded.rules), len(loaded.macros), len(loaded.lists)) == (25, 87, 49)
    assert len(engine.rules) == 25 and all(r.enabled for r in engine.rules)
    assert len(engine.event_types) == 19
    assert not [w for w in warnings if w.code == "LOAD_NO_EVTTYPE"]
    for rule in engine.rules:
        assert rule.code.startswith("def _bind(") and rule.event_types


def test_open_of_shadow_fires_with_a_falco_json_alert(stable: Engine) -> None:
    alerts = stable.process(CAT_SHADOW)
    assert [a.rule for a in alerts] == ["Read sensitive file untrusted"]
    data = orjson.loads(alerts[0].to_json())
    assert data["priority"] == "Warning" and data["source"] == "syscall"
    assert data["hostname"] == "node-1" and data["time"] == "2026-01-01T09:12:44.123456789Z"
    assert data["tags"] == sorted(data["tags"]) and "maturity_stable" in data["tags"]
    assert data["output"].startswith(
        "09:12:44.123456789: Warning Sensitive file opened for reading by non-trusted program "
        "| file=/etc/shadow gparent=sshd ggparent=systemd gggparent=<NA> evt_type=openat "
        "user=root user_uid=0 user_loginuid=1000 process=cat")
    fields = data["output_fields"]
    assert list(fields) == sorted(fields)
    assert fields["evt.time"] == T0 and fields["fd.name"] == "/etc/shadow"
    assert fields["proc.aname[2]"] == "sshd" and fields["proc.aname[4]"] is None
    assert fields["user.uid"] == 0 and fields["proc.tty"] == 34816
    assert data["uuid"]


def test_exec_of_shred_fires_and_unrelated_events_do_not(stable: Engine) -> None:
    assert [a.rule for a in stable.process(SHRED)] == ["Remove Bulk Data from Disk"]
    assert stable.process({**SHRED, "proc.name": "ls", "proc.exe": "ls"}) == []
    # reading a non-sensitive file, or the same open by an allowed program
    assert stable.process({**CAT_SHADOW, "fd.name": "/etc/hosts"}) == []
    assert stable.process({**CAT_SHADOW, "proc.name": "sshd"}) == []


def test_events_of_other_sources_or_types_reach_no_syscall_rule(stable: Engine) -> None:
    assert stable.process({**SHRED, "evt.source": "k8s_audit"}) == []
    assert stable.process({**SHRED, "evt.type": "read"}) == []
    assert stable.process({**SHRED, "evt.source": "syscall"})


def test_rule_matching_first_and_all(tmp_path: Path) -> None:
    every, _ = engine_for(tmp_path, TWO_RULES)
    first, _ = engine_for(tmp_path, TWO_RULES, rule_matching="first")
    assert [a.rule for a in every.process(BASH)] == ["Shell run", "Any exec"]
    assert [a.rule for a in first.process(BASH)] == ["Shell run"]
    ls = {**BASH, "proc.name": "ls"}
    assert [a.rule for a in first.process(ls)] == ["Any exec"]
    with pytest.raises(ValueError):
        engine_for(tmp_path, TWO_RULES, rule_matching="some")


def test_disabled_rules_are_compiled_listed_and_never_fire(tmp_path: Path) -> None:
    engine, _ = engine_for(tmp_path, TWO_RULES)
    disabled = next(r for r in engine.rules if r.name == "Disabled shell")
    assert not disabled.enabled and disabled.matches(BASH)
    assert "Disabled shell" not in [a.rule for a in engine.process(BASH)]
    assert "disabled" in engine.explain("Disabled shell", BASH)


def test_alert_from_a_small_ruleset(tmp_path: Path) -> None:
    engine, _ = engine_for(tmp_path, TWO_RULES)
    alert = engine.process(BASH)[1]
    # Falco's default suggested output appends the container's id and name
    assert alert.output == ("09:12:44.123456789: Informational exec bash by root"
                            " container_id=<NA> container_name=<NA>")
    assert alert.output_fields == {"evt.time": T0, "proc.name": "bash", "user.name": "root",
                                   "container.id": None, "container.name": None}
    assert alert.tags == [] and engine.process(BASH)[0].tags == ["a", "b"]
    plain, _ = engine_for(tmp_path, TWO_RULES, suggested_output=False)
    assert plain.process(BASH)[1].output == "09:12:44.123456789: Informational exec bash by root"


def test_explain_matching_and_non_matching(tmp_path: Path, stable: Engine) -> None:
    engine, _ = engine_for(tmp_path, TWO_RULES)
    assert engine.explain("Shell run", BASH).splitlines() == [
        "rule 'Shell run' matches this event",
        "  true: evt.type = execve — evt.type is 'execve'",
        "  true: proc.name in (bash, sh) — proc.name is 'bash' (macro shell)",
    ]
    python = {**BASH, "proc.name": "python3"}
    assert engine.explain("Shell run", python).splitlines() == [
        "rule 'Shell run' does not match this event",
        "  false: proc.name in (bash, sh) — proc.name is 'python3' (macro shell)",
    ]
    text = stable.explain("Read sensitive file untrusted", {**CAT_SHADOW, "proc.name": "sshd"})
    assert text.splitlines()[0] == "rule 'Read sensitive file untrusted' does not match this event"
    assert "false: not proc.name in (" in text and "proc.name is 'sshd'" in text
    assert "(macro proc_is_new" not in text
    text = stable.explain("Run shell untrusted", CAT_SHADOW)
    assert "the engine does not test this rule on this event" in text
    assert "false: evt.type in (execve, execveat) — evt.type is 'openat' (macro spawned_process)" \
        in text
    with pytest.raises(KeyError):
        stable.explain("No such rule", CAT_SHADOW)


def test_load_no_evttype_warning(tmp_path: Path) -> None:
    rules = """
- macro: never_true
  condition: (evt.num=0)
- rule: Broad
  desc: d
  condition: proc.name = x
  output: o
  priority: INFO
- rule: Broad but quiet
  desc: d
  condition: proc.name = x
  output: o
  priority: INFO
  warn_evttypes: false
- rule: Never
  desc: d
  condition: never_true
  output: o
  priority: INFO
"""
    engine, warnings = engine_for(tmp_path, rules)
    flagged = [w.item for w in warnings if w.code == "LOAD_NO_EVTTYPE"]
    assert flagged == ["rule 'Broad'"]
    assert [r.event_types for r in engine.rules] == [None, None, frozenset()]
    # a rule for every type is tested on every event, one for none never
    assert [a.rule for a in engine.process({"evt.type": "whatever", "proc.name": "x"})] == [
        "Broad", "Broad but quiet"]


def test_errors_point_into_the_rules_file(tmp_path: Path) -> None:
    rules = """
- macro: shell
  condition: proc.name in (bash, sh) and proc.nmae = x
- rule: R
  desc: d
  condition: evt.type = execve and proc.tyy != 0
  output: o
  priority: INFO
"""
    with pytest.raises(RuleError) as caught:
        engine_for(tmp_path, rules)
    error = caught.value
    assert (error.line, error.column, error.item) == (6, 36, "rule 'R'")
    assert error.file is not None and error.file.endswith("rules.yaml")
    assert error.text == "  condition: evt.type = execve and proc.tyy != 0"  # the file's line
    assert str(error).splitlines()[2] == "  " + " " * 35 + "^" * len("proc.tyy")
    with pytest.raises(RuleError) as caught:
        engine_for(tmp_path, rules.replace("proc.tyy", "shell and proc.tty"))
    error = caught.value
    assert error.item == "macro 'shell' (used by rule 'R')"
    assert (error.line, error.column, error.message) == (3, 42, "unknown field 'proc.nmae'")


def test_skip_if_unknown_filter_drops_the_rule_with_a_warning(tmp_path: Path) -> None:
    rules = """
- rule: Future
  desc: d
  condition: evt.type = execve and proc.from_the_future = x
  output: o
  priority: INFO
  skip-if-unknown-filter: true
- rule: Future output
  desc: d
  condition: evt.type = execve
  output: "%proc.from_the_future"
  priority: INFO
  skip-if-unknown-filter: true
- rule: Unknown syscall
  desc: d
  condition: evt.type = no_such_call
  output: o
  priority: INFO
  skip-if-unknown-filter: true
- rule: Unknown macro
  desc: d
  condition: evt.type = execve and no_such_macro
  output: o
  priority: INFO
  skip-if-unknown-filter: true
- rule: Kept
  desc: d
  condition: evt.type = execve
  output: o
  priority: INFO
"""
    engine, warnings = engine_for(tmp_path, rules)
    assert [r.name for r in engine.rules] == ["Kept"]
    skipped = [(w.item, w.code) for w in warnings if w.code == "LOAD_UNKNOWN_FILTER"]
    assert skipped == [("rule 'Future'", "LOAD_UNKNOWN_FILTER"),
                       ("rule 'Future output'", "LOAD_UNKNOWN_FILTER"),
                       ("rule 'Unknown syscall'", "LOAD_UNKNOWN_FILTER"),
                       ("rule 'Unknown macro'", "LOAD_UNKNOWN_FILTER")]


def test_rules_of_unknown_sources_are_skipped(tmp_path: Path) -> None:
    rules = TWO_RULES + """
- rule: Cloud
  desc: d
  condition: ct.name = x
  output: o
  priority: INFO
  source: aws_cloudtrail
"""
    engine, warnings = engine_for(tmp_path, rules)
    assert "Cloud" not in [r.name for r in engine.rules]
    assert [w.message for w in warnings if w.code == "LOAD_UNKNOWN_SOURCE"] == [
        "Unknown source aws_cloudtrail, skipping"]


def test_a_value_of_the_wrong_type_is_no_match_not_a_crash(tmp_path: Path) -> None:
    rules = """
- rule: Prefix
  desc: d
  condition: evt.type = execve and proc.name startswith ba
  output: o
  priority: INFO
"""
    engine, _ = engine_for(tmp_path, rules)
    assert engine.process({**BASH, "proc.name": 42}) == []
    assert engine.errors == 1
    assert len(engine.process(BASH)) == 1


SENSITIVE = ["/etc/shadow", "/etc/hosts", "/etc/pam.d/sshd", "/var/log/syslog", "/tmp/x",
             "/root/.ssh/id_rsa", "/etc/../etc/shadow", "/sys/fs/cgroup/x/release_agent"]
NAMES = ["bash", "sh", "cat", "sshd", "shred", "nc", "find", "httpd", "runc:[0:PARENT]", "sudo"]


def pool(*values: Any) -> st.SearchStrategy[Any]:
    # None: the field has no value (rarely: a missing value stops most conditions early)
    return st.sampled_from([*values, *values, None])


# Every key usually present, from values the stable rules test for, so events reach deep into
# the conditions (and the shared pieces of a bucket are exercised in many combinations).
stable_events = st.fixed_dictionaries({
    "evt.type": st.sampled_from(["open", "openat", "openat2", "openat", "execve", "execveat",
                                 "execve", "connect", "sendto", "socket", "dup2", "ptrace",
                                 "symlinkat", "linkat", "init_module", "read"]),
    "evt.num": st.integers(1, 10),
    "evt.rawres": pool(-115, -2, 0, 1, 5),
    "evt.args": st.fixed_dictionaries({
        "flags": pool("O_RDONLY", "O_WRONLY|O_TRUNC", "O_RDWR"),
        "request": pool("PTRACE_ATTACH", "PTRACE_TRACEME", "PTRACE_PEEKDATA"),
        "domain": pool("AF_PACKET", "AF_INET"),
        "target": pool("/etc", "/tmp/x", "/root"),
        "oldpath": pool("/etc/shadow", "/tmp/y")}),
    "fd.num": pool(-1, 3, 3), "fd.name": pool(*SENSITIVE),
    "fd.type": pool("file", "file", "ipv4"), "fd.sip": pool("10.0.0.1", "8.8.8.8", "127.0.0.1"),
    "fd.cip": pool("10.0.0.5"), "fd.sport": pool(22, 443, 2222), "fd.l4proto": pool("tcp"),
    "proc.name": pool(*NAMES), "proc.args": pool("-e /bin/sh", "id_rsa", "-u x", ""),
    "proc.aname": pool(*[[n, "systemd"] for n in NAMES]), "proc.tty": pool(0, 34816),
    "proc.exepath": pool("/bin/bash", "/dev/shm/x", "memfd:x"), "proc.cwd": pool("/dev/shm/"),
    "proc.is_exe_upper_layer": pool(True, False), "proc.is_exe_from_memfd": pool(True, False),
    "container.id": pool("host", "3ad7d8e1f2a4"), "container.privileged": pool(True, False),
    "user.uid": pool(0, 1000), "user.name": pool("root", "daemon", "alice"),
    "thread.cap_effective": pool("", "CAP_SYS_ADMIN CAP_SYS_MODULE CAP_DAC_OVERRIDE"),
})


@settings(max_examples=1500, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event=stable_events)
def test_bucket_functions_agree_with_each_rule_alone(
    stable: Engine, stable_first: Engine, event: dict[str, Any]
) -> None:
    # The index evaluates a whole bucket in one generated function (shared fields, macros,
    # folded evt.type): it must find exactly the rules that match one by one.
    event = {k: v for k, v in event.items() if v is not None}
    bucket = stable._bucket(event)
    expected = tuple(i for i, rule in enumerate(bucket.rules) if rule.matches(event))
    assert bucket.match(event) == expected
    names = [bucket.rules[i].name for i in expected]
    assert [a.rule for a in stable.process(event)] == names
    assert [a.rule for a in stable_first.process(event)] == names[:1]


def test_explain_names_the_comparison_a_wrong_value_breaks(tmp_path: Path) -> None:
    rules = """
- rule: Prefix
  desc: d
  condition: evt.type = execve and proc.name startswith ba
  output: o
  priority: INFO
"""
    engine, _ = engine_for(tmp_path, rules)
    lines = engine.explain("Prefix", {**BASH, "proc.name": 42}).splitlines()
    assert lines[0] == "rule 'Prefix' cannot be evaluated on this event (the engine counts " \
        "an error and no match)"
    assert lines[1].startswith("  error: proc.name startswith ba — proc.name is 42: ")


def test_dns_cache_answers_at_once_and_resolves_in_the_background() -> None:
    asked: list[str] = []
    ready = threading.Event()

    def resolve(host: str) -> frozenset[Any]:
        asked.append(host)
        ready.wait(5)  # a slow DNS server: lookups must not wait for it
        return frozenset({ipaddress.ip_address("10.0.0.9")})

    cache = DnsCache(refresh_s=3600, resolve=resolve)
    assert cache.addresses("api.example") == frozenset()  # not known yet, and not blocking
    assert cache.addresses("api.example") == frozenset()  # queued once, not twice
    ready.set()
    deadline = time.monotonic() + 5
    while not cache.addresses("api.example") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.addresses("api.example") == {ipaddress.ip_address("10.0.0.9")}
    assert asked == ["api.example"]
