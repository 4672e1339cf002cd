"""The open-path filter derived from rules (detector.engine.pathtests): what it keeps for the
upstream stable rules, each reduction on its own, and, over random conditions and paths, that
it never drops an open some rule matches (the engine itself decides the match)."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from detector.engine.build import compile_condition
from detector.engine.engine import Engine
from detector.engine.evttypes import derive
from detector.engine.pathtests import PathTest, open_path_tests
from tests.engine_support import HOSTS, REG, passes
from tests.upstream import upstream_file


def rule(condition: str, *, enabled: bool = True, source: str = "syscall") -> SimpleNamespace:
    _, tree = compile_condition(condition, registry=REG, hosts=HOSTS)
    return SimpleNamespace(enabled=enabled, source=source, event_types=derive(tree), tree=tree)


def path_tests_of(*conditions: str) -> tuple[PathTest, ...] | None:
    return open_path_tests([rule(c) for c in conditions])


def test_upstream_stable_rules_need_these_paths() -> None:
    engine, _ = Engine.from_files([upstream_file("falco_rules.yaml")])
    tests = open_path_tests(engine.rules)
    assert tests is not None
    assert set(tests) == {
        # Directory traversal monitored file read: its cheapest necessary part.
        PathTest("contains", "../"),
        # Read sensitive file trusted after startup / untrusted.
        *(PathTest("exact", p) for p in ("/etc/shadow", "/etc/sudoers", "/etc/pam.conf",
                                         "/etc/security/pwquality.conf")),
        PathTest("directory", "/etc/sudoers.d"), PathTest("directory", "/etc/pam.d"),
        # Clear Log Activities.
        PathTest("directory", "/var/log"), PathTest("directory", "/dev/log"),
        *(PathTest("filename", f) for f in (
            "syslog", "auth.log", "secure", "kern.log", "cron", "user.log", "dpkg.log",
            "last.log", "yum.log", "access_log", "mysql.log", "mysqld.log")),
        # Detect release_agent File Container Escapes.
        PathTest("suffix", "release_agent"),
    }
    assert passes(tests, "/etc/shadow") and passes(tests, "/home/a/logs/syslog")
    assert not passes(tests, "/usr/lib/x86_64-linux-gnu/libc.so.6")


def test_rules_without_opens_filter_every_open_out() -> None:
    assert path_tests_of("evt.type = execve and proc.name = nc") == ()
    assert open_path_tests([]) == ()


def test_a_rule_that_matches_any_path_turns_the_filter_off() -> None:
    assert path_tests_of("evt.type = openat and proc.name = cat") is None
    assert path_tests_of("proc.name = cat") is None  # every event type, opens included
    assert path_tests_of("evt.type = openat and not fd.name startswith /tmp") is None
    assert path_tests_of("evt.type = openat and fd.name icontains shadow") is None
    assert path_tests_of("evt.type = openat and fd.name glob '*'") is None


def test_disabled_and_other_source_rules_do_not_count() -> None:
    rules = [rule("evt.type = openat and proc.name = cat", enabled=False),
             rule("evt.type = openat and proc.name = cat", source="k8s_audit"),
             rule("evt.type = openat and fd.name = /a")]
    assert open_path_tests(rules) == (PathTest("exact", "/a"),)


def test_and_keeps_the_cheapest_restricting_part_or_unites() -> None:
    assert path_tests_of("evt.type = openat and fd.name in (/a, /b) and fd.name endswith x") == (
        PathTest("suffix", "x"),)
    assert path_tests_of("evt.type = openat and (fd.name = /a or fd.directory = /d)") == (
        PathTest("directory", "/d"), PathTest("exact", "/a"))
    assert path_tests_of("evt.type = openat and (fd.name = /a or proc.name = x)") is None
    # a scan costs more than several comparisons
    assert path_tests_of("evt.type = openat and fd.name contains x and fd.name in (/a, /b)") == (
        PathTest("exact", "/a"), PathTest("exact", "/b"))


def test_branches_no_open_can_take_are_never() -> None:
    condition = ("(evt.type = execve and proc.name = x) or "
                 "(evt.type in (open, openat) and fd.filename = shadow)")
    assert path_tests_of(condition) == (PathTest("filename", "shadow"),)
    assert path_tests_of("evt.type = openat and evt.num = 0 and proc.name = x") == ()
    assert path_tests_of("not evt.type != openat and fd.name = /a") == (PathTest("exact", "/a"),)


def test_negation_is_pushed_down() -> None:
    assert path_tests_of("evt.type = openat and not (fd.name != /a or proc.name = x)") is None
    assert path_tests_of("evt.type = openat and not (not fd.name = /a)") == (
        PathTest("exact", "/a"),)


def test_globs_and_pmatch_keep_their_literal_parts() -> None:
    assert path_tests_of('evt.type = openat and fd.name glob "/etc/ssh/*_key"') == (
        PathTest("prefix", "/etc/ssh/"),)
    assert path_tests_of('evt.type = openat and fd.name glob "*/id_rsa"') == (
        PathTest("suffix", "/id_rsa"),)
    assert path_tests_of("evt.type = openat and fd.nameraw glob '*../*../*'") == (
        PathTest("contains", "../"),)
    assert path_tests_of("evt.type = openat and fd.name pmatch (/bin, /usr/*/bin)") == (
        PathTest("prefix", "/bin"), PathTest("prefix", "/usr/"))


def test_a_filename_with_a_slash_can_never_match() -> None:
    assert path_tests_of("evt.type = openat and fd.filename in (a/b, c)") == (
        PathTest("filename", "c"),)


# ---- soundness over random conditions ------------------------------------------------------

COMPONENTS = ["etc", "shadow", "log", "a.log", "x", "ssh", "id_rsa", "r..s"]
PATHS = st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=4).map(
    lambda parts: "/" + "/".join(parts))
LITERALS = st.one_of(PATHS, st.sampled_from(COMPONENTS), st.sampled_from(["/", "..", "s", "/e"]))
GLOBS = st.sampled_from(["/etc/*", "*.log", "*/x", "/*/ssh/*", "*..*", "*", "/e?c/*"])


@st.composite
def leaves(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 7))
    if kind == 0:
        op = draw(st.sampled_from(["=", "startswith", "endswith", "contains", "!="]))
        field = draw(st.sampled_from(["fd.name", "fd.nameraw"]))
        return f'{field} {op} "{draw(LITERALS)}"'
    if kind == 1:
        items = draw(st.lists(LITERALS, min_size=1, max_size=3))
        field = draw(st.sampled_from(["fd.name", "fd.directory", "fd.filename"]))
        return f"{field} in ({', '.join(items)})"
    if kind == 2:
        return f'fd.{draw(st.sampled_from(["directory", "filename"]))} = "{draw(LITERALS)}"'
    if kind == 3:
        return f'fd.name glob "{draw(GLOBS)}"'
    if kind == 4:
        return f'fd.name pmatch ("{draw(GLOBS)}", {draw(PATHS)})'
    if kind == 5:
        types = draw(st.sets(st.sampled_from(["openat", "execve", "open"]), min_size=1))
        return f"evt.type in ({', '.join(sorted(types))})"
    if kind == 6:
        return f"proc.name = {draw(st.sampled_from(['cat', 'vi']))}"
    return "evt.num = 0"


def conditions(depth: int = 3) -> st.SearchStrategy[str]:
    return st.recursive(
        leaves(),
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"),
            inner.map(lambda c: f"not {c}")),
        max_leaves=depth * 2)


@settings(max_examples=400, deadline=None)
@given(condition=conditions(), path=PATHS, proc=st.sampled_from(["cat", "vi"]),
       evt_type=st.sampled_from(["open", "openat", "openat2"]))
def test_no_open_a_rule_matches_is_filtered_out(condition: str, path: str, proc: str,
                                                evt_type: str) -> None:
    compiled, tree = compile_condition(condition, registry=REG, hosts=HOSTS)
    checked = SimpleNamespace(enabled=True, source="syscall", event_types=derive(tree),
                              tree=tree)
    tests = open_path_tests([checked])
    event = {"evt.type": evt_type, "evt.num": 7, "fd.name": path, "proc.name": proc,
             "fd.type": "file"}
    if tests is not None and compiled.match(event):
        assert passes(tests, path), (condition, path, tests)
