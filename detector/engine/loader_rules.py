"""Rule items: definitions, and the ways later items (maybe in later files) change them.

A rule item is one of: a full definition (a redefinition replaces the rule but keeps its first
position), an update through ``override`` (append or replace per key), a legacy ``append: true``
(condition and exceptions only), or the deprecated enable-only form. Messages are Falco's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from detector.engine.exceptions import RuleException
from detector.engine.loader_yaml import Item
from detector.engine.model import Origin
from sidekick.alert import Priority

WARNING_ENABLED = (
    "The standalone 'enabled' key usage is deprecated. The correct approach requires also a "
    "'replace' entry under the 'override' key (i.e. 'enabled: replace')."
)
_NO_RULE_TO_APPEND = (
    "Rule uses 'append' or 'override.<key>: append' but no rule by that name already exists"
)
_NO_RULE_TO_REPLACE = (
    "An 'override.<key>: replace' to a rule was requested but no rule by that name already exists"
)
_DIFFERENT_SOURCE = "Rule has been re-defined with a different source"

APPENDABLE = ("condition", "output", "desc", "tags", "exceptions")
REPLACEABLE = (
    *APPENDABLE,
    *("priority", "enabled", "warn_evttypes", "skip-if-unknown-filter", "capture"),
    "capture_duration",
)
RULE_KEYS = frozenset(("rule", "source", "append", "override", *REPLACEABLE))
_DEFINING_KEYS = ("condition", "output", "desc", "priority")


@dataclass(slots=True)
class RuleEntry:
    name: str
    condition: str
    output: str
    desc: str
    priority: Priority
    source: str
    origin: Origin
    index: int = 0  # position of the first definition (global counter across files)
    visibility: int = 0  # position of the latest define/append/replace
    enabled: bool = True
    tags: set[str] = field(default_factory=set)
    exceptions: list[RuleException] = field(default_factory=list)
    warn_evttypes: bool = True
    skip_if_unknown_filter: bool = False
    capture: bool = False
    capture_duration: int = 0


class RuleItems:
    """The collected rules by name, in first-definition order."""

    def __init__(self, tick: Callable[[], int]) -> None:
        self.by_name: dict[str, RuleEntry] = {}
        self._tick = tick  # hands out the next global position

    def read(self, item: Item) -> None:
        name = item.scalar("rule")
        item = item.named(f"rule '{name}'")
        item.warn_unknown_keys(set(RULE_KEYS))
        append, ops = item.update_mode(APPENDABLE, REPLACEABLE)
        if ops:
            self._update(item, name, ops)
        elif append:
            self._append_legacy(item, name)
        elif not any(item.has(key) for key in _DEFINING_KEYS):
            self._enable(item, name)
        else:
            self._define(item, name)

    def _define(self, item: Item, name: str) -> None:
        condition = item.scalar("condition")
        output = item.scalar("output")
        desc = item.scalar("desc")
        priority = item.priority()
        source = item.scalar("source", default="syscall")
        prev = self.by_name.get(name)
        if prev is not None and prev.source != source:
            raise item.error(_DIFFERENT_SOURCE, "source")
        rule = RuleEntry(
            name,
            condition,
            output.strip(),
            desc,
            priority,
            source,
            item.origin("condition"),
            enabled=item.boolean("enabled", default=True),
            tags=set(item.strings("tags", required=False)),
            exceptions=item.exceptions(),
            warn_evttypes=item.boolean("warn_evttypes", default=True),
            skip_if_unknown_filter=item.boolean("skip-if-unknown-filter", default=False),
            capture=item.boolean("capture", default=False),
            capture_duration=item.integer("capture_duration", default=0),
        )
        rule.visibility = self._tick()
        rule.index = prev.index if prev else rule.visibility
        self.by_name[name] = rule

    def _existing(self, item: Item, name: str, missing: str) -> RuleEntry:
        prev = self.by_name.get(name)
        if prev is None:
            raise item.error(missing)
        if item.has("source") and item.scalar("source") != prev.source:
            raise item.error(_DIFFERENT_SOURCE, "source")
        return prev

    def _update(self, item: Item, name: str, ops: dict[str, str]) -> None:
        for key, op in ops.items():
            if not item.has(key):
                raise item.error_at(
                    item.override_key_node(key),
                    f"An {op} override for '{key}' was specified but '{key}' is not defined",
                )
        for key in REPLACEABLE:
            if item.has(key) and key not in ops:
                raise item.error(
                    f"Unexpected key '{key}': no corresponding entry under 'override' is defined.",
                    key,
                )
        # As in Falco: all appends are one step, then all replaces another.
        appends = [key for key, op in ops.items() if op == "append"]
        replaces = [key for key, op in ops.items() if op == "replace"]
        if appends:
            prev = self._existing(item, name, _NO_RULE_TO_APPEND)
            self._append_keys(item, prev, appends)
            prev.visibility = self._tick()
        if replaces:
            prev = self._existing(item, name, _NO_RULE_TO_REPLACE)
            self._replace_keys(item, prev, replaces)
            prev.visibility = self._tick()

    @staticmethod
    def _append_keys(item: Item, prev: RuleEntry, keys: Sequence[str]) -> None:
        for key in keys:
            if key == "condition":
                prev.condition += " " + item.scalar("condition")
            elif key == "output":
                prev.output += " " + item.scalar("output").strip()
            elif key == "desc":
                prev.desc += " " + item.scalar("desc")
            elif key == "tags":
                prev.tags.update(item.strings("tags"))
            else:
                item.append_exceptions(prev.exceptions)

    @staticmethod
    def _replace_keys(item: Item, prev: RuleEntry, keys: Sequence[str]) -> None:
        for key in keys:
            if key == "condition":
                prev.condition = item.scalar("condition")
                # Condition errors should point at the text that is now in force.
                prev.origin = item.origin("condition")
            elif key == "output":
                prev.output = item.scalar("output").strip()
            elif key == "desc":
                prev.desc = item.scalar("desc")
            elif key == "tags":
                prev.tags = set(item.strings("tags"))
            elif key == "exceptions":
                prev.exceptions = item.exceptions(replacing=True)
            elif key == "priority":
                prev.priority = item.priority()
            elif key == "capture_duration":
                prev.capture_duration = item.integer(key)
            else:
                setattr(prev, key.replace("-", "_"), item.boolean(key))

    def _append_legacy(self, item: Item, name: str) -> None:
        prev = self._existing(item, name, _NO_RULE_TO_APPEND)
        # Legacy append only ever touched the condition and the exceptions.
        keys = [key for key in ("condition", "exceptions") if item.has(key)]
        if not keys:
            raise item.error("Appended rule must have exceptions or condition property")
        self._append_keys(item, prev, keys)
        prev.visibility = self._tick()

    def _enable(self, item: Item, name: str) -> None:
        enabled = item.boolean("enabled")
        item.warn("LOAD_DEPRECATED_ITEM", WARNING_ENABLED)
        prev = self.by_name.get(name)
        if prev is None:
            raise item.error("Rule has 'enabled' key but no rule by that name already exists")
        prev.enabled = enabled
