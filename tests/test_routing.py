from __future__ import annotations

import random

import pytest

from outputs.base import OutputConfig
from sidekick.alert import TEST_RULE, Alert, Priority
from sidekick.delivery import backoff_seconds
from sidekick.routing import enrich, route, wants


def alert(rule: str = "Write below etc", priority: Priority = Priority.WARNING,
          source: str = "syscall", tags: list[str] | None = None) -> Alert:
    return Alert(rule=rule, priority=priority, time_ns=0, output_fields={"a": 1}, source=source,
                 tags=tags or ["filesystem"])


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, True),
        ({"minimumpriority": "warning"}, True),  # inclusive
        ({"minimumpriority": "error"}, False),
        ({"minimumpriority": ""}, True),
        ({"rules": ["Write below *"]}, True),
        ({"rules": ["Terminal*"]}, False),
        ({"sources": ["k8s_audit"]}, False),
        ({"sources": ["syscall"]}, True),
        ({"tags": ["network", "filesystem"]}, True),
        ({"tags": ["network"]}, False),
    ],
)
def test_filters(config: dict, expected: bool) -> None:
    assert wants(OutputConfig(**config), alert()) is expected


def test_test_alert_bypasses_minimumpriority_only() -> None:
    test = alert(rule=TEST_RULE, priority=Priority.DEBUG)
    assert wants(OutputConfig(minimumpriority="critical"), test)
    assert not wants(OutputConfig(rules=["Other"]), test)


def test_route_names_matching_outputs() -> None:
    outputs = {"a": OutputConfig(minimumpriority="error"), "b": OutputConfig()}
    assert route(outputs, alert()) == ["b"]


def test_enrich() -> None:
    a = alert(rule=TEST_RULE, tags=["z"])
    enrich(a, {"cluster": "prod"}, ["a", "z"])
    assert a.output_fields == {"a": 1, "cluster": "prod"}
    assert a.tags == ["a", "z"] and a.source == "internal"


def test_backoff_full_jitter_and_retry_after() -> None:
    random.seed(1)
    delays = [backoff_seconds(3, 1.0, 300.0, None) for _ in range(200)]
    assert all(0 <= d <= 8 for d in delays) and max(delays) > 4  # spread over [0, 2**3]
    assert all(backoff_seconds(30, 1.0, 60.0, None) <= 60 for _ in range(50))
    assert backoff_seconds(0, 1.0, 300.0, 7.0) == 7.0  # exactly what Retry-After says
    assert backoff_seconds(20, 1.0, 300.0, 7.0) == 7.0  # whatever the attempt
    assert backoff_seconds(0, 1.0, 60.0, 1e9) == 60.0  # but capped
