"""The rule engine: load rules files, compile every rule once, match events, make alerts.

    engine, warnings = Engine.from_files(["/etc/lanner/falco_rules.yaml"])
    for event in events:
        for alert in engine.process(event):
            publish(alert)

Rules are indexed by the event types their condition can match (§2.7), so an event is only
tested against the rules that can fire on it, in rule-file order. ``rule_matching="first"``
stops at the first match (Falco's default: at most one alert per event); ``"all"`` (ours)
reports every matching rule, so a broad early rule cannot hide a specific later one.

Events are read-only mappings of field name to value (``detector.engine.fields``). An event
without ``evt.source`` is a syscall event; rules of another source only see events that name
it. A rule that raises on an event (a recorded value of the wrong type) does not match it, and
``errors`` counts it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from detector.engine.bucket import Bucket, build_index
from detector.engine.build import CompiledRule, RulesetBuilder
from detector.engine.dnscache import DnsCache, HostAddresses
from detector.engine.errors import RuleWarning
from detector.engine.evttypes import ALL_EVENT_TYPES
from detector.engine.explain import explain_rule
from detector.engine.fields import REGISTRY, FieldRegistry
from detector.engine.loader import load_rules
from detector.engine.output import make_alert
from sidekick.alert import Alert, Priority

log = logging.getLogger(__name__)

Event = Mapping[str, Any]
__all__ = ["CompiledRule", "Engine"]
RULE_MATCHING = ("first", "all")
SYSCALL = "syscall"


class Engine:
    """Compiled rules, indexed. ``rules``: every loaded rule, disabled ones included;
    ``active``: those that run (enabled, at or above the minimum priority).
    ``event_types``: what the enabled syscall rules need, so what the sensor must trace (a rule
    that can match any type contributes every known type)."""

    def __init__(
        self,
        rules: list[CompiledRule],
        *,
        hostname: str | None = None,
        rule_matching: str = "all",
        hosts: HostAddresses | None = None,
        min_priority: Priority = Priority.DEBUG,
    ) -> None:
        if rule_matching not in RULE_MATCHING:
            raise ValueError(f"rule_matching must be 'first' or 'all', not {rule_matching!r}")
        self.rules = rules
        self.rule_matching = rule_matching
        self.hostname = hostname or os.environ.get("FALCO_HOSTNAME") or socket.gethostname()
        self._hosts = hosts or DnsCache()
        self._by_name = {rule.name: rule for rule in rules}
        self._first = rule_matching == "first"
        # Falco's `priority` setting: rules below it are not run at all.
        self.active = active = [
            rule for rule in rules if rule.enabled and rule.priority >= min_priority]
        self.event_types: frozenset[str] = frozenset().union(
            *(ALL_EVENT_TYPES if r.event_types is None else r.event_types
              for r in active if r.source == SYSCALL)
        )
        self._index = {
            source: build_index([r for r in active if r.source == source], self._hosts,
                                self._first)
            for source in {r.source for r in active}
        }
        self._syscall = self._index.get(SYSCALL)
        self.errors = 0  # events a rule failed on (a value of an unexpected type)

    @classmethod
    def from_files(
        cls,
        paths: Sequence[str | Path],
        *,
        hostname: str | None = None,
        rule_matching: str = "all",
        registry: FieldRegistry = REGISTRY,
        hosts: HostAddresses | None = None,
        suggested_output: bool = True,
        min_priority: Priority = Priority.DEBUG,
    ) -> tuple[Engine, list[RuleWarning]]:
        """Load, check and compile rules files. Raises RuleError (located) on the first error.

        ``hosts`` resolves the hostnames rules compare fd.sip.name with (default: a background
        DNS cache). ``suggested_output`` appends the container id and name to syscall rules'
        outputs, as Falco's default configuration does. Rules below ``min_priority`` are
        loaded and checked but never run (Falco's ``priority`` setting)."""
        loaded, warnings = load_rules(paths)
        hosts = hosts or DnsCache()
        builder = RulesetBuilder(loaded, registry, hosts, suggested_output)
        rules = builder.build()
        engine = cls(rules, hostname=hostname, rule_matching=rule_matching, hosts=hosts,
                     min_priority=min_priority)
        return engine, [*warnings, *builder.warnings]

    def rules_for(self, event: Event) -> tuple[CompiledRule, ...]:
        """The enabled rules that can match this event, in order (what process() tests)."""
        return self._bucket(event).rules

    def _bucket(self, event: Event) -> Bucket:
        index = self._index.get(event.get("evt.source") or SYSCALL)
        if index is None:
            return _NO_RULES
        by_type, every_type = index
        return by_type.get(event.get("evt.type"), every_type)

    def tests_syscall(self, evt_type: str) -> bool:
        """Whether a syscall event of this type has any rule to test: process() finds none
        for the others, which the detector then need not ask."""
        index = self._syscall
        return index is not None and bool(index[0].get(evt_type, index[1]).rules)

    def process(self, event: Event) -> list[Alert]:
        """The alerts for one event: one per matching rule (only the first with "first")."""
        # _bucket() inlined: this runs for every event.
        source = event.get("evt.source")
        index = self._syscall if source is None or source == SYSCALL else self._index.get(source)
        if index is None:
            return []
        bucket = index[0].get(event.get("evt.type"), index[1])
        try:
            hits = bucket.match(event)
        except Exception:  # a source sent a value of the wrong type
            hits = self._one_by_one(bucket, event)
        if not hits:
            return []
        rules = bucket.rules
        return [make_alert(rules[i], event, self.hostname, rules[i].formatter) for i in hits]

    def explain(self, rule_name: str, event: Event) -> str:
        """Why ``rule_name`` does or does not match ``event``: the clauses that decided it."""
        rule = self._by_name.get(rule_name)
        if rule is None:
            raise KeyError(f"no rule named {rule_name!r}")
        return explain_rule(rule, event, rule in self.rules_for(event), self._hosts)

    def _one_by_one(self, bucket: Bucket, event: Event) -> tuple[int, ...]:
        """The slow path after a bucket failed: each rule alone, a failing one not matching."""
        hits = []
        for position, rule in enumerate(bucket.rules):
            try:
                hit = rule.matches(event)
            except Exception as exc:
                self.errors += 1
                if self.errors == 1 or self.errors % 10000 == 0:
                    # One line, no traceback: event values come from outside (recordings).
                    log.warning("rule %r could not be evaluated on an event (%d so far): a "
                                "value has an unexpected type (%s)", rule.name, self.errors,
                                type(exc).__name__)
                continue
            if hit:
                hits.append(position)
                if self._first:
                    break
        return tuple(hits)


_NO_RULES = Bucket((), lambda event: (), "")
