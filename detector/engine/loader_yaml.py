"""The loader's YAML layer: composed nodes keep their marks, so every error has a line/column.

Scalars are read from their source text, not from PyYAML's typed value, because Falco's YAML
library has untyped scalars: a list item ``80`` is the string "80", ``enabled: yes`` is true,
``priority: 5`` is the string "5" (then an invalid priority). Messages follow Falco's reader.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import yaml

from detector.engine.errors import RuleError, RuleWarning
from detector.engine.exceptions import Entry, RuleException, check_value, complete
from detector.engine.model import Origin
from sidekick.alert import Priority

_NULL_TAG = "tag:yaml.org,2002:null"
_TRUE = ("y", "yes", "true", "on")
_FALSE = ("n", "no", "false", "off")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

WARNING_APPEND = (
    "'append' key is deprecated. Add an 'append' entry (e.g. 'condition: append') under "
    "'override' instead."
)
ERROR_OVERRIDE_APPEND = (
    "Keys 'override' and 'append: true' cannot be used together. Add an 'append' entry (e.g. "
    "'condition: append') under 'override' instead."
)


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG


class Source:
    """One rules file: its name and lines (for error snippets) and the shared warning list."""

    def __init__(self, file: str, text: str, warnings: list[RuleWarning]) -> None:
        self.file = file
        self.text = text
        self.lines = text.splitlines()
        self.warnings = warnings

    def line_text(self, line: int) -> str | None:
        return self.lines[line - 1] if 0 < line <= len(self.lines) else None

    def error(self, node: yaml.Node, message: str, item: str | None = None) -> RuleError:
        start, end = node.start_mark, node.end_mark
        text = self.line_text(start.line + 1)
        if end.line == start.line:
            length = end.column - start.column
        else:
            length = len(text or "") - start.column
        return RuleError(
            message, self.file, start.line + 1, start.column + 1, item, text, max(1, length)
        )

    def line_error(self, line: int, message: str) -> RuleError:
        """An error about a whole line (the item's first), underlining its text."""
        text = self.line_text(line) or ""
        column = len(text) - len(text.lstrip()) + 1
        return RuleError(message, self.file, line, column, None, text, max(1, len(text.strip())))


def compose(source: Source) -> list[yaml.Node]:
    """The file's YAML documents as node trees, or a RuleError pointing at the YAML mistake."""
    try:
        return list(yaml.compose_all(source.text, Loader=_LOADER))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = exc.problem or "invalid YAML"
        if exc.context:
            detail = f"{detail} ({exc.context})"
        if mark is None:
            raise RuleError(f"YAML parse error: {detail}", file=source.file) from None
        line = mark.line + 1
        raise RuleError(
            f"YAML parse error: {detail}",
            source.file,
            line,
            mark.column + 1,
            text=source.lines[line - 1] if line <= len(source.lines) else None,
        ) from None
    except yaml.YAMLError as exc:
        raise RuleError(f"YAML parse error: {exc}", file=source.file) from None
    except RecursionError:
        raise RuleError("YAML parse error: nesting too deep", file=source.file) from None


def text_start(source: Source, node: yaml.ScalarNode) -> tuple[int, int | None]:
    """Where a scalar's text begins (1-based line, and column when it fits on one line)."""
    line, column = node.start_mark.line + 1, node.start_mark.column + 1
    if node.style in ("|", ">"):
        # Block scalars start on the line after the indicator, at its indentation.
        last = node.end_mark.line if node.end_mark.column else node.end_mark.line - 1
        content = [n for n in range(line + 1, last + 2) if (source.line_text(n) or "").strip()]
        if not content:
            return line, None
        text = source.line_text(content[0]) or ""
        start = len(text) - len(text.lstrip()) + 1
        return content[0], start if len(content) == 1 else None
    if node.style in ("'", '"'):
        column += 1
    return line, column if node.end_mark.line == node.start_mark.line else None


class Item:
    """One YAML mapping (an item, or a sub-mapping of one) with located, Falco-worded decoding."""

    def __init__(self, source: Source, node: yaml.MappingNode, label: str) -> None:
        self.source = source
        self.node = node
        self.label = label
        self.entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                raise source.error(key, "Mapping keys must be strings", label)
            # Falco's YAML library looks keys up front to back: the first duplicate wins.
            self.entries.setdefault(key.value, (key, value))

    def named(self, label: str) -> Item:
        """The same mapping, labelled by what it turned out to be (``rule 'X'``)."""
        other = copy.copy(self)
        other.label = label
        return other

    def has(self, key: str) -> bool:
        return key in self.entries

    def error(self, message: str, key: str | None = None) -> RuleError:
        """An error located at ``key``'s value if given and present, else at the item."""
        node = self.entries[key][1] if key in self.entries else self.node
        return self.source.error(node, message, self.label)

    def error_at(self, node: yaml.Node, message: str) -> RuleError:
        return self.source.error(node, message, self.label)

    def warn(self, code: str, message: str, node: yaml.Node | None = None) -> None:
        line = (node or self.node).start_mark.line + 1
        self.source.warnings.append(RuleWarning(message, self.source.file, line, self.label, code))

    def warn_unknown_keys(self, known: set[str]) -> None:
        for key, (key_node, _) in self.entries.items():
            if key not in known:
                self.warn(
                    "LOAD_UNKNOWN_KEY", f"Unknown key '{key}'. The key will be ignored.", key_node
                )

    def origin(self, condition_key: str | None = None) -> Origin:
        item_line = self.node.start_mark.line + 1
        node = self.entries.get(condition_key or "", (None, None))[1]
        if not isinstance(node, yaml.ScalarNode):
            return Origin(self.source.file, item_line)
        condition_line, condition_column = text_start(self.source, node)
        return Origin(self.source.file, item_line, condition_line, condition_column)

    def _missing(self, key: str) -> RuleError:
        return self.error(f"Item has no mapping for key '{key}'")

    def _node(self, key: str) -> yaml.Node | None:
        """The key's value; None when absent. An empty (null) value is an error, as in Falco."""
        if key not in self.entries:
            return None
        node = self.entries[key][1]
        if is_null(node):
            raise self.error(f"Mapping for key '{key}' is empty", key)
        return node

    def _scalar_node(self, key: str) -> yaml.ScalarNode | None:
        node = self._node(key)
        if node is None:
            return None
        if not isinstance(node, yaml.ScalarNode):
            raise self.error_at(node, "Value is not a scalar value")
        if node.value == "":
            raise self.error_at(node, "Value must be non-empty")
        return node

    def scalar(self, key: str, default: str | None = None) -> str:
        """A non-empty scalar as text; required unless a default is given."""
        node = self._scalar_node(key)
        if node is not None:
            return node.value
        if default is None:
            raise self._missing(key)
        return default

    def boolean(self, key: str, default: bool | None = None) -> bool:
        node = self._scalar_node(key)
        if node is None:
            if default is None:
                raise self._missing(key)
            return default
        word = node.value.lower()
        if word not in _TRUE and word not in _FALSE:
            raise self.error_at(node, "Can't decode YAML scalar value")
        return word in _TRUE

    def integer(self, key: str, default: int | None = None) -> int:
        node = self._scalar_node(key)
        if node is None:
            if default is None:
                raise self._missing(key)
            return default
        try:
            return int(node.value)
        except ValueError:
            raise self.error_at(node, "Can't decode YAML scalar value") from None

    def priority(self) -> Priority:
        node = self._scalar_node("priority")
        if node is None:
            raise self._missing("priority")
        try:
            return Priority.parse(node.value)
        except ValueError:
            raise self.error("Invalid priority", "priority") from None

    def strings(self, key: str, required: bool = True) -> list[str]:
        """A sequence of scalars, as text (empty scalars allowed, as in Falco)."""
        if key not in self.entries and not required:
            return []
        node = self._sequence_node(key, "Value is not a sequence")
        out = []
        for child in node.value:
            if not isinstance(child, yaml.ScalarNode) or is_null(child):
                raise self.error_at(child, "sequence value is not scalar")
            out.append(child.value)
        return out

    def _sequence_node(self, key: str, message: str) -> yaml.SequenceNode:
        if key not in self.entries:
            raise self._missing(key)
        node = self.entries[key][1]
        if not isinstance(node, yaml.SequenceNode):
            raise self.error_at(node, message)
        return node

    def sequence(self, key: str, not_mapping: str, required: bool = True) -> Iterator[Item]:
        """The mappings of a sequence of mappings (plugin requirements and their alternatives)."""
        if key not in self.entries and not required:
            return
        node = self._sequence_node(key, f"Value of {key} must be a sequence")
        for child in node.value:
            if not isinstance(child, yaml.MappingNode):
                raise self.error_at(child, not_mapping)
            yield Item(self.source, child, self.label)

    def _override_entries(self) -> Iterator[tuple[str, str, yaml.Node, yaml.Node]]:
        """``override`` as (key, operation, key node, operation node); nothing if absent."""
        node = self._node("override")
        if node is None:
            return
        if not isinstance(node, yaml.MappingNode):
            raise self.error_at(node, "Value of override must be a mapping")
        for key, op in node.value:
            if not isinstance(key, yaml.ScalarNode) or not isinstance(op, yaml.ScalarNode):
                raise self.error_at(op, "Value is not a scalar value")
            yield key.value, op.value, key, op

    def override_key_node(self, key: str) -> yaml.Node:
        for name, _op, key_node, _op_node in self._override_entries():
            if name == key:
                return key_node
        return self.node

    def update_mode(
        self, appendable: Sequence[str], replaceable: Sequence[str]
    ) -> tuple[bool, dict[str, str]]:
        """The legacy ``append`` flag and the ``override`` map (key -> append | replace)."""
        append = self.boolean("append", default=False)
        if append:
            self.warn("LOAD_DEPRECATED_ITEM", WARNING_APPEND)
        ops: dict[str, str] = {}
        for key, op, key_node, op_node in self._override_entries():
            if op == "append" and key not in appendable:
                raise self.error_at(
                    key_node, f"Key '{key}' cannot be appended to, use 'replace' instead"
                )
            if op == "replace" and key not in replaceable:
                raise self.error_at(key_node, f"Key '{key}' cannot be replaced")
            if op not in ("append", "replace"):
                allowed = [
                    name
                    for name, keys in (("append", appendable), ("replace", replaceable))
                    if key in keys
                ]
                raise self.error_at(
                    op_node,
                    f"Invalid override operation for key '{key}': '{op}'. Allowed values are: "
                    + " ".join(allowed),
                )
            ops[key] = op
        if append and ops:
            raise self.error(ERROR_OVERRIDE_APPEND)
        return append, ops

    # -- exceptions ---------------------------------------------------------------------------

    def _entry(self, node: yaml.Node, depth: int) -> Entry:
        """A scalar, or a sequence nested at most ``depth`` levels (values hold rows of cells)."""
        if isinstance(node, yaml.ScalarNode) and not is_null(node):
            if node.value == "":
                raise self.error_at(node, "Value must be non-empty")
            return node.value
        if isinstance(node, yaml.SequenceNode) and depth > 0:
            return [self._entry(child, depth - 1) for child in node.value]
        raise self.error_at(node, "Value is not a scalar value")

    def _read_exceptions(
        self, appending: bool
    ) -> list[tuple[RuleException, Item, list[yaml.Node]]]:
        """Each exception with its sub-item and value nodes (to locate errors found later)."""
        node = self.entries.get("exceptions", (None, None))[1]
        if node is None or is_null(node):
            return []
        if not isinstance(node, yaml.SequenceNode):
            raise self.error_at(node, "Rule exceptions must be a sequence")
        read = []
        names: set[str] = set()
        for child in node.value:
            if not isinstance(child, yaml.MappingNode):
                raise self.error_at(child, "Rule exception must be a mapping")
            ex_item = Item(self.source, child, f"{self.label}, exception")
            name = ex_item.scalar("name")
            ex_item = ex_item.named(f"{self.label}, exception '{name}'")
            ex_item.warn_unknown_keys({"name", "fields", "comps", "values"})
            if name in names:
                ex_item.warn(
                    "LOAD_EXCEPTION_NAME_NOT_UNIQUE",
                    f"Multiple definitions of exception '{name}' in the same object",
                )
            names.add(name)
            ex = RuleException(name)
            if ex_item.has("fields") or not appending:
                ex.fields = ex_item._names("fields")
            if ex_item.has("comps"):
                ex.comps = ex_item._names("comps")
            value_nodes: list[yaml.Node] = []
            if ex_item.has("values"):
                values = ex_item.entries["values"][1]
                if not isinstance(values, yaml.SequenceNode):
                    raise ex_item.error_at(values, "Rule exception values must be a sequence")
                value_nodes = list(values.value)
                ex.values = [ex_item._entry(v, 2) for v in value_nodes]
            elif appending:
                ex_item.warn(
                    "LOAD_APPEND_NO_VALUES", "Overriding/appending exception with no values"
                )
            read.append((ex, ex_item, value_nodes))
        return read

    def _names(self, key: str) -> str | list[str]:
        """``fields``/``comps``: one non-empty scalar or a sequence of them."""
        node = self._node(key)
        if node is None:
            raise self._missing(key)
        entry = self._entry(node, 1)
        return entry if isinstance(entry, str) else [str(e) for e in entry]

    @staticmethod
    def _check(ex: RuleException, ex_item: Item, value_nodes: list[yaml.Node]) -> None:
        problem = complete(ex)
        if problem:
            raise ex_item.error(problem)
        assert ex.fields is not None, "complete() guarantees fields"
        for value, node in zip(ex.values, value_nodes, strict=True):
            problem = check_value(ex.fields, value)
            if problem:
                raise ex_item.error_at(node, problem)

    def exceptions(self, replacing: bool = False) -> list[RuleException]:
        """Complete exception definitions (a rule definition, or ``exceptions: replace``)."""
        # Falco reads replacements like appends (fields optional), then demands complete ones.
        read = self._read_exceptions(appending=replacing)
        for ex, ex_item, value_nodes in read:
            self._check(ex, ex_item, value_nodes)
        return [ex for ex, _, _ in read]

    def append_exceptions(self, existing: list[RuleException]) -> None:
        """Add new exceptions, or values to existing ones with the same name (in place)."""
        for ex, ex_item, value_nodes in self._read_exceptions(appending=True):
            prev = next((e for e in existing if e.name == ex.name), None)
            if prev is None:
                if ex.fields is None:
                    raise ex_item.error(
                        "Rule exception must have fields property with a list of fields"
                    )
                if not ex.values:
                    raise ex_item.error(
                        "Rule exception must have values property with a list of values"
                    )
                self._check(ex, ex_item, value_nodes)
                existing.append(ex)
                continue
            if ex.fields is not None:
                raise ex_item.error(
                    "Can not append exception fields to existing exception, only values", "fields"
                )
            if ex.comps is not None:
                raise ex_item.error(
                    "Can not append exception comps to existing exception, only values", "comps"
                )
            assert prev.fields is not None, "stored exceptions are complete"
            for value, node in zip(ex.values, value_nodes, strict=True):
                problem = check_value(prev.fields, value)
                if problem:
                    raise ex_item.error_at(node, problem)
            prev.values.extend(ex.values)
