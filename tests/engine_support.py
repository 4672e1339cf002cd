"""Helpers for the rule engine tests: the real parser and field registry, plus a few test-only
fields for types the syscall registry does not have yet (a list field)."""

from __future__ import annotations

import ipaddress
import posixpath
from collections.abc import Mapping
from typing import Any

from detector.engine.build import compile_condition
from detector.engine.compiler import CompiledCondition
from detector.engine.fields import REGISTRY, FieldClass, FieldRegistry, FieldSpec, FieldType
from detector.engine.pathtests import PathTest

TEST_FIELDS = FieldClass(
    name="test",
    desc="Fields that only exist in the engine tests.",
    shortdesc="Test",
    fields=(
        FieldSpec("test.items", FieldType.LIST, "A list of strings, like ka.user.groups."),
    ),
)
REG = FieldRegistry(lambda: [*REGISTRY.classes(), TEST_FIELDS])


class FakeHosts:
    """Hostname resolution for fd.sip.name checks, answered from a fixed table."""

    def __init__(self, table: Mapping[str, list[str]] | None = None) -> None:
        self.table = {host: frozenset(ipaddress.ip_address(a) for a in addrs)
                      for host, addrs in (table or {}).items()}

    def addresses(self, host: str) -> frozenset[Any]:
        return self.table.get(host, frozenset())


HOSTS = FakeHosts({"api.example": ["10.0.0.9", "fd00::9"]})


def compiled(condition: str, macros: Mapping[str, str] | None = None) -> CompiledCondition:
    return compile_condition(condition, macros, registry=REG, hosts=HOSTS)[0]


def matches(condition: str, event: Mapping[str, Any],
            macros: Mapping[str, str] | None = None) -> bool:
    return compiled(condition, macros).match(event)


def passes(tests: tuple[PathTest, ...], path: str) -> bool:
    """What the kernel's path_tests() computes (pathfilter.py), for a normal-form absolute
    path: the reference the kernel test checks the C code against."""
    parent, last = posixpath.dirname(path), path[path.rfind("/") + 1:]
    checks = {
        "exact": lambda t: path == t, "prefix": path.startswith, "suffix": path.endswith,
        "contains": lambda t: t in path, "directory": lambda t: parent == t,
        "filename": lambda t: last == t,
    }
    return any(checks[t.kind](t.text) for t in tests)
