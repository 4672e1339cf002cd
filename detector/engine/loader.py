"""The rules-file loader: Falco rules YAML in, ``LoadedRules`` (condition text) out.

Several files load in order into one collector, so a later file can append to, override or
redefine what an earlier one wrote; a redefinition keeps the item's first position. Macros stay
text (the compiler expands them on the AST); lists are substituted into every condition and
exceptions appended to rule conditions, exactly as Falco builds the text (``lists.py``,
``exceptions.py``). The first mistake raises ``RuleError`` naming file, line and column;
everything Falco only warns about becomes a ``RuleWarning`` with Falco's code.

``ENGINE_VERSION`` is the Falco engine version whose rules-file features we implement: 0.57.0 is
what the upstream rulesets require (Falco 0.42). Files asking for more are refused, as Falco does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from detector.engine.errors import RuleError, RuleWarning
from detector.engine.exceptions import build_condition
from detector.engine.lists import ListCycleError, ListDef, expand, substitute_all
from detector.engine.loader_rules import RuleItems
from detector.engine.loader_yaml import Item, Source, compose, is_null
from detector.engine.model import LoadedRules, Macro, Origin, Rule

ENGINE_VERSION = "0.57.0"

_SEMVER = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_LIST_NAME = re.compile(r"""[^()"'\s=,]+""")
_MACRO_NAME = re.compile(r"[a-zA-Z]+[a-zA-Z0-9_]*")

Version = tuple[int, int, int]


@dataclass(slots=True)
class _List:
    name: str
    items: list[str]
    index: int  # position of the first definition (global counter across files)
    visibility: int  # position of the latest define/append
    origin: Origin


@dataclass(slots=True)
class _Macro:
    name: str
    condition: str
    index: int
    visibility: int
    origin: Origin


def _semver(text: str) -> Version | None:
    found = _SEMVER.match(text)
    if found is None:
        return None
    major, minor, patch = (int(part) for part in found.groups())
    return major, minor, patch


def _version_text(version: Version) -> str:
    return ".".join(str(part) for part in version)


class _Collector:
    """Every item of every file, merged in load order (Falco's rule_loader::collector)."""

    def __init__(self, engine_version: str) -> None:
        engine = _semver(engine_version)
        if engine is None:
            raise ValueError(f"engine version {engine_version!r} is not x.y.z")
        self.engine = engine
        self.counter = 0
        self.lists: dict[str, _List] = {}
        self.macros: dict[str, _Macro] = {}
        self.rules = RuleItems(self._tick)
        self.required_engine: Version | None = None
        self.plugins: list[dict[str, object]] = []
        self.warnings: list[RuleWarning] = []
        self.sources: dict[str, Source] = {}

    def _tick(self) -> int:
        """The next position; one counter across all files and item kinds, as in Falco."""
        self.counter += 1
        return self.counter - 1

    def read(self, text: str, file: str) -> None:
        source = Source(file, text, self.warnings)
        self.sources[file] = source
        for doc in compose(source):
            if is_null(doc):
                continue
            if isinstance(doc, yaml.ScalarNode):
                raise source.error(doc, "Rules content is not yaml")
            if not isinstance(doc, yaml.SequenceNode):
                raise source.error(doc, "Rules content is not yaml array of objects")
            for node in doc.value:
                if not is_null(node):
                    self._read_item(source, node)

    def _read_item(self, source: Source, node: yaml.Node) -> None:
        if not isinstance(node, yaml.MappingNode):
            raise source.error(
                node, "Unexpected element type. Each element should be a yaml associative array."
            )
        item = Item(source, node, "rules content")
        # The first of these keys present decides what the item is.
        if item.has("required_engine_version"):
            self._engine_version(item.named("required_engine_version"))
        elif item.has("required_plugin_versions"):
            self._plugin_versions(item.named("required_plugin_versions"))
        elif item.has("list"):
            self._list(item.named("list"))
        elif item.has("macro"):
            self._macro(item.named("macro"))
        elif item.has("rule"):
            self.rules.read(item.named("rule"))
        else:
            item.warn("LOAD_UNKNOWN_ITEM", "Unknown top level item")

    def _engine_version(self, item: Item) -> None:
        item.warn_unknown_keys({"required_engine_version"})
        raw = item.scalar("required_engine_version")
        # A bare integer N is the pre-semver form and means 0.N.0.
        version = (0, int(raw), 0) if raw.isascii() and raw.isdigit() else _semver(raw)
        if version is None:
            raise item.error(
                f"Unable to parse engine version '{raw}' as a semver string. Expected "
                '"x.y.z" semver format.',
                "required_engine_version",
            )
        if version[0] != self.engine[0] or version > self.engine:
            raise item.error(
                f"Rules require engine version {_version_text(version)}, but engine version "
                f"is {_version_text(self.engine)}",
                "required_engine_version",
            )
        if self.required_engine is None or version > self.required_engine:
            self.required_engine = version

    def _plugin_versions(self, item: Item) -> None:
        item.warn_unknown_keys({"required_plugin_versions"})
        for entry in item.sequence("required_plugin_versions", "Plugin version must be a mapping"):
            name, version = self._plugin_requirement(entry)
            alternatives = []
            seen = {name}
            for alt in entry.sequence(
                "alternatives", "Plugin version alternative must be a mapping", required=False
            ):
                alt_name, alt_version = self._plugin_requirement(alt)
                if alt_name in seen:
                    raise alt.error(
                        f"Defined multiple alternative version requirements for plugin '{alt_name}'"
                    )
                seen.add(alt_name)
                alternatives.append({"name": alt_name, "version": alt_version})
            # Checked against the loaded plugins later, by whoever knows them.
            self.plugins.append({"name": name, "version": version, "alternatives": alternatives})

    @staticmethod
    def _plugin_requirement(entry: Item) -> tuple[str, str]:
        entry.warn_unknown_keys({"name", "version", "alternatives"})
        name = entry.scalar("name")
        version = entry.scalar("version")
        if _semver(version) is None:
            message = f"Invalid required version '{version}' for plugin '{name}'"
            raise entry.error(message, "version")
        return name, version

    def _list(self, item: Item) -> None:
        name = item.scalar("list")
        item = item.named(f"list '{name}'")
        item.warn_unknown_keys({"list", "items", "append", "override"})
        if not _LIST_NAME.fullmatch(name):
            item.warn(
                "LOAD_INVALID_LIST_NAME",
                "List has an invalid name. List names must match a regular expression: "
                """([^()"'[:space:]=,]+)""",
            )
        items = item.strings("items")
        append, ops = item.update_mode(("items",), ("items",))
        if append or ops.get("items") == "append":
            prev = self.lists.get(name)
            if prev is None:
                raise item.error(
                    "List uses 'append' or 'override.items: append' but no list by that name "
                    "already exists"
                )
            prev.items.extend(items)
            prev.visibility = self._tick()
            return
        position = self._tick()
        old = self.lists.get(name)
        index = old.index if old else position
        self.lists[name] = _List(name, items, index, position, item.origin())

    def _macro(self, item: Item) -> None:
        name = item.scalar("macro")
        item = item.named(f"macro '{name}'")
        item.warn_unknown_keys({"macro", "condition", "append", "override"})
        if not _MACRO_NAME.fullmatch(name):
            item.warn(
                "LOAD_INVALID_MACRO_NAME",
                "Macro has an invalid name. Macro names must match a regular expression: "
                "([a-zA-Z]+[a-zA-Z0-9_]*)",
            )
        condition = item.scalar("condition")
        append, ops = item.update_mode(("condition",), ("condition",))
        if append or ops.get("condition") == "append":
            prev = self.macros.get(name)
            if prev is None:
                raise item.error(
                    "Macro uses 'append' or 'override.condition: append' but no macro by that "
                    "name already exists"
                )
            # Plain text concatenation: the appended text normally starts with and/or.
            prev.condition += " " + condition
            prev.visibility = self._tick()
            return
        position = self._tick()
        old = self.macros.get(name)
        index = old.index if old else position
        self.macros[name] = _Macro(name, condition, index, position, item.origin("condition"))

    def finish(self) -> LoadedRules:
        """Expand lists and build every condition's text from what was collected."""
        defs = [ListDef(e.name, e.items, e.index, e.visibility) for e in self.lists.values()]
        try:
            expanded, used = expand(defs)
        except ListCycleError as cycle:
            entry = self.lists[cycle.path[0]]
            source = self.sources[entry.origin.file]
            message = "List refers to itself through nested lists: " + " -> ".join(cycle.path)
            error = source.line_error(entry.origin.line, message)
            raise replace(error, item=f"list '{entry.name}'") from None
        ordered = list(expanded.items())
        macros: dict[str, Macro] = {}
        for m in self.macros.values():
            text, names = substitute_all(m.condition, ordered)
            used |= names
            macros[m.name] = Macro(m.name, text, m.origin, m.index, m.visibility)
        rules: list[Rule] = []
        for r in self.rules.by_name.values():
            condition = build_condition(r.condition, r.exceptions) if r.exceptions else r.condition
            condition, names = substitute_all(condition, ordered)
            used |= names
            rules.append(
                Rule(
                    name=r.name,
                    condition=condition,
                    output=r.output,
                    priority=r.priority,
                    desc=r.desc,
                    enabled=r.enabled,
                    tags=sorted(r.tags),  # Falco keeps tags as a sorted set
                    source=r.source,
                    warn_evttypes=r.warn_evttypes,
                    skip_if_unknown_filter=r.skip_if_unknown_filter,
                    origin=r.origin,
                    capture=r.capture,
                    capture_duration=r.capture_duration,
                )
            )
        for entry in self.lists.values():
            if entry.name not in used:
                self.warnings.append(
                    RuleWarning(
                        "List not referred to by any other rule/macro",
                        entry.origin.file,
                        entry.origin.line,
                        f"list '{entry.name}'",
                        "LOAD_UNUSED_LIST",
                    )
                )
        engine = _version_text(self.required_engine) if self.required_engine else None
        return LoadedRules(rules, macros, expanded, engine, self.plugins)


def _rule_files(paths: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = [p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()]
            files.extend(sorted(found, key=lambda p: p.name))
        else:
            files.append(path)
    return files


def load_rules(
    paths: Sequence[str | Path], *, engine_version: str = ENGINE_VERSION
) -> tuple[LoadedRules, list[RuleWarning]]:
    """Load rules files in order (a directory: its ``*.yaml``/``*.yml`` files by name).

    Raises RuleError on the first mistake; returns the merged rules and all warnings.
    """
    collector = _Collector(engine_version)
    for path in _rule_files(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RuleError(f"Could not read rules file: {exc}", file=str(path)) from None
        collector.read(text, str(path))
    return collector.finish(), collector.warnings


def load_rules_text(
    text: str, name: str = "rules.yaml", *, engine_version: str = ENGINE_VERSION
) -> tuple[LoadedRules, list[RuleWarning]]:
    """Load one rules file given as text; ``name`` is what errors and origins call it."""
    collector = _Collector(engine_version)
    collector.read(text, name)
    return collector.finish(), collector.warnings
