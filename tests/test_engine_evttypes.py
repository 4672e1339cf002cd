"""Event-type derivation (reference §2.7): the index key and the syscalls the sensor traces."""

from __future__ import annotations

import pytest

from detector.engine.evttypes import ALL_EVENT_TYPES, derive
from detector.engine.loader import load_rules
from detector.engine.macros import inline
from detector.engine.parser import parse_condition
from tests.upstream import upstream_file

OPENS = {"open", "openat", "openat2"}
MACROS = {
    "never_true": "(evt.num=0)",
    "open_read": "(evt.type in (open,openat,openat2) and evt.is_open_read=true)",
    "user_known_x": "(never_true)",
}
ALL = None  # derive() says "every type" with None


def everything_but(*names: str) -> set[str]:
    return set(ALL_EVENT_TYPES - set(names))


CASES: list[tuple[str, set[str] | None]] = [
    ("evt.type = open", {"open"}),
    ("evt.type == open", {"open"}),
    ("evt.type in (open, openat)", {"open", "openat"}),
    ("evt.type != open", everything_but("open")),
    ("not evt.type = open", everything_but("open")),
    ("not evt.type != open", {"open"}),
    ("not not evt.type = open", {"open"}),
    ("not evt.type in (open, connect)", everything_but("open", "connect")),
    ("proc.name = bash", ALL),
    ("not proc.name = bash", ALL),  # a check on another field is neutral, negated or not
    ("evt.type = open and proc.name = x", {"open"}),
    ("evt.type = open or proc.name = x", ALL),
    ("evt.type = open or evt.type = connect", {"open", "connect"}),
    ("not (evt.type = open or evt.type = connect)", everything_but("open", "connect")),
    ("not (evt.type = open and proc.name = x)", ALL),  # De Morgan: not open OR not x
    ("not (evt.type != open and evt.type != connect)", {"open", "connect"}),
    ("evt.type = open and evt.type = connect", set()),
    ("evt.type in (open, connect) and not evt.type = connect", {"open"}),
    ("evt.type exists", ALL),
    ("not evt.type exists", set()),
    ("evt.type startswith open", ALL),  # only = == != in name types
    ("evt.type intersects (open)", ALL),
    ("evt.type = oneof (open, connect)", ALL),
    ("syscall.type = open", {"open"}),
    ("evt.type[0] = open", ALL),  # with an argument it is not the event type field
    ("evt.num = 0", set()),
    ("evt.num < 1", set()),
    ("evt.num <= 0", set()),
    ("evt.num in (0)", set()),
    ("evt.num in (0, 7)", ALL),
    ("not evt.num = 0", ALL),
    ("evt.num != 0", ALL),
    ("evt.num > 0", ALL),
    ("evt.num >= 1", ALL),
    ("not evt.num >= 0", set()),
    ("evt.type = open and never_true", set()),
    ("evt.type = open and not never_true", {"open"}),
    ("open_read and not user_known_x", OPENS),  # the reference's own example
    ("open_read or evt.type = connect", OPENS | {"connect"}),
]


@pytest.mark.parametrize(("condition", "expected"), CASES, ids=[c for c, _ in CASES])
def test_derivation(condition: str, expected: set[str] | None) -> None:
    macros = {name: parse_condition(text) for name, text in MACROS.items()}
    derived = derive(inline(parse_condition(condition), macros))
    assert derived == (None if expected is None else frozenset(expected))


def test_event_type_names_cover_what_upstream_rules_name() -> None:
    for name in ("execve", "execveat", "openat2", "connect", "sendmsg", "init_module",
                 "finit_module", "ptrace", "symlinkat", "linkat", "dup3", "memfd_create",
                 "container", "procexit", "switch", "clone3", "userfaultfd", "setns"):
        assert name in ALL_EVENT_TYPES


# §3.2 of the reference: the 25 stable rules and their event types.
STABLE: dict[str, set[str]] = {
    "Directory traversal monitored file read": OPENS,
    "Read sensitive file trusted after startup": OPENS,
    "Read sensitive file untrusted": OPENS,
    "Run shell untrusted": {"execve", "execveat"},
    "System user interactive": {"execve", "execveat"},
    "Terminal shell in container": {"execve", "execveat"},
    "Contact K8S API Server From Container": {"connect"},
    "Netcat Remote Code Execution in Container": {"execve", "execveat"},
    "Search Private Keys or Passwords": {"execve", "execveat"},
    "Clear Log Activities": OPENS,
    "Remove Bulk Data from Disk": {"execve", "execveat"},
    "Create Symlink Over Sensitive Files": {"symlink", "symlinkat"},
    "Create Hardlink Over Sensitive Files": {"link", "linkat"},
    "Packet socket created in container": {"socket"},
    "Redirect STDOUT/STDIN to Network Connection in Container": {"dup", "dup2", "dup3"},
    "Linux Kernel Module Injection Detected": {"init_module", "finit_module"},
    "Debugfs Launched in Privileged Container": {"execve", "execveat"},
    "Detect release_agent File Container Escapes": OPENS,
    "PTRACE attached to process": {"ptrace"},
    "PTRACE anti-debug attempt": {"ptrace"},
    "Find AWS Credentials": {"execve", "execveat"},
    "Execution from /dev/shm": {"execve", "execveat"},
    "Drop and execute new binary in container": {"execve", "execveat"},
    "Disallowed SSH Connection Non Standard Port": {"connect", "sendto", "sendmsg"},
    "Fileless execution via memfd_create": {"execve", "execveat"},
}
NINETEEN = {"open", "openat", "openat2", "execve", "execveat", "connect", "sendto", "sendmsg",
            "socket", "dup", "dup2", "dup3", "symlink", "symlinkat", "link", "linkat", "ptrace",
            "init_module", "finit_module"}


def test_stable_rules_event_types_match_the_reference() -> None:
    loaded, _ = load_rules([upstream_file("falco_rules.yaml")])
    macros = {name: parse_condition(m.condition) for name, m in loaded.macros.items()}
    derived = {r.name: derive(inline(parse_condition(r.condition), macros))
               for r in loaded.rules}
    assert derived == {name: frozenset(types) for name, types in STABLE.items()}
    union = frozenset().union(*(t for t in derived.values() if t is not None))
    assert union == NINETEEN and len(union) == 19
